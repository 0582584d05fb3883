//! Process core state: registers and FPU (see `regs`), signals, timers, credentials,
//! limits, cwd/root, umask, personality. Dumped from /proc, ptrace and the parasite;
//! restored partly by crtool in the new task and partly by the restorer.

pub mod precheck;
pub mod regs;
pub mod sleepers;
pub mod syscall;
pub mod timers;

use crate::error::{Error, Result};
use crate::infect::Tracee;
use crate::sys::abi::{Itimerval, KSigaction, ParasiteInfo, RestorerArgs, RseqReg, StackT, ThreadArgs};
use crate::sys::{process, ptrace};
use images_format::pb;

fn read_proc(pid: i32, what: &str) -> Result<String> {
    std::fs::read_to_string(format!("/proc/{pid}/{what}")).map_err(|e| Error::proc(pid, what, e))
}

/// The path behind /proc/PID/{exe,cwd,root}; refused if it was removed (restore
/// reopens it by name) or is not UTF-8.
pub fn path_of(pid: i32, what: &str) -> Result<String> {
    let name = match what {
        "exe" => "executable",
        "cwd" => "working directory",
        _ => "root directory",
    };
    let unsupported = |what: String, hint| Error::Unsupported { pid, fd: None, what, hint: Some(hint) };
    match crate::procinfo::file_link(&format!("/proc/{pid}/{what}")) {
        Ok(l) if l.deleted => Err(unsupported(format!("its {name} {} was deleted", l.path), "deleted directories are not supported yet")),
        Ok(l) => Ok(l.path),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(unsupported(format!("its {name}: {e}"), "paths must be UTF-8")),
        Err(e) => Err(Error::proc(pid, what, e)),
    }
}

/// The working directory of `pid`; if it was removed (an empty directory, whose
/// parent still exists), also what restore makes again (`pb::DeletedDir`).
fn cwd_of(pid: i32) -> Result<(String, Option<pb::DeletedDir>)> {
    let link = crate::procinfo::file_link(&format!("/proc/{pid}/cwd")).map_err(|e| Error::proc(pid, "cwd", e))?;
    if !link.deleted {
        return Ok((path_of(pid, "cwd")?, None));
    }
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(format!("/proc/{pid}/cwd")).map_err(|e| Error::proc(pid, "cwd", e))?;
    if !std::path::Path::new(&link.path).parent().is_some_and(|p| p.is_dir()) {
        return Err(Error::Unsupported { pid, fd: None, what: format!("its working directory {} was removed, and its parent too", link.path), hint: Some("a removed working directory is made again in its parent, which must exist") });
    }
    Ok((link.path, Some(pb::DeletedDir { ino: md.ino(), mode: md.mode() & 0o7777, uid: md.uid(), gid: md.gid() })))
}

/// The credentials of a process, from /proc/PID/task/TID/status of every thread.
/// Credentials are per thread in the kernel; a process whose threads differ (a raw
/// setuid in one thread) is refused. `securebits` come from the threads themselves.
fn creds(pid: i32, tids: &[i32], securebits: &[u32]) -> Result<pb::Creds> {
    const KEYS: [&str; 9] = ["Uid:", "Gid:", "Groups:", "CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:", "NoNewPrivs:"];
    let lines = |tid: i32| -> Result<Vec<String>> {
        let status = read_proc(pid, &format!("task/{tid}/status"))?;
        Ok(KEYS.iter().map(|k| status.lines().find_map(|l| l.strip_prefix(k)).unwrap_or("").split_whitespace().collect::<Vec<_>>().join(" ")).collect())
    };
    let main = lines(tids[0])?;
    for (i, &tid) in tids.iter().enumerate().skip(1) {
        let other = lines(tid)?;
        let differs = KEYS.iter().zip(main.iter().zip(&other)).find(|(_, (a, b))| a != b).map(|(k, _)| k.trim_end_matches(':'));
        let differs = differs.or((securebits[i] != securebits[0]).then_some("securebits"));
        if let Some(k) = differs {
            return Err(Error::Unsupported {
                pid,
                fd: None,
                what: format!("its threads have different credentials ({k} of thread {tid} differs from the main thread's)"),
                hint: Some("per-thread credentials are not supported yet"),
            });
        }
    }
    let field = |i: usize| main[i].split(' ').filter(|v| !v.is_empty()).collect::<Vec<_>>();
    let ids = |i: usize| -> Vec<u32> { field(i).iter().filter_map(|v| v.parse().ok()).collect() };
    let cap = |i: usize| field(i).first().and_then(|v| u64::from_str_radix(v, 16).ok()).unwrap_or(0);
    let (u, g) = (ids(0), ids(1));
    if u.len() != 4 || g.len() != 4 {
        return Err(Error::proc(pid, "status", std::io::Error::other("no Uid/Gid lines")));
    }
    Ok(pb::Creds {
        ruid: u[0], euid: u[1], suid: u[2], fsuid: u[3],
        rgid: g[0], egid: g[1], sgid: g[2], fsgid: g[3],
        groups: ids(2),
        cap_inh: cap(3), cap_prm: cap(4), cap_eff: cap(5), cap_bnd: cap(6), cap_amb: cap(7),
        securebits: securebits[0],
    })
}

