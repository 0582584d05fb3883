//! Injecting the parasite blob into a frozen task and talking to it.

use super::tracee::Tracee;
use crate::error::{Error, PtraceCtx, Result};
use crate::sys::abi::{self, Cmd, IoVec, ParasiteArgs, ParasiteInfo, Reply};
use crate::sys::blobs;
use crate::sys::cpu::SigFrameXstate;
use crate::task;
use crate::sys::process::{pidfd_getfd, pidfd_open, read_remote, write_remote};
use crate::sys::ptrace;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use std::io::{IoSlice, IoSliceMut};
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

const PAGE: u64 = 4096;
/// Longest crtool waits for one parasite reply before giving up on it.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A parasite running inside a tracee. `finish` (or drop) stops it, unmaps it and
/// leaves the tracee stopped with its state ready to be restored.
///
/// Besides the blob, its mapping holds a cure frame for every thread of the task:
/// an rt_sigframe with the thread's own registers, FPU state and signal mask. A
/// thread that crtool loses control of while it runs parasite code (crtool killed
/// with SIGKILL: the kernel detaches every tracee) returns through its frame to its
/// own state: the command loop does when its control socket closes, remote syscalls
/// run from a stub that does after the call. A leftover mapping is all that remains.
pub struct Parasite<'t> {
    /// The task's threads, the main one (which runs the command loop) first.
    threads: &'t [Tracee],
    base: u64,
    size: u64,
    sock: Option<OwnedFd>,
    /// The parasite's end of the control socket, as an fd number in the task.
    theirs: i32,
    /// The page pipe's fd number in the task, once given.
    pipe: i32,
    /// The blob has stopped (or died): no more commands.
    stopped: bool,
    unmapped: bool,
}

/// Offsets in the parasite mapping: (args, top of the stack, each thread's cure
/// frame, total size).
fn layout(frame_lens: &[u64]) -> (u64, u64, Vec<u64>, u64) {
    let image = blobs::PARASITE_IMAGE.len() as u64;
    let args = image;
    let stack_top = (args + PAGE + abi::BLOB_STACK_SIZE as u64).next_multiple_of(PAGE);
    let mut at = stack_top;
    let frames = frame_lens
        .iter()
        .map(|&l| {
            let o = at.next_multiple_of(64);
            at = o + l;
            o
        })
        .collect();
    (args, stack_top, frames, at.next_multiple_of(PAGE))
}

