//! Restore side of unix sockets. Sockets are made in crtool before the tree is
//! forked ([`Restorer::create`]): listeners and bound sockets first, then socketpairs,
//! connections through listeners (connect + accept, the accepted side taking the
//! listener's name), connections left waiting in accept queues (in queue order).
//! Once every task exists ([`Restorer::finish`]): queued messages are sent again
//! from the right sender (with their files and credentials), then datagram sockets
//! connect, shutdown states and options are set, closed peers are closed, and
//! listeners get their own backlog.

use super::{TCP_ESTABLISHED, TCP_LISTEN, addr_of, describe, name_text};
use crate::sys::sock;
use images_format::pb;
use nix::errno::Errno;
use nix::sys::socket::{self as so, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr, sockopt};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Error, IoSlice, Result};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

/// Room in an accept queue while connections are made again.
const BIG_BACKLOG: i32 = 1 << 16;
/// A sender's SO_SNDBUF while it resends a queue (bytes; set as half, see socket(7)).
const FILL_SNDBUF: i32 = 1 << 28;

fn err(s: &pb::UnixSocket, what: impl std::fmt::Display) -> Error {
    Error::other(format!("{}: {what}", describe(s)))
}

fn sock_type(t: u32) -> Result<SockType> {
    Ok(match t as i32 {
        libc::SOCK_STREAM => SockType::Stream,
        libc::SOCK_DGRAM => SockType::Datagram,
        libc::SOCK_SEQPACKET => SockType::SeqPacket,
        _ => return Err(Error::other(format!("unix socket of type {t}"))),
    })
}

