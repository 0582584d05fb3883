//! crtool's side of a restore once the root is forked: it traces the whole tree (new
//! tasks and threads are auto-attached), waits until every thread of every task sits
//! at the restorer's final int3, then walks each through rt_sigreturn, removes each
//! task's restorer area with one injected munmap, and lets them all go at once. Any
//! failure kills everything it created.

use super::TreeImages;
use crate::error::{Error, PtraceCtx, Result};
use crate::procinfo;
use crate::sys::abi::RestorerArgs;
use crate::sys::process::{read_remote, write_remote};
use crate::sys::ptrace::{self, Regs, Stop};
use crate::task::syscall;
use images_format::pb;
use nix::unistd::Pid;
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, OwnedFd};

const PTRACE_EVENT_FORK: i32 = 1;
const PTRACE_EVENT_CLONE: i32 = 3;

/// What the finished tree must look like (zombies are forked untraced and only exit).
pub struct Expected {
    threads: usize,
}

impl Expected {
    pub fn from(imgs: &TreeImages) -> Expected {
        Expected { threads: imgs.procs.iter().filter_map(|p| p.task.as_ref()).map(|t| t.core.threads.len()).sum() }
    }
}

/// What the images say the finishing steps need, per thread (by its id in the
/// tree's namespace) and per process.
struct Plans {
    threads: BTreeMap<i32, ThreadPlan>,
    procs: BTreeMap<i32, ProcPlan>,
}

#[derive(Clone)]
struct ThreadPlan {
    vtid: i32,
    vpid: i32,
    main: bool,
    orig_rax: u64,
    blocked: u64,
    restart: Option<pb::SyscallRestart>,
}

struct ProcPlan {
    ppid: i32,
    dumpable: u32,
    stop_signal: i32,
    stop_unreported: bool,
    /// SIGCHLD was queued for the process when it was dumped.
    sigchld_pending: bool,
    /// Pending signals that cannot be blocked (SIGKILL, SIGSTOP).
    unblockable: Vec<i32>,
}

impl Plans {
    fn from(imgs: &TreeImages) -> Plans {
        let mut threads = BTreeMap::new();
        let mut procs = BTreeMap::new();
        let signo = |si: &Vec<u8>| si.get(0..4).map(|b| i32::from_le_bytes(b.try_into().unwrap())).unwrap_or(0);
        for p in &imgs.procs {
            let Some(t) = &p.task else { continue };
            let vpid = t.core.pid as i32;
            for (i, th) in t.core.threads.iter().enumerate() {
                let orig_rax = th.regs.as_ref().map_or(u64::MAX, |r| r.orig_rax);
                threads.insert(th.tid as i32, ThreadPlan { vtid: th.tid as i32, vpid, main: i == 0, orig_rax, blocked: th.blocked, restart: th.restart.clone() });
            }
            let all_pending = t.core.shared_pending.iter().chain(t.core.threads.iter().flat_map(|th| th.pending.iter()));
            let sigs: Vec<i32> = all_pending.map(signo).collect();
            procs.insert(vpid, ProcPlan {
                ppid: p.tree.ppid as i32,
                dumpable: t.core.dumpable,
                stop_signal: t.core.stop_signal,
                stop_unreported: t.core.stop_unreported,
                sigchld_pending: sigs.contains(&libc::SIGCHLD),
                unblockable: sigs.iter().copied().filter(|&s| s == libc::SIGKILL || s == libc::SIGSTOP).collect(),
            });
        }
        Plans { threads, procs }
    }
}

/// A thread between its restorer's trap and its release.
struct Finishing {
    tid: Pid,
    plan: ThreadPlan,
    /// Registers at the restorer's trap (r12 points at the restorer's arguments).
    at_trap: Regs,
    /// The registers it is let go with.
    regs: Regs,
}

/// A process's restorer area: where it is, spare bytes in it for crtool's remote
/// calls, and a `syscall` instruction (in the restored vdso) to make them with.
#[derive(Clone, Copy)]
struct Area {
    start: u64,
    len: u64,
    spare: u64,
    syscall: u64,
}

