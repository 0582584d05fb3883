//! Lazy restore (CRIU's `restore --lazy-pages` with its `lazy-pages` daemon): a
//! restored task runs before its private anonymous memory is filled. Each
//! restoring task makes a userfaultfd of its own memory and hands it to the
//! daemon with the ranges it leaves empty; its restorer registers them for
//! missing-page faults once every VMA is in place. The daemon answers each fault
//! with the page from the images (UFFDIO_COPY, or UFFDIO_ZEROPAGE where the
//! images have none) and pushes the remaining pages in the background until
//! every task has all of its memory; then it exits.
//!
//! Protocol, on the unix socket `DIR/lazy-pages.socket` the daemon listens on
//! (SOCK_STREAM, little-endian):
//! - the restore opens a control connection first: `C`; at the end it sends
//!   `S` and the PID of the tree's top process i32 (the tree runs) or `F` (the
//!   restore failed, its tasks are killed) and closes it;
//! - each task opens a connection: `T`, its PID (as in the images) u32, a
//!   count N u32 (with its userfaultfd and a pidfd of itself as SCM_RIGHTS),
//!   then N ranges (start u64, length u64); the daemon answers `K`, or `E`
//!   followed by a message up to the end of the connection. After `K` the task
//!   keeps the connection; its restorer writes `R` once the ranges are
//!   registered, and only then does the daemon supply pages (UFFDIO_COPY into
//!   a range not registered yet fails, and the page would be lost).
//!
//! A daemon that cannot supply a page (a corrupt image, say) kills the tasks it
//! serves: a task must never read zeros where it had data.

mod daemon;
mod pending;
pub mod remote;
pub mod watchdog;

pub use daemon::{Summary, serve};

use crate::error::{Error, Result};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The daemon's socket in an image directory (CRIU's name).
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("lazy-pages.socket")
}

/// How long `restore --lazy-pages` waits for the daemon's socket to appear (a
/// script may start both at once).
const CONNECT_WAIT: Duration = Duration::from_secs(5);

fn connect(dir: &Path) -> Result<UnixStream> {
    let path = socket_path(dir);
    let until = Instant::now() + CONNECT_WAIT;
    loop {
        match UnixStream::connect(&path) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() < until && matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                return Err(Error::Lazy { msg: format!("no lazy-pages daemon at {} ({e}): start `crtool lazy-pages -D {}` first", path.display(), dir.display()) });
            }
        }
    }
}

/// The restore's control connection, held for the whole restore.
pub struct Control(UnixStream);

impl Control {
    /// Connects to the daemon serving `dir` (waiting up to 5 s for it to start).
    pub fn connect(dir: &Path) -> Result<Control> {
        let mut s = connect(dir)?;
        s.write_all(b"C").map_err(|e| Error::Lazy { msg: format!("the lazy-pages daemon: {e}") })?;
        Ok(Control(s))
    }

    /// Tells the daemon how the restore ended: the tree runs, its top process
    /// being `top` (the restored root, or the init of its PID namespace), which
    /// the daemon kills with all below it if it cannot supply the memory; or
    /// None: the restore failed and its tasks are dead.
    pub fn finish(mut self, top: Option<i32>) {
        let msg = match top {
            Some(p) => [&b"S"[..], &p.to_le_bytes()].concat(),
            None => b"F".to_vec(),
        };
        let _ = self.0.write_all(&msg);
    }
}

/// In a restoring task (pid `vpid` in the images): hands the daemon serving
/// `dir` this process's userfaultfd (UFFDIO_API done) and the ranges the
/// restorer will register, and waits until it is ready to serve them. Returns
/// the connection, on which the restorer writes `R` once the ranges are
/// registered (the daemon supplies nothing before).
pub fn hand_over(dir: &Path, vpid: u32, ranges: &[(u64, u64)], uffd: BorrowedFd, pidfd: BorrowedFd) -> Result<UnixStream> {
    let fail = |msg: String| Error::Restore { pid: vpid as i32, msg: format!("handing memory to the lazy-pages daemon: {msg}") };
    let mut s = connect(dir)?;
    let mut head = vec![b'T'];
    head.extend_from_slice(&vpid.to_le_bytes());
    head.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
    let fds = [uffd.as_raw_fd(), pidfd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let n = sendmsg::<()>(s.as_raw_fd(), &[IoSlice::new(&head)], &cmsg, MsgFlags::MSG_NOSIGNAL, None).map_err(|e| fail(format!("sendmsg: {e}")))?;
    if n != head.len() {
        return Err(fail(format!("sent {n} of {} bytes", head.len())));
    }
    let mut body = Vec::with_capacity(ranges.len() * 16);
    for &(start, len) in ranges {
        body.extend_from_slice(&start.to_le_bytes());
        body.extend_from_slice(&len.to_le_bytes());
    }
    s.write_all(&body).map_err(|e| fail(e.to_string()))?;
    let mut answer = [0u8; 1];
    let _ = s.read(&mut answer).map_err(|e| fail(e.to_string()))?;
    match answer[0] {
        b'K' => Ok(s),
        b'E' => {
            let mut msg = Vec::new();
            let _ = s.read_to_end(&mut msg);
            Err(fail(String::from_utf8_lossy(&msg).into_owned()))
        }
        _ => Err(fail("the daemon closed the connection".into())),
    }
}
