//! A seized, frozen task and the remote syscalls crtool runs in it.

use crate::error::{Error, PtraceCtx, Result};
use crate::sys::ptrace::{self, Regs, Stop, PTRACE_EVENT_STOP};
use crate::sys::cpu::SigFrameXstate;
use crate::sys::process::{read_remote, write_remote};
use nix::unistd::Pid;

/// How a remote syscall run from the vdso (before the parasite is mapped, or after
/// it is gone) stays safe should crtool die during it (see `infect::gadgets`): rip
/// at a vdso `syscall` that is followed by `ret`, rsp at a cure frame below the
/// thread's red zone whose return address is a sigreturn sequence of the task's.
#[derive(Debug, Clone, Copy)]
pub struct StackCure {
    /// Address of the vdso's `syscall; xor...; ret`.
    pub syscall_ret: u64,
    /// Address of `mov $15, %eax; syscall` in the task.
    pub sigreturn: u64,
    pub geometry: SigFrameXstate,
}

/// A task under crtool's ptrace control, frozen in a PTRACE_EVENT_STOP. Everything
/// crtool changes while it holds the task (registers, XSAVE state, signal mask) is put
/// back by `restore_state`; dropping a `Tracee` without `release` does that and
/// detaches, so no error path can leave the task stopped or altered.
///
/// Should crtool die (SIGKILL) the kernel detaches every tracee where it stands, so
/// a tracee is left with its own registers and signal mask at every moment except
/// while crtool runs code in it: remote syscalls block its signals only for their
/// duration, and once the parasite is mapped they run from its syscall stub, after
/// which a thread crtool no longer controls returns through its cure frame to its
/// own state (see `Parasite`).
pub struct Tracee {
    pub pid: Pid,
    /// Registers, XSAVE area and blocked mask as they were when the task froze.
    pub regs: Regs,
    pub xstate: Vec<u8>,
    pub sigmask: u64,
    /// A `syscall` instruction in the task (in its vdso) used for remote syscalls.
    syscall_ip: u64,
    /// The task was in group-stop (SIGSTOP, SIGTSTP, ...) when seized: the signal.
    pub group_stop: Option<i32>,
    /// While the parasite is mapped: its syscall stub and this thread's cure frame.
    cure: std::cell::Cell<Option<(u64, u64)>>,
    /// Otherwise, for remote syscalls from the vdso: see `StackCure`.
    stack_cure: Option<StackCure>,
    /// Whether regs/xstate/sigmask above hold the task's real state (so that putting
    /// them back is right).
    captured: bool,
    released: bool,
}

impl Tracee {
    /// Seizes and interrupts `pid`, then blocks its signals while crtool works.
    pub fn seize(pid: Pid, xsave_size: usize) -> Result<Tracee> {
        ptrace::seize(pid, false).map_err(|errno| match errno {
            nix::errno::Errno::ESRCH => Error::NoProcess(pid.as_raw()),
            errno => Error::Ptrace { pid: pid.as_raw(), op: "PTRACE_SEIZE", errno },
        })?;
        let mut t = Tracee { pid, regs: unsafe_zeroed_regs(), xstate: Vec::new(), sigmask: 0, syscall_ip: 0, group_stop: None, cure: Default::default(), stack_cure: None, captured: false, released: false };
        ptrace::interrupt(pid).ptrace(pid, "PTRACE_INTERRUPT")?;
        loop {
            match ptrace::wait(pid, false).ptrace(pid, "waitpid")? {
                // WSTOPSIG is SIGTRAP for the interrupt, the stop signal when the task
                // sits in group-stop (it reports that first; the interrupt follows later
                // and is stepped over like any pending report).
                Some(Stop::Event(PTRACE_EVENT_STOP, sig)) => {
                    if sig != libc::SIGTRAP {
                        t.group_stop = Some(sig);
                    }
                    break;
                }
                // A signal was on its way: let it be delivered as it would have been;
                // the interrupt stays pending and comes next.
                Some(Stop::Signal(sig)) => ptrace::cont_signal(pid, sig).ptrace(pid, "PTRACE_CONT")?,
                Some(Stop::Exited(_)) | Some(Stop::Killed(_)) => {
                    t.released = true;
                    return Err(Error::TaskGone { pid: pid.as_raw(), state: "exited".into() });
                }
                other => {
                    return Err(Error::Parasite { pid: pid.as_raw(), msg: format!("unexpected stop {other:?} while freezing") });
                }
            }
        }
        t.regs = ptrace::getregs(pid).ptrace(pid, "PTRACE_GETREGS")?;
        t.xstate = ptrace::get_xstate(pid, xsave_size).ptrace(pid, "PTRACE_GETREGSET(NT_X86_XSTATE)")?;
        t.sigmask = ptrace::get_sigmask(pid).ptrace(pid, "PTRACE_GETSIGMASK")?;
        t.captured = true;
        // The mask stays the task's own: a signal sent now waits (a stopped tracee
        // dequeues nothing) and nothing is left blocked should crtool die.
        Ok(t)
    }