pub struct Supervisor {
    root: Pid,
    status_r: OwnedFd,
    vdso_syscall: u64,
    /// Every traced task we know of (outer tids).
    known: BTreeSet<Pid>,
    /// Threads waiting at their final int3, with the registers they had there.
    ready: BTreeMap<Pid, Regs>,
    /// Finished threads: the registers and signal mask they are let go with.
    restored: BTreeMap<Pid, (Regs, u64)>,
    /// Tid in the tree's PID namespace of every restored thread (outer tid → inner),
    /// and back: read once from /proc.
    inner: BTreeMap<Pid, i32>,
    outer: BTreeMap<i32, Pid>,
    /// Signals that could not stay blocked while we finished a thread (SIGSTOP from
    /// outside), sent again on detach.
    deferred: BTreeMap<Pid, Vec<i32>>,
    plans: Plans,
    /// Allowed CPUs of every thread, by its id in the tree's namespace.
    affinity: BTreeMap<i32, Vec<u64>>,
}

impl Supervisor {
    pub fn new(root: Pid, status_r: OwnedFd, vdso_syscall: u64, imgs: &TreeImages) -> Supervisor {
        let affinity = imgs
            .procs
            .iter()
            .filter_map(|p| p.task.as_ref())
            .flat_map(|t| t.core.threads.iter())
            .filter(|t| !t.cpu_affinity.is_empty())
            .map(|t| (t.tid as i32, t.cpu_affinity.clone()))
            .collect();
        Supervisor {
            root,
            status_r,
            vdso_syscall,
            known: BTreeSet::from([root]),
            ready: BTreeMap::new(),
            restored: BTreeMap::new(),
            inner: BTreeMap::new(),
            outer: BTreeMap::new(),
            deferred: BTreeMap::new(),
            affinity,
            plans: Plans::from(imgs),
        }
    }

    pub fn run(mut self, go_w: &OwnedFd, expected: Expected) -> Result<Supervisor> {
        match self.build(go_w, expected).and_then(|_| self.finish()) {
            Ok(()) => Ok(self),
            Err(e) => {
                self.kill_all();
                Err(e)
            }
        }
    }

    fn fail(&self, msg: String) -> Error {
        Error::Restore { pid: self.root.as_raw(), msg }
    }

    /// Reads what a task or restorer reported before dying, if anything.
    fn report(&self) -> Option<Error> {
        let mut buf = vec![0u8; 4096];
        nix::fcntl::fcntl(&self.status_r, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).ok()?;
        let n = nix::unistd::read(&self.status_r, &mut buf).ok()?;
        if n == 0 {
            return None;
        }
        if buf[0] == b'M' {
            return Some(Error::Reported(String::from_utf8_lossy(&buf[1..n]).into_owned()));
        }
        Some(self.fail(failure_text(&buf[..n])))
    }