/// The 16 resource limits, from /proc/PID/limits (readable for a task of any uid;
/// prlimit(2) on another uid's task needs CAP_SYS_RESOURCE).
fn rlimits(pid: i32) -> Result<Vec<pb::Rlimit>> {
    use procfs::process::{Limit, LimitValue};
    let l = procfs::process::Process::new(pid)
        .and_then(|p| p.limits())
        .map_err(|e| Error::proc(pid, "limits", std::io::Error::other(e)))?;
    let v = |x: &LimitValue| match x {
        LimitValue::Unlimited => libc::RLIM_INFINITY,
        LimitValue::Value(n) => *n,
    };
    let all: [&Limit; 16] = [
        &l.max_cpu_time, &l.max_file_size, &l.max_data_size, &l.max_stack_size, &l.max_core_file_size,
        &l.max_resident_set, &l.max_processes, &l.max_open_files, &l.max_locked_memory, &l.max_address_space,
        &l.max_file_locks, &l.max_pending_signals, &l.max_msgqueue_size, &l.max_nice_priority,
        &l.max_realtime_priority, &l.max_realtime_timeout,
    ];
    Ok(all.iter().enumerate().map(|(i, x)| pb::Rlimit { resource: i as u32, cur: v(&x.soft_limit), max: v(&x.hard_limit) }).collect())
}

fn usec(sec: i64, usec: i64) -> u64 {
    (sec as u64) * 1_000_000 + usec as u64
}

/// The thread's allowed CPUs from /proc (Cpus_allowed: hex words, high first).
fn cpu_affinity(tid: i32) -> Vec<u64> {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{tid}/status")) else { return Vec::new() };
    let Some(hex) = s.lines().find_map(|l| l.strip_prefix("Cpus_allowed:")) else { return Vec::new() };
    let digits: String = hex.trim().chars().filter(|c| *c != ',').collect();
    let mut words = Vec::new();
    let mut end = digits.len();
    while end > 0 {
        let start = end.saturating_sub(16);
        words.push(u64::from_str_radix(&digits[start..end], 16).unwrap_or(0));
        end = start;
    }
    while words.len() > 1 && words.last() == Some(&0) {
        words.pop();
    }
    words
}

fn sched_of(tid: i32) -> Result<pb::Sched> {
    let a = process::sched_getattr(tid).map_err(|e| Error::sys(format!("thread {tid}: sched_getattr"), e))?;
    if a.util_min != 0 || a.util_max != 1024 && a.util_max != 0 {
        return Err(Error::Unsupported { pid: tid, fd: None, what: format!("thread {tid} has utilisation clamps ({}-{})", a.util_min, a.util_max), hint: Some("not supported yet") });
    }
    // sched_getattr reports the nice value of fair policies only (0 for others);
    // /proc/TID/stat field 19 has it for every policy.
    let nice = procfs::process::Process::new(tid).and_then(|p| p.stat()).map_err(|e| Error::proc(tid, "stat", std::io::Error::other(e)))?.nice as i32;
    Ok(pb::Sched { policy: a.policy, flags: a.flags, nice, priority: a.priority, runtime: a.runtime, deadline: a.deadline, period: a.period })
}

