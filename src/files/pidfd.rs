//! pidfds (pidfd_open(2)): of a process of the tree, opened again by the task
//! that holds it, in the tree's PID namespace; of a process that has exited and
//! was reaped (fdinfo "Pid: -1", its number gone), made again from a short-lived
//! helper crtool forks, opens and reaps.

use super::FdInfo;
use crate::error::{Error, Result};
use images_format::pb::{self, file_entry::Kind};
use std::os::fd::{AsRawFd, OwnedFd};

/// PIDFD_THREAD (a pidfd of a thread, Linux 6.9): O_EXCL.
const PIDFD_THREAD: u32 = libc::O_EXCL as u32;

/// Describes the pidfd behind `dup` (fd `info` of `pid`); `vpid` maps a pid as
/// crtool sees it into the tree's namespace.
pub fn dump(pid: i32, info: &FdInfo, dup: &OwnedFd, vpid: &dyn Fn(i32) -> Option<i32>) -> Result<Kind> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", dup.as_raw_fd())).map_err(|e| Error::proc(pid, format!("fdinfo/{}", info.fd), e))?;
    let target = text.lines().find_map(|l| l.strip_prefix("Pid:")).and_then(|v| v.trim().parse::<i32>().ok()).unwrap_or(0);
    let refuse = |why: String| Error::Unsupported { pid, fd: Some(info.fd), what: format!("pidfd {why}"), hint: Some("pidfds of processes of the dumped tree, or of reaped ones, are supported") };
    let flags = info.flags & !(libc::O_CLOEXEC as u32);
    if target == -1 {
        return Ok(Kind::Pidfd(pb::PidFd { pid: 0, flags }));
    }
    if target == 0 {
        return Err(refuse("of a process crtool cannot see (another PID namespace)".into()));
    }
    if pid == std::process::id() as i32 {
        return Err(refuse("in flight in a queued message".into()));
    }
    let v = vpid(target).ok_or_else(|| refuse(format!("of pid {target}, outside the dumped tree")))?;
    Ok(Kind::Pidfd(pb::PidFd { pid: v, flags }))
}

/// Whether crtool makes it (a reaped process's, before the tree exists) rather than
/// the task that holds it.
pub fn made_by_crtool(p: &pb::PidFd) -> bool {
    p.pid == 0
}

/// A pidfd of process `p.pid` of the tree, opened by the task that holds it (in the
/// tree's PID namespace). Tasks are forked while others install their fds: a
/// process not forked yet is waited for (briefly; none waits on this one). A
/// reaped process's: of a helper that exits and is reaped at once.
pub fn open(p: &pb::PidFd) -> std::io::Result<OwnedFd> {
    let flags = p.flags & (libc::O_NONBLOCK as u32 | PIDFD_THREAD);
    if p.pid == 0 {
        use crate::sys::process::{Forked, fork_with_pids};
        return match fork_with_pids(&[], 0)? {
            Forked::Child => crate::sys::process::exit_now(0),
            Forked::Parent(child) => {
                let fd = crate::sys::process::pidfd_open_flags(child.as_raw(), flags);
                let _ = nix::sys::wait::waitpid(child, None);
                fd.map_err(std::io::Error::from)
            }
        };
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match crate::sys::process::pidfd_open_flags(p.pid, flags) {
            Err(nix::errno::Errno::ESRCH) if std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(1)),
            r => return r.map_err(std::io::Error::from),
        }
    }
}
