//! Fault injection for tests, as CRIU's `CRIU_FAULT`: `CRTOOL_FAULT=N` makes crtool
//! fail at step N of a dump or restore (through the path real errors take), and
//! `CRTOOL_FAULT=N:kill` makes it kill itself with SIGKILL there. The steps:
//!
//! | step | where |
//! | ---: | --- |
//! | 1 | dump: the tree is frozen |
//! | 2 | dump: checks before infecting passed |
//! | 3 | dump: a parasite runs in a process |
//! | 4 | dump: a process's fds were received |
//! | 5 | dump: a process's pages are written |
//! | 6 | dump: a process's parasite has stopped |
//! | 7 | dump: a process's images are written |
//! | 8 | dump: the inventory is written |
//! | 9 | dump: the images passed the restore checks |
//! | 10 | dump: an earlier checkpoint is being set aside (half-way) |
//! | 11 | dump: the new images are moving in (half-way) |
//! | 12 | dump: committed, before the tree is killed or let go |
//! | 13 | dump: a process is at the entry of the parasite's mmap (run from the vdso) |
//! | 14 | dump: a process is at the entry of the parasite's munmap (run from the vdso) |
//! | 15 | dump: the parasite's control socket exists in a process, both ends |
//! | 16 | dump: ... only its own end, the parasite not started yet |
//! | 17 | dump: a background copy (--leave-running) has copied a first chunk, the tree running |
//! | 101 | restore: the images are loaded and checked |
//! | 102 | restore: files are reopened, shared memory made |
//! | 103 | restore: in a restoring task, its memory is premapped |
//! | 104 | restore: in a restoring task, before the restorer |
//! | 105 | restore: every thread is at the restorer's end |
//! | 106 | restore: the tree is ready to run |
//! | 201 | lazy-pages: a page is about to be supplied |
//!
//! `CRTOOL_FAULT=N@PID` (and `N@PID:kill`) limits a per-process step (3 to 7)
//! to the process PID (as crtool sees it), so that a test can fail the dump of
//! a tree in its middle, with other processes' memory still being copied.
//!
//! `CRTOOL_FAULT=201:hold` instead holds the lazy-pages daemon's background push
//! while DIR/lazy-pages.hold exists: only faults are answered, so a test can make
//! the restored process fork, move and drop memory while pages are still owed.

use crate::error::{Error, Result};

/// Fails (or dies) here if `CRTOOL_FAULT` names `step`.
pub fn point(step: u32) -> Result<()> {
    at(step, None)
}

/// Step `step` of the dump of process `pid`: fails (or dies) here if
/// `CRTOOL_FAULT` names `step` alone or `step@pid`.
pub fn point_in(step: u32, pid: i32) -> Result<()> {
    at(step, Some(pid))
}

fn at(step: u32, pid: Option<i32>) -> Result<()> {
    let Ok(v) = std::env::var("CRTOOL_FAULT") else { return Ok(()) };
    let (n, kill) = v.split_once(':').unwrap_or((v.as_str(), ""));
    let (n, only) = n.split_once('@').map_or((n, None), |(n, p)| (n, Some(p.parse::<i32>().ok())));
    if n.parse::<u32>().ok() != Some(step) || kill == "hold" || only.is_some_and(|o| o.is_none() || o != pid) {
        return Ok(());
    }
    if kill == "kill" {
        // No log line: in a restoring task, fd 2 may already be the task's own.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
    }
    Err(Error::Fault { step })
}

/// Whether `CRTOOL_FAULT` is `step:hold` (see the table above).
pub fn hold(step: u32) -> bool {
    std::env::var("CRTOOL_FAULT").is_ok_and(|v| v == format!("{step}:hold"))
}
