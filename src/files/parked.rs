//! Restoring open files: the descriptions crtool opens before the tree forks
//! (parked at high fd numbers, inherited by every task), those each task opens for
//! itself, and installing them at their fd numbers.

use super::{event, fanotify, inet, locks, memfd, ghost, netlink, packet, pidfd, pipe, procfile, reg, tty, tun, unix, chr, describe, flags_of, FileKind};
use crate::error::{Error, Result};
use crate::sys::fd;
use images_format::pb::{self, file_entry::Kind};
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// What crtool opens the files it makes itself through (before the tree forks):
/// pipes and FIFOs, unix sockets, memfds, ghost files.
struct Sources<'s, 'p> {
    pipe_ends: &'s mut pipe::Restorer<'p>,
    unix: Option<&'s unix::Restorer>,
    memfds: &'s memfd::MemfdObjects,
    ghosts: &'s ghost::Ghosts,
    ptys: &'s tty::Ptys,
    inet: Option<&'s inet::Restorer>,
    netlink: Option<&'s netlink::Restorer>,
    packet: Option<&'s packet::Restorer>,
}

/// Opens `f` as the images describe it, with what open(2) cannot set (O_ASYNC,
/// F_SETSIG). Pipes, FIFOs, unix sockets, memfds and ghost files go through `src`
/// (in crtool only).
fn reopen(f: &pb::FileEntry, src: Option<Sources>) -> Result<OwnedFd> {
    let kind = f.kind.as_ref().ok_or_else(|| Error::BadImage { file: "files.img".into(), msg: format!("file {} has no kind", f.id) })?;
    let fd = match (kind, src) {
        (Kind::Reg(r), Some(s)) if r.ghost => {
            let path = s.ghosts.path(&r.path, r.ino).ok_or_else(|| Error::BadImage { file: "ghost.img".into(), msg: format!("deleted file {} of file {} is missing", r.path, f.id) })?;
            reg::RegFileKind(pb::RegFile { path, ..r.clone() }).open()
        }
        (Kind::Memfd(m), Some(s)) => s.memfds.open(m),
        (Kind::Pty(p), Some(s)) => s.ptys.open(p),
        (Kind::Packet(n), Some(s)) => {
            let r = s.packet.ok_or_else(|| Error::BadImage { file: "packetsk.img".into(), msg: format!("socket:[{}] of file {} is missing", n.ino, f.id) })?;
            r.open(n.ino).and_then(|fd| fd::set_status_flags(&fd, n.flags).map(|()| fd))
        }
        (Kind::Netlink(n), Some(s)) => {
            let r = s.netlink.ok_or_else(|| Error::BadImage { file: "netlinksk.img".into(), msg: format!("socket:[{}] of file {} is missing", n.ino, f.id) })?;
            r.open(n.ino).and_then(|fd| fd::set_status_flags(&fd, n.flags).map(|()| fd))
        }
        (Kind::Inet(i), Some(s)) => {
            let r = s.inet.ok_or_else(|| Error::BadImage { file: "inetsk.img".into(), msg: format!("socket:[{}] of file {} is missing", i.ino, f.id) })?;
            r.open(i.ino).and_then(|fd| fd::set_status_flags(&fd, i.flags).map(|()| fd))
        }
        (Kind::Unix(u), Some(s)) => {
            let r = s.unix.ok_or_else(|| Error::BadImage { file: "unixsk.img".into(), msg: format!("socket:[{}] of file {} is missing", u.ino, f.id) })?;
            r.open(u.ino).and_then(|fd| fd::set_status_flags(&fd, u.flags).map(|()| fd))
        }
        (Kind::Reg(r), _) => reg::RegFileKind(r.clone()).open(),
        (Kind::Chr(c), _) => chr::ChrDevKind(c.clone()).open(),
        (Kind::Tty(t), _) => chr::open_terminal(t),
        (Kind::Pidfd(p), _) => pidfd::open(p),
        (Kind::Proc(p), _) => procfile::open(p),
        (Kind::Fanotify(f), _) => fanotify::open(f),
        (Kind::Tun(t), _) => tun::open(t),
        (Kind::Pipe(p), Some(s)) => s.pipe_ends.open_end(p),
        (Kind::Fifo(p), Some(s)) => s.pipe_ends.open_fifo(p),
        (k @ (Kind::Eventfd(_) | Kind::Signalfd(_) | Kind::Timerfd(_) | Kind::Epoll(_) | Kind::Inotify(_)), _) => event::open(k),
        _ => Err(std::io::Error::other("pipes, sockets, memfds, ghost files and pseudo-terminals are opened by crtool")),
    }
    .map_err(|e| Error::Reported(format!("cannot reopen {}: {e}", describe(kind))))?;
    // O_ASYNC is set by the task on its own fd (see `Parked::install`).
    if f.signum != 0 {
        fd::set_async(&fd, false, f.signum).map_err(|e| Error::Reported(format!("cannot restore F_SETSIG of {}: {e}", describe(kind))))?;
    }
    Ok(fd)
}

