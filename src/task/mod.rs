//! Process core state: registers and FPU (see `regs`), signals, timers, credentials,
//! limits, cwd/root, umask, personality. Dumped from /proc, ptrace and the parasite;
//! restored partly by crtool in the new task and partly by the restorer.

pub mod regs;
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
        Ok(l) if l.deleted => Err(unsupported(format!("its {name} {} was deleted", l.path), "deleted files and directories are not supported yet")),
        Ok(l) => Ok(l.path),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(unsupported(format!("its {name}: {e}"), "paths must be UTF-8")),
        Err(e) => Err(Error::proc(pid, what, e)),
    }
}

/// Parses the credentials out of /proc/PID/status.
fn creds(pid: i32) -> Result<pb::Creds> {
    let status = read_proc(pid, "status")?;
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.split_whitespace().collect::<Vec<_>>()).unwrap_or_default();
    let ids = |name: &str| -> Vec<u32> { field(name).iter().filter_map(|v| v.parse().ok()).collect() };
    let cap = |name: &str| field(name).first().and_then(|v| u64::from_str_radix(v, 16).ok()).unwrap_or(0);
    let (u, g) = (ids("Uid:"), ids("Gid:"));
    if u.len() != 4 || g.len() != 4 {
        return Err(Error::proc(pid, "status", std::io::Error::other("no Uid/Gid lines")));
    }
    Ok(pb::Creds {
        ruid: u[0], euid: u[1], suid: u[2], fsuid: u[3],
        rgid: g[0], egid: g[1], sgid: g[2], fsgid: g[3],
        groups: ids("Groups:"),
        cap_inh: cap("CapInh:"), cap_prm: cap("CapPrm:"), cap_eff: cap("CapEff:"), cap_bnd: cap("CapBnd:"), cap_amb: cap("CapAmb:"),
    })
}

fn rlimits(pid: i32) -> Result<Vec<pb::Rlimit>> {
    let mut out = Vec::new();
    for res in 0..16u32 {
        let (cur, max) = process::get_rlimit(pid, res).map_err(|e| Error::sys(format!("pid {pid}: prlimit({res})"), e))?;
        out.push(pb::Rlimit { resource: res, cur, max });
    }
    Ok(out)
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

/// What crtool learned about one thread besides its registers.
pub struct ThreadExtra {
    pub altstack: StackT,
    pub clear_child_tid: u64,
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
    })
}

/// Collects the core image of a task: `threads[0]` is the main thread, `extras`
/// holds what remote syscalls found for each thread, `info` what the parasite found.
/// Thread ids in the image are `vtids` (the tree's PID namespace).
pub fn dump(vpid: i32, threads: &[Tracee], vtids: &[i32], extras: &[ThreadExtra], info: &ParasiteInfo, timers: Vec<pb::PosixTimer>) -> Result<pb::TaskCore> {
    let main = &threads[0];
    let pid = main.pid.as_raw();
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
    Ok(pb::TaskCore {
        pid: vpid as u32,
        comm,
        threads: cores,
        sigactions,
        itimers,
        creds: Some(creds(pid)?),
        rlimits: rlimits(pid)?,
        umask: info.umask,
        cwd: path_of(pid, "cwd")?,
        root: path_of(pid, "root")?,
        personality: info.personality as u32,
        dumpable: info.dumpable as u32,
        shared_pending: shared.into_iter().map(|s| s.to_vec()).collect(),
        posix_timers: timers,
        child_subreaper: info.child_subreaper != 0,
        pdeath_signal: info.pdeath_signal,
        no_new_privs: info.no_new_privs > 0,
        stop_signal: 0,
        stop_unreported: false,
    })
}

/// Applies in the restoring task what crtool sets with ordinary syscalls before the
/// restorer runs: name, umask, personality, prctl flags and cwd. The root directory
/// comes later (`apply_root`), once every file has been opened by its path as crtool
/// sees it.
pub fn apply_early(core: &pb::TaskCore) -> Result<()> {
    let pid = core.pid as i32;
    let fail = |what: String, e: std::io::Error| Error::Restore { pid, msg: format!("{what}: {e}") };
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(core.umask));
    process::set_personality(core.personality);
    process::set_comm(&core.comm);
    process::set_prctl_flags(core.child_subreaper, core.pdeath_signal, core.no_new_privs);
    std::env::set_current_dir(&core.cwd).map_err(|e| fail(format!("chdir {}", core.cwd), e))?;
    Ok(())
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
    for (what, dir) in [("working directory", &core.cwd), ("root directory", &core.root)] {
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
    if let Some(r) = &t.regs {
        a.fs_base = r.fs_base;
        a.gs_base = r.gs_base;
    }
    a
}