    /// Remote syscalls run from the parasite's stub at `stub`, curing through `frame`
    /// (this thread's rt_sigframe) if crtool goes away; `None`: from the vdso.
    pub fn set_cure(&self, cure: Option<(u64, u64)>) {
        self.cure.set(cure);
    }

    pub fn set_syscall_ip(&mut self, ip: u64) {
        self.syscall_ip = ip;
    }

    /// Makes remote syscalls run without the parasite cure-safe (see `StackCure`).
    pub fn set_stack_cure(&mut self, cure: StackCure) {
        self.stack_cure = Some(cure);
    }

    /// Runs one syscall in the task and returns its raw result (negative errno on
    /// failure). The task stays stopped before and after, with its own registers and
    /// signal mask back in place.
    pub fn syscall(&self, nr: i64, args: &[u64]) -> Result<i64> {
        self.run(None, nr, args)
    }

    /// Like `syscall`, but entering the parasite at `ip` (which makes exactly one
    /// syscall of its own choosing, then goes on as the stub does) with `args` in
    /// the argument registers. Needs the parasite (`set_cure`).
    pub fn call_parasite(&self, ip: u64, args: &[u64]) -> Result<i64> {
        self.run(Some(ip), -1, args)
    }

    fn run(&self, entry: Option<u64>, nr: i64, args: &[u64]) -> Result<i64> {
        let pid = self.pid;
        let mut r = self.regs;
        // Stack bytes a cure frame borrows, put back after the call.
        let mut borrowed = None;
        match (self.cure.get(), self.stack_cure) {
            (Some((stub, frame)), _) => {
                r.rip = entry.unwrap_or(stub);
                r.r12 = frame;
            }
            (None, _) if entry.is_some() => return Err(Error::Parasite { pid: pid.as_raw(), msg: "no parasite to call".into() }),
            (None, Some(c)) => {
                let len = crate::task::regs::cure_frame_len(&self.xstate, c.geometry) as u64;
                // Below the red zone, where a signal frame would go.
                let at = (self.regs.rsp.wrapping_sub(128 + len)) & !63;
                let mut frame = crate::task::regs::cure_frame(&self.regs, &self.xstate, self.sigmask, at, c.geometry);
                frame[..8].copy_from_slice(&c.sigreturn.to_le_bytes());
                let mut old = vec![0u8; frame.len()];
                let placed = read_remote(pid, at, &mut old).is_ok() && write_remote(pid, at, &frame).is_ok();
                if placed {
                    borrowed = Some((at, old));
                    r.rip = c.syscall_ret;
                    r.rsp = at;
                } else if self.syscall_ip != 0 {
                    // No room on its stack (a guard region, a tiny stack): unprotected.
                    r.rip = self.syscall_ip;
                } else {
                    return Err(Error::Parasite { pid: pid.as_raw(), msg: "no syscall instruction found in the task".into() });
                }
            }
            (None, None) if self.syscall_ip != 0 => r.rip = self.syscall_ip,
            (None, None) => return Err(Error::Parasite { pid: pid.as_raw(), msg: "no syscall instruction found in the task".into() }),
        }
        r.rax = nr as u64;
        r.orig_rax = u64::MAX;
        let a = |i: usize| args.get(i).copied().unwrap_or(0);
        (r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9) = (a(0), a(1), a(2), a(3), a(4), a(5));
        // Signals wait while crtool's code runs in the task (not a handler of its own
        // in the middle of a remote call).
        ptrace::set_sigmask(pid, !0).ptrace(pid, "PTRACE_SETSIGMASK")?;
        ptrace::setregs(pid, &r).ptrace(pid, "PTRACE_SETREGS")?;
        let ran = self.resume_to_syscall_stop().and_then(|_| {
            // Test hook: crtool fails or dies with the task at the entry of the
            // parasite's mmap (13) or munmap (14).
            let fault = match (self.cure.get(), nr) {
                (None, libc::SYS_mmap) => crate::fault::point(13),
                (None, libc::SYS_munmap) => crate::fault::point(14),
                _ => Ok(()),
            };
            if let Err(e) = fault {
                // Leave the entry stop without making the call (it would run with
                // whatever registers are put back).
                let mut skip = r;
                skip.orig_rax = u64::MAX;
                ptrace::setregs(pid, &skip).ptrace(pid, "PTRACE_SETREGS")?;
                self.resume_to_syscall_stop()?;
                return Err(e);
            }
            self.resume_to_syscall_stop()
        });
        let out = ran.and_then(|_| ptrace::getregs(pid).ptrace(pid, "PTRACE_GETREGS"));
        if let Some((at, old)) = borrowed {
            write_remote(pid, at, &old).ptrace(pid, "process_vm_writev")?;
        }
        self.park()?;
        Ok(out?.rax as i64)
    }

