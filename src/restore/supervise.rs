//! crtool's side of a restore once the root is forked: it traces the whole tree (new
//! tasks and threads are auto-attached), waits until every thread of every task sits
//! at the restorer's final int3, then walks each through rt_sigreturn, removes each
//! task's restorer area with one injected munmap, and lets them all go at once. Any
//! failure kills everything it created.

use super::TreeImages;
use crate::error::{Error, PtraceCtx, Result};
use crate::procinfo;
use crate::sys::abi::RestorerArgs;
use crate::sys::process::read_remote;
use crate::sys::ptrace::{self, Regs, Stop};
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

pub struct Supervisor {
    root: Pid,
    status_r: OwnedFd,
    vdso_syscall: u64,
    /// Every traced task we know of (outer tids).
    known: BTreeSet<Pid>,
    /// Threads waiting at their final int3, with the registers they had there.
    ready: BTreeMap<Pid, Regs>,
    /// Threads already through rt_sigreturn: their restored registers.
    restored: BTreeMap<Pid, Regs>,
    /// Signals that stopped a thread while we finished it, to deliver on detach.
    deferred: BTreeMap<Pid, Vec<i32>>,
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
            deferred: BTreeMap::new(),
            affinity,
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
                Stop::Signal(libc::SIGSTOP) => ptrace::cont(pid).ptrace(pid, "PTRACE_CONT")?,
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

    /// Every thread through rt_sigreturn; then each process's restorer area goes.
    fn finish(&mut self) -> Result<()> {
        let ready: Vec<(Pid, Regs)> = self.ready.iter().map(|(&p, &r)| (p, r)).collect();
        for (tid, _) in &ready {
            for _ in 0..2 {
                ptrace::cont_syscall(*tid).ptrace(*tid, "PTRACE_SYSCALL")?;
                self.expect_syscall(*tid)?;
            }
            let mut regs = ptrace::getregs(*tid).ptrace(*tid, "PTRACE_GETREGS")?;
            regs.orig_rax = u64::MAX;
            self.restored.insert(*tid, regs);
        }
        for (tid, at_trap) in &ready {
            if !procinfo::is_main_thread(tid.as_raw()) {
                continue;
            }
            // r12 holds the RestorerArgs pointer at the main thread's final trap.
            let mut area = [0u8; 16];
            let off = std::mem::offset_of!(RestorerArgs, area_start) as u64;
            read_remote(*tid, at_trap.r12 + off, &mut area).ptrace(*tid, "process_vm_readv")?;
            let start = u64::from_le_bytes(area[0..8].try_into().unwrap());
            let len = u64::from_le_bytes(area[8..16].try_into().unwrap());
            let vdso = procinfo::vdso(&tid.to_string()).map(|(s, _)| s).ok_or_else(|| self.fail(format!("task {tid} has no vdso after restore")))?;
            let restored = self.restored[tid];
            let mut r = restored;
            r.rip = vdso + self.vdso_syscall;
            r.rax = libc::SYS_munmap as u64;
            (r.rdi, r.rsi) = (start, len);
            ptrace::setregs(*tid, &r).ptrace(*tid, "PTRACE_SETREGS")?;
            for _ in 0..2 {
                ptrace::cont_syscall(*tid).ptrace(*tid, "PTRACE_SYSCALL")?;
                self.expect_syscall(*tid)?;
            }
            let res = ptrace::getregs(*tid).ptrace(*tid, "PTRACE_GETREGS")?.rax as i64;
            if res != 0 {
                return Err(self.fail(format!("task {tid}: removing the restorer area failed: {res}")));
            }
            ptrace::setregs(*tid, &restored).ptrace(*tid, "PTRACE_SETREGS")?;
        }
        Ok(())
    }

    /// Waits for the thread's next syscall stop. A signal that becomes deliverable
    /// once the task's own mask is back (a restored pending signal, a SIGCHLD) stops
    /// it first: it is kept and handed back when the thread is let go.
    fn expect_syscall(&mut self, tid: Pid) -> Result<()> {
        loop {
            match ptrace::wait(tid, false).ptrace(tid, "waitpid")? {
                Some(Stop::Syscall) => return Ok(()),
                Some(Stop::Signal(sig)) if sig != libc::SIGTRAP => {
                    self.deferred.entry(tid).or_default().push(sig);
                    ptrace::cont_syscall(tid).ptrace(tid, "PTRACE_SYSCALL")?;
                }
                other => return Err(self.fail(format!("task {tid}: unexpected {other:?} while finishing the restore"))),
            }
        }
    }

    /// Lets every restored thread run, on the CPUs it was allowed before.
    pub fn detach_all(&mut self) -> Result<()> {
        let mut first = None;
        for &tid in self.restored.keys() {
            if let Some(mask) = procinfo::innermost_pid(tid.as_raw()).and_then(|v| self.affinity.get(&v)) {
                crate::sys::process::set_affinity(tid, mask);
            }
        }
        for (&tid, regs) in &self.restored {
            let sigs = self.deferred.remove(&tid).unwrap_or_default();
            // Signals but the last go back on the queue; the last one comes with the
            // detach itself.
            for &sig in sigs.iter().rev().skip(1) {
                let _ = nix::sys::signal::kill(tid, nix::sys::signal::Signal::try_from(sig).ok());
            }
            let last = sigs.last().copied().unwrap_or(0);
            let r = ptrace::setregs(tid, regs).and_then(|_| ptrace::detach_signal(tid, last)).ptrace(tid, "PTRACE_DETACH");
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        self.restored.clear();
        first.map_or(Ok(()), Err)
    }

    /// Detaches, then waits for the root to end: its exit code, or 128 + signal.
    pub fn detach_and_wait_root(mut self) -> Result<i32> {
        self.detach_all()?;
        loop {
            match ptrace::wait(self.root, false).map_err(|e| Error::sys("waitpid", e))? {
                Some(Stop::Exited(c)) => return Ok(c),
                Some(Stop::Killed(s)) => return Ok(128 + s),
                _ => {}
            }
        }
    }

    /// Kills every task of the half-built tree: those we have seen and any other that
    /// we trace (a task forked but not yet reported), until none is left.
    fn kill_all(&mut self) {
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
        _ => "unknown",
    }
}