    fn build(&mut self, go_w: &OwnedFd, expected: Expected) -> Result<()> {
        let root = self.root;
        ptrace::seize_tree(root).ptrace(root, "PTRACE_SEIZE")?;
        nix::unistd::write(go_w.as_fd(), b"g").map_err(|e| Error::sys("go pipe", e))?;
        while self.ready.len() < expected.threads {
            let (pid, stop) = ptrace::wait_any().map_err(|e| Error::sys("waitpid", e))?;
            self.known.insert(pid);
            match stop {
                Stop::Signal(libc::SIGTRAP) => {
                    let regs = ptrace::getregs(pid).ptrace(pid, "PTRACE_GETREGS")?;
                    self.ready.insert(pid, regs);
                }
                Stop::Event(PTRACE_EVENT_FORK | PTRACE_EVENT_CLONE, _) => {
                    if let Ok(child) = nix::sys::ptrace::getevent(pid) {
                        self.known.insert(Pid::from_raw(child as i32));
                    }
                    ptrace::cont(pid).ptrace(pid, "PTRACE_CONT")?;
                }
                Stop::Event(..) | Stop::Syscall => ptrace::cont(pid).ptrace(pid, "PTRACE_CONT")?,
                // A stop from outside: kept for the end (the restored task stops then).
                Stop::Signal(libc::SIGSTOP) => {
                    self.deferred.entry(pid).or_default().push(libc::SIGSTOP);
                    ptrace::cont(pid).ptrace(pid, "PTRACE_CONT")?
                }
                Stop::Exited(code) => {
                    self.known.remove(&pid);
                    return Err(self.report().unwrap_or_else(|| self.fail(format!("task {pid} exited with {code} during the restore"))));
                }
                Stop::Killed(sig) => {
                    self.known.remove(&pid);
                    return Err(self.report().unwrap_or_else(|| self.fail(format!("task {pid} was killed by signal {sig} during the restore"))));
                }
                // A fault means the restore code itself broke.
                Stop::Signal(sig @ (libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGSYS)) => {
                    let rip = ptrace::getregs(pid).map(|r| r.rip).unwrap_or(0);
                    return Err(self.fail(format!("task {pid} got signal {sig} at rip {rip:#x} while restoring")));
                }
                // Anything else (SIGCHLD from a group helper, a signal from outside)
                // is delivered as it would have been.
                Stop::Signal(sig) => ptrace::cont_signal(pid, sig).ptrace(pid, "PTRACE_CONT")?,
            }
        }
        Ok(())
    }

    /// Every thread through rt_sigreturn (registers, FPU state, altstack back; every
    /// signal still blocked), then per thread and process what only a tracer can do
    /// (see `finish_tree`).
    fn finish(&mut self) -> Result<()> {
        crate::fault::point(105)?;
        let ready: Vec<(Pid, Regs)> = self.ready.iter().map(|(&p, &r)| (p, r)).collect();
        let mut threads = Vec::new();
        for (tid, at_trap) in ready {
            let vtid = procinfo::innermost_pid(tid.as_raw()).ok_or_else(|| self.fail(format!("task {tid} vanished")))?;
            self.inner.insert(tid, vtid);
            self.outer.insert(vtid, tid);
            let plan = self.plans.threads.get(&vtid).cloned().ok_or_else(|| self.fail(format!("thread {vtid} is not in the images")))?;
            self.step_syscall(tid)?; // rt_sigreturn entry
            self.step_syscall(tid)?; // ... and exit
            let mut regs = ptrace::getregs(tid).ptrace(tid, "PTRACE_GETREGS")?;
            // rt_sigreturn leaves orig_rax at -1; the dumped value says which call the
            // thread was in, so that the kernel restarts it as it would have.
            regs.orig_rax = plan.orig_rax;
            threads.push(Finishing { tid, plan, at_trap, regs });
        }
        threads.sort_by_key(|t| (t.plan.vpid, !t.plan.main, t.plan.vtid));
        self.finish_tree(&mut threads)?;
        for t in threads {
            self.restored.insert(t.tid, (t.regs, t.plan.blocked));
        }
        Ok(())
    }

