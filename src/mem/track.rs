//! Memory changes between dumps (--track-mem, pre-dump, --prev-images-dir)
//! without soft-dirty: each process's private memory is registered with a
//! userfaultfd in asynchronous write-protect mode, made in the process itself
//! (sys::uffd); the next dump asks PAGEMAP_SCAN which pages were written since,
//! and stores only those, the others being in the parent directory's images.
//!
//! The registrations last while their userfaultfds are open: once the dump is
//! complete, a small process ("crtool-track", forked from crtool) keeps them
//! until the next dump of the chain takes them over, or until the tracked
//! processes are gone. `DIR/track-mem` says where it is (not an image: it is
//! removed by nothing and ignored by `verify`).

use crate::error::{Error, Result};
use crate::infect::Tracee;
use crate::mem::vma;
use crate::sys::{process, uffd};
use images_format::pb::{self, VmaKind};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

/// The tracker's file in an image directory.
const FILE: &str = "track-mem";
/// The tracker's name (comm).
const COMM: &str = "crtool-track";

/// Whether `v` is private memory whose pages a dump stores (and may find
/// unchanged in the parent's images). Shared memory is stored whole every time:
/// another process may have written it.
pub fn tracked(v: &pb::Vma) -> bool {
    matches!(v.kind(), VmaKind::VmaAnonPrivate | VmaKind::VmaFilePrivate | VmaKind::VmaMemfdPrivate) && vma::has_private_pages(v)
}

/// A userfaultfd made in the stopped task `t` (pid `pid`) by the userfaultfd(2)
/// syscall with `flags`, handed to crtool (pidfd_getfd) and closed in the task.
/// A refusal of the syscall is Error::Ptrace with op "userfaultfd".
pub fn uffd_in_task(t: &Tracee, pid: i32, flags: u64) -> Result<OwnedFd> {
    let n = t.syscall_ok("userfaultfd", libc::SYS_userfaultfd, &[flags])? as i32;
    let taken = process::pidfd_open(Pid::from_raw(pid)).and_then(|p| process::pidfd_getfd(&p, n));
    t.syscall_ok("close", libc::SYS_close, &[n as u64])?;
    taken.map_err(|e| Error::sys(format!("pid {pid}: taking its userfaultfd"), e))
}

/// A userfaultfd made in the stopped task `t` (pid `pid`) and handed to crtool,
/// set up for asynchronous write protection.
fn new_uffd(t: &Tracee, pid: i32) -> Result<OwnedFd> {
    let fd = uffd_in_task(t, pid, uffd::NEW_FLAGS)?;
    uffd::api(fd.as_fd()).map_err(|e| Error::sys(format!("pid {pid}: UFFDIO_API (asynchronous write protection)"), e))?;
    Ok(fd)
}

/// Registers every tracked VMA of `vmas` with `fd` (again: a registered one
/// stays as it is) and write-protects those not registered before (`armed`:
/// their starts). VMAs the kernel will not register stay untracked: their
/// pages count as written.
fn register(pid: i32, fd: &OwnedFd, vmas: &[pb::Vma], armed: &[u64]) -> Result<()> {
    let pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap")).map_err(|e| Error::proc(pid, "pagemap", e))?;
    for v in vmas.iter().filter(|v| tracked(v)) {
        if uffd::register_wp(fd.as_fd(), v.start, v.end).is_err() {
            continue;
        }
        if !armed.contains(&v.start) {
            uffd::written(pagemap.as_fd(), v.start, v.end, true).map_err(|e| Error::sys(format!("pid {pid}: PAGEMAP_SCAN (write-protecting {:#x}-{:#x})", v.start, v.end), e))?;
        }
    }
    Ok(())
}

/// What a dump learns from and hands on to the tracking of one process.
#[derive(Default)]
pub struct Process {
    /// The process's userfaultfd, from the previous dump's tracker.
    pub uffd: Option<OwnedFd>,
    /// Written ranges of each tracked VMA (by start) since the previous dump;
    /// None: not tracked (every page counts as written).
    pub written: BTreeMap<u64, Vec<(u64, u64)>>,
}

impl Process {
    /// Asks which pages of `vmas` were written since the previous dump (only
    /// with a userfaultfd from it); with `keep`, protects them again.
    pub fn scan(&mut self, pid: i32, vmas: &[pb::Vma], keep: bool) -> Result<()> {
        if self.uffd.is_none() {
            return Ok(());
        }
        let pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap")).map_err(|e| Error::proc(pid, "pagemap", e))?;
        for v in vmas.iter().filter(|v| tracked(v)) {
            // EPERM: not registered (made since): not tracked.
            match uffd::written(pagemap.as_fd(), v.start, v.end, keep) {
                Ok(w) => {
                    self.written.insert(v.start, w);
                }
                Err(nix::errno::Errno::EPERM) => {}
                Err(e) => return Err(Error::sys(format!("pid {pid}: PAGEMAP_SCAN of {:#x}-{:#x}", v.start, v.end), e)),
            }
        }
        Ok(())
    }

    /// Arms tracking for the next dump (--track-mem): a userfaultfd made in the
    /// task if the previous dump had none, every tracked VMA registered.
    pub fn arm(&mut self, t: &Tracee, pid: i32, vmas: &[pb::Vma]) -> Result<()> {
        let armed: Vec<u64> = self.written.keys().copied().collect();
        if self.uffd.is_none() {
            self.uffd = Some(new_uffd(t, pid)?);
        }
        if let Some(fd) = &self.uffd {
            register(pid, fd, vmas, &armed)?;
        }
        Ok(())
    }

