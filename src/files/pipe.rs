//! Pipes and named FIFOs: which end, its flags, and the bytes sitting in the buffer.
//! Data is copied with tee(2) from a second read end, so the task's buffer is never
//! consumed; at restore it is written back into the new pipe before anyone runs.

use super::{FdInfo, FileKind};
use crate::error::{Error, Result};
use images_format::pb::{self, file_entry::Kind};
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::stat::{SFlag, fstat};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

pub struct PipeKind;

impl FileKind for PipeKind {
    fn dump(_pid: i32, info: &FdInfo, fd: &OwnedFd, st: &libc::stat) -> Result<Kind> {
        let flags = info.flags & !(libc::O_CLOEXEC as u32);
        if info.link.starts_with("pipe:") {
            Ok(Kind::Pipe(pb::PipeEnd { pipe_id: st.st_ino, flags, external: false }))
        } else {
            // A reader reports POLLHUP once the writers it saw are gone; one that
            // opened with no writer and saw none since stays quiet (pipe_poll()).
            let read_only = flags & libc::O_ACCMODE as u32 == libc::O_RDONLY as u32;
            let mut pfd = [nix::poll::PollFd::new(fd.as_fd(), nix::poll::PollFlags::POLLIN)];
            let revents = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::ZERO).ok().and_then(|_| pfd[0].revents()).unwrap_or(nix::poll::PollFlags::empty());
            let quiet = read_only && revents.is_empty();
            Ok(Kind::Fifo(pb::Fifo { path: info.link.clone(), pipe_id: st.st_ino, flags, quiet, external: false }))
        }
    }
    fn open(&self) -> std::io::Result<OwnedFd> {
        Err(std::io::Error::other("pipes are opened through pipe::Restorer"))
    }
}

/// The buffered bytes of the pipe behind `info` (the caller asks once per pipe).
pub fn capture_data(pid: i32, info: &FdInfo, st: &libc::stat) -> Result<pb::PipeData> {
    let err = |what: &str, e: nix::errno::Errno| Error::Unsupported { pid, fd: Some(info.fd), what: format!("pipe {}: {what}: {e}", info.link), hint: None };
    // Opening /proc/PID/fd/N read-only yields a fresh read end of the same pipe.
    let path = format!("/proc/{pid}/fd/{}", info.fd);
    let peek = nix::fcntl::open(path.as_str(), OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
        .map_err(|e| err("reopen", e))?;
    let capacity = fcntl(&peek, FcntlArg::F_GETPIPE_SZ).map_err(|e| err("F_GETPIPE_SZ", e))? as u32;
    let (tr, tw) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(|e| err("pipe2", e))?;
    let _ = fcntl(&tw, FcntlArg::F_SETPIPE_SZ(capacity as i32));
    let mut data = Vec::new();
    let n = match crate::sys::fd::tee(&peek, &tw, capacity as usize) {
        Ok(n) => n,
        Err(nix::errno::Errno::EAGAIN) => 0,
        Err(e) => return Err(err("tee", e)),
    };
    if n > 0 {
        data.resize(n as usize, 0);
        let mut got = 0;
        while got < data.len() {
            match nix::unistd::read(&tr, &mut data[got..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => got += k,
            }
        }
        data.truncate(got);
    }
    Ok(pb::PipeData { pipe_id: st.st_ino, capacity, data })
}

/// Who outside the tree holds the pipes and FIFOs of the tree: for each key
/// ("pipe:[INODE]", or the FIFO's path) a (pid, fd) holding it. Every process but
/// `tree` and crtool itself is looked at (/proc/PID/fd).
pub fn outside_holders(tree: &std::collections::BTreeSet<i32>, keys: &std::collections::BTreeSet<String>) -> BTreeMap<String, (i32, i32)> {
    let mut out = BTreeMap::new();
    let me = std::process::id() as i32;
    let Ok(procs) = std::fs::read_dir("/proc") else { return out };
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else { continue };
        if pid == me || tree.contains(&pid) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for f in fds.flatten() {
            let Ok(link) = std::fs::read_link(f.path()) else { continue };
            let link = link.to_string_lossy();
            if keys.contains(link.as_ref()) && !out.contains_key(link.as_ref()) {
                let fd = f.file_name().to_string_lossy().parse().unwrap_or(-1);
                out.insert(link.into_owned(), (pid, fd));
            }
        }
    }
    out
}

/// Recreates pipes and FIFOs (in crtool, before the tree is forked).
pub struct Restorer<'a> {
    data: BTreeMap<u64, &'a pb::PipeData>,
    /// pipe id → (read end, write end) of the new pipe, until first used.
    fresh: BTreeMap<u64, (Option<OwnedFd>, Option<OwnedFd>)>,
    /// Any end of each new pipe, to open further descriptions through /proc.
    any_end: BTreeMap<u64, OwnedFd>,
    keepers: Vec<OwnedFd>,
    /// External pipes handed over by the caller (--inherit-fd): pipe id → its fd.
    inherited: BTreeMap<u64, RawFd>,
}