/// The open file descriptions of the tree that crtool opens before it forks the
/// tree, parked at high fd numbers: those shared by several tasks (forked tasks
/// inherit them all and install theirs, so they are shared again), pipes and FIFOs,
/// and those with a SIGIO owner (set from crtool once the tree exists). A task opens
/// its private ones itself, so that restoring thousands of fds never needs twice
/// as many at once.
pub struct Parked {
    by_id: BTreeMap<u32, RawFd>,
    /// Extra fds that only keep objects alive (FIFO keepers).
    keepers: Vec<RawFd>,
    /// Descriptions each task opens for itself.
    private: BTreeMap<u32, pb::FileEntry>,
    /// Lowest number above every task's fds: parked (and other crtool) fds live
    /// at or above it.
    park_at: RawFd,
    /// Descriptions with O_ASYNC: the task (pid in the tree) that sets it, on its
    /// lowest fd of the description (the kernel notes the fd number, which SIGIO's
    /// si_fd reports; it must be the task's, not crtool's).
    async_by: BTreeMap<u32, i32>,
    /// The unix sockets, until their queues and states are restored.
    unix: Option<unix::Restorer>,
    /// The inet sockets, until their connections are let go.
    inet: Option<inet::Restorer>,
    /// The restore succeeded: dropping keeps the socket files (see `Drop`).
    pub restored: bool,
    /// crtool's pid (where dropping may remove files).
    owner: u32,
    /// Epoll instances: the task (pid in the tree) that adds their watches back,
    /// with its fd numbers, and the watches.
    epolls: BTreeMap<u32, (i32, Vec<pb::EpollTarget>)>,
    /// A slave of each pty pair that is a session's controlling terminal, by index.
    ctty: BTreeMap<u32, RawFd>,
}

