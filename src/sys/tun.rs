//! The tun/tap driver's ioctls on an open `/dev/net/tun` (include/uapi/linux/if_tun.h,
//! drivers/net/tun.c, Documentation/networking/tuntap.rst).

use nix::errno::Errno;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

const TUNSETIFF: libc::Ioctl = 0x4004_54ca;
const TUNSETPERSIST: libc::Ioctl = 0x4004_54cb;
const TUNSETOWNER: libc::Ioctl = 0x4004_54cc;
const TUNSETGROUP: libc::Ioctl = 0x4004_54ce;
const TUNGETIFF: libc::Ioctl = 0x8004_54d2;
const TUNGETSNDBUF: libc::Ioctl = 0x8004_54d3;
const TUNSETSNDBUF: libc::Ioctl = 0x4004_54d4;
const TUNGETVNETHDRSZ: libc::Ioctl = 0x8004_54d7;
const TUNSETVNETHDRSZ: libc::Ioctl = 0x4004_54d8;
const TUNSETVNETLE: libc::Ioctl = 0x4004_54dc;
const TUNGETVNETLE: libc::Ioctl = 0x8004_54dd;
const TUNSETVNETBE: libc::Ioctl = 0x4004_54de;
const TUNGETVNETBE: libc::Ioctl = 0x8004_54df;
/// _IOR('T', 219, struct sock_fprog): 16 bytes on 64-bit.
const TUNGETFILTER: libc::Ioctl = 0x8010_54db;
const TUNSETCARRIER: libc::Ioctl = 0x4004_54e2;
const TUNGETDEVNETNS: libc::Ioctl = 0x54e3;
const TUNSETIFINDEX: libc::Ioctl = 0x4004_54da;

/// IFF_TUN, IFF_TAP, IFF_NO_PI, IFF_MULTI_QUEUE, IFF_PERSIST (if_tun.h).
pub const IFF_TUN: u32 = 0x0001;
pub const IFF_TAP: u32 = 0x0002;
pub const IFF_MULTI_QUEUE: u32 = 0x0100;
pub const IFF_PERSIST: u32 = 0x0800;
/// TUNSETIFF: fail if the device exists.
pub const IFF_TUN_EXCL: u32 = 0x8000;
/// What TUNGETIFF adds about the file, not the device: IFF_DETACH_QUEUE, and
/// IFF_NOFILTER (the same bit as IFF_NO_PI) when it has no filter.
pub const IFF_FILE_ONLY: u32 = 0x0400 | 0x1000;

/// struct ifreq as the tun ioctls use it: a name and short flags.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: u16,
    _pad: [u8; 22],
}

fn get_int(fd: BorrowedFd, req: libc::Ioctl) -> Result<i32, Errno> {
    let mut v: libc::c_int = 0;
    // SAFETY: `req` is a TUNGET* request writing one int to `v`.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), req, &raw mut v) })?;
    Ok(v)
}

fn set_int(fd: BorrowedFd, req: libc::Ioctl, v: i32) -> Result<(), Errno> {
    // SAFETY: `req` is a TUNSET* request reading one int from `v`.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), req, &raw const v) }).map(drop)
}

fn set_value(fd: BorrowedFd, req: libc::Ioctl, v: libc::c_ulong) -> Result<(), Errno> {
    // SAFETY: `req` takes its argument by value (TUNSETPERSIST/OWNER/GROUP); no memory is passed.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), req, v) }).map(drop)
}

/// TUNGETIFF: the attached device's name and flags (IFF_*), or EBADFD when the
/// file is attached to none (never set up, or a detached queue).
pub fn get_iff(fd: BorrowedFd) -> Result<(String, u32), Errno> {
    let mut r = IfReq { name: [0; 16], flags: 0, _pad: [0; 22] };
    // SAFETY: TUNGETIFF fills a struct ifreq, which `r` is laid out as.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETIFF, &raw mut r) })?;
    let len = r.name.iter().position(|&b| b == 0).unwrap_or(16);
    Ok((String::from_utf8_lossy(&r.name[..len]).into_owned(), r.flags as u32))
}

/// TUNSETIFF: attaches the file to device `name` (made when there is none).
pub fn set_iff(fd: BorrowedFd, name: &str, flags: u32) -> Result<(), Errno> {
    let mut r = IfReq { name: [0; 16], flags: flags as u16, _pad: [0; 22] };
    if name.len() > 15 {
        return Err(Errno::EINVAL);
    }
    r.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads (and may write back) a struct ifreq: `r`.
    Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &raw mut r) }).map(drop)
}