    fn finish_tree(&mut self, threads: &mut [Finishing]) -> Result<()> {
        // The restorer's arguments (and their spare bytes) of each process, from the
        // main thread, which holds the RestorerArgs pointer in r12 at its trap.
        let mut areas: BTreeMap<i32, (Pid, u64, Area)> = BTreeMap::new();
        for t in threads.iter().filter(|t| t.plan.main) {
            let args = t.at_trap.r12;
            let mut b = [0u8; 24];
            let off = std::mem::offset_of!(RestorerArgs, area_start) as u64;
            read_remote(t.tid, args + off, &mut b[..16]).ptrace(t.tid, "process_vm_readv")?;
            read_remote(t.tid, args + std::mem::offset_of!(RestorerArgs, spare) as u64, &mut b[16..]).ptrace(t.tid, "process_vm_readv")?;
            let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
            let vdso = procinfo::vdso(&t.tid.to_string()).map(|(s, _)| s).ok_or_else(|| self.fail(format!("task {} has no vdso after restore", t.tid)))?;
            areas.insert(t.plan.vpid, (t.tid, args, Area { start: w(0), len: w(1), spare: w(2), syscall: vdso + self.vdso_syscall }));
        }
        let area_of = |vpid: i32| areas.get(&vpid).map(|a| a.2).ok_or_else(|| Error::Restore { pid: vpid, msg: "no restorer area found".into() });

        // Calls that continue through the kernel's restart block: make them again with
        // the time that was left, interrupted at once, so that the kernel writes a new
        // block; the thread then resumes through restart_syscall as it would have.
        for t in threads.iter_mut() {
            let Some(rs) = t.plan.restart.clone() else { continue };
            let a = area_of(t.plan.vpid)?;
            write_remote(t.tid, a.spare, &syscall::timespec(rs.remaining_ns)).ptrace(t.tid, "process_vm_writev")?;
            let ret = self.inject(t.tid, &t.regs, a.syscall, rs.nr, syscall::restart_args(&rs, a.spare), true)?;
            if ret != syscall::ERESTART_RESTARTBLOCK {
                // The call finished right away (a poll found a ready fd, a futex word
                // had changed, the time was up): that is its result.
                t.regs.rax = ret as u64;
                t.regs.orig_rax = u64::MAX;
            }
            log::debug!("thread {}: {} restarted with {} ns left: {ret}", t.plan.vtid, rs.nr, rs.remaining_ns);
        }
        // SIGTRAP's action comes after the restorer's trap (a trap with SIGTRAP
        // blocked resets the action to SIG_DFL).
        for (&vpid, &(tid, args, a)) in &areas {
            let t = threads.iter().find(|t| t.tid == tid).expect("main thread");
            let act = args + std::mem::offset_of!(RestorerArgs, sigactions) as u64 + (libc::SIGTRAP as u64 - 1) * 32;
            let r = self.inject(tid, &t.regs, a.syscall, libc::SYS_rt_sigaction as u64, [libc::SIGTRAP as u64, act, 0, 8, 0, 0], false)?;
            if r != 0 {
                return Err(Error::Restore { pid: vpid, msg: format!("restoring SIGTRAP's action: {}", nix::errno::Errno::from_raw(-r as i32)) });
            }
            // Every thread has its credentials now (each uid change reset this).
            let dumpable = self.plans.procs.get(&vpid).map_or(1, |p| p.dumpable);
            let r = self.inject(tid, &t.regs, a.syscall, libc::SYS_prctl as u64, [libc::PR_SET_DUMPABLE as u64, dumpable as u64, 0, 0, 0, 0], false)?;
            if r != 0 {
                return Err(Error::Restore { pid: vpid, msg: format!("PR_SET_DUMPABLE {dumpable}: {}", nix::errno::Errno::from_raw(-r as i32)) });
            }
        }
        for t in threads.iter() {
            ptrace::setregs(t.tid, &t.regs).ptrace(t.tid, "PTRACE_SETREGS")?;
        }

        // Job control: processes that were stopped stop again, as if by SIGSTOP.
        let stopped: Vec<i32> = self.plans.procs.iter().filter(|(_, p)| p.stop_signal != 0).map(|(&v, _)| v).collect();
        for vpid in stopped {
            let tids: Vec<Pid> = threads.iter().filter(|t| t.plan.vpid == vpid).map(|t| t.tid).collect();
            let sig = self.plans.procs[&vpid].stop_signal;
            self.stop_again(vpid, &tids, sig)?;
            let (ppid, unreported) = (self.plans.procs[&vpid].ppid, self.plans.procs[&vpid].stop_unreported);
            let Some(parent) = threads.iter().find(|t| t.plan.vpid == ppid && t.plan.main) else { continue };
            let a = area_of(ppid)?;
            if !unreported {
                // The parent had collected the stop: collect the new one for it.
                self.inject(parent.tid, &parent.regs, a.syscall, libc::SYS_wait4 as u64, [vpid as u64, 0, (libc::WUNTRACED | libc::WNOHANG) as u64, 0, 0, 0], false)?;
            }
            if !self.plans.procs[&ppid].sigchld_pending {
                // ... and the SIGCHLD it raised did not exist before the dump.
                let mut buf = [0u8; 24];
                buf[0..8].copy_from_slice(&(1u64 << (libc::SIGCHLD - 1)).to_le_bytes());
                write_remote(parent.tid, a.spare, &buf).ptrace(parent.tid, "process_vm_writev")?;
                self.inject(parent.tid, &parent.regs, a.syscall, libc::SYS_rt_sigtimedwait as u64, [a.spare, 0, a.spare + 8, 8, 0, 0], false)?;
            }
        }

        // The restorer areas go last (the steps above use them).
        for (&vpid, &(tid, _, a)) in &areas {
            let t = threads.iter().find(|t| t.tid == tid).expect("main thread");
            let r = self.inject(tid, &t.regs, a.syscall, libc::SYS_munmap as u64, [a.start, a.len, 0, 0, 0, 0], false)?;
            if r != 0 {
                return Err(Error::Restore { pid: vpid, msg: format!("removing the restorer area failed: {}", nix::errno::Errno::from_raw(-r as i32)) });
            }
        }
        // Pending SIGSTOP/SIGKILL cannot be queued blocked: send them now; they act
        // when the tree is let go.
        for (&vpid, p) in &self.plans.procs {
            let Some(t) = threads.iter().find(|t| t.plan.vpid == vpid && t.plan.main) else { continue };
            for &sig in &p.unblockable {
                let _ = nix::sys::signal::kill(t.tid, nix::sys::signal::Signal::try_from(sig).ok());
            }
        }
        Ok(())
    }