impl Parked {
    /// `users` counts the tasks that hold each file id and `first_user` names the
    /// first; `inherited` are the pipes the caller hands over for external ones
    /// (pipe id → fd of crtool's).
    /// `sockets` are the unix sockets (and `inherited_socks` the caller's sockets
    /// for external stream peers, by inode); files passed in `packets` are parked
    /// too (crtool sends them again). `exact_pids`: the tree's pids are crtool's
    /// (no new PID namespace), so sockets can be made by helpers with their pids.
    #[allow(clippy::too_many_arguments)]
    pub fn open_all(
        files: &[pb::FileEntry],
        pipes: &[pb::PipeData],
        sockets: &[pb::UnixSocket],
        packets: &[pb::SkPacket],
        park_at: i32,
        users: &BTreeMap<u32, (usize, i32)>,
        inherited: BTreeMap<u64, RawFd>,
        inherited_socks: &BTreeMap<u64, RawFd>,
        exact_pids: bool,
        memfds: &memfd::MemfdObjects,
        ghosts: &ghost::Ghosts,
        ptys: &tty::Ptys,
        pty_pairs: &[pb::PtyPair],
        inet_sockets: &[pb::InetSocket],
        netlink_sockets: &[pb::NetlinkSocket],
        packet_sockets: &[pb::PacketSocket],
    ) -> Result<Parked> {
        let async_by = files
            .iter()
            .filter(|f| f.kind.as_ref().is_some_and(|k| flags_of(k) & libc::O_ASYNC as u32 != 0))
            .filter_map(|f| users.get(&f.id).map(|&(_, first)| (f.id, first)))
            .collect();
        let unix = if sockets.is_empty() { None } else { Some(unix::Restorer::create(sockets, inherited_socks, exact_pids).map_err(|e| Error::Reported(format!("cannot restore unix sockets: {e}")))?) };
        let inet = if inet_sockets.is_empty() { None } else { Some(inet::Restorer::create(inet_sockets).map_err(|e| Error::Reported(format!("cannot restore inet sockets: {e}")))?) };
        let netlink = if netlink_sockets.is_empty() { None } else { Some(netlink::Restorer::create(netlink_sockets).map_err(|e| Error::Reported(format!("cannot restore netlink sockets: {e}")))?) };
        let packet = if packet_sockets.is_empty() { None } else { Some(packet::Restorer::create(packet_sockets).map_err(|e| Error::Reported(format!("cannot restore packet sockets: {e}")))?) };
        let epolls = files
            .iter()
            .filter_map(|f| match &f.kind {
                Some(Kind::Epoll(e)) => users.get(&f.id).map(|&(_, first)| (f.id, (first, e.targets.clone()))),
                _ => None,
            })
            .collect();
        let mut parked = Parked { by_id: BTreeMap::new(), keepers: Vec::new(), private: BTreeMap::new(), park_at, async_by, unix, inet, restored: false, epolls, owner: std::process::id(), ctty: BTreeMap::new() };
        let in_flight: std::collections::BTreeSet<u32> = packets.iter().flat_map(|p| p.fds.iter().copied()).collect();
        let mut pipe_ends = pipe::Restorer::new(pipes, inherited);
        for f in files {
            let ghost = matches!(&f.kind, Some(Kind::Reg(r)) if r.ghost);
            let piped = ghost || matches!(&f.kind, Some(Kind::Pidfd(p)) if pidfd::made_by_crtool(p)) || matches!(f.kind, Some(Kind::Tty(_)) | Some(Kind::Pty(_)) | Some(Kind::Inet(_)) | Some(Kind::Netlink(_)) | Some(Kind::Packet(_)) | Some(Kind::Tun(_))) || matches!(f.kind, Some(Kind::Pipe(_)) | Some(Kind::Fifo(_)) | Some(Kind::Unix(_)) | Some(Kind::Memfd(_)));
            if !piped && !in_flight.contains(&f.id) && f.owner.is_none() && users.get(&f.id).map_or(0, |u| u.0) <= 1 {
                parked.private.insert(f.id, f.clone());
                continue;
            }
            let fd = reopen(f, Some(Sources { pipe_ends: &mut pipe_ends, unix: parked.unix.as_ref(), memfds, ghosts, ptys, inet: parked.inet.as_ref(), netlink: netlink.as_ref(), packet: packet.as_ref() }))?;
            parked.by_id.insert(f.id, park(fd, park_at)?);
        }
        ptys.seal()?;
        // A slave of each pair that is a session's controlling terminal, for its
        // session leader to take (TIOCSCTTY).
        for p in pty_pairs.iter().filter(|p| p.session != 0) {
            let s = ptys.slave(p.index).ok_or_else(|| Error::BadImage { file: "tty.img".into(), msg: format!("pty {} was not made", p.index) })?;
            let fd = park(s.try_clone_to_owned().map_err(|e| Error::io("pseudo-terminal slave", e))?, park_at)?;
            parked.keepers.push(fd);
            parked.ctty.insert(p.index, fd);
        }
        for k in pipe_ends.into_keepers() {
            parked.keepers.push(park(k, park_at)?);
        }
        Ok(parked)
    }