    /// Between remote calls: with the parasite mapped, the thread waits at its
    /// stub's cure path (every signal blocked), so that should crtool die it closes
    /// what is left of the parasite's socket and returns through its cure frame;
    /// otherwise it has its own registers and mask back.
    fn park(&self) -> Result<()> {
        let Some((stub, frame)) = self.cure.get() else { return self.put_back() };
        let mut r = self.regs;
        r.rip = stub + 2; // past the stub's `syscall`
        r.r12 = frame;
        r.orig_rax = u64::MAX;
        ptrace::setregs(self.pid, &r).ptrace(self.pid, "PTRACE_SETREGS")
    }

    /// Whether remote calls run through the parasite's stub (`set_cure`).
    pub fn can_call_parasite(&self) -> bool {
        self.cure.get().is_some()
    }

    /// Leaves the parasite's stub for good (before its mapping goes): the thread's
    /// own registers and mask are back, remote calls run from the vdso again.
    pub fn leave_parasite(&self) -> Result<()> {
        self.cure.set(None);
        self.put_back()
    }

    /// The task's own registers and signal mask (not the XSAVE state, which remote
    /// syscalls do not touch).
    fn put_back(&self) -> Result<()> {
        ptrace::setregs(self.pid, &self.regs).ptrace(self.pid, "PTRACE_SETREGS")?;
        ptrace::set_sigmask(self.pid, self.sigmask).ptrace(self.pid, "PTRACE_SETSIGMASK")
    }