    /// Runs one syscall in a stopped thread at `syscall_ip` and puts `regs` back.
    /// With `interrupted`, the thread has a PTRACE_INTERRUPT pending while in the
    /// call: a sleep returns at once with its restart block written.
    fn inject(&mut self, tid: Pid, regs: &Regs, syscall_ip: u64, nr: u64, args: [u64; 6], interrupted: bool) -> Result<i64> {
        let mut r = *regs;
        r.rip = syscall_ip;
        r.rax = nr;
        r.orig_rax = u64::MAX;
        (r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9) = (args[0], args[1], args[2], args[3], args[4], args[5]);
        ptrace::setregs(tid, &r).ptrace(tid, "PTRACE_SETREGS")?;
        self.step_syscall(tid)?;
        if interrupted {
            ptrace::interrupt(tid).ptrace(tid, "PTRACE_INTERRUPT")?;
        }
        self.step_syscall(tid)?;
        let ret = ptrace::getregs(tid).ptrace(tid, "PTRACE_GETREGS")?.rax as i64;
        ptrace::setregs(tid, regs).ptrace(tid, "PTRACE_SETREGS")?;
        Ok(ret)
    }

    /// Puts a process back into group-stop by the signal that stopped it (so that a
    /// parent's wait reports the same WSTOPSIG): the signal is queued, delivered by
    /// one thread (the tracer lets it through with only that signal unblocked) and
    /// every other thread joins the stop. SIGTSTP, SIGTTIN and SIGTTOU stop only with
    /// their default action in a group that is not orphaned (kernel/signal.c
    /// `get_signal`); otherwise SIGSTOP stands in. The tasks run no user code: all
    /// of this happens on their way out of the kernel.
    fn stop_again(&mut self, vpid: i32, tids: &[Pid], recorded: i32) -> Result<()> {
        let Some(&first) = tids.first() else { return Ok(()) };
        let pid = first.as_raw();
        let pgid = procfs::process::Process::new(pid).and_then(|p| p.stat()).map(|s| s.pgrp).unwrap_or(0);
        let sig = match recorded {
            libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU if procinfo::signal_default(pid, recorded) && !procinfo::pgrp_orphaned(pgid) => recorded,
            libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU => {
                log::info!("pid {vpid}: stopped again by SIGSTOP in place of signal {recorded} (its action or its orphaned group would not stop it now)");
                libc::SIGSTOP
            }
            _ => libc::SIGSTOP,
        };
        let signal = nix::sys::signal::Signal::try_from(sig).map_err(|e| Error::sys("signal", e))?;
        // Every signal is blocked while crtool finishes the tree: this one must get
        // through, to this thread.
        ptrace::set_sigmask(first, !(1u64 << (sig - 1))).ptrace(first, "PTRACE_SETSIGMASK")?;
        nix::sys::signal::kill(first, signal).map_err(|e| Error::sys(format!("kill({first}, {signal})"), e))?;
        let mut injected = false;
        for &tid in tids {
            ptrace::cont(tid).ptrace(tid, "PTRACE_CONT")?;
            loop {
                match ptrace::wait(tid, false).ptrace(tid, "waitpid")? {
                    Some(Stop::Signal(s)) if s == sig && !injected => {
                        injected = true;
                        ptrace::cont_signal(tid, sig).ptrace(tid, "PTRACE_CONT")?;
                    }
                    Some(Stop::Event(ptrace::PTRACE_EVENT_STOP, s)) if s != libc::SIGTRAP => break,
                    Some(Stop::Event(..)) => ptrace::cont(tid).ptrace(tid, "PTRACE_CONT")?,
                    other => return Err(Error::Restore { pid: vpid, msg: format!("thread {tid}: unexpected {other:?} while stopping it again") }),
                }
            }
        }
        ptrace::set_sigmask(first, !0).ptrace(first, "PTRACE_SETSIGMASK")?;
        Ok(())
    }

