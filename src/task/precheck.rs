//! Task state crtool cannot restore yet, refused before any parasite enters the
//! tree (the tree is frozen, so what is read here stays true for the dump): seccomp
//! filters, namespaces other than crtool's, kernel structures shared between
//! processes or unshared by a thread, kernel-made worker threads, a leader that
//! exited while its threads run, file locks.
//!
//! Everything is read from /proc and kcmp(2) (KCMP_FILES, KCMP_FS, KCMP_VM,
//! KCMP_SIGHAND, KCMP_SYSVSEM; see kcmp(2)); nothing here touches the tasks.

use crate::error::{Error, Result};
use crate::sys::process::{kcmp, Kcmp};
use std::cmp::Ordering;

/// One process of the frozen tree as the checks need it.
pub struct Proc {
    pub pid: i32,
    pub tids: Vec<i32>,
}

fn refuse(pid: i32, what: String, hint: &'static str) -> Error {
    Error::Unsupported { pid, fd: None, what, hint: Some(hint) }
}

fn status_field(pid: i32, tid: i32, key: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
}

/// stat field 9 (flags) of a thread.
fn task_flags(pid: i32, tid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')')?.1.split_whitespace().nth(6)?.parse().ok())
        .unwrap_or(0)
}

const PF_IO_WORKER: u64 = 0x10;
const PF_USER_WORKER: u64 = 0x4000;
const PF_KTHREAD: u64 = 0x20_0000;

/// Per-process and per-thread checks. `mnt_ok` is the mount namespace the tree may
/// be in besides crtool's (the root's own, made by `unshare --mount-proc`);
/// `tree_ns` the root's own IPC and UTS namespaces (see `ipc::tree_namespaces`).
pub fn check_process(p: &Proc, mnt_ok: Option<&std::path::Path>, tree_ns: &[(&str, std::path::PathBuf)]) -> Result<()> {
    let pid = p.pid;
    const KINDS: [&str; 7] = ["net", "ipc", "uts", "user", "time", "cgroup", "mnt"];
    let own: Vec<_> = KINDS.iter().map(|ns| std::fs::read_link(format!("/proc/self/ns/{ns}")).ok()).collect();
    // (A process of many threads: its threads checked on every CPU.)
    let width = if p.tids.len() >= 64 { crate::par::width() } else { 1 };
    crate::par::map(&p.tids, width, |&tid| {
        let flags = task_flags(pid, tid);
        if flags & PF_KTHREAD != 0 {
            return Err(refuse(pid, "it is a kernel thread".into(), "kernel threads cannot be checkpointed"));
        }
        if flags & (PF_IO_WORKER | PF_USER_WORKER) != 0 {
            return Err(refuse(pid, format!("thread {tid} is a kernel worker (io_uring, vhost)"), "io_uring and vhost are not supported"));
        }
        match status_field(pid, tid, "Seccomp:").as_deref() {
            Some("0") | None => {}
            Some(mode) => {
                return Err(refuse(pid, format!("thread {tid} runs under seccomp (mode {mode})"), "seccomp filters are not supported yet"));
            }
        }
        for (ns, own) in KINDS.into_iter().zip(&own) {
            let theirs = std::fs::read_link(format!("/proc/{pid}/task/{tid}/ns/{ns}")).ok();
            let allowed = theirs == *own || (ns == "mnt" && theirs.as_deref() == mnt_ok) || tree_ns.iter().any(|(n, l)| *n == ns && theirs.as_ref() == Some(l));
            if !allowed {
                let t = theirs.map(|p| p.display().to_string()).unwrap_or_else(|| "?".into());
                return Err(refuse(pid, format!("thread {tid} is in a {ns} namespace of its own ({t})"), "namespaces other than PID (and mount with unshare --mount-proc) are not supported yet"));
            }
        }
        if tid != pid {
            for (what, k) in [("file table", Kcmp::Files), ("cwd/root/umask (fs_struct)", Kcmp::Fs)] {
                if kcmp(pid, tid, k) != Ok(Ordering::Equal) {
                    return Err(refuse(pid, format!("thread {tid} unshared its {what} from the process"), "per-thread fd tables and fs_structs are not supported yet"));
                }
            }
        }
        Ok(())
    })?;
    // A new PID or time namespace for the children this process will create.
    for (ns, base) in [("pid_for_children", "pid"), ("time_for_children", "time")] {
        let child = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).ok();
        let own = std::fs::read_link(format!("/proc/{pid}/ns/{base}")).ok();
        if child.is_none() || child != own {
            return Err(refuse(pid, format!("it created a {base} namespace for its future children"), "nested namespaces are not supported yet"));
        }
    }
    // Undo records of SysV semaphores: the process has an undo list (kcmp against
    // crtool, which has none; creating a thread also allocates an empty one) and a
    // semaphore set was operated on since the process started.
    if kcmp(pid, std::process::id() as i32, Kcmp::Sysvsem) != Ok(Ordering::Equal) && semop_since(&crate::ipc::sysvipc_text(pid, "sem"), start_time(pid)) {
        return Err(crate::ipc::undo_refusal(pid));
    }
    Ok(())
}