/// A thread frozen inside an rseq critical section (its rseq area's `rseq_cs` points
/// at a descriptor whose range holds the instruction pointer) is moved to the
/// section's abort handler, as the kernel itself does when it preempts such a
/// thread: the parasite's run would otherwise clear `rseq_cs` and the section
/// would go on unprotected. include/uapi/linux/rseq.h.
pub fn rseq_fixup(t: &mut Tracee) {
    let Ok(conf) = ptrace::get_rseq(t.pid) else { return };
    if conf.rseq_abi_pointer == 0 {
        return;
    }
    let mut cs_ptr = [0u8; 8];
    if process::read_remote(t.pid, conf.rseq_abi_pointer + 8, &mut cs_ptr).is_err() {
        return;
    }
    let cs = u64::from_le_bytes(cs_ptr);
    let mut d = [0u8; 32];
    if cs == 0 || process::read_remote(t.pid, cs, &mut d).is_err() {
        return;
    }
    let q = |i: usize| u64::from_le_bytes(d[i..i + 8].try_into().unwrap());
    let (start, len, abort) = (q(8), q(16), q(24));
    let mut sig = [0u8; 4];
    let signed = process::read_remote(t.pid, abort.wrapping_sub(4), &mut sig).is_ok() && u32::from_le_bytes(sig) == conf.signature;
    if t.regs.rip.wrapping_sub(start) < len && signed {
        log::debug!("thread {}: in an rseq critical section at {:#x}, resumes at its abort handler {abort:#x}", t.pid, t.regs.rip);
        t.regs.rip = abort;
    }
}

/// What crtool learned about one thread besides its registers: state only the
/// thread itself can report, read with remote syscalls.
pub struct ThreadExtra {
    pub altstack: StackT,
    pub clear_child_tid: u64,
    pub pdeath_signal: i32,
    pub securebits: u32,
    /// PR_GET_TSC (1: rdtsc allowed).
    pub tsc: i32,
    /// ARCH_GET_CPUID (0: CPUID faulting on; negative: not supported).
    pub cpuid: i64,
    /// KEYCTL_GET_KEYRING_ID of the thread keyring (> 0: it has one).
    pub thread_keyring: i64,
    pub mce_kill: i32,
}

/// `probe_threads` for the main thread, which the parasite has already asked for
/// everything but its alternate signal stack (`info`): one remote syscall
/// instead of eight. (sigaltstack stays remote: its SS_ONSTACK flag depends on
/// the stack pointer of the caller, which is the thread's own only then.)
pub fn probe_main(t: &Tracee, scratch: u64, info: &crate::sys::abi::ParasiteInfo) -> Result<ThreadExtra> {
    // (As the remote calls would have failed.)
    for (op, v) in [("prctl(PR_GET_PDEATHSIG)", info.pdeath_signal), ("prctl(PR_GET_TSC)", info.tsc), ("prctl(PR_GET_SECUREBITS)", info.securebits), ("prctl(PR_MCE_KILL_GET)", info.mce_kill)] {
        if v < 0 {
            return Err(Error::Ptrace { pid: t.pid.as_raw(), op, errno: nix::errno::Errno::from_raw(-v) });
        }
    }
    t.syscall_ok("sigaltstack", libc::SYS_sigaltstack, &[0, scratch])?;
    let mut b = [0u8; 24];
    process::read_remote(t.pid, scratch, &mut b).map_err(|e| Error::Ptrace { pid: t.pid.as_raw(), op: "process_vm_readv", errno: e })?;
    let w = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    let d = |i: usize| i32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    Ok(ThreadExtra {
        altstack: StackT { sp: w(0), flags: d(8), _pad: 0, size: w(16) },
        clear_child_tid: info.clear_child_tid,
        pdeath_signal: info.pdeath_signal,
        tsc: info.tsc,
        securebits: info.securebits as u32,
        cpuid: info.cpuid,
        thread_keyring: info.thread_keyring,
        mce_kill: info.mce_kill,
    })
}

/// Bytes of scratch memory `probe_threads` uses per thread.
const PROBE_SCRATCH: u64 = 80;

