//! Making inet sockets again (in crtool, before the tree is forked).

use super::{TCP_LISTEN, is_connection, opts, repair};
use crate::sys::sock;
use images_format::pb;
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, OwnedFd};

/// The tree's inet sockets, made again; established connections stay in repair
/// mode until `finish` (or the lock is removed when this is dropped unfinished).
pub struct Restorer {
    socks: BTreeMap<u64, (OwnedFd, pb::InetSocket)>,
    locks: BTreeSet<String>,
    finished: bool,
    /// crtool's pid (forked tasks carry a copy and must not remove the lock).
    owner: u32,
}

/// Whether a raw sockaddr is the wildcard address with port 0 (never bound).
fn unbound(a: &[u8]) -> bool {
    super::parse_addr(a).is_none_or(|(ip, port)| port == 0 && ip.is_unspecified())
}

fn make(s: &pb::InetSocket) -> Result<OwnedFd, String> {
    let err = |what: &str, e: nix::errno::Errno| format!("{}: {what}: {e}", super::describe(s));
    let fd = new_socket(s).map_err(|e| err("socket", e))?;
    let f = fd.as_fd();
    let conn = s.tcp.as_ref().filter(|_| s.protocol as i32 == libc::IPPROTO_TCP && is_connection(s.state));
    if conn.is_some() {
        repair::enter(f).map_err(|e| err("TCP_REPAIR", e))?;
    }
    // In repair mode a socket may share its port with the listener it came from;
    // SO_REUSEADDR would undo that (it comes back in `finish`).
    let reuse = |o: &pb::SockOpt| o.level == libc::SOL_SOCKET && o.name == libc::SO_REUSEADDR;
    let now: Vec<pb::SockOpt> = s.opts.iter().filter(|o| conn.is_none() || !reuse(o)).cloned().collect();
    opts::apply(f, &now).map_err(|why| format!("{}: {why}", super::describe(s)))?;
    if let Some(c) = conn {
        filter(f, &s.filter, s.filter_locked).map_err(|e| err("SO_ATTACH_FILTER", e))?;
        repair::set_seqs(f, c).map_err(|e| err("TCP_QUEUE_SEQ", e))?;
        sock::bind_raw(f, &s.local, false).map_err(|e| err("bind", e))?;
        if s.state == super::TCP_SYN_SENT {
            // Connected in `finish`, out of repair mode: the SYN goes again
            // with the same initial sequence number (tcp_v4_connect keeps a set
            // write_seq).
            return Ok(fd);
        }
        sock::bind_raw(f, &s.peer, true).map_err(|e| err("connect (repair mode)", e))?;
        repair::fill(f, c).map_err(|e| err("refilling the connection (repair mode)", e))?;
        return Ok(fd);
    }
    if !unbound(&s.local) {
        sock::bind_raw(f, &s.local, false).map_err(|e| err(&format!("bind to {}", super::addr_text(&s.local)), e))?;
    }
    if s.state == TCP_LISTEN {
        sock::listen(f, s.backlog as i32).map_err(|e| err("listen", e))?;
    }
    if (s.protocol as i32 != libc::IPPROTO_TCP || s.r#type as i32 == libc::SOCK_RAW) && !s.peer.is_empty() {
        sock::bind_raw(f, &s.peer, true).map_err(|e| err("connect", e))?;
    }
    super::mcast::join(f, s.family as i32, &s.mcast).map_err(|why| format!("{}: {why}", super::describe(s)))?;
    filter(f, &s.filter, s.filter_locked).map_err(|e| err("SO_ATTACH_FILTER", e))?;
    Ok(fd)
}