    /// `syscall` in several threads at once, `calls[i]` (number, arguments) in
    /// `threads[i]`, each through the parasite's stub (`set_cure`): every thread
    /// is resumed before any is waited for, so that their stops overlap instead
    /// of following one another (a remote call is mostly waiting for the thread
    /// to run and stop). Each thread is parked again whatever happens to the
    /// others; the results in order, or the first error.
    pub fn syscall_each(threads: &[&Tracee], calls: &[(i64, [u64; 6])]) -> Result<Vec<i64>> {
        if threads.iter().any(|t| t.cure.get().is_none()) {
            return threads.iter().zip(calls).map(|(t, (nr, args))| t.syscall(*nr, args)).collect();
        }
        let mut first_err: Option<Error> = None;
        let mut note = |r: Result<()>| {
            if let Err(e) = r {
                first_err.get_or_insert(e);
                false
            } else {
                true
            }
        };
        // Set up and resumed to the syscall's entry.
        let mut live: Vec<bool> = threads
            .iter()
            .zip(calls)
            .map(|(t, (nr, args))| {
                let Some((stub, frame)) = t.cure.get() else { return false };
                let pid = t.pid;
                let mut r = t.regs;
                r.rip = stub;
                r.r12 = frame;
                r.rax = *nr as u64;
                r.orig_rax = u64::MAX;
                (r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9) = (args[0], args[1], args[2], args[3], args[4], args[5]);
                let ok = note((|| {
                    ptrace::set_sigmask(pid, !0).ptrace(pid, "PTRACE_SETSIGMASK")?;
                    ptrace::setregs(pid, &r).ptrace(pid, "PTRACE_SETREGS")?;
                    ptrace::cont_syscall(pid).ptrace(pid, "PTRACE_SYSCALL")
                })());
                if !ok {
                    // (Still stopped, or gone.)
                    let _ = t.park();
                }
                ok
            })
            .collect();
        // Entry stops, then on to the exit stops.
        for (t, l) in threads.iter().zip(live.iter_mut()) {
            if !*l {
                continue;
            }
            let stopped = t.wait_syscall_stop();
            let stopped_ok = stopped.is_ok();
            *l = note(stopped.and_then(|()| ptrace::cont_syscall(t.pid).ptrace(t.pid, "PTRACE_SYSCALL")));
            if !*l && stopped_ok {
                // (At its entry stop: parked without making the call.)
                let _ = t.park();
            }
        }
        let mut out = vec![0i64; threads.len()];
        for (i, t) in threads.iter().enumerate() {
            if !live[i] {
                continue;
            }
            let got = t.wait_syscall_stop().and_then(|()| ptrace::getregs(t.pid).ptrace(t.pid, "PTRACE_GETREGS"));
            if let Ok(r) = &got {
                out[i] = r.rax as i64;
            }
            note(got.map(drop));
            note(t.park());
        }
        first_err.map_or(Ok(out), Err)
    }

    /// Waits for the syscall stop a PTRACE_SYSCALL resumed the thread to
    /// (stepping over pending interrupt and group-stop reports, as
    /// `resume_to_syscall_stop` does).
    fn wait_syscall_stop(&self) -> Result<()> {
        let pid = self.pid;
        loop {
            match ptrace::wait(pid, false).ptrace(pid, "waitpid")? {
                Some(Stop::Syscall) => return Ok(()),
                Some(Stop::Event(PTRACE_EVENT_STOP, _)) => ptrace::cont_syscall(pid).ptrace(pid, "PTRACE_SYSCALL")?,
                other => return Err(self.unexpected(other, "a syscall stop")),
            }
        }
    }

    /// Like `syscall` but turns a negative result into an error naming the call.
    pub fn syscall_ok(&self, name: &'static str, nr: i64, args: &[u64]) -> Result<u64> {
        let r = self.syscall(nr, args)?;
        if (-4095..0).contains(&r) {
            return Err(Error::Ptrace { pid: self.pid.as_raw(), op: name, errno: nix::errno::Errno::from_raw(-r as i32) });
        }
        Ok(r as u64)
    }

