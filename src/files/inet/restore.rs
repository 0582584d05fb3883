//! Making inet sockets again (in crtool, before the tree is forked).

use super::{TCP_ESTABLISHED, TCP_LISTEN, opts, repair};
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
    let fd = sock::socket(s.family as i32, s.r#type as i32, s.protocol as i32).map_err(|e| err("socket", e))?;
    let f = fd.as_fd();
    let conn = s.tcp.as_ref().filter(|_| s.protocol as i32 == libc::IPPROTO_TCP && s.state == TCP_ESTABLISHED);
    if conn.is_some() {
        repair::enter(f).map_err(|e| err("TCP_REPAIR", e))?;
    }
    // In repair mode a socket may share its port with the listener it came from;
    // SO_REUSEADDR would undo that (it comes back in `finish`).
    let reuse = |o: &pb::SockOpt| o.level == libc::SOL_SOCKET && o.name == libc::SO_REUSEADDR;
    let now: Vec<pb::SockOpt> = s.opts.iter().filter(|o| conn.is_none() || !reuse(o)).cloned().collect();
    opts::apply(f, &now).map_err(|why| format!("{}: {why}", super::describe(s)))?;
    if let Some(c) = conn {
        repair::set_seqs(f, c).map_err(|e| err("TCP_QUEUE_SEQ", e))?;
        sock::bind_raw(f, &s.local, false).map_err(|e| err("bind", e))?;
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
    if s.protocol as i32 == libc::IPPROTO_UDP && !s.peer.is_empty() {
        sock::bind_raw(f, &s.peer, true).map_err(|e| err("connect", e))?;
    }
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
        let conns: Vec<&pb::InetSocket> = sockets.iter().filter(|s| s.tcp.is_some() && s.state == TCP_ESTABLISHED).collect();
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
        Ok(r)
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
            if s.tcp.is_some() && s.state == TCP_ESTABLISHED {
                repair::leave(fd.as_fd(), true).map_err(|e| format!("{}: leaving repair mode: {e}", super::describe(s)))?;
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
            if let Some(c) = s.tcp.as_ref().filter(|_| s.state == TCP_ESTABLISHED) {
                repair::send_unsent(fd.as_fd(), c).map_err(|e| format!("{}: sending the {} bytes that had not been sent yet: {e}", super::describe(s), c.unsent))?;
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
        if !self.finished
            && std::process::id() == self.owner
            && let Err(e) = self.unlock()
        {
            log::error!("removing the network lock: {e}");
        }
    }
}