/// Asks stopped threads for their per-thread state with remote syscalls, several
/// threads at once (see `Tracee::syscall_each`): each gets `PROBE_SCRATCH` bytes
/// of the `scratch_len` free bytes of the task's memory at `scratch` for the
/// results, so as many at a time as fit.
pub fn probe_threads(threads: &[&Tracee], scratch: u64, scratch_len: u64) -> Result<Vec<ThreadExtra>> {
    use libc::SYS_prctl as PRCTL;
    let per_batch = (scratch_len / PROBE_SCRATCH).max(1) as usize;
    let mut out = Vec::with_capacity(threads.len());
    for batch in threads.chunks(per_batch) {
        let at = |i: usize| scratch + i as u64 * PROBE_SCRATCH;
        let round = |what: &'static str, nr: i64, args: &dyn Fn(usize) -> [u64; 6], check: bool| -> Result<Vec<i64>> {
            let calls: Vec<(i64, [u64; 6])> = (0..batch.len()).map(|i| (nr, args(i))).collect();
            let got = Tracee::syscall_each(batch, &calls)?;
            if check && let Some((i, r)) = got.iter().enumerate().find(|(_, r)| (-4095..0).contains(*r)) {
                return Err(Error::Ptrace { pid: batch[i].pid.as_raw(), op: what, errno: nix::errno::Errno::from_raw(-*r as i32) });
            }
            Ok(got)
        };
        round("sigaltstack", libc::SYS_sigaltstack, &|i| [0, at(i), 0, 0, 0, 0], true)?;
        round("prctl(PR_GET_TID_ADDRESS)", PRCTL, &|i| [libc::PR_GET_TID_ADDRESS as u64, at(i) + 64, 0, 0, 0, 0], true)?;
        round("prctl(PR_GET_PDEATHSIG)", PRCTL, &|i| [libc::PR_GET_PDEATHSIG as u64, at(i) + 72, 0, 0, 0, 0], true)?;
        round("prctl(PR_GET_TSC)", PRCTL, &|i| [libc::PR_GET_TSC as u64, at(i) + 76, 0, 0, 0, 0], true)?;
        let securebits = round("prctl(PR_GET_SECUREBITS)", PRCTL, &|_| [libc::PR_GET_SECUREBITS as u64, 0, 0, 0, 0, 0], true)?;
        let mce_kill = round("prctl(PR_MCE_KILL_GET)", PRCTL, &|_| [libc::PR_MCE_KILL_GET as u64, 0, 0, 0, 0, 0], true)?;
        let cpuid = round("arch_prctl(ARCH_GET_CPUID)", libc::SYS_arch_prctl, &|_| [0x1011, 0, 0, 0, 0, 0], false)?;
        let keyring = round("keyctl", libc::SYS_keyctl, &|_| [0, (-1i64) as u64, 0, 0, 0, 0], false)?;
        for (i, t) in batch.iter().enumerate() {
            let mut b = [0u8; PROBE_SCRATCH as usize];
            process::read_remote(t.pid, at(i), &mut b).map_err(|e| Error::Ptrace { pid: t.pid.as_raw(), op: "process_vm_readv", errno: e })?;
            let w = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
            let d = |o: usize| i32::from_le_bytes(b[o..o + 4].try_into().unwrap());
            out.push(ThreadExtra {
                altstack: StackT { sp: w(0), flags: d(8), _pad: 0, size: w(16) },
                clear_child_tid: w(64),
                pdeath_signal: d(72),
                tsc: d(76),
                securebits: securebits[i] as u32,
                cpuid: cpuid[i],
                thread_keyring: keyring[i],
                mce_kill: mce_kill[i] as i32,
            });
        }
    }
    Ok(out)
}