/// TUNSETIFINDEX: the index the device TUNSETIFF makes will get.
pub fn set_ifindex(fd: BorrowedFd, index: u32) -> Result<(), Errno> {
    set_int(fd, TUNSETIFINDEX, index as i32)
}

/// TUNSETPERSIST.
pub fn set_persist(fd: BorrowedFd, on: bool) -> Result<(), Errno> {
    set_value(fd, TUNSETPERSIST, on as libc::c_ulong)
}

/// TUNSETOWNER / TUNSETGROUP (-1: none).
pub fn set_owner(fd: BorrowedFd, uid: i64, gid: i64) -> Result<(), Errno> {
    if uid >= 0 {
        set_value(fd, TUNSETOWNER, uid as libc::c_ulong)?;
    }
    if gid >= 0 {
        set_value(fd, TUNSETGROUP, gid as libc::c_ulong)?;
    }
    Ok(())
}

/// Per-file settings that can be read back: (sndbuf, vnet header size,
/// little-endian vnet headers, big-endian ones (false where unsupported)).
pub fn settings(fd: BorrowedFd) -> Result<(i32, i32, bool, bool), Errno> {
    let be = match get_int(fd, TUNGETVNETBE) {
        Ok(v) => v != 0,
        Err(Errno::EINVAL) => false,
        Err(e) => return Err(e),
    };
    Ok((get_int(fd, TUNGETSNDBUF)?, get_int(fd, TUNGETVNETHDRSZ)?, get_int(fd, TUNGETVNETLE)? != 0, be))
}

/// Sets what `settings` read.
pub fn set_settings(fd: BorrowedFd, sndbuf: i32, hdr_sz: i32, le: bool, be: bool) -> Result<(), Errno> {
    set_int(fd, TUNSETSNDBUF, sndbuf)?;
    set_int(fd, TUNSETVNETHDRSZ, hdr_sz)?;
    set_int(fd, TUNSETVNETLE, le as i32)?;
    if be {
        set_int(fd, TUNSETVNETBE, 1)?;
    }
    Ok(())
}

/// TUNGETFILTER: the number of instructions of the attached packet filter
/// (TUNATTACHFILTER; 0: none).
pub fn filter_len(fd: BorrowedFd) -> Result<u16, Errno> {
    let mut prog = [0u8; 16];
    // SAFETY: TUNGETFILTER writes a struct sock_fprog (16 bytes) into `prog`.
    match Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETFILTER, prog.as_mut_ptr()) }) {
        Ok(_) => Ok(u16::from_ne_bytes([prog[0], prog[1]])),
        Err(Errno::EINVAL) => Ok(0),
        Err(e) => Err(e),
    }
}

/// TUNSETCARRIER.
pub fn set_carrier(fd: BorrowedFd, on: bool) -> Result<(), Errno> {
    set_int(fd, TUNSETCARRIER, on as i32)
}

/// TUNGETDEVNETNS: the network namespace of the attached device.
pub fn dev_netns(fd: BorrowedFd) -> Result<OwnedFd, Errno> {
    // SAFETY: TUNGETDEVNETNS takes no argument and returns a new fd.
    let r = Errno::result(unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETDEVNETNS, 0) })?;
    // SAFETY: `r` is a new fd this call owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(r) })
}

/// Whether link `name` of the calling thread's namespace checksums what it sends
/// itself (ETHTOOL_GTXCSUM through SIOCETHTOOL, include/uapi/linux/ethtool.h): a
/// tun/tap device does only once TUNSETOFFLOAD turned offloads on (every
/// offload needs TUN_F_CSUM; tun.c tun_net_fix_features).
pub fn tx_checksum(name: &str) -> Result<bool, Errno> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReqData {
        name: [u8; 16],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    const ETHTOOL_GTXCSUM: u32 = 0x16;
    if name.len() > 15 {
        return Err(Errno::EINVAL);
    }
    let sock = super::sock::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    let mut v = EthtoolValue { cmd: ETHTOOL_GTXCSUM, data: 0 };
    let mut r = IfReqData { name: [0; 16], data: &raw mut v, _pad: [0; 16] };
    r.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: SIOCETHTOOL reads a struct ifreq whose ifr_data points at `v`, a
    // struct ethtool_value the kernel fills; both outlive the call.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &raw mut r) })?;
    Ok(v.data != 0)
}