    /// Whether page `addr` of the VMA starting at `vma_start` is unchanged since
    /// the previous dump. `cursor` speeds up calls in address order.
    pub fn unchanged(&self, vma_start: u64, addr: u64, cursor: &mut usize) -> bool {
        let Some(w) = self.written.get(&vma_start) else { return false };
        while *cursor < w.len() && w[*cursor].1 <= addr {
            *cursor += 1;
        }
        !w.get(*cursor).is_some_and(|&(s, _)| s <= addr)
    }
}

/// The tracker of a previous dump in `dir`, and the userfaultfds it holds, by
/// pid in the tree (checked: the same process, by pid and start time).
pub fn take_over(dir: &Path) -> Option<(i32, BTreeMap<i32, (i32, OwnedFd)>)> {
    let text = std::fs::read_to_string(dir.join(FILE)).ok()?;
    let mut lines = text.lines();
    let head: Vec<u64> = lines.next()?.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    let (&tracker, &start) = (head.first()?, head.get(1)?);
    let tracker = tracker as i32;
    let alive = std::fs::read_to_string(format!("/proc/{tracker}/comm")).is_ok_and(|c| c.trim() == COMM) && crate::dump::process_stat_field(tracker, 22).ok() == Some(start);
    if !alive {
        log::warn!("the memory tracker of {} is gone: every page is dumped again", dir.display());
        return None;
    }
    let pidfd = process::pidfd_open(Pid::from_raw(tracker)).ok()?;
    let mut fds = BTreeMap::new();
    for l in lines {
        let v: Vec<i64> = l.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        let [vpid, pid, pstart, fd] = v[..] else { continue };
        // (A process that exited and whose pid was taken again is not the tracked one.)
        if crate::dump::process_stat_field(pid as i32, 22).ok() != Some(pstart as u64) {
            continue;
        }
        if let Ok(f) = process::pidfd_getfd(&pidfd, fd as i32) {
            fds.insert(vpid as i32, (pid as i32, f));
        }
    }
    Some((tracker, fds))
}

/// Starts a tracker keeping `uffds` ((pid in the tree, pid, userfaultfd)) open
/// until the processes are gone or a later dump ends it, and writes `dir`'s
/// track-mem file naming it.
pub fn start(dir: &Path, uffds: &[(i32, i32, OwnedFd)]) -> Result<()> {
    if uffds.is_empty() {
        return Ok(());
    }
    let pidfds: Vec<OwnedFd> = uffds.iter().filter_map(|(_, pid, _)| process::pidfd_open(Pid::from_raw(*pid)).ok()).collect();
    match process::fork_with_pids(&[], 0).map_err(|e| Error::sys("starting the memory tracker (fork)", e))? {
        process::Forked::Child => {
            let _ = nix::unistd::setsid();
            crate::sys::signals::default_interrupts();
            process::set_comm(COMM);
            let mut keep: Vec<i32> = uffds.iter().map(|(_, _, f)| f.as_raw_fd()).collect();
            keep.extend(pidfds.iter().map(|p| p.as_raw_fd()));
            crate::sys::fd::close_all_except(&keep);
            // Until every tracked process has exited (its pidfd readable).
            let mut left: Vec<&OwnedFd> = pidfds.iter().collect();
            while !left.is_empty() {
                let mut polls: Vec<nix::poll::PollFd> = left.iter().map(|p| nix::poll::PollFd::new(p.as_fd(), nix::poll::PollFlags::POLLIN)).collect();
                if nix::poll::poll(&mut polls, nix::poll::PollTimeout::NONE).is_err() {
                    continue;
                }
                let done: Vec<bool> = polls.iter().map(|p| p.revents().is_some_and(|r| !r.is_empty())).collect();
                let mut i = 0;
                left.retain(|_| {
                    i += 1;
                    !done[i - 1]
                });
            }
            process::exit_now(0)
        }
        process::Forked::Parent(child) => {
            let start = crate::dump::process_stat_field(child.as_raw(), 22)?;
            let mut text = format!("{} {start}\n", child.as_raw());
            for (vpid, pid, fd) in uffds {
                let pstart = crate::dump::process_stat_field(*pid, 22).unwrap_or(0);
                text.push_str(&format!("{vpid} {pid} {pstart} {}\n", fd.as_raw_fd()));
            }
            std::fs::write(dir.join(FILE), text).map_err(|e| Error::io(dir.join(FILE), e))
        }
    }
}

/// Ends the tracker `pid` of an earlier dump (its userfaultfds were taken over).
pub fn stop(tracker: i32) {
    if std::fs::read_to_string(format!("/proc/{tracker}/comm")).is_ok_and(|c| c.trim() == COMM) {
        let _ = nix::sys::signal::kill(Pid::from_raw(tracker), nix::sys::signal::Signal::SIGTERM);
    }
}

/// Ends the tracking of the dump in `dir` (its tracker, and its file): after a
/// failed dump that protected pages again, it would tell too little.
pub fn forget(dir: &Path, tracker: Option<i32>) {
    let _ = std::fs::remove_file(dir.join(FILE));
    if let Some(t) = tracker {
        stop(t);
    }
}

/// The address ranges process `vpid`'s dump in `dir` has page data for (its
/// own, or in its parent), in order; none if it had no such process.
pub fn parent_data(dir: &Path, vpid: i32) -> Result<Vec<(u64, u64)>> {
    if !dir.join(images_format::ImageKind::Pagemap.file_name(vpid as u32)).exists() {
        return Ok(Vec::new());
    }
    let entries: Vec<pb::PagemapEntry> = images_format::read_entries(dir, images_format::ImageKind::Pagemap, vpid as u32)?;
    Ok(entries.iter().filter(|e| !e.inherited && !e.guard).map(|e| (e.vaddr, e.vaddr + e.nr_pages as u64 * crate::sys::mm::PAGE)).collect())
}
