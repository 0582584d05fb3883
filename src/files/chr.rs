//! Character devices that carry no state of their own: /dev/null, zero, full, random,
//! urandom; and a shell job's terminal (--shell-job). Anything else (other ttys, ...)
//! is refused at dump time.

use super::{FdInfo, FileKind};
use crate::error::{Error, Result};
use images_format::pb::{self, file_entry::Kind};
use std::os::fd::OwnedFd;

pub struct ChrDevKind(pub pb::ChrDev);

/// (major, minor) of the memory devices crtool can reopen by path.
const STATELESS: &[(u32, u32, &str)] =
    &[(1, 3, "/dev/null"), (1, 5, "/dev/zero"), (1, 7, "/dev/full"), (1, 8, "/dev/random"), (1, 9, "/dev/urandom")];

/// Whether `rdev` is the controlling terminal of `pid` (or /dev/tty, which stands for
/// it).
fn is_ctty(pid: i32, rdev: u64) -> bool {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    if (major, minor) == (5, 0) {
        return true;
    }
    // tty_nr (proc(5) stat field 7): minor in bits 0-7 and 20-31, major in 8-15.
    let tty_nr = crate::dump::process_stat_field(pid, 7).unwrap_or(0);
    tty_nr != 0 && ((tty_nr >> 8) & 0xfff) as u32 == major && ((tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00)) as u32 == minor
}

impl ChrDevKind {
    /// Like `FileKind::dump`; `shell_job`: the tree was started from a shell whose
    /// terminal is its controlling terminal (dump --shell-job).
    pub fn dump_tty(pid: i32, info: &FdInfo, fd: &OwnedFd, st: &libc::stat, shell_job: bool) -> Result<Kind> {
        let major = libc::major(st.st_rdev);
        if (major == 136 || major == 4 || (major, libc::minor(st.st_rdev)) == (5, 0)) && is_ctty(pid, st.st_rdev) {
            if shell_job {
                return Ok(Kind::Tty(pb::Terminal { path: info.link.clone(), flags: info.flags & !(libc::O_CLOEXEC as u32) }));
            }
            return Err(Error::Unsupported {
                pid,
                fd: Some(info.fd),
                what: format!("{} is its controlling terminal, whose master is outside the dumped tree (the terminal of the shell it was started from?)", info.link),
                hint: Some("dump with --shell-job, and restore with --shell-job from a terminal: the job gets that terminal"),
            });
        }
        Self::dump(pid, info, fd, st)
    }
}

impl FileKind for ChrDevKind {
    fn dump(pid: i32, info: &FdInfo, _fd: &OwnedFd, st: &libc::stat) -> Result<Kind> {
        let (major, minor) = (libc::major(st.st_rdev), libc::minor(st.st_rdev));
        if !STATELESS.iter().any(|&(ma, mi, _)| ma == major && mi == minor) {
            if (136..144).contains(&major) {
                return Err(Error::Unsupported {
                    pid,
                    fd: Some(info.fd),
                    what: format!("{} is a pseudo-terminal whose master is held outside the dumped tree (e.g. the terminal of an attached tmux or screen client)", info.link),
                    hint: Some("dump the tree that holds the master, or close the fd (detach the client) first"),
                });
            }
            let hint = if major == 4 || major == 5 { "terminals other than pseudo-terminals (and a shell job's, --shell-job) are not supported yet" } else { "only memory devices are supported" };
            return Err(Error::Unsupported { pid, fd: Some(info.fd), what: format!("character device {} ({major}:{minor})", info.link), hint: Some(hint) });
        }
        Ok(Kind::Chr(pb::ChrDev { path: info.link.clone(), flags: info.flags & !(libc::O_CLOEXEC as u32), major, minor, pos: info.pos }))
    }

    fn open(&self) -> std::io::Result<OwnedFd> {
        let path = STATELESS
            .iter()
            .find(|&&(ma, mi, _)| ma == self.0.major && mi == self.0.minor)
            .map(|&(_, _, p)| p)
            .unwrap_or(self.0.path.as_str());
        let flags = self.0.flags as i32 & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL);
        crate::sys::fd::open_at_pos(path, flags, 0)
    }
}

/// The terminal `crtool restore` runs on, for a shell job's (see `pb::Terminal`):
/// /dev/tty stays /dev/tty (crtool's controlling terminal); any other is crtool's
/// stdin, which must be a terminal.
pub fn open_terminal(t: &pb::Terminal) -> std::io::Result<OwnedFd> {
    let flags = (t.flags as i32) & (libc::O_ACCMODE | libc::O_NONBLOCK | libc::O_APPEND) | libc::O_NOCTTY;
    if t.path == "/dev/tty" {
        return crate::sys::fd::open_at_pos("/dev/tty", flags, 0);
    }
    if !nix::unistd::isatty(std::io::stdin()).unwrap_or(false) {
        return Err(std::io::Error::other(format!("the task had {} (the terminal of the shell it was started from): restore it with --shell-job from a terminal, which it gets instead", t.path)));
    }
    crate::sys::fd::open_at_pos("/proc/self/fd/0", flags, 0)
}
