//! The lazy-pages daemon's watchdog (`crtool __lazy-watchdog`, started by the
//! daemon in a process group of its own). It holds a copy of every userfaultfd
//! the daemon serves, with a pidfd of the restored task: if the daemon dies
//! before every page is supplied (killed, crashed), the userfaultfds stay open —
//! a task touching an owed page waits instead of getting a zero page, which is
//! what the kernel gives once the last copy of a userfaultfd is closed — and
//! the watchdog kills the tasks and the children they forked since.
//!
//! Messages (SOCK_SEQPACKET, from the daemon): `A` + id u32 with [userfaultfd,
//! pidfd] or [userfaultfd] (a process: a restored task, or a child it forked,
//! whose PID the daemon may not have found), `R` + id (that process has all of
//! its memory: its fds go, so that nothing stays registered), `E` (every page
//! supplied: exit). The end of the connection without `E`: the daemon died.

use crate::error::{Error, Result};
use nix::sys::socket::{AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, sendmsg, socketpair};
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::process::{Child, Command, Stdio};

/// The daemon's end of the watchdog.
pub struct Watchdog {
    sock: OwnedFd,
    child: Child,
    next_id: std::cell::Cell<u32>,
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
        Ok(Watchdog { sock: ours, child, next_id: std::cell::Cell::new(1) })
    }

    fn send(&self, tag: &[u8], fds: &[BorrowedFd]) -> Result<()> {
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let cmsg = [ControlMessage::ScmRights(&raw)];
        sendmsg::<()>(self.sock.as_raw_fd(), &[IoSlice::new(tag)], if raw.is_empty() { &[] } else { &cmsg }, MsgFlags::MSG_NOSIGNAL, None)
            .map(drop)
            .map_err(|e| Error::Lazy { msg: format!("the watchdog: {e}") })
    }

    /// A process's userfaultfd and pidfd (if known); returns its id.
    pub fn task(&self, uffd: BorrowedFd, pidfd: Option<BorrowedFd>) -> Result<u32> {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let mut m = vec![b'A'];
        m.extend_from_slice(&id.to_le_bytes());
        let fds: Vec<BorrowedFd> = std::iter::once(uffd).chain(pidfd).collect();
        self.send(&m, &fds)?;
        Ok(id)
    }

    /// Process `id` has all of its memory.
    pub fn release(&self, id: u32) {
        let mut m = vec![b'R'];
        m.extend_from_slice(&id.to_le_bytes());
        if let Err(e) = self.send(&m, &[]) {
            log::warn!("{e}");
        }
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
    // id → (userfaultfd, pidfd)
    let mut held: std::collections::BTreeMap<u32, (OwnedFd, Option<OwnedFd>)> = Default::default();
    loop {
        let mut tag = [0u8; 5];
        let (n, fds) = match crate::sys::sock::recv_with_fds(sock, &mut tag) {
            Ok(r) => r,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => (0, Vec::new()),
        };
        let id = u32::from_le_bytes([tag[1], tag[2], tag[3], tag[4]]);
        match (n, tag[0]) {
            (1, b'E') => return 0,
            (5, b'A') => {
                let mut fds = fds.into_iter();
                if let Some(u) = fds.next() {
                    held.insert(id, (u, fds.next()));
                }
            }
            (5, b'R') => {
                held.remove(&id);
            }
            (n, _) if n > 0 => {}
            _ => {
                // The daemon is gone with pages still owed: no process may run on.
                let mut killed = 0;
                for (_, p) in held.values() {
                    if let Some(p) = p {
                        kill_tree(p.as_fd());
                        killed += 1;
                    }
                }
                eprintln!("crtool: the lazy-pages daemon died with memory still owed to {} process(es): {killed} of them killed (and their children)", held.len());
                return 1;
            }
        }
    }
}