    /// Sets the SIGIO owner of every description that had one (F_SETOWN_EX), once
    /// the tree exists; `outer` maps an id of the tree's namespace to crtool's.
    pub fn set_owners(&self, files: &[pb::FileEntry], outer: &dyn Fn(i32) -> Option<i32>) -> Result<()> {
        for f in files {
            let (Some(o), Some(&fd)) = (&f.owner, self.by_id.get(&f.id)) else { continue };
            let pid = outer(o.pid).ok_or_else(|| Error::Restore { pid: o.pid, msg: format!("the SIGIO owner {} of file {} is not in the restored tree", o.pid, f.id) })?;
            fd::set_owner(fd, o.r#type, pid).map_err(|e| Error::Restore { pid: o.pid, msg: format!("F_SETOWN_EX on file {}: {e}", f.id) })?;
        }
        Ok(())
    }

    /// Refills the unix sockets' queues and sets their states (once every task
    /// exists; `outer` maps a pid of the tree to crtool's).
    pub fn finish_sockets(&mut self, packets: &[pb::SkPacket], outer: &dyn Fn(i32) -> Option<i32>) -> Result<()> {
        let Some(u) = self.unix.as_mut() else { return Ok(()) };
        let by_id = &self.by_id;
        u.finish(packets, &|id| by_id.get(&id).copied(), outer).map_err(|e| Error::Reported(format!("cannot restore unix sockets: {e}")))
    }

    /// Lets the restored TCP connections go (out of repair mode) and removes the
    /// network lock, once every task exists.
    pub fn finish_inet(&mut self) -> Result<()> {
        let Some(i) = self.inet.as_mut() else { return Ok(()) };
        i.finish().map_err(|e| Error::Reported(format!("cannot restore inet sockets: {e}")))
    }

    /// Removes the socket files restore bound (after a failed restore).
    pub fn remove_socket_files(&self) {
        for p in self.unix.as_ref().map(|u| u.created_paths()).unwrap_or(&[]) {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Highest parked fd number (at least the highest number any task uses).
    pub fn max_fd(&self) -> RawFd {
        self.by_id.values().chain(self.keepers.iter()).copied().max().unwrap_or(0).max(self.park_at - 1)
    }

    /// Installs a task's fds at their numbers (in the restoring task, after it closed
    /// every fd of crtool's except the parked ones and `keep`).
    pub fn install(&self, pid: i32, fds: &[pb::FdEntry]) -> Result<()> {
        let dup = |src: RawFd, e: &pb::FdEntry| fd::dup_to(src, e.fd, e.cloexec).map_err(|err| Error::Restore { pid, msg: format!("fd {}: dup3: {err}", e.fd) });
        // Private descriptions, each opened once and put at all its fds. The open
        // takes the lowest free number: never an fd installed before, never a parked
        // or kept one (those lie above every target); it is closed unless it is one
        // of the description's own fds.
        let mut done = std::collections::BTreeSet::new();
        for e in fds {
            let Some(f) = self.private.get(&e.file_id) else { continue };
            if !done.insert(e.file_id) {
                continue;
            }
            let fd = reopen(f, None)?;
            let n = fd.as_raw_fd();
            let mut kept = false;
            for t in fds.iter().filter(|t| t.file_id == e.file_id) {
                if t.fd == n {
                    fd::set_cloexec(n, t.cloexec).map_err(|err| Error::Restore { pid, msg: format!("fd {n}: {err}") })?;
                    kept = true;
                } else {
                    dup(n, t)?;
                }
            }
            if kept {
                std::mem::forget(fd); // the task's own fd now
            }
        }
        for e in fds.iter().filter(|e| !self.private.contains_key(&e.file_id)) {
            let src = *self.by_id.get(&e.file_id).ok_or_else(|| Error::BadImage {
                file: format!("fdinfo-{pid}.img"),
                msg: format!("fd {} refers to missing file id {}", e.fd, e.file_id),
            })?;
            dup(src, e)?;
        }
        // Epoll watches, each added by the process that holds its file at its fd
        // number (the kernel keys a watch by file and fd number): fired one-shot
        // watches first, each made to fire once (disarming it) before the next.
        for (&id, (_, targets)) in &self.epolls {
            let Some(ep) = fds.iter().find(|e| e.file_id == id) else { continue };
            let mine = |t: &&pb::EpollTarget| t.holder == pid;
            for t in targets.iter().filter(mine).filter(|t| t.disarmed).chain(targets.iter().filter(mine).filter(|t| !t.disarmed)) {
                if !fds.iter().any(|e| e.fd == t.tfd && e.file_id == t.file_id) {
                    return Err(Error::Restore { pid, msg: format!("epoll fd {}: watched fd {} does not hold file {}", ep.fd, t.tfd, t.file_id) });
                }
                let events = if t.disarmed { t.events | event::DISARM_WITH } else { t.events };
                crate::sys::event::epoll_add(ep.fd, t.tfd, events, t.data).map_err(|err| Error::Restore { pid, msg: format!("epoll fd {}: adding fd {}: {err}", ep.fd, t.tfd) })?;
                if t.disarmed && crate::sys::event::epoll_wait_now(ep.fd).map_err(|err| Error::Restore { pid, msg: format!("epoll fd {}: {err}", ep.fd) })? == 0 {
                    return Err(Error::Restore { pid, msg: format!("epoll fd {}: the fired one-shot watch on fd {} did not fire again (its file is not ready)", ep.fd, t.tfd) });
                }
            }
        }
        for (&id, _) in self.async_by.iter().filter(|&(_, &holder)| holder == pid) {
            if let Some(lowest) = fds.iter().filter(|e| e.file_id == id).map(|e| e.fd).min() {
                fd::set_async_raw(lowest).map_err(|err| Error::Restore { pid, msg: format!("fd {lowest}: O_ASYNC: {err}") })?;
            }
        }
        Ok(())
    }

    /// Takes the task's file locks again through its fds (in the task, once every
    /// fd of crtool's is closed: closing any fd of a file drops the process's POSIX
    /// locks on it).
    pub fn take_locks(&self, pid: i32, fds: &[pb::FdEntry]) -> Result<()> {
        for e in fds {
            for l in &e.locks {
                locks::take(e.fd, l).map_err(|err| Error::Restore { pid, msg: format!("fd {}: {}: {err} (is the file locked by another process now?)", e.fd, locks::describe(l)) })?;
            }
        }
        Ok(())
    }

    /// Closes every parked fd (in a task, once its own are installed).
    pub fn close_all(&self) {
        for &p in self.by_id.values().chain(self.keepers.iter()) {
            fd::close_raw(p);
        }
    }

    /// The parked slave of pty pair `index` (see `ctty`).
    pub fn ctty_fd(&self, index: u32) -> Option<RawFd> {
        self.ctty.get(&index).copied()
    }

    pub fn all_fds(&self) -> Vec<RawFd> {
        self.by_id.values().chain(self.keepers.iter()).copied().collect()
    }
}

impl Drop for Parked {
    /// In crtool, once the tree holds its own fds (forked tasks never drop this).
    /// Socket files bound for the tree go too unless the restore succeeded.
    fn drop(&mut self) {
        // Only crtool itself: a forked task unwinding through this copy must not
        // remove the files the tree uses.
        if !self.restored && std::process::id() == self.owner {
            self.remove_socket_files();
        }
        self.close_all();
    }
}

/// The duplicate lives until the tasks close it (crtool keeps it until the end).
fn park(f: OwnedFd, at: i32) -> Result<RawFd> {
    fd::dup_above(f.as_raw_fd(), at).map_err(|e| Error::sys("parking an fd (F_DUPFD)", nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0))))
}