fn thread_core(t: &Tracee, extra: &ThreadExtra, comm: String) -> Result<pb::ThreadCore> {
    let tid = t.pid.as_raw();
    let rseq = ptrace::get_rseq(t.pid).map_err(|e| Error::Ptrace { pid: tid, op: "PTRACE_GET_RSEQ_CONFIGURATION", errno: e })?;
    let (robust, robust_len) = ptrace::get_robust_list(t.pid).unwrap_or((0, 0));
    let pending = ptrace::peek_siginfo(t.pid, false).map_err(|e| Error::Ptrace { pid: tid, op: "PTRACE_PEEKSIGINFO", errno: e })?;
    Ok(pb::ThreadCore {
        tid: tid as u32,
        regs: Some(regs::to_image(&t.regs)),
        fpu: Some(regs::fpu_to_image(t.xstate.clone())),
        blocked: t.sigmask,
        altstack: Some(pb::SigAltStack { sp: extra.altstack.sp, flags: extra.altstack.flags, size: extra.altstack.size }),
        rseq: Some(pb::Rseq { ptr: rseq.rseq_abi_pointer, len: rseq.rseq_abi_size, flags: rseq.flags, sig: rseq.signature }),
        robust_list: robust,
        robust_list_len: robust_len,
        clear_child_tid: extra.clear_child_tid,
        comm,
        pending: pending.into_iter().map(|s| s.to_vec()).collect(),
        restart: None,
        cpu_affinity: cpu_affinity(tid),
        pdeath_signal: extra.pdeath_signal,
        mce_kill: extra.mce_kill,
        sched: Some(sched_of(tid)?),
        ioprio: process::ioprio_get(tid).map_err(|e| Error::sys(format!("thread {tid}: ioprio_get"), e))?,
        timerslack_ns: read_proc(tid, "timerslack_ns")?.trim().parse().unwrap_or(50_000),
    })
}

/// Collects the core image of a task: `threads[0]` is the main thread, `extras`
/// holds what remote syscalls found for each thread, `info` what the parasite found.
/// Thread ids in the image are `vtids` (the tree's PID namespace).
pub fn dump(vpid: i32, threads: &[Tracee], vtids: &[i32], extras: &[ThreadExtra], info: &ParasiteInfo, timers: Vec<pb::PosixTimer>) -> Result<pb::TaskCore> {
    let main = &threads[0];
    let pid = main.pid.as_raw();
    refuse_unsupported(pid, threads, extras, info)?;
    let comm = read_proc(pid, "comm")?.trim_end_matches('\n').to_string();
    let mut cores = Vec::new();
    for (i, (t, x)) in threads.iter().zip(extras).enumerate() {
        let tcomm = read_proc(pid, &format!("task/{}/comm", t.pid)).map(|c| c.trim_end_matches('\n').to_string()).unwrap_or_default();
        let mut c = thread_core(t, x, tcomm)?;
        c.tid = vtids[i] as u32;
        cores.push(c);
    }
    let shared = ptrace::peek_siginfo(main.pid, true).map_err(|e| Error::Ptrace { pid, op: "PTRACE_PEEKSIGINFO", errno: e })?;
    let sigactions = info
        .sigactions
        .iter()
        .enumerate()
        .map(|(i, a)| pb::SigAction { sig: i as u32 + 1, handler: a.handler, flags: a.flags, restorer: a.restorer, mask: a.mask })
        .collect();
    let itimers = info
        .itimers
        .iter()
        .enumerate()
        .map(|(i, t)| pb::Itimer { which: i as u32, interval_usec: usec(t.interval_sec, t.interval_usec), value_usec: usec(t.value_sec, t.value_usec) })
        .collect();
    let (cwd, cwd_deleted) = cwd_of(pid)?;
    Ok(pb::TaskCore {
        pid: vpid as u32,
        comm,
        threads: cores,
        sigactions,
        itimers,
        creds: Some(creds(pid, &threads.iter().map(|t| t.pid.as_raw()).collect::<Vec<_>>(), &extras.iter().map(|x| x.securebits).collect::<Vec<_>>())?),
        rlimits: rlimits(pid)?,
        umask: info.umask,
        cwd,
        cwd_deleted,
        root: path_of(pid, "root")?,
        personality: info.personality as u32,
        dumpable: info.dumpable as u32,
        shared_pending: shared.into_iter().map(|s| s.to_vec()).collect(),
        posix_timers: timers,
        child_subreaper: info.child_subreaper != 0,
        no_new_privs: info.no_new_privs > 0,
        stop_signal: 0,
        stop_unreported: false,
        thp_disable: info.thp_disable,
        membarrier: info.membarrier.max(0) as u32,
        oom_score_adj: oom_score_adj(pid)?,
        coredump_filter: u32::from_str_radix(read_proc(pid, "coredump_filter")?.trim(), 16).unwrap_or(0x33),
        loginuid: read_proc(pid, "loginuid")?.trim().parse().unwrap_or(u32::MAX),
    })
}