impl Restorer {
    pub fn create(sockets: &[pb::InetSocket]) -> Result<Restorer, String> {
        let mut r = Restorer { socks: BTreeMap::new(), locks: BTreeSet::new(), finished: false, owner: std::process::id() };
        for s in sockets {
            if let Some(t) = s.tcp.as_ref().filter(|t| !t.lock_table.is_empty()) {
                r.locks.insert(t.lock_table.clone());
            }
        }
        // The lock again before the connections exist (the table may be gone:
        // another host, a flushed ruleset, a new network namespace).
        let conns: Vec<&pb::InetSocket> = sockets.iter().filter(|s| s.tcp.is_some() && is_connection(s.state)).collect();
        for t in &r.locks {
            super::lock::lock(t, &conns)?;
        }
        // Listeners and bound sockets first: a connection binds beside them.
        let mut order: Vec<&pb::InetSocket> = sockets.iter().collect();
        order.sort_by_key(|s| (s.tcp.is_some(), s.ino));
        for s in order {
            let fd = make(s)?;
            r.socks.insert(s.ino, (fd, s.clone()));
        }
        r.refill_udp()?;
        Ok(r)
    }

    /// Queues each UDP socket's datagrams again, in order, each sent from its
    /// sender's address: through the tree's own socket bound there, else a
    /// short-lived one bound to it (IP_FREEBIND, for an address not local here).
    fn refill_udp(&self) -> Result<(), String> {
        for (fd, s) in self.socks.values().filter(|(_, s)| !s.queue.is_empty()) {
            let what = super::describe(s);
            // A wildcard-bound socket gets them on the loopback address.
            let dst = match super::parse_addr(&s.local) {
                Some((ip, _)) if ip.is_unspecified() => loopback_like(&s.local),
                _ => s.local.clone(),
            };
            for d in &s.queue {
                let own = self.socks.values().find(|(_, o)| sends_as(o, &d.from)).map(|(f, _)| f);
                let stand_in;
                let from = match own {
                    Some(f) => f.as_fd(),
                    None => {
                        stand_in = sender(&d.from).map_err(|e| format!("{what}: a stand-in for the sender {} of a queued datagram: {e}", super::addr_text(&d.from)))?;
                        stand_in.as_fd()
                    }
                };
                sock::send_to(from, &d.data, &dst).map_err(|e| format!("{what}: queueing a datagram from {} again: {e}", super::addr_text(&d.from)))?;
            }
            // Delivery on the loopback may finish after sendto returns: wait for
            // the last datagram.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while count_queued(fd.as_fd()) < s.queue.len() {
                if std::time::Instant::now() > deadline {
                    return Err(format!("{what}: {} of {} queued datagrams arrived again", count_queued(fd.as_fd()), s.queue.len()));
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        Ok(())
    }

    /// A new fd on socket `ino`.
    pub fn open(&self, ino: u64) -> std::io::Result<OwnedFd> {
        let (fd, _) = self.socks.get(&ino).ok_or_else(|| std::io::Error::other(format!("socket:[{ino}] is not in inetsk.img")))?;
        fd.try_clone()
    }

    /// Once the tree exists: connections out of repair mode (with a window probe),
    /// their unsent bytes sent, and the network lock removed.
    pub fn finish(&mut self) -> Result<(), String> {
        for (fd, s) in self.socks.values() {
            if s.tcp.is_some() && is_connection(s.state) {
                repair::leave(fd.as_fd(), s.state != super::TCP_SYN_SENT).map_err(|e| format!("{}: leaving repair mode: {e}", super::describe(s)))?;
                let reuse: Vec<pb::SockOpt> = s.opts.iter().filter(|o| o.level == libc::SOL_SOCKET && o.name == libc::SO_REUSEADDR).cloned().collect();
                opts::apply(fd.as_fd(), &reuse).map_err(|why| format!("{}: {why}", super::describe(s)))?;
            }
        }
        // The peers' acknowledgements come through from now on.
        self.finished = true;
        if let Err(e) = self.unlock() {
            log::warn!("removing the network lock: {e} (remove it with nft delete table inet ...)");
        }
        for (fd, s) in self.socks.values() {
            if let Some(c) = s.tcp.as_ref().filter(|_| is_connection(s.state)) {
                repair::send_unsent(fd.as_fd(), c).map_err(|e| format!("{}: sending the {} bytes that had not been sent yet: {e}", super::describe(s), c.unsent))?;
                use super::{TCP_CLOSE, TCP_CLOSE_WAIT, TCP_CLOSING, TCP_FIN_WAIT2, TCP_TIME_WAIT};
                let deliver = |want: &[u32]| super::fin::deliver(fd.as_fd(), s, c, want).map_err(|e| format!("{}: handing it its peer's FIN again: {e}", super::describe(s)));
                // Our FIN goes out again (after the data, at the number it had);
                // the peer acknowledges it (once more).
                let shut = || nix::sys::socket::shutdown(std::os::fd::AsRawFd::as_raw_fd(fd), nix::sys::socket::Shutdown::Write).map_err(|e| format!("{}: shutting its side down again: {e}", super::describe(s)));
                if s.state == super::TCP_SYN_SENT {
                    connect_again(fd, s).map_err(|e| format!("{}: connecting again: {e}", super::describe(s)))?;
                    continue;
                }
                match (c.fin_received, c.fin_sent) {
                    // CLOSE_WAIT, and LAST_ACK: the peer's FIN, then ours.
                    (true, sent) => {
                        if s.state == TCP_CLOSING {
                            // Ours went first: FIN_WAIT1, then theirs (which does
                            // not acknowledge ours).
                            shut()?;
                            deliver(&[TCP_CLOSING, TCP_TIME_WAIT, TCP_CLOSE])?;
                        } else {
                            deliver(&[TCP_CLOSE_WAIT])?;
                            if sent {
                                shut()?;
                            }
                        }
                    }
                    (false, true) => {
                        shut()?;
                        if s.state == TCP_FIN_WAIT2 {
                            super::fin::wait_state(fd.as_fd(), &[TCP_FIN_WAIT2]).map_err(|e| format!("{}: waiting for FIN_WAIT2: {e}", super::describe(s)))?;
                        }
                    }
                    (false, false) => {}
                }
            }
        }
        Ok(())
    }

    fn unlock(&mut self) -> Result<(), String> {
        for t in std::mem::take(&mut self.locks) {
            super::lock::unlock(&t)?;
        }
        Ok(())
    }
}

impl Drop for Restorer {
    /// A restore that failed: the lock goes too (its connections are gone).
    fn drop(&mut self) {
        if !self.finished && std::process::id() == self.owner && !self.locks.is_empty() {
            log::error!("the restore failed: the network lock of the dumped TCP connections is removed, so their peers see them reset; these images cannot bring those connections back");
            if let Err(e) = self.unlock() {
                log::error!("removing the network lock: {e}");
            }
        }
    }
}

/// The loopback address of `a`'s family with `a`'s port.
fn loopback_like(a: &[u8]) -> Vec<u8> {
    let mut v = a.to_vec();
    match super::parse_addr(a) {
        Some((std::net::IpAddr::V4(_), _)) => v[4..8].copy_from_slice(&[127, 0, 0, 1]),
        Some((std::net::IpAddr::V6(_), _)) => v[8..24].copy_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets()),
        None => {}
    }
    v
}

/// A UDP socket bound to `addr` (shared with whoever else is bound there with
/// SO_REUSEADDR; IP_FREEBIND for an address that is not local).
pub(super) fn sender(addr: &[u8]) -> Result<OwnedFd, nix::errno::Errno> {
    let family = u16::from_ne_bytes([*addr.first().ok_or(nix::errno::Errno::EINVAL)?, *addr.get(1).ok_or(nix::errno::Errno::EINVAL)?]) as i32;
    let fd = sock::socket(family, libc::SOCK_DGRAM, libc::IPPROTO_UDP)?;
    sock::set_int(fd.as_fd(), libc::SO_REUSEADDR, 1)?;
    // An address not local here: bound with IP_FREEBIND, sent from with
    // IP_TRANSPARENT (CAP_NET_ADMIN).
    let (level, freebind, transparent) = if family == libc::AF_INET { (libc::IPPROTO_IP, libc::IP_FREEBIND, libc::IP_TRANSPARENT) } else { (libc::IPPROTO_IPV6, 78, 75) };
    sock::set_int_at(fd.as_fd(), level, freebind, 1)?;
    sock::set_int_at(fd.as_fd(), level, transparent, 1)?;
    sock::bind_raw(fd.as_fd(), addr, false)?;
    Ok(fd)
}

/// How many datagrams are queued on `fd` (peeked from the head; SO_PEEK_OFF put
/// back after).
fn count_queued(fd: std::os::fd::BorrowedFd) -> usize {
    let old = sock::get_int(fd, libc::SO_PEEK_OFF).unwrap_or(-1);
    if sock::set_int(fd, libc::SO_PEEK_OFF, 0).is_err() {
        return 0;
    }
    // (Whole datagrams: the peek offset moves by what was copied.)
    let mut buf = vec![0u8; 65536];
    let mut n = 0;
    while let Ok(Some(_)) = sock::peek_from(fd, &mut buf) {
        n += 1;
        if n > 1 << 20 {
            break;
        }
    }
    let _ = sock::set_int(fd, libc::SO_PEEK_OFF, old);
    n
}

/// Whether UDP socket `s` sends with source address `from` (its address, or its
/// port on a wildcard address; IPv4-mapped addresses taken as IPv4).
pub(super) fn sends_as(s: &pb::InetSocket, from: &[u8]) -> bool {
    if s.protocol as i32 != libc::IPPROTO_UDP {
        return false;
    }
    let (Some((ip, port)), Some((fip, fport))) = (super::parse_addr(&s.local), super::parse_addr(from)) else { return false };
    port == fport && (ip.is_unspecified() || ip.to_canonical() == fip.to_canonical())
}

/// Attaches a saved classic BPF filter (and locks it), if any.
pub(crate) fn filter(fd: std::os::fd::BorrowedFd, insns: &[u8], locked: bool) -> Result<(), nix::errno::Errno> {
    if insns.is_empty() {
        return Ok(());
    }
    sock::set_filter(fd, insns)?;
    if locked {
        sock::set_int(fd, libc::SO_LOCK_FILTER, 1)?;
    }
    Ok(())
}

/// socket(2) for `s`. An ICMP ping socket may be made only by a group of
/// net.ipv4.ping_group_range (root included): by a helper with such a group.
fn new_socket(s: &pb::InetSocket) -> Result<OwnedFd, nix::errno::Errno> {
    let (family, ty, proto) = (s.family as i32, s.r#type as i32, s.protocol as i32);
    match sock::socket(family, ty, proto) {
        Err(nix::errno::Errno::EACCES) if proto == libc::IPPROTO_ICMP || proto == libc::IPPROTO_ICMPV6 => {
            let range = std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").unwrap_or_default();
            let mut it = range.split_whitespace().filter_map(|v| v.parse::<u32>().ok());
            let (Some(low), Some(high)) = (it.next(), it.next()) else { return Err(nix::errno::Errno::EACCES) };
            if low > high {
                return Err(nix::errno::Errno::EACCES);
            }
            crate::sys::process::fd_from_helper(|| {
                let g = nix::unistd::Gid::from_raw(low);
                nix::unistd::setresgid(g, g, g)?;
                Ok(sock::socket(family, ty, proto)?)
            })
            .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EACCES)))
        }
        r => r,
    }
}

/// connect(2) without waiting (the task is not running yet: its file's
/// O_NONBLOCK is put back before it runs); EINPROGRESS is the expected answer.
fn connect_again(fd: &OwnedFd, s: &pb::InetSocket) -> Result<(), nix::errno::Errno> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    let r = sock::bind_raw(fd.as_fd(), &s.peer, true);
    fcntl(fd, FcntlArg::F_SETFL(flags))?;
    match r {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => Ok(()),
        Err(e) => Err(e),
    }
}