    /// Resumes a thread to its next syscall stop, stepping over interrupt reports.
    /// Every signal is blocked while crtool finishes the tree; one that cannot be
    /// (SIGSTOP from outside) is kept and sent again before the tree is let go.
    fn step_syscall(&mut self, tid: Pid) -> Result<()> {
        loop {
            ptrace::cont_syscall(tid).ptrace(tid, "PTRACE_SYSCALL")?;
            match ptrace::wait(tid, false).ptrace(tid, "waitpid")? {
                Some(Stop::Syscall) => return Ok(()),
                Some(Stop::Event(ptrace::PTRACE_EVENT_STOP, _)) => continue,
                Some(Stop::Signal(sig)) if sig != libc::SIGTRAP => self.deferred.entry(tid).or_default().push(sig),
                other => return Err(self.fail(format!("task {tid}: unexpected {other:?} while finishing the restore"))),
            }
        }
    }

    /// Lets every restored thread run, with its own signal mask, on the CPUs it was
    /// allowed before. Its registers are those it froze with, so the kernel decides
    /// on the way out whether an interrupted call restarts (as for any stopped task).
    pub fn detach_all(&mut self) -> Result<()> {
        let mut first = None;
        for &tid in self.restored.keys() {
            if let Some(mask) = self.inner.get(&tid).and_then(|v| self.affinity.get(v)) {
                crate::sys::process::set_affinity(tid, mask);
            }
        }
        for (&tid, &(regs, blocked)) in &self.restored {
            for &sig in self.deferred.get(&tid).into_iter().flatten() {
                let _ = nix::sys::signal::kill(tid, nix::sys::signal::Signal::try_from(sig).ok());
            }
            // A thread of a stopped process that waits in a call with a temporary mask
            // enters it again, so that it shows that mask while stopped.
            let stopped = self.inner.get(&tid)
                .and_then(|v| self.plans.threads.get(v))
                .and_then(|t| self.plans.procs.get(&t.vpid))
                .is_some_and(|p| p.stop_signal != 0);
            let r = ptrace::setregs(tid, &regs)
                .and_then(|_| ptrace::set_sigmask(tid, blocked))
                .and_then(|_| if stopped { syscall::rearm_temporary_mask(tid, &regs, blocked).map(drop) } else { Ok(()) })
                .and_then(|_| ptrace::detach(tid))
                .ptrace(tid, "PTRACE_DETACH");
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        self.restored.clear();
        self.deferred.clear();
        first.map_or(Ok(()), Err)
    }

    /// Detaches, then waits for `child` (the root, or the init of a namespace made
    /// with --pidns) to end: its exit code, or 128 + signal. SIGINT, SIGTERM and
    /// SIGHUP sent to crtool meanwhile go on to the root (as a shell would pass them
    /// to its job).
    pub fn detach_and_wait(mut self, child: i32) -> Result<i32> {
        self.detach_all()?;
        loop {
            // Any child: crtool may be the init of its namespace and inherit orphans.
            match ptrace::wait_for(-1) {
                Ok((p, Stop::Exited(c))) if p.as_raw() == child => return Ok(c),
                Ok((p, Stop::Killed(s))) if p.as_raw() == child => return Ok(128 + s),
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => {
                    if let Some(sig) = crate::sys::signals::take().filter(|&s| s != libc::SIGPIPE) {
                        let _ = nix::sys::signal::kill(self.root, nix::sys::signal::Signal::try_from(sig).ok());
                    }
                }
                Err(e) => return Err(Error::sys("waitpid", e)),
            }
        }
    }

    /// The restored root, as crtool sees it.
    pub fn root(&self) -> Pid {
        self.root
    }

    /// The id (as crtool sees it) of the restored thread or process whose id in the
    /// tree's namespace is `vpid`.
    pub fn outer_pid(&self, vpid: i32) -> Option<i32> {
        self.outer.get(&vpid).filter(|t| self.restored.contains_key(t)).map(|t| t.as_raw())
    }

    /// Kills every task of the half-built tree: those we have seen and any other that
    /// we trace (a task forked but not yet reported), until none is left.
    pub fn kill_all(&mut self) {
        let me = std::process::id() as i32;
        for _ in 0..250 {
            let mut victims: Vec<Pid> = self.known.iter().copied().collect();
            victims.extend(traced_by(me));
            for pid in victims {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
            loop {
                match ptrace::wait(Pid::from_raw(-1), true) {
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(_) => return, // ECHILD: nothing left
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Processes whose tracer is `tracer`.
fn traced_by(tracer: i32) -> Vec<Pid> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|&pid| procinfo::tracer(pid) == Some(tracer))
        .map(Pid::from_raw)
        .collect()
}

fn failure_text(buf: &[u8]) -> String {
    if buf.len() >= std::mem::size_of::<crate::sys::abi::RestorerFailure>() {
        let step = u32::from_le_bytes(buf[0..4].try_into().unwrap());
        let index = u32::from_le_bytes(buf[4..8].try_into().unwrap());
        let errno = i64::from_le_bytes(buf[8..16].try_into().unwrap());
        return format!("restorer step {} (item {index}) failed: {}", step_name(step), nix::errno::Errno::from_raw(errno as i32));
    }
    "unreadable report from the restorer".into()
}

fn step_name(step: u32) -> &'static str {
    use crate::sys::abi::*;
    match step {
        STEP_DROP_RSEQ => "drop crtool's rseq",
        STEP_UNMAP => "unmap crtool",
        STEP_SPECIALS => "move vdso/vvar",
        STEP_VMAS => "move VMAs into place",
        STEP_MM => "PR_SET_MM_MAP",
        STEP_XCOMP => "request AMX permission",
        STEP_SIGACTIONS => "sigactions",
        STEP_ITIMERS => "itimers",
        STEP_THREAD => "thread state (robust list, rseq, fs/gs)",
        STEP_CREDS => "credentials",
        STEP_SIGNALS => "queue pending signals",
        STEP_THREADS => "create threads",
        STEP_TIMERS => "POSIX timers",
        STEP_PROTECT => "protect VMAs",
        STEP_LAZY => "register lazy memory with the userfaultfd",
        _ => "unknown",
    }
}
