//! AF_UNIX sockets (unix(7)): stream, datagram and seqpacket; socketpairs, bound
//! and listening sockets, connections in an accept queue, and the messages queued
//! on them. Dump reads a socket through crtool's duplicate of the task's fd (options,
//! names) and the kernel's sock_diag (peers, accept queues, shutdown state), and
//! peeks its receive queue without consuming it; restore rebuilds every socket in
//! crtool before the tree is forked (so shared sockets are inherited), refills the
//! queues and sets options and shutdown states.

mod diag;
mod dump;
mod restore;

pub use dump::UnixTable;
pub use restore::Restorer;

use images_format::pb;

/// sock_diag / tcp_states.h states a unix socket can be in.
pub const TCP_ESTABLISHED: u32 = 1;
pub const TCP_CLOSE: u32 = 7;
pub const TCP_LISTEN: u32 = 10;

/// How a socket's name reads in messages: a path, `@abstract`, or `(unbound)`.
pub fn name_text(name: &[u8]) -> String {
    // Control characters (abstract names are often binary) are escaped.
    let text = |b: &[u8]| String::from_utf8_lossy(b).chars().map(|c| if c.is_control() { format!("\\x{:02x}", c as u32) } else { c.to_string() }).collect::<String>();
    match name.first() {
        None => "(unbound)".into(),
        Some(0) => format!("@{}", text(&name[1..])),
        Some(_) => text(name),
    }
}

pub fn type_text(ty: u32) -> &'static str {
    match ty as i32 {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "dgram",
        libc::SOCK_SEQPACKET => "seqpacket",
        _ => "?",
    }
}