/// Kernel structures shared between processes of the tree (clone(2) with
/// CLONE_FILES, CLONE_FS, CLONE_VM/CLONE_SIGHAND): restore gives each process its
/// own, so they are refused. Processes are sorted by kcmp's order for each kind and
/// neighbours compared: O(n log n) kcmp calls.
pub fn check_sharing(procs: &[Proc]) -> Result<()> {
    for (what, k) in [("fd table (CLONE_FILES)", Kcmp::Files), ("cwd/root/umask (CLONE_FS)", Kcmp::Fs), ("memory (CLONE_VM)", Kcmp::Vm), ("signal handlers (CLONE_SIGHAND)", Kcmp::Sighand)] {
        let mut pids: Vec<i32> = procs.iter().map(|p| p.pid).collect();
        pids.sort_by(|&a, &b| kcmp(a, b, k).unwrap_or(Ordering::Equal).then(a.cmp(&b)));
        for w in pids.windows(2) {
            if kcmp(w[0], w[1], k) == Ok(Ordering::Equal) {
                return Err(refuse(w[1], format!("it shares its {what} with process {}", w[0]), "processes sharing kernel structures are not supported yet"));
            }
        }
    }
    Ok(())
}

/// File locks held by processes of the tree (/proc/locks: POSIX, flock, OFD, leases;
/// also a flock kept only by a mapping after its fd was closed). `pids` are as
/// crtool sees them; OFD locks (pid -1) are found through fdinfo by the fd checks.
pub fn check_locks(pids: &[i32]) -> Result<()> {
    let text = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // "1: POSIX  ADVISORY  WRITE 1234 08:02:1234 0 EOF" ("->" marks blocked waiters)
        let f: Vec<&str> = f.into_iter().filter(|w| *w != "->").collect();
        let (Some(kind), Some(pid)) = (f.get(1), f.get(4).and_then(|p| p.parse::<i32>().ok())) else { continue };
        if pids.contains(&pid) {
            let what = format!("it holds a file lock ({kind} {} on inode {})", f.get(3).unwrap_or(&"?"), f.get(5).unwrap_or(&"?"));
            return Err(refuse(pid, what, "dump with --file-locks to take them along"));
        }
    }
    Ok(())
}

/// When the process started, in seconds since the epoch (0 if unknown: then every
/// semaphore counts).
fn start_time(pid: i32) -> u64 {
    let btime = procfs::boot_time_secs().unwrap_or(0);
    let ticks = procfs::ticks_per_second();
    procfs::process::Process::new(pid).and_then(|p| p.stat()).map(|s| btime + s.starttime / ticks).unwrap_or(0)
}

/// Whether some SysV semaphore set of the IPC namespace (`text`: its
/// /proc/sysvipc/sem) was last operated on (semop, "otime") at or after `since`
/// (epoch seconds).
fn semop_since(text: &str, since: u64) -> bool {
    text.lines().skip(1).any(|l| l.split_whitespace().nth(8).and_then(|t| t.parse::<u64>().ok()).is_none_or(|otime| otime + 1 >= since))
}
