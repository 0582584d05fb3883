//! Dumping inet sockets.

use super::{TCP_CLOSE, TCP_ESTABLISHED, TCP_FIN_WAIT2, TCP_LISTEN, TCP_SYN_SENT, fin_queued, fin_received, is_connection, lock, opts, repair, state_text};
use crate::error::{Error, Result};
use crate::sys::sock;
use images_format::pb;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};

struct Held {
    pid: i32,
    fd: i32,
    dup: OwnedFd,
    sock: pb::InetSocket,
    /// SO_REUSEADDR before repair mode (which leaves it cleared).
    reuse: i32,
}

/// The inet sockets of the tree, while it is dumped.
#[derive(Default)]
pub struct InetTable {
    socks: BTreeMap<u64, Held>,
    /// --tcp-established: established connections are dumped (else refused).
    pub tcp_established: bool,
    /// --skip-in-flight: half-open connections to the tree's listeners (SYN_RECV)
    /// are left to the kernel (the clients' handshakes start over) instead of
    /// refused.
    pub skip_in_flight: bool,
    /// Connections put into repair mode, and the lock taken, by this dump.
    repaired: Vec<u64>,
    locked: Option<String>,
}

fn refuse(pid: i32, fd: i32, what: String, hint: &'static str) -> Error {
    Error::Unsupported { pid, fd: Some(fd), what, hint: Some(hint) }
}

