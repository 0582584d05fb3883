//! Netlink sockets (netlink(7)): protocol, port id, multicast groups, connected
//! destination and options, read through crtool's duplicate of the task's fd and
//! made again (bound to the same port id) in crtool before the tree is forked.
//! Messages queued on a socket are refused (they cannot be read without
//! consuming them, and a dump the kernel is still producing cannot be resumed).

use crate::error::{Error, Result};
use crate::sys::sock;
use images_format::pb;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

const SOL_NETLINK: i32 = 270;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const NETLINK_LIST_MEMBERSHIPS: i32 = 9;
/// Options kept (SOL_NETLINK): PKTINFO, BROADCAST_ERROR, NO_ENOBUFS,
/// LISTEN_ALL_NSID, CAP_ACK, EXT_ACK, GET_STRICT_CHK; and the buffers.
const OPTS: &[(i32, i32)] = &[
    (SOL_NETLINK, 3),
    (SOL_NETLINK, 4),
    (SOL_NETLINK, 5),
    (SOL_NETLINK, 8),
    (SOL_NETLINK, 10),
    (SOL_NETLINK, 11),
    (SOL_NETLINK, 12),
    (libc::SOL_SOCKET, libc::SO_RCVBUF),
    (libc::SOL_SOCKET, libc::SO_SNDBUF),
    (libc::SOL_SOCKET, libc::SO_PASSCRED),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMP),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMPNS),
    (libc::SOL_SOCKET, libc::SO_MARK),
    (libc::SOL_SOCKET, libc::SO_RCVTIMEO),
    (libc::SOL_SOCKET, libc::SO_SNDTIMEO),
    (libc::SOL_SOCKET, libc::SO_RXQ_OVFL),
];
/// Protocols whose sockets hold no kernel state beyond what is saved: ROUTE,
/// SOCK_DIAG, KOBJECT_UEVENT, GENERIC (families registered with the kernel for a
/// port id, as nl80211's owner or taskstats listeners, are not seen: GENERIC
/// sockets are taken as plain requesters), and NETFILTER/AUDIT/CONNECTOR are not.
const PROTOCOLS: &[u32] = &[0, 4, 15, 16];

/// (port id, groups) of a raw sockaddr_nl.
fn nl_addr(a: &[u8]) -> (u32, u32) {
    let word = |o: usize| u32::from_ne_bytes(a.get(o..o + 4).and_then(|b| b.try_into().ok()).unwrap_or([0; 4]));
    (word(4), word(8))
}

fn sockaddr(portid: u32, groups: u32) -> Vec<u8> {
    let mut a = Vec::with_capacity(12);
    a.extend_from_slice(&(libc::AF_NETLINK as u16).to_ne_bytes());
    a.extend_from_slice(&0u16.to_ne_bytes());
    a.extend_from_slice(&portid.to_ne_bytes());
    a.extend_from_slice(&groups.to_ne_bytes());
    a
}