impl<'t> Parasite<'t> {
    /// Maps the blob and every thread's cure frame into the task, creates the control
    /// socket and starts the blob in the main thread (`threads[0]`).
    pub fn inject(threads: &'t [Tracee], geometry: SigFrameXstate) -> Result<Parasite<'t>> {
        let main = &threads[0];
        let pid = main.pid;
        let frame_lens: Vec<u64> = threads.iter().map(|t| task::regs::cure_frame_len(&t.xstate, geometry) as u64).collect();
        let (args_off, stack_top, frames, size) = layout(&frame_lens);
        let prot = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let base = main.syscall_ok("mmap", libc::SYS_mmap, &[0, size, prot, flags, u64::MAX, 0]).map_err(|e| match e {
            Error::Ptrace { errno: nix::errno::Errno::EACCES, .. } => Error::Unsupported {
                pid: pid.as_raw(),
                fd: None,
                what: "it refuses writable-executable memory (PR_SET_MDWE or an LSM)".into(),
                hint: Some("not supported yet"),
            },
            e => e,
        })?;
        let mut p = Parasite { threads, base, size, sock: None, theirs: -1, pipe: -1, stopped: true, unmapped: false };

        let image = blobs::relocated(blobs::PARASITE_IMAGE, blobs::PARASITE_RELOCS, base);
        write_remote(pid, base, &image).ptrace(pid, "process_vm_writev")?;
        for (t, &off) in threads.iter().zip(&frames) {
            let frame = task::regs::cure_frame(&t.regs, &t.xstate, t.sigmask, base + off, geometry);
            write_remote(pid, base + off, &frame).ptrace(pid, "process_vm_writev")?;
            t.set_cure(Some((base + blobs::PARASITE_SYSCALL_STUB, base + off)));
        }

        // The socket's fds go where the blob's cure paths find them.
        let sv_addr = base + blobs::PARASITE_OPEN_FDS;
        let domain_type = (libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC) as u64;
        main.syscall_ok("socketpair", libc::SYS_socketpair, &[libc::AF_UNIX as u64, domain_type, 0, sv_addr])?;
        crate::fault::point(15)?;
        let mut sv = [0u8; 8];
        read_remote(pid, sv_addr, &mut sv).ptrace(pid, "process_vm_readv")?;
        let ours = i32::from_le_bytes(sv[4..8].try_into().unwrap());
        let theirs = i32::from_le_bytes(sv[0..4].try_into().unwrap());
        p.theirs = theirs;
        let pidfd = pidfd_open(pid).ptrace(pid, "pidfd_open")?;
        let sock = pidfd_getfd(&pidfd, ours).ptrace(pid, "pidfd_getfd");
        p.close_slot(1)?;
        p.sock = Some(sock?);
        crate::fault::point(16)?;

        let args = ParasiteArgs { sock: theirs, socketpair: [theirs, ours], _pad: 0, frame: base + frames[0] };
        write_remote(pid, base + args_off, as_bytes(&args)).ptrace(pid, "process_vm_writev")?;
        let mut r = main.regs;
        r.rip = base + blobs::PARASITE_ENTRY;
        r.rdi = base + args_off;
        r.rsp = base + stack_top;
        r.orig_rax = u64::MAX;
        r.rax = 0;
        // The command loop runs with every signal blocked (its cure frame has the
        // thread's own mask).
        ptrace::set_sigmask(pid, !0).ptrace(pid, "PTRACE_SETSIGMASK")?;
        ptrace::setregs(pid, &r).ptrace(pid, "PTRACE_SETREGS")?;
        ptrace::cont(pid).ptrace(pid, "PTRACE_CONT")?;
        p.stopped = false;
        Ok(p)
    }

    /// Where the parasite is mapped in the task.
    pub fn base(&self) -> u64 {
        self.base
    }

    fn main(&self) -> &Tracee {
        &self.threads[0]
    }

    fn err(&self, msg: impl Into<String>) -> Error {
        Error::Parasite { pid: self.main().pid.as_raw(), msg: msg.into() }
    }

    fn send(&mut self, op: u32, payload: &[u8], n: u32, fd: Option<BorrowedFd>) -> Result<()> {
        self.send_arg(op, 0, payload, n, fd)
    }

    fn send_arg(&mut self, op: u32, arg: u64, payload: &[u8], n: u32, fd: Option<BorrowedFd>) -> Result<()> {
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
    fn recv(&mut self, want_op: u32, payload: &mut [u8]) -> Result<(Reply, usize, Vec<OwnedFd>)> {
        self.recv_reply(want_op, payload, true)
    }

    fn recv_reply(&mut self, want_op: u32, payload: &mut [u8], interruptible: bool) -> Result<(Reply, usize, Vec<OwnedFd>)> {
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
            if let Some(stop) = ptrace::wait(self.main().pid, true).ptrace(self.main().pid, "waitpid")? {
                self.stopped = true;
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
            self.stopped = true;
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

    /// Has the task make a userfaultfd from `dev` (/dev/userfaultfd opened by
    /// crtool: USERFAULTFD_IOC_NEW with `flags`, see userfaultfd(2)) and hand it
    /// over; the task keeps no fd of it.
    pub fn new_uffd(&mut self, dev: BorrowedFd, flags: u64) -> Result<OwnedFd> {
        self.send_arg(abi::CMD_NEW_UFFD, flags, &[], 0, Some(dev))?;
        let (r, _, mut got) = self.recv(abi::CMD_SEND_FDS, &mut [])?;
        if r.ret < 0 {
            return Err(Error::Ptrace { pid: self.main().pid.as_raw(), op: "USERFAULTFD_IOC_NEW", errno: nix::errno::Errno::from_raw(-r.ret as i32) });
        }
        got.pop().ok_or_else(|| self.err("the userfaultfd did not come"))
    }

    /// vmsplice()s the given ranges of the task's memory into the page pipe.
    pub fn splice_pages(&mut self, iovs: &[IoVec]) -> Result<u64> {
        let bytes: &[u8] = slice_as_bytes(iovs);
        self.send(abi::CMD_DUMP_PAGES, bytes, iovs.len() as u32, None)?;
        let (r, _, _) = self.recv(abi::CMD_DUMP_PAGES, &mut [])?;
        if r.ret < 0 {
            return Err(self.err(format!("vmsplice failed: {}", nix::errno::Errno::from_raw(-r.ret as i32))));
        }
        Ok(r.ret as u64)
    }

    pub fn info(&mut self) -> Result<ParasiteInfo> {
        self.send(abi::CMD_GET_INFO, &[], 0, None)?;
        // SAFETY: ParasiteInfo is plain integers; zero is a valid value.
        let mut info: ParasiteInfo = unsafe { std::mem::zeroed() };
        let (_, len, _) = self.recv(abi::CMD_GET_INFO, as_bytes_mut(&mut info))?;
        if len != size_of::<ParasiteInfo>() {
            return Err(self.err(format!("info reply has {len} bytes, expected {}", size_of::<ParasiteInfo>())));
        }
        Ok(info)
    }

    /// Receives duplicates of the task's fds (in the same order).
    pub fn fds(&mut self, fds: &[i32]) -> Result<Vec<OwnedFd>> {
        let mut out = Vec::with_capacity(fds.len());
        for chunk in fds.chunks(abi::MAX_FDS_PER_MSG) {
            self.send(abi::CMD_SEND_FDS, slice_as_bytes(chunk), chunk.len() as u32, None)?;
            let (r, _, got) = self.recv(abi::CMD_SEND_FDS, &mut [])?;
            if r.ret < 0 || got.len() != chunk.len() {
                return Err(self.err(format!("sending fds {chunk:?} failed (errno {}, got {})", -r.ret, got.len())));
            }
            out.extend(got);
        }
        Ok(out)
    }

    /// Stops the blob (it waits, crtool interrupts it) and unmaps it. The tracee is
    /// left stopped; its original registers are put back by `Tracee::restore_state`.
    pub fn finish(mut self) -> Result<()> {
        self.stop_and_unmap()
    }

    /// Stops the blob but keeps its memory, so that remote syscalls in any thread of
    /// the task can use `scratch()` until the parasite is dropped.
    pub fn stop(&mut self) -> Result<()> {
        self.stop_blob()
    }

    /// 2 KiB of the task's memory (inside the parasite mapping) free for remote
    /// syscalls' in/out arguments.
    pub fn scratch(&self) -> u64 {
        self.base + blobs::PARASITE_IMAGE.len() as u64 + 2048
    }

    /// Closes the control socket's fd in slot `slot` of the blob's
    /// `parasite_open_fds` (0: the parasite's end, 1: crtool's), exactly once
    /// whoever else (a cure path) might try.
    fn close_slot(&self, slot: u64) -> Result<()> {
        let r = self.main().call_parasite(self.base + blobs::PARASITE_CLOSE_SLOT, &[slot])?;
        if (-4095..0).contains(&r) {
            return Err(Error::Ptrace { pid: self.main().pid.as_raw(), op: "close", errno: nix::errno::Errno::from_raw(-r as i32) });
        }
        Ok(())
    }

    fn stop_and_unmap(&mut self) -> Result<()> {
        let stopped = self.stop_blob();
        if !self.unmapped {
            self.unmapped = true;
            // Whatever is left of the control socket (after a failure on the way in,
            // both ends may be).
            if self.main().can_call_parasite() {
                self.close_slot(0)?;
                self.close_slot(1)?;
            }
            // The last remote call runs from the vdso: the stub goes with the mapping,
            // so no thread may wait there any more.
            for t in self.threads {
                t.leave_parasite()?;
            }
            self.main().syscall_ok("munmap", libc::SYS_munmap, &[self.base, self.size])?;
        }
        stopped
    }

    fn stop_blob(&mut self) -> Result<()> {
        if self.stopped {
            self.sock = None;
            return Ok(());
        }
        // After FINI the parasite closes its page pipe, answers, and waits on the
        // control socket: crtool takes the thread back there (were crtool gone, the
        // socket would close and the thread cure itself). Answers to a command an
        // interruption cut short come first; they are skipped.
        let mut said_bye = self.send(abi::CMD_FINI, &[], 0, None);
        if said_bye.is_ok() {
            said_bye = loop {
                match self.recv_reply(abi::CMD_FINI, &mut [], false) {
                    Err(Error::Parasite { msg, .. }) if msg.starts_with("reply to command") => continue,
                    r => break r.map(drop),
                }
            };
        }
        self.stopped = true;
        let interrupted = self.main().interrupt();
        self.sock = None;
        interrupted?;
        // Its fds in the task: the socket end always, the pipe if FINI did not get
        // through.
        let mut left = vec![std::mem::replace(&mut self.theirs, -1)];
        if said_bye.is_err() {
            left.push(std::mem::replace(&mut self.pipe, -1));
        }
        if left[0] >= 0 {
            self.close_slot(0)?;
        }
        for fd in left.into_iter().skip(1).filter(|&f| f >= 0) {
            self.main().syscall_ok("close", libc::SYS_close, &[fd as u64])?;
        }
        said_bye
    }
}

impl Drop for Parasite<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.stop_and_unmap() {
            log::error!("pid {}: removing the parasite: {e}", self.main().pid);
        }
    }
}

fn as_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is a plain #[repr(C)] ABI struct; viewing it as bytes is sound.
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, size_of::<T>()) }
}

fn as_bytes_mut<T: Copy>(v: &mut T) -> &mut [u8] {
    // SAFETY: T is a plain #[repr(C)] ABI struct of integers; any bytes are valid.
    unsafe { std::slice::from_raw_parts_mut(v as *mut T as *mut u8, size_of::<T>()) }
}

fn slice_as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: as for `as_bytes`, over a slice.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}
