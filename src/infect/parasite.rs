//! Injecting the parasite blob into a frozen task and talking to it.

use super::channel::{Channel, as_bytes, as_bytes_mut, slice_as_bytes};
use super::tracee::Tracee;
use crate::error::{Error, PtraceCtx, Result};
use crate::sys::abi::{self, ParasiteArgs, ParasiteInfo};
use crate::sys::blobs;
use crate::sys::cpu::SigFrameXstate;
use crate::task;
use crate::sys::process::{pidfd_getfd, pidfd_open, read_remote, write_remote};
use crate::sys::ptrace;
use std::mem::size_of;
use std::os::fd::{BorrowedFd, OwnedFd};

const PAGE: u64 = 4096;

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
    chan: Channel,
    /// The parasite's end of the control socket, as an fd number in the task.
    theirs: i32,
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
        let mut p = Parasite { threads, base, size, chan: Channel::new(pid), theirs: -1, stopped: true, unmapped: false };

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
        p.chan.connect(sock?);
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
        self.chan.err(msg)
    }

    /// The control socket, for page commands (see `Channel`).
    pub fn channel(&mut self) -> &mut Channel {
        &mut self.chan
    }

    /// Lends the control socket to another thread of crtool (see `Channel`); the
    /// parasite takes no command until it is given back.
    pub fn lend(&mut self) -> Channel {
        let pid = self.main().pid;
        std::mem::replace(&mut self.chan, Channel::new(pid))
    }

    /// Takes back the control socket `lend` gave out.
    pub fn give_back(&mut self, chan: Channel) {
        self.chan = chan;
    }

    /// Has the task make a userfaultfd from `dev` (/dev/userfaultfd opened by
    /// crtool: USERFAULTFD_IOC_NEW with `flags`, see userfaultfd(2)) and hand it
    /// over; the task keeps no fd of it.
    pub fn new_uffd(&mut self, dev: BorrowedFd, flags: u64) -> Result<OwnedFd> {
        self.chan.send_arg(abi::CMD_NEW_UFFD, flags, &[], 0, Some(dev))?;
        let (r, _, mut got) = self.chan.recv(abi::CMD_SEND_FDS, &mut [])?;
        if r.ret < 0 {
            return Err(Error::Ptrace { pid: self.main().pid.as_raw(), op: "USERFAULTFD_IOC_NEW", errno: nix::errno::Errno::from_raw(-r.ret as i32) });
        }
        got.pop().ok_or_else(|| self.err("the userfaultfd did not come"))
    }

    pub fn info(&mut self) -> Result<ParasiteInfo> {
        self.chan.send(abi::CMD_GET_INFO, &[], 0, None)?;
        // SAFETY: ParasiteInfo is plain integers; zero is a valid value.
        let mut info: ParasiteInfo = unsafe { std::mem::zeroed() };
        let (_, len, _) = self.chan.recv(abi::CMD_GET_INFO, as_bytes_mut(&mut info))?;
        if len != size_of::<ParasiteInfo>() {
            return Err(self.err(format!("info reply has {len} bytes, expected {}", size_of::<ParasiteInfo>())));
        }
        Ok(info)
    }

    /// Receives duplicates of the task's fds (in the same order).
    pub fn fds(&mut self, fds: &[i32]) -> Result<Vec<OwnedFd>> {
        let mut out = Vec::with_capacity(fds.len());
        for chunk in fds.chunks(abi::MAX_FDS_PER_MSG) {
            self.chan.send(abi::CMD_SEND_FDS, slice_as_bytes(chunk), chunk.len() as u32, None)?;
            let (r, _, got) = self.chan.recv(abi::CMD_SEND_FDS, &mut [])?;
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

    /// Bytes at `scratch()` (the rest of the page after the blob's arguments).
    pub fn scratch_len(&self) -> u64 {
        2048
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
        if self.stopped || self.chan.dead {
            self.stopped = true;
            self.chan.close();
            return Ok(());
        }
        // After FINI the parasite closes its page pipe, answers, and waits on the
        // control socket: crtool takes the thread back there (were crtool gone, the
        // socket would close and the thread cure itself). Answers to a command an
        // interruption cut short come first; they are skipped.
        let mut said_bye = self.chan.send(abi::CMD_FINI, &[], 0, None);
        if said_bye.is_ok() {
            said_bye = loop {
                match self.chan.recv_reply(abi::CMD_FINI, &mut [], false) {
                    Err(Error::Parasite { msg, .. }) if msg.starts_with("reply to command") => continue,
                    r => break r.map(drop),
                }
            };
        }
        self.stopped = true;
        let interrupted = self.main().interrupt();
        self.chan.close();
        interrupted?;
        // Its fds in the task: the socket end always, the pipe if FINI did not get
        // through.
        let mut left = vec![std::mem::replace(&mut self.theirs, -1)];
        if said_bye.is_err() {
            left.push(std::mem::replace(&mut self.chan.pipe, -1));
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