impl InetTable {
    /// Describes inet socket `dup` (fd `fd` of `pid`, inode `ino`); refuses what
    /// restore could not rebuild.
    pub fn add(&mut self, pid: i32, fd: i32, dup: &OwnedFd, ino: u64) -> Result<()> {
        if self.socks.contains_key(&ino) {
            return Ok(());
        }
        let f = dup.as_fd();
        let sys = |what: &str, e: nix::errno::Errno| Error::sys(format!("pid {pid} fd {fd} (socket:[{ino}]): {what}"), e);
        let family = sock::get_int(f, libc::SO_DOMAIN).map_err(|e| sys("SO_DOMAIN", e))?;
        let ty = sock::get_int(f, libc::SO_TYPE).map_err(|e| sys("SO_TYPE", e))?;
        let protocol = sock::get_int(f, libc::SO_PROTOCOL).map_err(|e| sys("SO_PROTOCOL", e))?;
        let raw = ty == libc::SOCK_RAW;
        let ping = ty == libc::SOCK_DGRAM && (protocol == libc::IPPROTO_ICMP || protocol == libc::IPPROTO_ICMPV6);
        if !raw && !ping && !matches!((ty, protocol), (libc::SOCK_STREAM, libc::IPPROTO_TCP) | (libc::SOCK_DGRAM, libc::IPPROTO_UDP)) {
            return Err(refuse(pid, fd, format!("inet socket:[{ino}] of type {ty}, protocol {protocol}"), "only TCP, UDP, ICMP ping and raw sockets are supported yet (not UDP-Lite, SCTP, ...)"));
        }
        if !sock::in_holders_netns(f, pid) {
            return Err(refuse(pid, fd, format!("socket:[{ino}] belongs to another network namespace than its holder's"), "sockets of other network namespaces are not supported"));
        }
        let (local, peer) = sock::names(f).map_err(|e| sys("getsockname/getpeername", e))?;
        let tcp = ty == libc::SOCK_STREAM && protocol == libc::IPPROTO_TCP;
        let peer = match peer {
            None if !tcp => super::diag::port_zero_peer(pid, family, ty, protocol, ino).map_err(|e| refuse(pid, fd, format!("socket:[{ino}]: its destination could not be read: {e}"), "not supported"))?,
            p => p,
        };
        // Options that cannot be set back as read: refused when set.
        if family == libc::AF_INET && sock::get_raw(f, libc::IPPROTO_IP, libc::IP_OPTIONS, 40).is_ok_and(|o| !o.is_empty()) {
            return Err(refuse(pid, fd, format!("inet socket:[{ino}] has IP options set (IP_OPTIONS)"), "not supported"));
        }
        let info = if tcp { sock::get_raw(f, libc::IPPROTO_TCP, libc::TCP_INFO, 32).map_err(|e| sys("TCP_INFO", e))? } else { Vec::new() };
        let word = |off: usize| u32::from_ne_bytes(info.get(off..off + 4).and_then(|b| b.try_into().ok()).unwrap_or([0; 4]));
        let state = if tcp { info.first().copied().unwrap_or(0) as u32 } else if peer.is_some() { TCP_ESTABLISHED } else { TCP_CLOSE };
        let peer = match peer {
            None if tcp && state == TCP_SYN_SENT => Some(super::diag::syn_sent_peer(pid, family, ino).map_err(|e| refuse(pid, fd, format!("socket:[{ino}] is connecting and its destination could not be read: {e}"), "retry the dump"))?),
            p => p,
        };
        let mut s = pb::InetSocket { ino, family: family as u32, r#type: ty as u32, protocol: protocol as u32, state, local, peer: peer.unwrap_or_default(), ..Default::default() };
        let what = super::describe(&s);
        s.filter = sock::get_filter(f).map_err(|e| refuse(pid, fd, format!("{what} has a socket filter that cannot be read back ({e}: an eBPF program?)"), "eBPF socket filters (SO_ATTACH_BPF) are not supported"))?;
        s.filter_locked = sock::get_int(f, libc::SO_LOCK_FILTER).unwrap_or(0) != 0;
        // (Reading SO_ERROR would clear it: a pending error shows in poll.)
        let revents = crate::sys::tty::poll_now(f, libc::POLLPRI | libc::POLLRDHUP).map_err(|e| sys("poll", e))?;
        if revents & libc::POLLERR != 0 {
            return Err(refuse(pid, fd, format!("{what} has a pending error"), "let the program read it first (SO_ERROR)"));
        }
        if state != TCP_LISTEN && !(tcp && fin_received(state)) && revents & libc::POLLRDHUP != 0 {
            return Err(refuse(pid, fd, format!("{what} is shut down for reading, or its peer has closed its side"), "half-closed sockets are not supported yet"));
        }
        if tcp && revents & libc::POLLPRI != 0 {
            return Err(refuse(pid, fd, format!("{what} has urgent (out-of-band) data pending"), "TCP urgent data is not supported; retry once the program has read it"));
        }
        if tcp && sock::get_raw(f, libc::IPPROTO_TCP, 31, 16).is_ok_and(|ulp| ulp.iter().any(|&b| b != 0)) {
            return Err(refuse(pid, fd, format!("{what} has an upper-layer protocol attached (TCP_ULP, e.g. kernel TLS)"), "not supported"));
        }
        match (tcp, state) {
            (true, TCP_LISTEN) => {
                // TCP_INFO of a listener: tcpi_unacked is its accept queue,
                // tcpi_sacked its backlog (tcp_get_info).
                // They have no fd to repair and a repaired socket cannot be put
                // in an accept queue: refused, or left out with --skip-in-flight
                // as CRIU does (their clients see them reset).
                if word(24) > 0 && self.skip_in_flight {
                    log::warn!("pid {pid} fd {fd}: {what}: {} connection(s) waiting to be accepted left out (--skip-in-flight): their clients will see them reset", word(24));
                } else if word(24) > 0 {
                    return Err(refuse(pid, fd, format!("{what} has {} connection(s) waiting to be accepted", word(24)), "retry the dump when the program has accepted them, or dump with --skip-in-flight (those clients see their connections reset and must connect again)"));
                }
                s.backlog = word(28);
            }
            (true, TCP_CLOSE) => {}
            (true, st) if is_connection(st) && self.tcp_established => {}
            (true, st) if is_connection(st) => {
                return Err(refuse(pid, fd, if st == TCP_ESTABLISHED { format!("{what} is an established TCP connection") } else { format!("{what} is a TCP connection in state {}", state_text(st)) }, "dump with --tcp-established to take established connections along"));
            }
            (true, st) => {
                return Err(refuse(pid, fd, format!("{what} is in state {}", state_text(st)), "only listening, closed and (with --tcp-established) established TCP sockets are supported yet"));
            }
            (false, _) if raw || ping => {
                if crate::sys::tty::poll_now(f, libc::POLLIN).map_err(|e| sys("poll", e))? & libc::POLLIN != 0 {
                    return Err(refuse(pid, fd, format!("{what} has packets queued"), "queued raw packets are not supported; retry the dump once the program has read them"));
                }
                s.mcast = super::mcast::memberships(f, family).map_err(|why| refuse(pid, fd, format!("{what}: {why}"), "source filters of more than 64 sources are not supported"))?;
            }
            (false, _) => {
                if sock::queue_len(f, sock::SIOCOUTQ).map_err(|e| sys("SIOCOUTQ", e))? > 0 {
                    return Err(refuse(pid, fd, format!("{what} has datagrams waiting to be sent (UDP_CORK)"), "corked UDP data is not supported; dump once the program has sent it"));
                }
                s.mcast = super::mcast::memberships(f, family).map_err(|why| refuse(pid, fd, format!("{what}: {why}"), "source filters of more than 64 sources are not supported"))?;
                s.queue = peek_datagrams(f).map_err(|why| refuse(pid, fd, format!("{what}: {why}"), "retry the dump once the program has read its queue"))?;
                // Sent again at restore on the loopback: what tells a datagram's
                // own path apart would differ.
                let on = |level: i32, opt: i32| sock::get_int_at(f, level, opt).is_ok_and(|v| v != 0);
                let path_opts = on(libc::IPPROTO_IP, libc::IP_PKTINFO) || on(libc::IPPROTO_IP, libc::IP_RECVORIGDSTADDR) || on(libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO) || on(libc::IPPROTO_UDP, 104) || sock::get_raw(f, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, 16).is_ok_and(|d| d.iter().any(|&b| b != 0));
                if !s.queue.is_empty() && path_opts {
                    return Err(refuse(pid, fd, format!("{what} has datagrams queued and asks for their destination or device (IP_PKTINFO, IP_RECVORIGDSTADDR, UDP_GRO or SO_BINDTODEVICE)"), "retry the dump once the program has read its queue"));
                }
                if !s.peer.is_empty() && s.queue.iter().any(|d| d.from != s.peer) {
                    return Err(refuse(pid, fd, format!("{what} is connected and has datagrams queued from another sender (queued before it connected)"), "retry the dump once the program has read its queue"));
                }
            }
        }
        // A ping socket only a group of ping_group_range may make: compared with a
        // UDP one, which inet_create (net/ipv4/af_inet.c) sets up alike.
        let fresh_proto = if ping { libc::IPPROTO_UDP } else { protocol };
        let fresh = sock::socket(family, ty, fresh_proto).map_err(|e| sys("socket (a new one to compare options with)", e))?;
        // (A connecting socket's buffers and MSS clamp go with its SYN again.)
        s.opts = opts::capture(f, fresh.as_fd(), family, ty, protocol, is_connection(state) && state != TCP_SYN_SENT);
        let dup = dup.try_clone().map_err(|e| Error::io(format!("/proc/{pid}/fd/{fd}"), e))?;
        self.socks.insert(ino, Held { pid, fd, dup, sock: s, reuse: 0 });
        Ok(())
    }

    /// Where socket `ino` was found: (pid, fd).
    pub fn holder(&self, ino: u64) -> (i32, i32) {
        self.socks.get(&ino).map_or((0, -1), |h| (h.pid, h.fd))
    }

    /// Every socket, established connections read through TCP_REPAIR behind the
    /// network lock (in inode order). They stay in repair mode (and locked) until
    /// the tree is killed (closing them then sends nothing) or `release`.
    pub fn finish(&mut self) -> Result<Vec<pb::InetSocket>> {
        let conns: Vec<&pb::InetSocket> = self.socks.values().map(|h| &h.sock).filter(|s| s.protocol as i32 == libc::IPPROTO_TCP && is_connection(s.state)).collect();
        if !conns.is_empty() {
            let table = lock::table_name(&conns);
            let (pid, fd) = self.holder(conns[0].ino);
            // (Noted first: a lock half made is removed too.)
            self.locked = Some(table.clone());
            lock::lock(&table, &conns).map_err(|why| refuse(pid, fd, format!("cannot lock the network for the tree's TCP connections: {why}"), "--tcp-established needs nftables (the nft command) and the nf_tables kernel module"))?;
        }
        self.check_in_flight()?;
        self.check_udp_senders()?;
        let table = self.locked.clone().unwrap_or_default();
        for h in self.socks.values_mut().filter(|h| h.sock.protocol as i32 == libc::IPPROTO_TCP && is_connection(h.sock.state)) {
            let what = super::describe(&h.sock);
            h.reuse = sock::get_int(h.dup.as_fd(), libc::SO_REUSEADDR).map_err(|e| Error::sys(format!("pid {} fd {}: {what}: SO_REUSEADDR", h.pid, h.fd), e))?;
            repair::enter(h.dup.as_fd()).map_err(|e| Error::sys(format!("pid {} fd {}: {what}: TCP_REPAIR", h.pid, h.fd), e))?;
            self.repaired.push(h.sock.ino);
            // Still established, now that nothing comes in (a FIN or urgent data
            // may have arrived since the socket was first looked at).
            let f = h.dup.as_fd();
            let state = sock::get_raw(f, libc::IPPROTO_TCP, libc::TCP_INFO, 8).ok().and_then(|i| i.first().copied()).unwrap_or(0) as u32;
            let revents = crate::sys::tty::poll_now(f, libc::POLLPRI | libc::POLLRDHUP).unwrap_or(libc::POLLERR);
            let rdhup = if fin_received(h.sock.state) { 0 } else { libc::POLLRDHUP };
            if state != h.sock.state || revents & (libc::POLLPRI | rdhup | libc::POLLERR) != 0 {
                return Err(refuse(h.pid, h.fd, format!("{what} changed while it was being dumped (now {}{})", state_text(state), if revents & libc::POLLPRI != 0 { ", urgent data" } else { "" }), "retry the dump"));
            }
            // (A SYN, like a FIN, takes a sequence number and no byte of the queue.)
            let mut c = repair::dump(h.dup.as_fd(), fin_queued(h.sock.state) || h.sock.state == TCP_SYN_SENT).map_err(|e| Error::sys(format!("pid {} fd {}: {what}: reading its queues in repair mode (EAGAIN: they kept changing; retry the dump)", h.pid, h.fd), e))?;
            c.lock_table = table.clone();
            if fin_received(h.sock.state) {
                // rcv_nxt counts the peer's FIN: the queue starts one before.
                c.recv_seq = c.recv_seq.wrapping_sub(1);
                c.fin_received = true;
            }
            if h.sock.state == TCP_SYN_SENT {
                let tfo = sock::get_int_at(f, libc::IPPROTO_TCP, 30).unwrap_or(0) != 0; // TCP_FASTOPEN_CONNECT
                let queued = repair::send_queue_bytes(f).map_err(|e| Error::sys(format!("pid {} fd {}: {what}: its send queue", h.pid, h.fd), e))?;
                if tfo || queued > 0 {
                    return Err(refuse(h.pid, h.fd, format!("{what} is connecting with TCP Fast Open"), "connections opened with TCP Fast Open are not supported while they connect; retry the dump"));
                }
            }
            if fin_queued(h.sock.state) {
                // Our FIN, not acknowledged: the queue (from snd_una) without it;
                // shutdown queues it again after the data, at the same number.
                c.fin_sent = true;
            }
            if h.sock.state == TCP_FIN_WAIT2 {
                // write_seq counts our FIN (acknowledged: not in the queue).
                if !c.send_queue.is_empty() {
                    return Err(refuse(h.pid, h.fd, format!("{what} has shut down its side with data not acknowledged yet"), "retry the dump"));
                }
                c.send_seq = c.send_seq.wrapping_sub(1);
                c.fin_sent = true;
            }
            h.sock.tcp = Some(c);
        }
        Ok(self.socks.values().map(|h| h.sock.clone()).collect())
    }

    /// Half-open connections to the tree's listeners: they have no fd and cannot
    /// be dumped; a dump would lose them silently. Refused unless --skip-in-flight.
    fn check_in_flight(&self) -> Result<()> {
        let listeners: Vec<&Held> = self.socks.values().filter(|h| h.sock.state == TCP_LISTEN).collect();
        if listeners.is_empty() || self.skip_in_flight {
            return Ok(());
        }
        let half_open = super::diag::syn_recv().map_err(|e| Error::io("sock_diag (INET_DIAG, SYN_RECV)", e))?;
        for h in listeners {
            let Some((ip, port)) = super::parse_addr(&h.sock.local) else { continue };
            if let Some((a, _)) = half_open.iter().find(|(a, p)| *p == port && (ip.is_unspecified() || a.to_canonical() == ip.to_canonical())) {
                return Err(refuse(h.pid, h.fd, format!("{} has a connection from a client still in its handshake (SYN_RECV, to {a})", super::describe(&h.sock)), "retry the dump, or dump with --skip-in-flight (the client's handshake starts over)"));
            }
        }
        Ok(())
    }

    /// A queued datagram is sent again at restore from its sender's address: by
    /// the tree's own socket there, or a stand-in bound to it, which an outside
    /// socket still bound there would stop. Refused now, while the tree runs.
    fn check_udp_senders(&self) -> Result<()> {
        for h in self.socks.values().filter(|h| !h.sock.queue.is_empty()) {
            for d in &h.sock.queue {
                if let Some(o) = self.socks.values().find(|o| super::restore::sends_as(&o.sock, &d.from)) {
                    if o.sock.opts.iter().any(|x| x.level == libc::IPPROTO_UDP && x.name == libc::UDP_CORK) {
                        return Err(refuse(h.pid, h.fd, format!("{} has a datagram queued from {}, which has UDP_CORK set", super::describe(&h.sock), super::describe(&o.sock)), "retry the dump once the program has read it"));
                    }
                    continue;
                }
                if let Err(e) = super::restore::sender(&d.from) {
                    return Err(refuse(h.pid, h.fd, format!("{} has a datagram queued from {}, where a socket outside the tree is bound ({e})", super::describe(&h.sock), super::addr_text(&d.from)), "restore could not send it again from there; retry the dump once the program has read it"));
                }
            }
        }
        Ok(())
    }

    /// Lets the connections run on (the dump failed, or leaves the tree running):
    /// out of repair mode without a window probe, and the lock removed.
    pub fn release(&mut self) {
        for ino in std::mem::take(&mut self.repaired) {
            if let Some(h) = self.socks.get(&ino) {
                // (Leaving repair mode clears SO_REUSEADDR: set again.)
                if let Err(e) = repair::leave(h.dup.as_fd(), false).and_then(|()| sock::set_int(h.dup.as_fd(), libc::SO_REUSEADDR, h.reuse)) {
                    log::error!("{}: leaving repair mode: {e}", super::describe(&h.sock));
                }
            }
        }
        if let Some(t) = self.locked.take()
            && let Err(e) = lock::unlock(&t)
        {
            log::error!("removing the network lock {t}: {e}");
        }
    }
}

/// Peeks every datagram queued on a UDP socket, with its sender, from the head of
/// the queue (SO_PEEK_OFF set for the reading and put back after).
fn peek_datagrams(f: std::os::fd::BorrowedFd) -> std::result::Result<Vec<pb::UdpDatagram>, String> {
    if sock::queue_len(f, sock::SIOCINQ).map_err(|e| format!("SIOCINQ: {e}"))? == 0 && crate::sys::tty::poll_now(f, libc::POLLIN).map_err(|e| format!("poll: {e}"))? & libc::POLLIN == 0 {
        return Ok(Vec::new());
    }
    let old = sock::get_int(f, libc::SO_PEEK_OFF).map_err(|e| format!("SO_PEEK_OFF: {e}"))?;
    sock::set_int(f, libc::SO_PEEK_OFF, 0).map_err(|e| format!("SO_PEEK_OFF: {e}"))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    let r = (|| -> std::result::Result<(), String> {
        // (At most as many datagrams as fit in the receive buffer.)
        for _ in 0..1 << 20 {
            let Some((n, from)) = sock::peek_from(f, &mut buf).map_err(|e| format!("recvfrom(MSG_PEEK): {e}"))? else { return Ok(()) };
            if n == 0 {
                return Err("an empty datagram is queued (peeking cannot step over it)".into());
            }
            if n > buf.len() {
                return Err(format!("a datagram of {n} bytes is queued"));
            }
            out.push(pb::UdpDatagram { data: buf[..n].to_vec(), from });
        }
        Err("too many datagrams queued".into())
    })();
    let back = sock::set_int(f, libc::SO_PEEK_OFF, old);
    r?;
    back.map_err(|e| format!("putting SO_PEEK_OFF back: {e}"))?;
    Ok(out)
}
