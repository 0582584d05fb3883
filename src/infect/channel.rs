//! The control socket of a running parasite: commands out, replies (with fds) in.
//!
//! A `Channel` holds no reference to the task's threads and issues no ptrace
//! request, so that it can be lent (`Parasite::lend`) to another thread of crtool:
//! a tree's processes have their pages copied side by side while crtool's main
//! thread, the tracer, goes on with the next process. (Its only other call on the
//! task, a non-blocking waitpid to notice a parasite that died, works from any
//! thread of the tracer's thread group: kernel/exit.c do_wait walks every thread's
//! children and tracees.)

use crate::error::{Error, PtraceCtx, Result};
use crate::sys::abi::{self, Cmd, IoVec, Reply};
use crate::sys::ptrace;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use nix::unistd::Pid;
use std::io::{IoSlice, IoSliceMut};
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Longest crtool waits for one parasite reply before giving up on it.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Channel {
    /// The task (its main thread runs the parasite's command loop).
    pid: Pid,
    sock: Option<OwnedFd>,
    /// The page pipe's fd number in the task, once given (-1: none).
    pub(super) pipe: i32,
    /// The parasite stopped or died instead of answering: no more commands.
    pub(super) dead: bool,
}

impl Channel {
    pub(super) fn new(pid: Pid) -> Channel {
        Channel { pid, sock: None, pipe: -1, dead: false }
    }

    pub(super) fn connect(&mut self, sock: OwnedFd) {
        self.sock = Some(sock);
    }

    /// Closes crtool's end (the parasite, waiting on the socket, sees it close).
    pub(super) fn close(&mut self) {
        self.sock = None;
    }

    pub(super) fn err(&self, msg: impl Into<String>) -> Error {
        Error::Parasite { pid: self.pid.as_raw(), msg: msg.into() }
    }

    pub(super) fn send(&mut self, op: u32, payload: &[u8], n: u32, fd: Option<BorrowedFd>) -> Result<()> {
        self.send_arg(op, 0, payload, n, fd)
    }

    pub(super) fn send_arg(&mut self, op: u32, arg: u64, payload: &[u8], n: u32, fd: Option<BorrowedFd>) -> Result<()> {
        let cmd = Cmd { op, n, arg };
        let iov = [IoSlice::new(as_bytes(&cmd)), IoSlice::new(payload)];
        let fds: Vec<i32> = fd.iter().map(|f| f.as_raw_fd()).collect();
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
        let sock = self.sock.as_ref().ok_or_else(|| self.err("control socket closed"))?.as_raw_fd();
        sendmsg::<()>(sock, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None).map_err(|e| self.err(format!("send command {op}: {e}")))?;
        Ok(())
    }

    /// Waits for a reply; notices a parasite that crashed instead of answering, and
    /// crtool being interrupted.
    pub(super) fn recv(&mut self, want_op: u32, payload: &mut [u8]) -> Result<(Reply, usize, Vec<OwnedFd>)> {
        self.recv_reply(want_op, payload, true)
    }

    pub(super) fn recv_reply(&mut self, want_op: u32, payload: &mut [u8], interruptible: bool) -> Result<(Reply, usize, Vec<OwnedFd>)> {
        let start = Instant::now();
        let sock = self.sock.as_ref().ok_or_else(|| self.err("control socket closed"))?;
        loop {
            if interruptible {
                crate::error::check_interrupt()?;
            }
            let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
            let n = match poll(&mut fds, PollTimeout::from(100u16)) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => r.map_err(|e| self.err(format!("poll: {e}")))?,
            };
            if n > 0 {
                break;
            }
            if let Some(stop) = ptrace::wait(self.pid, true).ptrace(self.pid, "waitpid")? {
                self.dead = true;
                return Err(self.err(format!("stopped unexpectedly ({stop:?}) instead of answering command {want_op}")));
            }
            if start.elapsed() > REPLY_TIMEOUT {
                return Err(self.err(format!("no answer to command {want_op} in {REPLY_TIMEOUT:?}")));
            }
        }
        let mut hdr = Reply::default();
        let mut cbuf = nix::cmsg_space!([i32; abi::MAX_FDS_PER_MSG]);
        let (bytes, got_fds) = {
            let mut iov = [IoSliceMut::new(as_bytes_mut(&mut hdr)), IoSliceMut::new(payload)];
            let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cbuf), MsgFlags::MSG_CMSG_CLOEXEC)
                .map_err(|e| self.err(format!("receive reply: {e}")))?;
            let mut got = Vec::new();
            for c in msg.cmsgs().map_err(|e| self.err(format!("control message: {e}")))? {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    // SAFETY: SCM_RIGHTS installed these fds in our table; we own them now.
                    got.extend(fds.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                }
            }
            (msg.bytes, got)
        };
        if bytes < size_of::<Reply>() {
            self.dead = true;
            return Err(self.err(format!("short reply ({bytes} bytes) to command {want_op}")));
        }
        if hdr.op != want_op {
            return Err(self.err(format!("reply to command {} while waiting for {want_op}", hdr.op)));
        }
        Ok((hdr, bytes - size_of::<Reply>(), got_fds))
    }

    /// Gives the parasite the write end of the pipe it vmsplice()s pages into.
    pub fn take_pipe(&mut self, pipe_w: BorrowedFd) -> Result<()> {
        self.send(abi::CMD_TAKE_PIPE, &[], 0, Some(pipe_w))?;
        let (r, _, _) = self.recv(abi::CMD_TAKE_PIPE, &mut [])?;
        if r.ret < 0 {
            return Err(self.err(format!("taking the page pipe failed: errno {}", -r.ret)));
        }
        self.pipe = r.ret as i32;
        Ok(())
    }

    /// vmsplice()s the given ranges of the task's memory into the page pipe; the
    /// bytes spliced.
    pub fn splice_pages(&mut self, iovs: &[IoVec]) -> Result<u64> {
        let bytes: &[u8] = slice_as_bytes(iovs);
        self.send(abi::CMD_DUMP_PAGES, bytes, iovs.len() as u32, None)?;
        let (r, _, _) = self.recv(abi::CMD_DUMP_PAGES, &mut [])?;
        if r.ret < 0 {
            return Err(self.err(format!("vmsplice failed: {}", nix::errno::Errno::from_raw(-r.ret as i32))));
        }
        Ok(r.ret as u64)
    }
}

pub(super) fn as_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is a plain #[repr(C)] ABI struct; viewing it as bytes is sound.
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, size_of::<T>()) }
}

pub(super) fn as_bytes_mut<T: Copy>(v: &mut T) -> &mut [u8] {
    // SAFETY: T is a plain #[repr(C)] ABI struct of integers; any bytes are valid.
    unsafe { std::slice::from_raw_parts_mut(v as *mut T as *mut u8, size_of::<T>()) }
}

pub(super) fn slice_as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: as for `as_bytes`, over a slice.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}