impl<'a> Restorer<'a> {
    pub fn new(pipes: &'a [pb::PipeData], inherited: BTreeMap<u64, RawFd>) -> Self {
        Restorer { data: pipes.iter().map(|p| (p.pipe_id, p)).collect(), fresh: BTreeMap::new(), any_end: BTreeMap::new(), keepers: Vec::new(), inherited }
    }

    fn fill(&self, id: u64, w: &OwnedFd) -> std::io::Result<()> {
        if let Some(d) = self.data.get(&id) {
            if d.capacity > 0 {
                let _ = fcntl(w, FcntlArg::F_SETPIPE_SZ(d.capacity as i32));
            }
            let mut off = 0;
            while off < d.data.len() {
                off += nix::unistd::write(w.as_fd(), &d.data[off..]).map_err(std::io::Error::from)?;
            }
        }
        Ok(())
    }

    pub fn open_end(&mut self, p: &pb::PipeEnd) -> std::io::Result<OwnedFd> {
        if p.external {
            let Some(&given) = self.inherited.get(&p.pipe_id) else {
                return Err(std::io::Error::other(format!(
                    "it was shared with a process outside the tree: hand it over with --inherit-fd fd[N]:pipe:[{}]",
                    p.pipe_id
                )));
            };
            let fd = crate::sys::fd::dup_owned(given)?;
            // It must be a pipe (or FIFO) end that can do what this end did.
            let is_pipe = fstat(&fd).is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFIFO);
            let acc = fcntl(&fd, FcntlArg::F_GETFL).map(|f| f & libc::O_ACCMODE).unwrap_or(-1);
            let want_write = p.flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32;
            let fits = if want_write { acc == libc::O_WRONLY || acc == libc::O_RDWR } else { acc == libc::O_RDONLY || acc == libc::O_RDWR };
            if !is_pipe || !fits {
                return Err(std::io::Error::other(format!(
                    "--inherit-fd fd[{given}]:pipe:[{}]: fd {given} is {}, but the task had the {} end of a pipe there",
                    p.pipe_id,
                    if !is_pipe { "not a pipe" } else if want_write { "not writable" } else { "not readable" },
                    if want_write { "write" } else { "read" },
                )));
            }
            crate::sys::fd::set_status_flags(&fd, p.flags)?;
            return Ok(fd);
        }
        if !self.fresh.contains_key(&p.pipe_id) && !self.any_end.contains_key(&p.pipe_id) {
            let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
            self.fill(p.pipe_id, &w)?;
            self.any_end.insert(p.pipe_id, r.try_clone()?);
            self.fresh.insert(p.pipe_id, (Some(r), Some(w)));
        }
        let write = p.flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32;
        let slot = self.fresh.get_mut(&p.pipe_id).and_then(|(r, w)| if write { w.take() } else { r.take() });
        let fd = match slot {
            Some(fd) => fd,
            None => {
                let any = &self.any_end[&p.pipe_id];
                let path = format!("/proc/self/fd/{}", any.as_raw_fd());
                let mode = if write { OFlag::O_WRONLY } else { OFlag::O_RDONLY };
                
                nix::fcntl::open(path.as_str(), mode | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK, nix::sys::stat::Mode::empty())?
            }
        };
        crate::sys::fd::set_status_flags(&fd, p.flags)?;
        Ok(fd)
    }

    pub fn open_fifo(&mut self, f: &pb::Fifo) -> std::io::Result<OwnedFd> {
        if f.external {
            // The process outside keeps the FIFO's pipe (and its bytes) alive.
            let acc = OFlag::from_bits_truncate((f.flags & libc::O_ACCMODE as u32) as i32);
            let fd = nix::fcntl::open(f.path.as_str(), acc | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())?;
            crate::sys::fd::set_status_flags(&fd, f.flags)?;
            return Ok(fd);
        }
        let empty = self.data.get(&f.pipe_id).is_none_or(|d| d.data.is_empty());
        if f.quiet && empty && !self.any_end.contains_key(&f.pipe_id) {
            // A reader that has seen no writer: opened while none exists, so that it
            // stays quiet; the pipe lives as long as it does (no keeper, which would
            // count as a writer).
            let fd = nix::fcntl::open(f.path.as_str(), OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())?;
            crate::sys::fd::set_status_flags(&fd, f.flags)?;
            return Ok(fd);
        }
        if !self.any_end.contains_key(&f.pipe_id) {
            // A read-write keeper creates the FIFO's pipe and keeps it alive.
            let keeper = nix::fcntl::open(f.path.as_str(), OFlag::O_RDWR | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())?;
            self.fill(f.pipe_id, &keeper)?;
            self.any_end.insert(f.pipe_id, keeper.try_clone()?);
            self.keepers.push(keeper);
        }
        let acc = OFlag::from_bits_truncate((f.flags & libc::O_ACCMODE as u32) as i32);
        let fd = nix::fcntl::open(f.path.as_str(), acc | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())?;
        crate::sys::fd::set_status_flags(&fd, f.flags)?;
        Ok(fd)
    }

    /// Fds that must stay open until the tasks hold their own.
    pub fn into_keepers(self) -> Vec<OwnedFd> {
        let mut k = self.keepers;
        k.extend(self.any_end.into_values());
        for (r, w) in self.fresh.into_values() {
            k.extend(r);
            k.extend(w);
        }
        k
    }
}
