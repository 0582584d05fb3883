//! Packet sockets (packet(7)): type, protocol, the link and protocol they are
//! bound to, options, fanout group and classic BPF filter, made again in crtool
//! before the tree is forked. Refused: packets queued, a ring mapped into the
//! process (PACKET_RX_RING/TX_RING), and any link in promiscuous or all-multicast
//! mode (a socket's PACKET_ADD_MEMBERSHIP cannot be read back, nor told from
//! another's).

use crate::error::{Error, Result};
use crate::sys::sock;
use images_format::pb;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

const SOL_PACKET: i32 = 263;
const PACKET_FANOUT: i32 = 18;
/// AUXDATA, ORIGDEV, VERSION, RESERVE, LOSS, VNET_HDR, TIMESTAMP, QDISC_BYPASS,
/// IGNORE_OUTGOING; and socket-level ones.
const OPTS: &[(i32, i32)] = &[
    (SOL_PACKET, 8),
    (SOL_PACKET, 9),
    (SOL_PACKET, 10),
    (SOL_PACKET, 12),
    (SOL_PACKET, 14),
    (SOL_PACKET, 15),
    (SOL_PACKET, 17),
    (SOL_PACKET, 20),
    (SOL_PACKET, 23),
    (libc::SOL_SOCKET, libc::SO_RCVBUF),
    (libc::SOL_SOCKET, libc::SO_SNDBUF),
    (libc::SOL_SOCKET, libc::SO_PRIORITY),
    (libc::SOL_SOCKET, libc::SO_MARK),
    (libc::SOL_SOCKET, libc::SO_RCVTIMEO),
    (libc::SOL_SOCKET, libc::SO_SNDTIMEO),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMP),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMPNS),
    (libc::SOL_SOCKET, libc::SO_RXQ_OVFL),
];