fn new_socket(s: &pb::UnixSocket) -> Result<OwnedFd> {
    so::socket(AddressFamily::Unix, sock_type(s.r#type)?, SockFlag::SOCK_CLOEXEC, None).map_err(|e| err(s, format!("socket: {e}")))
}

/// Runs `f` with the current directory set to `dir` (for relative names).
fn in_dir<T>(dir: &str, f: impl FnOnce() -> nix::Result<T>) -> nix::Result<T> {
    if dir.is_empty() {
        return f();
    }
    let here = nix::fcntl::open(".", nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())?;
    nix::unistd::chdir(dir)?;
    let r = f();
    nix::unistd::fchdir(&here)?;
    r
}

/// The sockets of the images, made again.
pub struct Restorer {
    sockets: BTreeMap<u64, pb::UnixSocket>,
    fds: BTreeMap<u64, OwnedFd>,
    /// The other end of a socket whose peer was closed (closed in `finish`).
    others: BTreeMap<u64, OwnedFd>,
    /// Listeners made only to accept connections whose listener is gone.
    temp_listeners: Vec<(Vec<u8>, String, OwnedFd)>,
    /// Path names bound by restore (removed if the restore fails).
    created: Vec<PathBuf>,
    /// Path names to unlink once everything is connected (their files were gone at
    /// dump time).
    unlink_after: BTreeSet<PathBuf>,
    /// Sockets made by socketpair(2) (each connected to its peer from the start).
    paired: BTreeSet<u64>,
    /// Helpers that make sockets on a process's behalf take its pid (false when the
    /// tree is restored into a new PID namespace, where that pid does not exist yet).
    exact_pids: bool,
}

impl Restorer {
    /// Makes every socket of `sockets`. `inherited` are the caller's sockets for
    /// stream sockets with a peer outside the tree (socket inode → crtool's fd).
    /// `exact_pids`: see [`Restorer::exact_pids`].
    pub fn create(sockets: &[pb::UnixSocket], inherited: &BTreeMap<u64, RawFd>, exact_pids: bool) -> Result<Restorer> {
        let mut r = Restorer {
            exact_pids,
            paired: BTreeSet::new(),
            sockets: sockets.iter().map(|s| (s.ino, s.clone())).collect(),
            fds: BTreeMap::new(),
            others: BTreeMap::new(),
            temp_listeners: Vec::new(),
            created: Vec::new(),
            unlink_after: BTreeSet::new(),
        };
        match r.build(sockets, inherited) {
            Ok(()) => Ok(r),
            Err(e) => {
                // Nothing is left bound of a restore that could not make them all.
                for p in &r.created {
                    let _ = std::fs::remove_file(p);
                }
                Err(e)
            }
        }
    }

    fn build(&mut self, sockets: &[pb::UnixSocket], inherited: &BTreeMap<u64, RawFd>) -> Result<()> {
        let r = self;
        let all: Vec<pb::UnixSocket> = sockets.to_vec();
        // Socketpairs: both ends in the tree, connected to each other, neither made
        // by accept(2) (an end may have been bound since, or autobound).
        // Made in batches, one helper per creator.
        type Pairs = Vec<(pb::UnixSocket, pb::UnixSocket)>;
        let mut by_creator: BTreeMap<Option<(i32, u32, u32)>, Pairs> = BTreeMap::new();
        for s in &all {
            let Some(p) = r.sockets.get(&s.peer).cloned() else { continue };
            if s.ino >= p.ino || s.accepted || p.accepted || p.peer != s.ino {
                continue; // (a datagram socket connected to itself is bound, then connected)
            }
            // Two datagram sockets connected to each other with connect(2) (no
            // SO_PEERCRED recorded, both named): bound, then connected both ways.
            let by_connect = s.r#type == libc::SOCK_DGRAM as u32 && s.peercred.as_ref().is_none_or(|c| c.pid == 0) && !s.name.is_empty() && !p.name.is_empty();
            if by_connect {
                continue;
            }
            by_creator.entry(s.peercred.as_ref().map(|c| (c.pid, c.uid, c.gid))).or_default().push((s.clone(), p));
        }
        for pairs in by_creator.values() {
            let made = r.socketpairs(pairs)?;
            for ((s, p), (a, b)) in pairs.iter().zip(made) {
                for (x, fd) in [(s, &a), (p, &b)] {
                    if !x.name.is_empty() {
                        r.bind(x, fd, &x.name)?;
                    }
                }
                r.fds.insert(s.ino, a);
                r.fds.insert(p.ino, b);
                r.paired.extend([s.ino, p.ino]);
            }
        }
        // Listeners and sockets bound to a name of their own.
        for s in all.iter().filter(|s| !(s.name.is_empty() || s.accepted || (s.external && s.r#type != libc::SOCK_DGRAM as u32))) {
            if r.fds.contains_key(&s.ino) {
                continue;
            }
            let fd = new_socket(s)?;
            r.bind(s, &fd, &s.name)?;
            if s.state == TCP_LISTEN {
                // Its own backlog: accepted connections are made one at a time, and
                // no more wait than it let wait.
                r.listen(s, &fd, s.backlog as i32, s.peercred.as_ref())?;
            }
            r.fds.insert(s.ino, fd);
        }
        // Datagram sockets connected to themselves.
        for s in all.iter().filter(|s| s.peer == s.ino && s.peer != 0) {
            let fd = r.fds.get(&s.ino).ok_or_else(|| err(s, "a socket connected to itself must be bound"))?;
            r.connect(s, fd, &s.name, &s.name_dir)?;
        }
        // Stream sockets whose peer is outside: the caller's.
        for s in all.iter().filter(|s| s.external && s.r#type != libc::SOCK_DGRAM as u32) {
            let Some(&given) = inherited.get(&s.ino) else {
                return Err(err(s, format!("its peer is outside the tree: hand a connected socket over with --inherit-fd fd[N]:socket:[{}]", s.ino)));
            };
            let fd = crate::sys::fd::dup_owned(given)?;
            let ty = so::getsockopt(&fd, sockopt::SockType).map(|t| t as i32 as u32);
            if sock::get_int(fd.as_fd(), libc::SO_DOMAIN) != Ok(libc::AF_UNIX) || ty != Ok(s.r#type) {
                return Err(err(s, format!("--inherit-fd fd[{given}]:socket:[{}]: fd {given} is not a unix {} socket", s.ino, super::type_text(s.r#type))));
            }
            if so::getpeername::<UnixAddr>(fd.as_raw_fd()).is_err() {
                return Err(err(s, format!("--inherit-fd fd[{given}]:socket:[{}]: fd {given} is not connected", s.ino)));
            }
            r.fds.insert(s.ino, fd);
        }
        // Connections made through a listener: connect, then accept.
        for a in all.iter().filter(|s| s.accepted) {
            if a.name.is_empty() {
                return Err(err(a, "an accepted socket without its listener's name (inconsistent unixsk.img)"));
            }
            // Whose peer closed: connected through a throwaway client, closed in
            // `finish` (after its queue is sent again from it).
            let b = match r.sockets.get(&a.peer) {
                Some(b) if !a.peer_closed => b.clone(),
                None if a.peer_closed => pb::UnixSocket { ino: 0, name: Vec::new(), name_dir: String::new(), accepted: false, peer_closed: false, peer: a.ino, ..a.clone() },
                _ => return Err(err(a, "its peer is missing from the images")),
            };
            let listener = all.iter().find(|l| l.state == TCP_LISTEN && l.name == a.name && l.r#type == a.r#type).map(|l| l.ino);
            if listener.is_none() && !r.temp_listeners.iter().any(|(n, _, _)| *n == a.name) {
                let fd = new_socket(a)?;
                r.bind(a, &fd, &a.name)?;
                // The client's SO_PEERCRED is copied from the listener's.
                r.listen(a, &fd, BIG_BACKLOG, b.peercred.as_ref())?;
                r.temp_listeners.push((a.name.clone(), a.name_dir.clone(), fd));
            }
            let client = match r.fds.remove(&b.ino) {
                Some(fd) if b.ino != 0 => fd,
                _ => new_socket(&b)?,
            };
            // The accepted side's SO_PEERCRED is whoever connected.
            r.connect_as(&b, &client, &a.name, &a.name_dir, a.peercred.as_ref())?;
            if b.ino == 0 {
                r.others.insert(a.ino, client);
            } else {
                r.fds.insert(b.ino, client);
            }
            let lfd = match listener {
                Some(l) => r.fds.get(&l).map(|f| f.as_raw_fd()),
                None => r.temp_listeners.iter().find(|(n, _, _)| *n == a.name).map(|(_, _, f)| f.as_raw_fd()),
            };
            let lfd = match lfd {
                Some(fd) => fd,
                None => return Err(err(a, "its listener was not made (inconsistent unixsk.img)")),
            };
            let got = so::accept4(lfd, SockFlag::SOCK_CLOEXEC).map_err(|e| err(a, format!("accept: {e}")))?;
            r.fds.extend(crate::sys::fd::take_received(vec![got]).into_iter().map(|f| (a.ino, f)));
        }
        // Connections waiting to be accepted, in queue order.
        let mut waiting: Vec<&pb::UnixSocket> = all.iter().filter(|s| s.in_queue_of != 0).collect();
        waiting.sort_by_key(|s| (s.in_queue_of, s.queue_pos));
        for c in waiting {
            let l = r.sockets.get(&c.in_queue_of).cloned().ok_or_else(|| err(c, "its listener is missing from the images"))?;
            let fd = match r.fds.remove(&c.ino) {
                Some(fd) => fd,
                None => new_socket(c)?,
            };
            r.connect_as(c, &fd, &l.name, &l.name_dir, c.connector.as_ref())?;
            r.fds.insert(c.ino, fd);
        }
        // Sockets whose peer was closed: a socketpair whose other end goes later.
        for s in all.iter().filter(|s| s.peer_closed) {
            if r.fds.contains_key(&s.ino) {
                continue;
            }
            let (a, b) = r.socketpair(s)?;
            r.fds.insert(s.ino, a);
            r.others.insert(s.ino, b);
        }
        for s in &all {
            if r.fds.contains_key(&s.ino) {
                continue;
            }
            let fd = new_socket(s)?;
            r.fds.insert(s.ino, fd);
        }
        Ok(())
    }

    /// Binds `fd` to `name`: a stale socket file left there (nobody listening) is
    /// replaced.
    fn bind(&mut self, s: &pb::UnixSocket, fd: &OwnedFd, name: &[u8]) -> Result<()> {
        if name.is_empty() {
            return Err(err(s, "binding to an empty name (inconsistent unixsk.img)"));
        }
        let addr = addr_of(name).map_err(|e| err(s, format!("address {}: {e}", name_text(name))))?;
        let mut r = in_dir(&s.name_dir, || so::bind(fd.as_raw_fd(), &addr));
        if r == Err(Errno::EADDRINUSE) && name[0] != 0 && self.stale(s, &addr) {
            let path = self.path_of(s, name);
            let _ = std::fs::remove_file(&path);
            r = in_dir(&s.name_dir, || so::bind(fd.as_raw_fd(), &addr));
        }
        r.map_err(|e| err(s, format!("bind to {}: {e}", name_text(name))))?;
        if name[0] != 0 {
            let path = self.path_of(s, name);
            self.created.push(path.clone());
            if !s.file_exists {
                self.unlink_after.insert(path);
            } else {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(s.file_mode)).map_err(|e| err(s, format!("chmod {}: {e}", path.display())))?;
                std::os::unix::fs::lchown(&path, Some(s.file_uid), Some(s.file_gid)).map_err(|e| err(s, format!("chown {}: {e}", path.display())))?;
            }
        }
        Ok(())
    }

    fn path_of(&self, s: &pb::UnixSocket, name: &[u8]) -> PathBuf {
        use std::os::unix::ffi::OsStrExt;
        PathBuf::from(&s.name_dir).join(std::ffi::OsStr::from_bytes(name))
    }

    /// Whether the socket file at `addr` is left over (no socket listens there).
    fn stale(&self, s: &pb::UnixSocket, addr: &UnixAddr) -> bool {
        use std::os::unix::fs::FileTypeExt;
        let Some(p) = addr.path() else { return false };
        let path = PathBuf::from(&s.name_dir).join(p);
        let Ok(md) = std::fs::symlink_metadata(&path) else { return false };
        if !md.file_type().is_socket() {
            return false;
        }
        // Live if some socket is bound to that file (sock_diag's VFS inode): asked
        // of the kernel, not by connecting, which would leave a connection in a
        // live server's queue.
        use std::os::unix::fs::MetadataExt;
        match super::diag::dump_all() {
            Ok(all) => !all.values().any(|d| d.vfs.is_some_and(|(ino, _)| ino == md.ino() as u32)),
            Err(_) => false,
        }
    }

    /// Socketpairs made as the process recorded in the first's SO_PEERCRED (all
    /// have the same).
    fn socketpairs(&self, pairs: &[(pb::UnixSocket, pb::UnixSocket)]) -> Result<Vec<(OwnedFd, OwnedFd)>> {
        let Some((first, _)) = pairs.first() else { return Ok(Vec::new()) };
        let types = pairs.iter().map(|(s, _)| sock_type(s.r#type)).collect::<Result<Vec<_>>>()?;
        let fds = as_peer(first.peercred.as_ref(), self.exact_pids, || {
            let mut v = Vec::with_capacity(types.len() * 2);
            for &ty in &types {
                let (a, b) = so::socketpair(AddressFamily::Unix, ty, None, SockFlag::SOCK_CLOEXEC)?;
                v.push(a);
                v.push(b);
            }
            Ok(v)
        })
        .map_err(|e| err(first, format!("socketpair: {e}")))?;
        if fds.len() != pairs.len() * 2 {
            return Err(err(first, format!("socketpair: {} sockets made for {} pairs", fds.len(), pairs.len())));
        }
        let mut it = fds.into_iter();
        Ok(std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect())
    }

    /// A socketpair made as the process recorded in `s`'s SO_PEERCRED.
    fn socketpair(&self, s: &pb::UnixSocket) -> Result<(OwnedFd, OwnedFd)> {
        let ty = sock_type(s.r#type)?;
        let mut fds = as_peer(s.peercred.as_ref(), self.exact_pids, || {
            let (a, b) = so::socketpair(AddressFamily::Unix, ty, None, SockFlag::SOCK_CLOEXEC)?;
            Ok(vec![a, b])
        })
        .map_err(|e| err(s, format!("socketpair: {e}")))?;
        let b = fds.pop().ok_or_else(|| err(s, "socketpair: no sockets"))?;
        let a = fds.pop().ok_or_else(|| err(s, "socketpair: no sockets"))?;
        Ok((a, b))
    }

    /// listen(2) as the process `who` (the listener's SO_PEERCRED, which connecting
    /// sockets copy).
    fn listen(&self, s: &pb::UnixSocket, fd: &OwnedFd, backlog: i32, who: Option<&pb::UnixCreds>) -> Result<()> {
        as_peer(who, self.exact_pids, || so::listen(fd, so::Backlog::new(backlog).unwrap_or(so::Backlog::MAXCONN)).map(|()| Vec::new()))
        .map(drop)
        .map_err(|e| err(s, format!("listen: {e}")))
    }

    /// connect(2) as the process `who` (the accepting side's SO_PEERCRED).
    fn connect_as(&self, s: &pb::UnixSocket, fd: &OwnedFd, name: &[u8], dir: &str, who: Option<&pb::UnixCreds>) -> Result<()> {
        let addr = addr_of(name).map_err(|e| err(s, format!("address {}: {e}", name_text(name))))?;
        let raw = fd.as_raw_fd();
        // Non-blocking: a full accept queue (a lower net.core.somaxconn now) is an
        // error, not a wait forever.
        crate::sys::fd::set_status_flags(fd, libc::O_NONBLOCK as u32)?;
        let r = as_peer(who, self.exact_pids, || in_dir(dir, || so::connect(raw, &addr)).map(|()| Vec::new()))
            .map(drop)
            .map_err(|e| err(s, format!("connect to {}: {e}", name_text(name))));
        crate::sys::fd::set_status_flags(fd, 0)?;
        r
    }

    fn connect(&self, s: &pb::UnixSocket, fd: &OwnedFd, name: &[u8], dir: &str) -> Result<()> {
        let addr = addr_of(name).map_err(|e| err(s, format!("address {}: {e}", name_text(name))))?;
        in_dir(dir, || so::connect(fd.as_raw_fd(), &addr)).map_err(|e| err(s, format!("connect to {}: {e}", name_text(name))))
    }

    /// A new file description of socket `ino` (crtool keeps its own).
    pub fn open(&self, ino: u64) -> Result<OwnedFd> {
        let fd = self.fds.get(&ino).ok_or_else(|| Error::other(format!("socket:[{ino}] is missing from unixsk.img")))?;
        fd.try_clone()
    }

    /// Socket files bound by restore, to remove when the restore fails.
    pub fn created_paths(&self) -> &[PathBuf] {
        &self.created
    }

    /// Refills every queue, then connects datagram sockets, sets shutdown states,
    /// options and backlogs, and closes the peers that were closed. `file` gives
    /// crtool's fd of a file id (for passed files), `outer` a tree pid as crtool
    /// sees it (for passed credentials).
    pub fn finish(&mut self, packets: &[pb::SkPacket], file: &dyn Fn(u32) -> Option<RawFd>, outer: &dyn Fn(i32) -> Option<i32>) -> Result<()> {
        let mut by_sock: BTreeMap<u64, Vec<&pb::SkPacket>> = BTreeMap::new();
        for p in packets {
            if !self.sockets.contains_key(&p.ino) {
                return Err(Error::other(format!("skqueues.img: a message for socket:[{}], which unixsk.img does not have", p.ino)));
            }
            by_sock.entry(p.ino).or_default().push(p);
        }
        let socks: Vec<pb::UnixSocket> = self.sockets.values().cloned().collect();
        for s in &socks {
            let queue = by_sock.remove(&s.ino).unwrap_or_default();
            let dgram_peer = s.r#type == libc::SOCK_DGRAM as u32 && (s.peer != 0 || s.external) && !self.paired.contains(&s.ino) && s.peer != s.ino;
            // A datagram socket connected to one peer takes that peer's messages
            // without queue limits; others' only while it is not connected.
            let all_from_peer = dgram_peer && queue.iter().all(|p| !p.sender.is_empty() && p.sender == self.peer_name(s));
            if dgram_peer && all_from_peer {
                self.connect_dgram(s)?;
            }
            for p in &queue {
                self.resend(s, p, file, outer)?;
            }
            if dgram_peer && !all_from_peer {
                self.connect_dgram(s)?;
            }
        }
        for s in &socks {
            let fd = self.fd(s)?;
            if s.shutdown != 0 && !s.peer_closed && s.state == TCP_ESTABLISHED {
                let how = match s.shutdown & 3 {
                    1 => so::Shutdown::Read,
                    2 => so::Shutdown::Write,
                    _ => so::Shutdown::Both,
                };
                so::shutdown(fd.as_raw_fd(), how).map_err(|e| err(s, format!("shutdown: {e}")))?;
            }
            set_options(s, fd)?;
        }
        // Closed peers go now: the survivors see them closed.
        self.others.clear();
        self.temp_listeners.clear();
        for p in std::mem::take(&mut self.unlink_after) {
            let _ = std::fs::remove_file(&p);
        }
        // `created` stays: should the restore still fail, the tree is killed and
        // the files its sockets were bound to go too.
        Ok(())
    }

    fn fd(&self, s: &pb::UnixSocket) -> Result<&OwnedFd> {
        self.fds.get(&s.ino).ok_or_else(|| err(s, "it was not made (inconsistent unixsk.img)"))
    }


    fn peer_name(&self, s: &pb::UnixSocket) -> Vec<u8> {
        if s.external {
            return s.peer_name.clone();
        }
        self.sockets.get(&s.peer).map(|p| p.name.clone()).unwrap_or_default()
    }

    fn connect_dgram(&self, s: &pb::UnixSocket) -> Result<()> {
        let (name, dir) = if s.external { (s.peer_name.clone(), String::new()) } else {
            let p = self.sockets.get(&s.peer).ok_or_else(|| err(s, "its peer is missing from unixsk.img"))?;
            (p.name.clone(), p.name_dir.clone())
        };
        self.connect(s, self.fd(s)?, &name, &dir)
    }

    /// Sends message `p` again so that it lands in `s`'s queue.
    fn resend(&mut self, s: &pb::UnixSocket, p: &pb::SkPacket, file: &dyn Fn(u32) -> Option<RawFd>, outer: &dyn Fn(i32) -> Option<i32>) -> Result<()> {
        let stream_like = s.r#type != libc::SOCK_DGRAM as u32;
        // The sender and the address it sends to (None: its connected peer).
        // (Only its peer can send to a socket connected to it.)
        let (sender, to): (RawFd, Option<UnixAddr>) = if stream_like || self.paired.contains(&s.ino) || s.peer_closed || s.peer == s.ino {
            let from = self.others.get(&s.ino).or_else(|| self.fds.get(&s.peer)).ok_or_else(|| err(s, "no peer to send its queued data from"))?;
            (from.as_raw_fd(), None)
        } else {
            if s.name.is_empty() {
                return Err(err(s, "an unbound datagram socket with messages from other senders than its peer"));
            }
            let to = addr_of(&s.name).map_err(|e| err(s, e))?;
            let named = self.sockets.values().find(|o| !p.sender.is_empty() && o.name == p.sender && !o.accepted && o.r#type == s.r#type).map(|o| o.ino);
            match named {
                Some(ino) => (self.fds.get(&ino).ok_or_else(|| err(s, "its sender was not made"))?.as_raw_fd(), Some(to)),
                None => {
                    // A sender that is gone: a stand-in bound to its name.
                    let tmp = new_socket(s)?;
                    if !p.sender.is_empty() {
                        let stand_in = pb::UnixSocket { name: p.sender.clone(), ino: 0, peer: 0, ..s.clone() };
                        self.bind(&stand_in, &tmp, &p.sender).map_err(|e| err(s, format!("a stand-in for the sender {} of a queued datagram: {e}", name_text(&p.sender))))?;
                        if p.sender[0] != 0 {
                            self.unlink_after.insert(self.path_of(&stand_in, &p.sender));
                        }
                    }
                    let raw = tmp.as_raw_fd();
                    self.others.insert(u64::MAX - self.others.len() as u64, tmp);
                    (raw, Some(to))
                }
            }
        };
        let sfd = crate::sys::fd::dup_owned(sender)?;
        let old = so::getsockopt(&sfd, sockopt::SndBuf).unwrap_or(0);
        let _ = so::setsockopt(&sfd, sockopt::SndBufForce, &(FILL_SNDBUF as usize / 2));
        let fds: Vec<RawFd> = p.fds.iter().map(|&id| file(id).ok_or_else(|| err(s, format!("queued file {id} was not opened")))).collect::<Result<_>>()?;
        // Credentials of a process of the tree, of one that still exists, or of one
        // that is gone (sent by a short-lived stand-in with its pid).
        let mut stand_in = None;
        let creds = match &p.creds {
            // pid 0: the message carried no credentials (neither end had SO_PASSCRED
            // when it was sent); none are attached now either (options come later).
            Some(c) if c.pid == 0 => None,
            Some(c) => {
                let pid = if c.outside || c.pid == 0 { c.pid } else { outer(c.pid).ok_or_else(|| err(s, format!("pid {} of queued credentials is not in the restored tree", c.pid)))? };
                if c.outside && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) == Err(Errno::ESRCH) {
                    stand_in = Some(pid);
                }
                Some(so::UnixCredentials::from(libc::ucred { pid, uid: c.uid, gid: c.gid }))
            }
            None => None,
        };
        let mut cmsgs = Vec::new();
        if !fds.is_empty() {
            cmsgs.push(ControlMessage::ScmRights(&fds));
        }
        if let Some(c) = &creds {
            cmsgs.push(ControlMessage::ScmCredentials(c));
        }
        let r = match (stand_in, &p.creds) {
            (Some(pid), Some(c)) => send_as_exited(pid, sender, &p.data, &fds, to.as_ref(), c),
            _ => send_all(sender, &p.data, &cmsgs, to.as_ref(), stream_like),
        };
        let _ = so::setsockopt(&sfd, sockopt::SndBufForce, &(old / 2));
        r.map_err(|e| err(s, format!("sending its queued data again: {e}")))
    }

    /// The parked description of every socket: crtool's own, for closing.
    pub fn into_fds(self) -> Vec<OwnedFd> {
        self.fds.into_values().collect()
    }
}

fn send_all(fd: RawFd, data: &[u8], cmsgs: &[ControlMessage], to: Option<&UnixAddr>, stream: bool) -> nix::Result<()> {
    let mut off = 0;
    loop {
        let first = off == 0;
        let iov = [IoSlice::new(&data[off..])];
        let n = so::sendmsg(fd, &iov, if first { cmsgs } else { &[] }, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL, to)?;
        off += n;
        if off >= data.len() || !stream {
            return Ok(());
        }
    }
}

/// Sends from a short-lived child with pid `pid` (clone3 set_tid), which exits
/// before the message is read: the receiver sees the credentials of a process that
/// no longer exists, as it did at dump time.
fn send_as_exited(pid: i32, fd: RawFd, data: &[u8], fds: &[RawFd], to: Option<&UnixAddr>, c: &pb::UnixCreds) -> nix::Result<()> {
    use crate::sys::process::{Forked, fork_with_pids};
    match fork_with_pids(&[pid], 0)? {
        Forked::Child => {
            let creds = so::UnixCredentials::from(libc::ucred { pid, uid: c.uid, gid: c.gid });
            let mut cmsgs = vec![ControlMessage::ScmCredentials(&creds)];
            if !fds.is_empty() {
                cmsgs.push(ControlMessage::ScmRights(fds));
            }
            let ok = send_all(fd, data, &cmsgs, to, true).is_ok();
            crate::sys::process::exit_now(if ok { 0 } else { 1 })
        }
        Forked::Parent(child) => match wait_child(child)? {
            nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(()),
            _ => Err(Errno::EIO),
        },
    }
}

/// waitpid(child), again after EINTR (crtool's signal handlers do not restart
/// calls): a helper left unreaped would keep a pid of the tree.
fn wait_child(child: nix::unistd::Pid) -> nix::Result<nix::sys::wait::WaitStatus> {
    loop {
        match nix::sys::wait::waitpid(child, None) {
            Err(Errno::EINTR) => continue,
            r => return r,
        }
    }
}

/// Fds a helper passes back per message (below SCM_MAX_FD).
const PER_MESSAGE: usize = 250;

/// Runs `f` as the process `who` describes, for the syscalls that record their
/// caller in a socket (socketpair, listen, connect: SO_PEERCRED; af_unix.c
/// init_peercred): in a short-lived child of crtool with that pid (clone3 set_tid,
/// when `exact_pids` and the pid is free) and that effective uid and gid. The
/// sockets `f` makes come back to crtool over a socketpair (SCM_RIGHTS); sockets it
/// only changes are crtool's own (the child shares them). `None`: crtool does it.
fn as_peer(who: Option<&pb::UnixCreds>, exact_pids: bool, f: impl FnOnce() -> nix::Result<Vec<OwnedFd>>) -> nix::Result<Vec<OwnedFd>> {
    use crate::sys::process::{Forked, fork_with_pids};
    let Some(c) = who.filter(|c| c.pid > 0) else { return f() };
    let (tx, rx) = so::socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
    let forked = if exact_pids {
        match fork_with_pids(&[c.pid], 0) {
            Err(Errno::EEXIST) => fork_with_pids(&[], 0)?, // the pid is taken (by the original, outside the tree)
            r => r?,
        }
    } else {
        fork_with_pids(&[], 0)?
    };
    match forked {
        Forked::Child => {
            drop(rx);
            let run = || -> nix::Result<Vec<OwnedFd>> {
                let keep = nix::unistd::Uid::from_raw(u32::MAX);
                // Supplementary groups too (SO_PEERGROUPS; and a connect allowed
                // through one).
                let groups: Vec<nix::unistd::Gid> = c.groups.iter().map(|&g| nix::unistd::Gid::from_raw(g)).collect();
                nix::unistd::setgroups(&groups)?;
                nix::unistd::setresgid(nix::unistd::Gid::from_raw(u32::MAX), nix::unistd::Gid::from_raw(c.gid), nix::unistd::Gid::from_raw(u32::MAX))?;
                nix::unistd::setresuid(keep, nix::unistd::Uid::from_raw(c.uid), keep)?;
                f()
            };
            let code = match run() {
                Ok(fds) => {
                    // At most SCM_MAX_FD (253) fds a message: "m" = more follow.
                    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
                    let chunks: Vec<&[RawFd]> = if raw.is_empty() { vec![&[][..]] } else { raw.chunks(PER_MESSAGE).collect() };
                    let last = chunks.len() - 1;
                    let sent = chunks.iter().enumerate().all(|(i, c)| {
                        let cmsg = [ControlMessage::ScmRights(c)];
                        let tag: &[u8] = if i == last { b"k" } else { b"m" };
                        so::sendmsg::<()>(tx.as_raw_fd(), &[IoSlice::new(tag)], if c.is_empty() { &[] } else { &cmsg }, MsgFlags::empty(), None).is_ok()
                    });
                    if sent { 0 } else { 1 }
                }
                Err(e) => {
                    let _ = so::send(tx.as_raw_fd(), &(e as i32).to_ne_bytes(), MsgFlags::empty());
                    1
                }
            };
            crate::sys::process::exit_now(code)
        }
        Forked::Parent(child) => {
            drop(tx);
            let mut fds = Vec::new();
            let got = loop {
                let mut buf = [0u8; 8];
                let mut cmsg = nix::cmsg_space!([RawFd; PER_MESSAGE]);
                let r = {
                    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
                    so::recvmsg::<()>(rx.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC).map(|m| {
                        for c in m.cmsgs().into_iter().flatten() {
                            if let so::ControlMessageOwned::ScmRights(v) = c {
                                fds.extend(crate::sys::fd::take_received(v));
                            }
                        }
                        m.bytes
                    })
                };
                match r {
                    Ok(1) if buf[0] == b'm' => continue,
                    Ok(1) => break Ok(()),
                    Ok(4) => break Err(Errno::from_raw(i32::from_ne_bytes(buf[..4].try_into().unwrap()))),
                    Ok(_) => break Err(Errno::EIO),
                    Err(e) => break Err(e),
                }
            };
            let status = wait_child(child)?;
            got?;
            match status {
                nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(fds),
                _ => Err(Errno::EIO),
            }
        }
    }
}

/// Socket options, as the socket had them.
fn set_options(s: &pb::UnixSocket, fd: &OwnedFd) -> Result<()> {
    let f = fd.as_fd();
    let e = |what: &str, x: Errno| err(s, format!("{what}: {x}"));
    if so::getsockopt(&f, sockopt::PassCred).map_err(|x| e("SO_PASSCRED", x))? != s.passcred {
        so::setsockopt(&f, sockopt::PassCred, &s.passcred).map_err(|x| e("SO_PASSCRED", x))?;
    }
    if (sock::get_int(f, libc::SO_PASSSEC).map_err(|x| e("SO_PASSSEC", x))? != 0) != s.passsec {
        sock::set_int(f, libc::SO_PASSSEC, s.passsec as i32).map_err(|x| e("SO_PASSSEC", x))?;
    }
    // The kernel doubles what is set (socket(7)); only values that differ are set,
    // as setting one also locks it against the kernel's own sizing.
    if so::getsockopt(&f, sockopt::SndBuf).map_err(|x| e("SO_SNDBUF", x))? != s.sndbuf as usize {
        so::setsockopt(&f, sockopt::SndBufForce, &(s.sndbuf as usize / 2)).map_err(|x| e("SO_SNDBUFFORCE", x))?;
    }
    if so::getsockopt(&f, sockopt::RcvBuf).map_err(|x| e("SO_RCVBUF", x))? != s.rcvbuf as usize {
        so::setsockopt(&f, sockopt::RcvBufForce, &(s.rcvbuf as usize / 2)).map_err(|x| e("SO_RCVBUFFORCE", x))?;
    }
    let tv = |us: u64| nix::sys::time::TimeVal::new((us / 1_000_000) as i64, (us % 1_000_000) as i64);
    if s.sndtimeo_us != 0 {
        so::setsockopt(&f, sockopt::SendTimeout, &tv(s.sndtimeo_us)).map_err(|x| e("SO_SNDTIMEO", x))?;
    }
    if s.rcvtimeo_us != 0 {
        so::setsockopt(&f, sockopt::ReceiveTimeout, &tv(s.rcvtimeo_us)).map_err(|x| e("SO_RCVTIMEO", x))?;
    }
    if s.rcvlowat > 1 {
        sock::set_int(f, libc::SO_RCVLOWAT, s.rcvlowat).map_err(|x| e("SO_RCVLOWAT", x))?;
    }
    if s.passpidfd {
        sock::set_int(f, sock::SO_PASSPIDFD, 1).map_err(|x| e("SO_PASSPIDFD", x))?;
    }
    if s.peek_off != -1 && s.state != TCP_LISTEN {
        sock::set_int(f, libc::SO_PEEK_OFF, s.peek_off).map_err(|x| e("SO_PEEK_OFF", x))?;
    }
    Ok(())
}
