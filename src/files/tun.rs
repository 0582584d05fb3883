//! Open `/dev/net/tun` files (tun/tap devices, Documentation/networking/tuntap.rst,
//! drivers/net/tun.c): the device each is attached to (made again with the tree's
//! network namespace, see net/tun.rs) and the per-file settings that can be read
//! back. Packets queued for the program, packet filters and multi-queue devices
//! are refused.

use super::FdInfo;
use crate::error::{Error, Result};
use crate::sys::tun;
use images_format::pb::{self, file_entry::Kind};
use std::os::fd::{AsFd, OwnedFd};

/// The tun character device.
pub const RDEV: (u32, u32) = (10, 200);

/// Describes the /dev/net/tun file behind `fd` (crtool's duplicate).
pub fn dump(pid: i32, info: &FdInfo, fd: &OwnedFd) -> Result<Kind> {
    let refuse = |what: String, hint: &'static str| Error::Unsupported { pid, fd: Some(info.fd), what, hint: Some(hint) };
    let sys = |what: &str, e: nix::errno::Errno| Error::sys(format!("pid {pid} fd {} (/dev/net/tun): {what}", info.fd), e);
    let f = fd.as_fd();
    let flags = info.flags & !(libc::O_CLOEXEC as u32);
    let (ifname, iff) = match tun::get_iff(f) {
        Ok(x) => x,
        // Opened, never attached (or a detached queue of a multi-queue device,
        // refused with its link).
        Err(nix::errno::Errno::EBADFD) => return Ok(Kind::Tun(pb::TunFile { flags, ..Default::default() })),
        Err(e) => return Err(sys("TUNGETIFF", e)),
    };
    let what = format!("/dev/net/tun attached to {ifname}");
    if iff & tun::IFF_MULTI_QUEUE != 0 {
        return Err(refuse(format!("{what}, a multi-queue device"), "multi-queue tun/tap devices are not supported yet"));
    }
    // (Whether the namespace is the tree's own and dumped: see `check`.)
    let own = tun::dev_netns(f).ok().and_then(|ns| nix::sys::stat::fstat(ns.as_fd()).ok()).map(|st| st.st_ino) == crate::net::ns_ino(pid);
    if !own {
        return Err(refuse(format!("{what}, a device of another network namespace than its holder's"), "tun/tap devices are taken along only with the network namespace of the tree (unshare -n)"));
    }
    if crate::sys::tty::poll_now(f, libc::POLLIN).map_err(|e| sys("poll", e))? & libc::POLLIN != 0 {
        return Err(refuse(format!("{what} has packets queued for the program"), "retry the dump once the program has read them (they cannot be queued again)"));
    }
    if tun::filter_len(f).map_err(|e| sys("TUNGETFILTER", e))? != 0 {
        return Err(refuse(format!("{what} has a packet filter (TUNATTACHFILTER)"), "tun/tap packet filters are not supported yet"));
    }
    // IFF_NAPI, IFF_NAPI_FRAGS: set when the device is made, not shown by netlink.
    if iff & 0x0030 != 0 {
        return Err(refuse(format!("{what}, a device with NAPI (IFF_NAPI)"), "tun/tap devices with IFF_NAPI are not supported yet"));
    }
    let (sndbuf, vnet_hdr_sz, vnet_le, vnet_be) = tun::settings(f).map_err(|e| sys("TUNGETSNDBUF/VNETHDRSZ/VNETLE", e))?;
    let (carrier, dev) = crate::net::tun_device(&ifname).map_err(|e| Error::io(format!("rtnetlink (link {ifname})"), e))?;
    let carrier_off = !carrier;
    if tun::tx_checksum(&ifname).map_err(|e| sys("SIOCETHTOOL (ETHTOOL_GTXCSUM)", e))? {
        return Err(refuse(format!("{what}, a device with offloads turned on (TUNSETOFFLOAD)"), "tun/tap offloads cannot be read back exactly: not supported yet"));
    }
    // TUNGETIFF's IFF_NOFILTER is the bit of IFF_NO_PI: the device's features
    // come from netlink.
    let iff = (iff & !(tun::IFF_FILE_ONLY | crate::net::TUN_FEATURES)) | (dev.iff & crate::net::TUN_FEATURES);
    Ok(Kind::Tun(pb::TunFile { flags, ifname, iff, sndbuf, vnet_hdr_sz, vnet_le, vnet_be, carrier_off }))
}

/// Opens /dev/net/tun again and attaches it to its device (made with the
/// namespace, persistent until now), with its settings; the device keeps
/// persisting only if it did.
pub fn open(t: &pb::TunFile) -> std::io::Result<OwnedFd> {
    let fd = crate::sys::fd::open_at_pos("/dev/net/tun", (t.flags as i32) & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL), 0)?;
    if t.ifname.is_empty() {
        return Ok(fd);
    }
    let f = fd.as_fd();
    let err = |what: &str, e: nix::errno::Errno| std::io::Error::other(format!("{what} of {}: {e}", t.ifname));
    tun::set_iff(f, &t.ifname, t.iff & !tun::IFF_PERSIST).map_err(|e| err("TUNSETIFF", e))?;
    tun::set_settings(f, t.sndbuf, t.vnet_hdr_sz, t.vnet_le, t.vnet_be).map_err(|e| err("TUNSETSNDBUF/VNETHDRSZ/VNETLE", e))?;
    tun::set_persist(f, t.iff & tun::IFF_PERSIST != 0).map_err(|e| err("TUNSETPERSIST", e))?;
    if t.carrier_off {
        tun::set_carrier(f, false).map_err(|e| err("TUNSETCARRIER", e))?;
    }
    Ok(fd)
}

/// Checks the tun files against the namespace's links: each attached one's
/// device is a tun link of the dumped namespace, and a device that does not
/// persist has a file in the tree (else something outside keeps it).
/// Err: (index in `entries` of the file, or None for a link; what).
pub fn check(entries: &[pb::FileEntry], links: &[pb::NetLink]) -> std::result::Result<(), (Option<usize>, String)> {
    let mut attached = std::collections::BTreeSet::new();
    for (i, e) in entries.iter().enumerate() {
        let Some(Kind::Tun(t)) = &e.kind else { continue };
        if t.ifname.is_empty() {
            continue;
        }
        if !links.iter().any(|l| l.kind == "tun" && l.name == t.ifname) {
            return Err((Some(i), format!("/dev/net/tun attached to {}, which is not a tun link of the dumped network namespace", t.ifname)));
        }
        if !attached.insert(t.ifname.clone()) {
            return Err((Some(i), format!("a second file attached to {}", t.ifname)));
        }
    }
    for l in links.iter().filter(|l| l.kind == "tun") {
        if !l.tun.as_ref().is_some_and(|t| t.persist) && !attached.contains(&l.name) {
            return Err((None, format!("tun/tap device {} does not persist and no file of the tree is attached to it (a process outside holds it)", l.name)));
        }
    }
    Ok(())
}