/// Describes the packet socket behind `dup` (fd `fd` of `pid`, inode `ino`).
pub fn dump(pid: i32, fd: i32, dup: &OwnedFd, ino: u64) -> Result<pb::PacketSocket> {
    let f = dup.as_fd();
    let sys = |what: &str, e: nix::errno::Errno| Error::sys(format!("pid {pid} fd {fd} (packet socket:[{ino}]): {what}"), e);
    let refuse = |what: String, hint: &'static str| Error::Unsupported { pid, fd: Some(fd), what: format!("packet socket:[{ino}] {what}"), hint: Some(hint) };
    if !sock::in_holders_netns(f, pid) {
        return Err(refuse("belongs to another network namespace than its holder's".into(), "sockets of other network namespaces are not supported"));
    }
    if crate::sys::tty::poll_now(f, libc::POLLIN).map_err(|e| sys("poll", e))? & (libc::POLLIN | libc::POLLERR) != 0 {
        return Err(refuse("has packets or an error queued".into(), "retry the dump once the program has read them"));
    }
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    if maps.lines().any(|l| l.ends_with(&format!("socket:[{ino}]"))) {
        return Err(refuse("has a packet ring mapped (PACKET_RX_RING/TX_RING)".into(), "packet rings are not supported"));
    }
    check_links().map_err(|what| refuse(what, "a packet socket's memberships (PACKET_ADD_MEMBERSHIP) cannot be read back"))?;
    let ty = sock::get_int(f, libc::SO_TYPE).map_err(|e| sys("SO_TYPE", e))? as u32;
    let protocol = sock::get_int(f, libc::SO_PROTOCOL).map_err(|e| sys("SO_PROTOCOL", e))? as u32;
    let (local, _) = sock::names(f).map_err(|e| sys("getsockname", e))?;
    // struct sockaddr_ll: family u16, protocol be16, ifindex i32, ...
    let bound_protocol = u16::from_ne_bytes([local.get(2).copied().unwrap_or(0), local.get(3).copied().unwrap_or(0)]) as u32;
    let ifindex = i32::from_ne_bytes(local.get(4..8).and_then(|b| b.try_into().ok()).unwrap_or([0; 4]));
    let fanout = sock::get_int_at(f, SOL_PACKET, PACKET_FANOUT).unwrap_or(0) as u32;
    let filter = sock::get_filter(f).map_err(|e| refuse(format!("has a socket filter that cannot be read back ({e}: an eBPF program?)"), "eBPF socket filters are not supported"))?;
    let filter_locked = sock::get_int(f, libc::SO_LOCK_FILTER).unwrap_or(0) != 0;
    let fresh = sock::socket(libc::AF_PACKET, ty as i32, protocol as i32).map_err(|e| sys("socket (a new one to compare options with)", e))?;
    let mut opts = Vec::new();
    for &(level, name) in OPTS {
        let (Ok(v), Ok(n)) = (sock::get_raw(f, level, name, 16), sock::get_raw(fresh.as_fd(), level, name, 16)) else { continue };
        if v != n {
            opts.push(pb::SockOpt { level, name, value: v });
        }
    }
    Ok(pb::PacketSocket { ino, r#type: ty, protocol, ifindex, bound_protocol, opts, fanout, filter, filter_locked })
}

/// Refuses when a link of this thread's network namespace is in promiscuous or
/// all-multicast mode (/sys shows another namespace's links: ask rtnetlink).
fn check_links() -> std::result::Result<(), String> {
    match crate::net::links_promiscuous().map_err(|e| format!("cannot read the links: {e}"))?.first() {
        Some(name) => Err(format!("may hold a membership: link {name} is in promiscuous or all-multicast mode")),
        None => Ok(()),
    }
}

fn make(s: &pb::PacketSocket) -> std::result::Result<OwnedFd, String> {
    let err = |what: &str, e: nix::errno::Errno| format!("packet socket:[{}]: {what}: {e}", s.ino);
    let fd = sock::socket(libc::AF_PACKET, s.r#type as i32, s.protocol as i32).map_err(|e| err("socket", e))?;
    let f: BorrowedFd = fd.as_fd();
    for o in &s.opts {
        let r = match (o.level, o.name) {
            (libc::SOL_SOCKET, libc::SO_RCVBUF | libc::SO_SNDBUF) => {
                let v = i32::from_ne_bytes(o.value.get(..4).and_then(|b| b.try_into().ok()).unwrap_or([0; 4]));
                sock::set_int(f, if o.name == libc::SO_RCVBUF { libc::SO_RCVBUFFORCE } else { libc::SO_SNDBUFFORCE }, v / 2)
            }
            _ => sock::set_raw(f, o.level, o.name, &o.value),
        };
        r.map_err(|e| err(&format!("setsockopt({}, {})", o.level, o.name), e))?;
    }
    crate::files::inet::restore::filter(f, &s.filter, s.filter_locked).map_err(|e| err("SO_ATTACH_FILTER", e))?;
    if s.ifindex != 0 {
        let mut a = vec![0u8; 20];
        a[..2].copy_from_slice(&(libc::AF_PACKET as u16).to_ne_bytes());
        a[2..4].copy_from_slice(&(s.bound_protocol as u16).to_ne_bytes());
        a[4..8].copy_from_slice(&s.ifindex.to_ne_bytes());
        sock::bind_raw(f, &a, false).map_err(|e| err(&format!("bind to link {}", s.ifindex), e))?;
    }
    if s.fanout != 0 {
        sock::set_int_at(f, SOL_PACKET, PACKET_FANOUT, s.fanout as i32).map_err(|e| err("PACKET_FANOUT", e))?;
    }
    Ok(fd)
}

/// The tree's packet sockets, made again.
pub struct Restorer(BTreeMap<u64, OwnedFd>);

impl Restorer {
    pub fn create(sockets: &[pb::PacketSocket]) -> std::result::Result<Restorer, String> {
        let mut m = BTreeMap::new();
        for s in sockets {
            m.insert(s.ino, make(s)?);
        }
        Ok(Restorer(m))
    }

    /// A new fd on socket `ino`.
    pub fn open(&self, ino: u64) -> std::io::Result<OwnedFd> {
        self.0.get(&ino).ok_or_else(|| std::io::Error::other(format!("socket:[{ino}] is not in packetsk.img")))?.try_clone()
    }
}

/// One line about a socket, for `show`.
pub fn describe(s: &pb::PacketSocket) -> String {
    format!("packet socket:[{}] type {} protocol {:#06x}{}{}", s.ino, s.r#type, u16::from_be(s.protocol as u16), if s.ifindex != 0 { format!(" bound to link {}", s.ifindex) } else { String::new() }, if s.filter.is_empty() { "" } else { " (filtered)" })
}