/// Describes the netlink socket behind `dup` (fd `fd` of `pid`, inode `ino`).
pub fn dump(pid: i32, fd: i32, dup: &OwnedFd, ino: u64) -> Result<pb::NetlinkSocket> {
    let f = dup.as_fd();
    let sys = |what: &str, e: nix::errno::Errno| Error::sys(format!("pid {pid} fd {fd} (netlink socket:[{ino}]): {what}"), e);
    let refuse = |what: String, hint: &'static str| Error::Unsupported { pid, fd: Some(fd), what: format!("netlink socket:[{ino}] {what}"), hint: Some(hint) };
    let ty = sock::get_int(f, libc::SO_TYPE).map_err(|e| sys("SO_TYPE", e))? as u32;
    let protocol = sock::get_int(f, libc::SO_PROTOCOL).map_err(|e| sys("SO_PROTOCOL", e))? as u32;
    if !PROTOCOLS.contains(&protocol) {
        return Err(refuse(format!("of protocol {protocol}"), "only NETLINK_ROUTE, SOCK_DIAG, KOBJECT_UEVENT and GENERIC sockets are supported (others keep kernel state tied to the port id)"));
    }
    if !sock::in_holders_netns(f, pid) {
        return Err(refuse("belongs to another network namespace than its holder's".into(), "sockets of other network namespaces are not supported"));
    }
    if crate::sys::tty::poll_now(f, libc::POLLIN).map_err(|e| sys("poll", e))? & (libc::POLLIN | libc::POLLERR) != 0 {
        return Err(refuse(format!("(protocol {protocol}) has messages or an error queued"), "queued netlink messages cannot be read without consuming them; retry the dump once the program has read them"));
    }
    let filter = sock::get_filter(f).map_err(|e| refuse(format!("has a socket filter that cannot be read back ({e}: an eBPF program?)"), "eBPF socket filters are not supported"))?;
    let filter_locked = sock::get_int(f, libc::SO_LOCK_FILTER).unwrap_or(0) != 0;
    let (local, peer) = sock::names(f).map_err(|e| sys("getsockname", e))?;
    let (portid, _) = nl_addr(&local);
    let (dst_portid, dst_group) = peer.map_or((0, 0), |p| nl_addr(&p));
    let raw = sock::get_raw(f, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, 128).map_err(|e| sys("NETLINK_LIST_MEMBERSHIPS", e))?;
    let mut groups: Vec<u32> = raw.chunks_exact(4).map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect();
    while groups.last() == Some(&0) {
        groups.pop();
    }
    let fresh = sock::socket(libc::AF_NETLINK, ty as i32, protocol as i32).map_err(|e| sys("socket (a new one to compare options with)", e))?;
    let mut opts = Vec::new();
    for &(level, name) in OPTS {
        let (Ok(v), Ok(n)) = (sock::get_raw(f, level, name, 16), sock::get_raw(fresh.as_fd(), level, name, 16)) else { continue };
        if v != n {
            opts.push(pb::SockOpt { level, name, value: v });
        }
    }
    Ok(pb::NetlinkSocket { ino, r#type: ty, protocol, portid, groups, dst_portid, dst_group, opts, filter, filter_locked })
}

fn make(s: &pb::NetlinkSocket) -> std::result::Result<OwnedFd, String> {
    let err = |what: &str, e: nix::errno::Errno| format!("netlink socket:[{}] (protocol {}, port id {}): {what}: {e}", s.ino, s.protocol, s.portid);
    let fd = sock::socket(libc::AF_NETLINK, s.r#type as i32, s.protocol as i32).map_err(|e| err("socket", e))?;
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
    if s.portid != 0 {
        sock::bind_raw(f, &sockaddr(s.portid, 0), false).map_err(|e| err("bind (is the port id taken?)", e))?;
    }
    for (w, &bits) in s.groups.iter().enumerate() {
        for b in 0..32 {
            if bits & (1 << b) != 0 {
                sock::set_int_at(f, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, (w * 32 + b + 1) as i32).map_err(|e| err(&format!("joining group {}", w * 32 + b + 1), e))?;
            }
        }
    }
    crate::files::inet::restore::filter(f, &s.filter, s.filter_locked).map_err(|e| err("SO_ATTACH_FILTER", e))?;
    if s.dst_portid != 0 || s.dst_group != 0 {
        sock::bind_raw(f, &sockaddr(s.dst_portid, s.dst_group), true).map_err(|e| err("connect", e))?;
    }
    Ok(fd)
}

/// The tree's netlink sockets, made again.
pub struct Restorer(BTreeMap<u64, OwnedFd>);

impl Restorer {
    pub fn create(sockets: &[pb::NetlinkSocket]) -> std::result::Result<Restorer, String> {
        let mut m = BTreeMap::new();
        for s in sockets {
            m.insert(s.ino, make(s)?);
        }
        Ok(Restorer(m))
    }

    /// A new fd on socket `ino`.
    pub fn open(&self, ino: u64) -> std::io::Result<OwnedFd> {
        self.0.get(&ino).ok_or_else(|| std::io::Error::other(format!("socket:[{ino}] is not in netlinksk.img")))?.try_clone()
    }
}

/// One line about a socket, for `show`.
pub fn describe(s: &pb::NetlinkSocket) -> String {
    let groups: Vec<String> = s.groups.iter().enumerate().flat_map(|(w, &bits)| (0..32).filter(move |b| bits & (1 << b) != 0).map(move |b| (w * 32 + b + 1).to_string())).collect();
    format!("netlink socket:[{}] protocol {} port id {}{}", s.ino, s.protocol, s.portid, if groups.is_empty() { String::new() } else { format!(" groups {}", groups.join(",")) })
}