    /// Resumes the task to its next syscall entry or exit stop. Interrupt and
    /// group-stop reports that were still pending (a task frozen in group-stop reports
    /// it again, an earlier PTRACE_INTERRUPT may still be queued) come first: they are
    /// stepped over, since the task sits in the kernel there and runs nothing.
    pub fn resume_to_syscall_stop(&self) -> Result<()> {
        let pid = self.pid;
        loop {
            ptrace::cont_syscall(pid).ptrace(pid, "PTRACE_SYSCALL")?;
            match ptrace::wait(pid, false).ptrace(pid, "waitpid")? {
                Some(Stop::Syscall) => return Ok(()),
                Some(Stop::Event(PTRACE_EVENT_STOP, _)) => continue,
                other => return Err(self.unexpected(other, "a syscall stop")),
            }
        }
    }

    fn unexpected(&self, stop: Option<Stop>, wanted: &str) -> Error {
        let pid = self.pid.as_raw();
        match stop {
            Some(Stop::Exited(c)) => Error::TaskGone { pid, state: format!("exited with {c}") },
            Some(Stop::Killed(s)) => Error::TaskGone { pid, state: format!("was killed by signal {s}") },
            other => Error::Parasite { pid, msg: format!("unexpected stop {other:?}, wanted {wanted}") },
        }
    }

    /// Stops a task that is running (the parasite) with PTRACE_INTERRUPT and waits
    /// until it sits in that stop. A fault of the running code stops it too (the
    /// fault is discarded: the task's own registers are put back before it runs).
    pub fn interrupt(&self) -> Result<()> {
        let pid = self.pid;
        ptrace::interrupt(pid).ptrace(pid, "PTRACE_INTERRUPT")?;
        match ptrace::wait(pid, false).ptrace(pid, "waitpid")? {
            Some(Stop::Event(PTRACE_EVENT_STOP, _)) | Some(Stop::Syscall) => Ok(()),
            Some(Stop::Signal(sig)) => {
                log::warn!("pid {pid}: the parasite stopped with signal {sig}");
                Ok(())
            }
            other => Err(self.unexpected(other, "the interrupt stop")),
        }
    }

    /// Puts back registers, XSAVE state and signal mask as they were at seize time.
    pub fn restore_state(&self) -> Result<()> {
        let pid = self.pid;
        if !self.captured {
            return Ok(());
        }
        ptrace::setregs(pid, &self.regs).ptrace(pid, "PTRACE_SETREGS")?;
        ptrace::set_xstate(pid, &self.xstate).ptrace(pid, "PTRACE_SETREGSET(NT_X86_XSTATE)")?;
        ptrace::set_sigmask(pid, self.sigmask).ptrace(pid, "PTRACE_SETSIGMASK")?;
        Ok(())
    }

    /// Gives up control without touching the task (it is being killed).
    pub fn forget(mut self) {
        self.released = true;
    }

    /// Restores the task's state and lets it run on (detach), or kills it.
    pub fn release(mut self, kill: bool) -> Result<()> {
        self.released = true;
        let restored = self.restore_state();
        if kill {
            nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL).ptrace(self.pid, "kill")?;
            while let Ok(Some(s)) = ptrace::wait(self.pid, false) {
                if matches!(s, Stop::Exited(_) | Stop::Killed(_)) {
                    break;
                }
            }
            return Ok(());
        }
        restored?;
        if self.group_stop.is_some() {
            crate::task::syscall::rearm_temporary_mask(self.pid, &self.regs, self.sigmask).ptrace(self.pid, "re-entering a call with a temporary signal mask")?;
        }
        ptrace::detach(self.pid).ptrace(self.pid, "PTRACE_DETACH")
    }
}

impl Drop for Tracee {
    fn drop(&mut self) {
        if !self.released {
            if let Err(e) = self.restore_state() {
                log::error!("pid {}: could not restore state while releasing: {e}", self.pid);
            }
            if let Err(e) = ptrace::detach(self.pid) {
                log::error!("pid {}: detach failed: {e}", self.pid);
            }
        }
    }
}

fn unsafe_zeroed_regs() -> Regs {
    // SAFETY: user_regs_struct is plain integers; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}