/// One line about a socket, for `show` and messages.
pub fn describe(s: &pb::UnixSocket) -> String {
    let mut d = format!("unix {} socket:[{}] {}", type_text(s.r#type), s.ino, name_text(&s.name));
    match s.state {
        TCP_LISTEN => d.push_str(&format!(" listening (backlog {})", s.backlog)),
        _ if s.in_queue_of != 0 => d.push_str(&format!(" waiting in the accept queue of socket:[{}]", s.in_queue_of)),
        _ if s.peer != 0 => d.push_str(&format!(" connected to socket:[{}]", s.peer)),
        _ if s.peer_closed => d.push_str(" (peer closed)"),
        _ => {}
    }
    if s.external {
        d.push_str(&format!(" (external peer {})", name_text(&s.peer_name)));
    }
    if s.shutdown != 0 {
        d.push_str(&format!(" shutdown {}{}", if s.shutdown & 1 != 0 { "r" } else { "" }, if s.shutdown & 2 != 0 { "w" } else { "" }));
    }
    d
}

/// Converts an address to the bytes of its sun_path (without a path's NUL); empty
/// for an unnamed one (nix's accessors assert on the zero-length address recvmsg
/// reports for a connected sender).
pub(crate) fn addr_bytes(a: &nix::sys::socket::UnixAddr) -> Vec<u8> {
    use nix::sys::socket::SockaddrLike;
    let off = std::mem::offset_of!(libc::sockaddr_un, sun_path);
    let len = (a.len() as usize).min(std::mem::size_of::<libc::sockaddr_un>());
    if len <= off {
        return Vec::new();
    }
    let mut v: Vec<u8> = a.as_ref().sun_path[..len - off].iter().map(|&c| c as u8).collect();
    if v.first() != Some(&0) {
        while v.last() == Some(&0) {
            v.pop();
        }
    }
    v
}

/// The address for `name` (as [`addr_bytes`] gives it).
pub(crate) fn addr_of(name: &[u8]) -> nix::Result<nix::sys::socket::UnixAddr> {
    use nix::sys::socket::UnixAddr;
    match name.first() {
        None => Ok(UnixAddr::new_unnamed()),
        Some(0) => UnixAddr::new_abstract(&name[1..]),
        Some(_) => UnixAddr::new(std::ffi::OsStr::from_bytes_compat(name)),
    }
}

trait FromBytesCompat {
    fn from_bytes_compat(b: &[u8]) -> &Self;
}

impl FromBytesCompat for std::ffi::OsStr {
    fn from_bytes_compat(b: &[u8]) -> &Self {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::OsStr::from_bytes(b)
    }
}

/// Refuses a datagram socket holding more messages from senders other than its
/// connected peer than restore can queue again: the kernel lets at most
/// `net.unix.max_dgram_qlen` + 1 wait from them (af_unix.c unix_recvq_full), and
/// the restored socket takes the current value.
/// `holder` names where each socket was found (pid, fd).
pub fn check_requeue(sockets: &[pb::UnixSocket], packets: &[pb::SkPacket], holder: &dyn Fn(u64) -> (i32, i32)) -> crate::error::Result<()> {
    let limit: usize = std::fs::read_to_string("/proc/sys/net/unix/max_dgram_qlen").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(10);
    let by_ino: std::collections::HashMap<u64, &pb::UnixSocket> = sockets.iter().map(|s| (s.ino, s)).collect();
    for s in sockets.iter().filter(|s| s.r#type == libc::SOCK_DGRAM as u32) {
        let peer = by_ino.get(&s.peer);
        if peer.is_some_and(|p| p.peer == s.ino) {
            continue; // a socketpair end: only its peer sends to it
        }
        let peer_name = if s.external { s.peer_name.clone() } else { peer.map(|p| p.name.clone()).unwrap_or_default() };
        let queue: Vec<&pb::SkPacket> = packets.iter().filter(|p| p.ino == s.ino).collect();
        let from_others = queue.iter().filter(|p| p.sender.is_empty() || p.sender != peer_name).count();
        // With any message from another sender, the whole queue is sent again before
        // the socket connects (connecting later would purge it), under the limit.
        let others = if from_others > 0 { queue.len() } else { 0 };
        if others > limit + 1 {
            let (pid, fd) = holder(s.ino);
            return Err(crate::error::Error::Unsupported {
                pid,
                fd: (fd >= 0).then_some(fd),
                what: format!("{} has {others} datagrams queued, some from other senders than its peer; net.unix.max_dgram_qlen = {limit} lets only {} be queued again", describe(s), limit + 1),
                hint: Some("let the task read its queue first, or raise net.unix.max_dgram_qlen"),
            });
        }
    }
    Ok(())
}

/// Refuses a queued datagram whose sender cannot stand in again at restore: it is
/// not a socket of the tree, and a live socket outside the tree is bound to its
/// name (restore sends such a message again from a stand-in bound to that name).
pub fn check_senders(sockets: &[pb::UnixSocket], packets: &[pb::SkPacket], holder: &dyn Fn(u64) -> (i32, i32)) -> crate::error::Result<()> {
    let names: std::collections::BTreeSet<&[u8]> = sockets.iter().filter(|s| !s.accepted).map(|s| s.name.as_slice()).collect();
    // The names bound now, as /proc/net/unix shows them (an abstract name with '@'
    // for its NUL bytes): asked of the kernel, not by binding or connecting.
    let bound: std::collections::BTreeSet<String> = procfs::net::unix()
        .map(|v| v.into_iter().filter_map(|e| e.path.map(|p| p.to_string_lossy().into_owned())).collect())
        .unwrap_or_default();
    let shown = |name: &[u8]| -> String {
        if name.first() == Some(&0) { name.iter().map(|&b| if b == 0 { '@' } else { b as char }).collect() } else { String::from_utf8_lossy(name).into_owned() }
    };
    let mut checked = std::collections::BTreeSet::new();
    for p in packets.iter().filter(|p| !p.sender.is_empty() && !names.contains(p.sender.as_slice())) {
        if !checked.insert(p.sender.clone()) {
            continue;
        }
        if bound.contains(&shown(&p.sender)) {
            let s = sockets.iter().find(|s| s.ino == p.ino);
            let (pid, fd) = holder(p.ino);
            return Err(crate::error::Error::Unsupported {
                pid,
                fd: (fd >= 0).then_some(fd),
                what: format!(
                    "{} has a datagram queued from {}, a socket outside the dumped tree that is still bound there",
                    s.map(describe).unwrap_or_else(|| format!("socket:[{}]", p.ino)),
                    name_text(&p.sender)
                ),
                hint: Some("restore could not send it again from that name; let the task read it first"),
            });
        }
    }
    Ok(())
}