/// /proc/PID/oom_score_adj, refused if restore could not set it: a value below the
/// restoring process's minimum needs CAP_SYS_RESOURCE (tried on crtool itself).
fn oom_score_adj(pid: i32) -> Result<i32> {
    let v: i32 = read_proc(pid, "oom_score_adj")?.trim().parse().unwrap_or(0);
    let own = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap_or_default();
    if v < own.trim().parse().unwrap_or(0) {
        let ok = std::fs::write("/proc/self/oom_score_adj", v.to_string()).is_ok();
        let _ = std::fs::write("/proc/self/oom_score_adj", own.trim());
        if !ok {
            return Err(Error::Unsupported { pid, fd: None, what: format!("its oom_score_adj is {v}, lower than crtool may set"), hint: Some("needs CAP_SYS_RESOURCE") });
        }
    }
    Ok(v)
}

/// Task state crtool cannot restore yet: refused with what it is.
fn refuse_unsupported(pid: i32, threads: &[Tracee], extras: &[ThreadExtra], info: &ParasiteInfo) -> Result<()> {
    let refuse = |what: String, hint: &'static str| Err(Error::Unsupported { pid, fd: None, what, hint: Some(hint) });
    for (t, x) in threads.iter().zip(extras) {
        let tid = t.pid.as_raw();
        if x.tsc != libc::PR_TSC_ENABLE {
            return refuse(format!("thread {tid} has rdtsc disabled (prctl PR_SET_TSC)"), "not supported yet");
        }
        if x.cpuid == 0 {
            return refuse(format!("thread {tid} has CPUID faulting on (arch_prctl ARCH_SET_CPUID)"), "not supported yet");
        }
        if x.thread_keyring > 0 {
            return refuse(format!("thread {tid} has a thread keyring ({})", x.thread_keyring), "keyrings are not supported yet");
        }
        if t.regs.cs != 0x33 {
            return refuse(format!("thread {tid} runs 32-bit code (cs {:#x})", t.regs.cs), "only 64-bit tasks are supported");
        }
        for entry in 12..15 {
            if ptrace::tls_entry_used(t.pid, entry) {
                return refuse(format!("thread {tid} has a TLS segment in GDT entry {entry} (set_thread_area)"), "not supported yet");
            }
        }
    }
    if info.process_keyring > 0 {
        return refuse(format!("it has a process keyring ({})", info.process_keyring), "keyrings are not supported yet");
    }
    if info.dumpable == 2 {
        return refuse("it is dumpable only by root (PR_GET_DUMPABLE 2, suid_dumpable)".into(), "this dumpable mode cannot be set again");
    }
    if info.mdwe != 0 {
        return refuse(format!("it denies writable-executable memory (PR_SET_MDWE {:#x})", info.mdwe), "not supported yet");
    }
    Ok(())
}

/// Applies in the restoring task what crtool sets with ordinary syscalls before the
/// restorer runs: name, umask, personality, prctl flags and cwd. The root directory
/// comes later (`apply_root`), once every file has been opened by its path as crtool
/// sees it.
pub fn apply_early(core: &pb::TaskCore) -> Result<()> {
    let pid = core.pid as i32;
    let fail = |what: String, e: std::io::Error| Error::Restore { pid, msg: format!("{what}: {e}") };
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(core.umask));
    process::set_comm(&core.comm);
    process::set_subreaper(core.child_subreaper);
    // mm-wide flags, before the memory is filled (set either way: a child inherits
    // its parent's, which are set before the child is forked).
    process::set_thp_disable(core.thp_disable).map_err(|e| Error::Restore { pid, msg: format!("PR_SET_THP_DISABLE {}: {e}", core.thp_disable) })?;
    process::register_membarrier(core.membarrier).map_err(|e| Error::Restore { pid, msg: format!("membarrier registrations {:#x}: {e}", core.membarrier) })?;
    std::env::set_current_dir(&core.cwd).map_err(|e| fail(format!("chdir {}", core.cwd), e))?;
    // The audit login uid can only be set by the task itself (CAP_AUDIT_CONTROL).
    let own = std::fs::read_to_string("/proc/self/loginuid").unwrap_or_default();
    if own.trim().parse::<u32>().ok() != Some(core.loginuid) {
        std::fs::write("/proc/self/loginuid", core.loginuid.to_string()).map_err(|e| fail(format!("loginuid {}", core.loginuid), e))?;
    }
    Ok(())
}

