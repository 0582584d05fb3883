//! The lazy-pages daemon's watchdog (`crtool __lazy-watchdog`, started by the
//! daemon in a process group of its own). It holds a copy of every userfaultfd
//! the daemon serves, with a pidfd of the restored task: if the daemon dies
//! before every page is supplied (killed, crashed), the userfaultfds stay open —
//! a task touching an owed page waits instead of getting a zero page, which is
//! what the kernel gives once the last copy of a userfaultfd is closed — and
//! the watchdog kills the tasks and the children they forked since.
//!
//! Messages (SOCK_SEQPACKET, from the daemon): `A` with [userfaultfd, pidfd]
//! (a restored task), `F` with [userfaultfd] (a child it forked), `E` (every
//! page supplied: exit). The end of the connection without `E`: the daemon died.

use crate::error::{Error, Result};
use nix::sys::socket::{AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, sendmsg, socketpair};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::process::{Child, Command, Stdio};

/// The daemon's end of the watchdog.
pub struct Watchdog {
    sock: OwnedFd,
    child: Child,
}

impl Watchdog {
    /// Starts the watchdog (this executable's `__lazy-watchdog`).
    pub fn start() -> Result<Watchdog> {
        let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).map_err(|e| Error::sys("socketpair", e))?;
        let exe = std::env::current_exe().map_err(|e| Error::io("/proc/self/exe", e))?;
        use std::os::unix::process::CommandExt;
        let child = Command::new(exe)
            .arg("__lazy-watchdog")
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| Error::Lazy { msg: format!("starting the watchdog: {e}") })?;
        Ok(Watchdog { sock: ours, child })
    }

    fn send(&self, tag: &[u8], fds: &[BorrowedFd]) -> Result<()> {
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let cmsg = [ControlMessage::ScmRights(&raw)];
        sendmsg::<()>(self.sock.as_raw_fd(), &[IoSlice::new(tag)], if raw.is_empty() { &[] } else { &cmsg }, MsgFlags::MSG_NOSIGNAL, None)
            .map(drop)
            .map_err(|e| Error::Lazy { msg: format!("the watchdog: {e}") })
    }

    /// A restored task's userfaultfd and pidfd.
    pub fn task(&self, uffd: BorrowedFd, pidfd: BorrowedFd) -> Result<()> {
        self.send(b"A", &[uffd, pidfd])
    }

    /// A forked child's userfaultfd.
    pub fn forked(&self, uffd: BorrowedFd) -> Result<()> {
        self.send(b"F", &[uffd])
    }

    /// Every page was supplied: the watchdog lets go.
    pub fn done(mut self) {
        let _ = self.send(b"E", &[]);
        let _ = self.child.wait();
    }
}

/// SIGKILL to the task behind `pidfd` and to every descendant it has (children
/// it forked while pages were owed hold a copy of its memory and are owed too).
pub fn kill_tree(pidfd: BorrowedFd) {
    let mut victims = Vec::new();
    if let Some(pid) = crate::procinfo::pidfd_pid(pidfd.as_raw_fd()) {
        descendants(pid, &mut victims);
    }
    let _ = crate::sys::process::pidfd_kill(pidfd);
    for v in victims {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(v), nix::sys::signal::Signal::SIGKILL);
    }
}

fn descendants(pid: i32, out: &mut Vec<i32>) {
    let Ok(p) = procfs::process::Process::new(pid) else { return };
    let Ok(tasks) = p.tasks() else { return };
    for t in tasks.flatten() {
        for c in t.children().unwrap_or_default() {
            let c = c as i32;
            if !out.contains(&c) {
                out.push(c);
                descendants(c, out);
            }
        }
    }
}

/// The watchdog's loop, on the socket it was given as fd 0. Returns its exit code.
pub fn run() -> i32 {
    // SAFETY: fd 0 is the socket the daemon passed as stdin; it lives as long as
    // this process.
    let sock = unsafe { BorrowedFd::borrow_raw(0) };
    let mut held: Vec<OwnedFd> = Vec::new();
    let mut tasks: Vec<OwnedFd> = Vec::new();
    loop {
        let mut tag = [0u8; 1];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 2]);
        let mut iov = [IoSliceMut::new(&mut tag)];
        let (n, fds) = match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(m) => {
                let mut fds = Vec::new();
                for c in m.cmsgs().into_iter().flatten() {
                    if let ControlMessageOwned::ScmRights(r) = c {
                        fds.extend(r);
                    }
                }
                (m.bytes, crate::sys::fd::take_received(fds))
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => (0, Vec::new()),
        };
        match (n, tag[0]) {
            (1, b'E') => return 0,
            (1, b'A') => {
                let mut fds = fds.into_iter();
                if let (Some(u), Some(p)) = (fds.next(), fds.next()) {
                    held.push(u);
                    tasks.push(p);
                }
            }
            (1, b'F') => held.extend(fds),
            (1, _) => {}
            _ => {
                // The daemon is gone with pages still owed: no task may run on.
                for p in &tasks {
                    kill_tree(p.as_fd());
                }
                eprintln!("crtool: the lazy-pages daemon died with pages still owed: {} restored process(es) killed", tasks.len());
                return 1;
            }
        }
    }
}