/// What crtool sets from outside once the task exists: OOM score adjustment and
/// core dump filter of the process; scheduling, I/O priority and timer slack of
/// each thread (`tid` as crtool sees it). Policy goes before the slack, which RT
/// policies force to 0.
pub fn apply_from_outside(core: &pb::TaskCore, pid: i32, threads: &[(i32, &pb::ThreadCore)]) -> Result<()> {
    let fail = |what: String, e: String| Error::Restore { pid: core.pid as i32, msg: format!("{what}: {e}") };
    std::fs::write(format!("/proc/{pid}/oom_score_adj"), core.oom_score_adj.to_string()).map_err(|e| fail("oom_score_adj".into(), e.to_string()))?;
    std::fs::write(format!("/proc/{pid}/coredump_filter"), format!("{:#x}", core.coredump_filter)).map_err(|e| fail("coredump_filter".into(), e.to_string()))?;
    for &(tid, t) in threads {
        if let Some(s) = &t.sched {
            let a = process::SchedAttr { policy: s.policy, flags: s.flags, nice: s.nice, priority: s.priority, runtime: s.runtime, deadline: s.deadline, period: s.period, ..Default::default() };
            process::sched_setattr(tid, &a).map_err(|e| fail(format!("thread {}: sched_setattr (policy {}, nice {})", t.tid, s.policy, s.nice), e.to_string()))?;
            // sched_setattr sets the nice value of fair policies only; a real-time
            // thread keeps one too (used if it goes back to SCHED_OTHER).
            process::set_nice(tid, s.nice).map_err(|e| fail(format!("thread {}: setpriority({})", t.tid, s.nice), e.to_string()))?;
        }
        process::ioprio_set(tid, t.ioprio).map_err(|e| fail(format!("thread {}: ioprio_set {:#x}", t.tid, t.ioprio), e.to_string()))?;
        std::fs::write(format!("/proc/{tid}/timerslack_ns"), t.timerslack_ns.to_string()).map_err(|e| fail(format!("thread {}: timerslack_ns", t.tid), e.to_string()))?;
    }
    Ok(())
}

/// What children must not inherit, set once they are forked: no_new_privs (it
/// cannot be cleared again).
pub fn apply_after_fork(core: &pb::TaskCore) {
    if core.no_new_privs {
        process::set_no_new_privs();
    }
}

/// chroot(2) into the task's root directory (a path as crtool sees it; the cwd, set
/// before, stays where it is, as it did for the task).
pub fn apply_root(core: &pb::TaskCore) -> Result<()> {
    if core.root != "/" {
        std::os::unix::fs::chroot(&core.root)
            .map_err(|e| Error::Restore { pid: core.pid as i32, msg: format!("chroot {}: {e}", core.root) })?;
    }
    Ok(())
}

/// Whether restore can set the task's executable, cwd and root again: the
/// executable must be a regular file crtool may execute (PR_SET_MM_MAP checks that,
/// too late to back out), the directories must exist. `Err` says why not.
pub fn check_restorable(core: &pb::TaskCore, mm: &pb::Mm) -> std::result::Result<(), String> {
    use nix::unistd::{AccessFlags, access};
    if mm.exe_ghost {
        return check_dirs(core); // a deleted executable comes from the images
    }
    let exe = std::fs::File::open(&mm.exe).map_err(|e| format!("its executable {}: {e}", mm.exe))?;
    let md = exe.metadata().map_err(|e| format!("its executable {}: {e}", mm.exe))?;
    if !md.is_file() {
        return Err(format!("its executable {} is not a regular file any more", mm.exe));
    }
    access(mm.exe.as_str(), AccessFlags::X_OK).map_err(|e| format!("its executable {} cannot be executed ({e}): was its x bit removed?", mm.exe))?;
    let noexec = nix::sys::statvfs::fstatvfs(&exe).map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_NOEXEC)).unwrap_or(false);
    if noexec {
        return Err(format!("its executable {} is on a filesystem mounted noexec", mm.exe));
    }
    check_dirs(core)
}

/// The working and root directories exist.
fn check_dirs(core: &pb::TaskCore) -> std::result::Result<(), String> {
    let cwd = if core.cwd_deleted.is_some() { None } else { Some(("working directory", &core.cwd)) };
    for (what, dir) in cwd.into_iter().chain([("root directory", &core.root)]) {
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("its {what} {dir} is not a directory any more")),
            Err(e) => return Err(format!("its {what} {dir}: {e}")),
        }
    }
    Ok(())
}

/// Sets resource limits (late, so that lowered limits do not get in crtool's way).
/// A hard limit above crtool's own cannot be raised without CAP_SYS_RESOURCE; that
/// is reported, and the limit is kept as close as allowed.
pub fn apply_rlimits(core: &pb::TaskCore) -> Vec<String> {
    let mut warnings = Vec::new();
    for l in &core.rlimits {
        if let Err(e) = process::set_rlimit(l.resource, l.cur, l.max) {
            warnings.push(format!("rlimit {}: cannot set {}/{}: {e}", l.resource, l.cur, l.max));
        }
    }
    warnings
}

/// Fills the restorer's view of signals, timers and creds. `cpu_tick_usec` is what
/// the kernel adds when arming CPU-time itimers (it was already in the dumped value).
pub fn fill_restorer_args(core: &pb::TaskCore, a: &mut RestorerArgs, cpu_tick_usec: u64) {
    for s in &core.sigactions {
        if (1..=64).contains(&s.sig) {
            a.sigactions[s.sig as usize - 1] = KSigaction { handler: s.handler, flags: s.flags, restorer: s.restorer, mask: s.mask };
        }
    }
    for t in &core.itimers {
        if t.which < 3 {
            let mut t = *t;
            if t.which != 0 && t.value_usec > cpu_tick_usec {
                t.value_usec -= cpu_tick_usec;
            }
            a.itimers[t.which as usize] = Itimerval {
                interval_sec: (t.interval_usec / 1_000_000) as i64,
                interval_usec: (t.interval_usec % 1_000_000) as i64,
                value_sec: (t.value_usec / 1_000_000) as i64,
                value_usec: (t.value_usec % 1_000_000) as i64,
            };
        }
    }
    let c = core.creds.clone().unwrap_or_default();
    a.caps = [c.cap_inh, c.cap_prm, c.cap_eff, c.cap_bnd, c.cap_amb];
    a.securebits = c.securebits;
    a.cap_last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(40);
    a.personality = core.personality as u64;
    a.uids = [c.ruid, c.euid, c.suid, c.fsuid];
    a.gids = [c.rgid, c.egid, c.sgid, c.fsgid];
    let n = c.groups.len().min(a.groups.len());
    a.groups[..n].copy_from_slice(&c.groups[..n]);
    a.nr_groups = n as u32;
    a.dumpable = core.dumpable as i32;
    a.tgid = core.pid as i32;
}

/// The restorer's per-thread arguments for one thread (pointers filled by the caller).
pub fn thread_args(t: &pb::ThreadCore) -> ThreadArgs {
    let mut a = ThreadArgs { tid: t.tid as i32, ..Default::default() };
    let n = t.comm.len().min(15);
    a.comm[..n].copy_from_slice(&t.comm.as_bytes()[..n]);
    if let Some(r) = &t.rseq {
        a.rseq = RseqReg { ptr: r.ptr, len: r.len, sig: r.sig };
    }
    a.robust_list = t.robust_list;
    a.robust_list_len = t.robust_list_len;
    a.clear_child_tid = t.clear_child_tid;
    a.pdeath_signal = t.pdeath_signal;
    a.mce_kill = t.mce_kill;
    if let Some(r) = &t.regs {
        a.fs_base = r.fs_base;
        a.gs_base = r.gs_base;
    }
    a
}
