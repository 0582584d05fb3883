//! Discovering and freezing the whole process tree: every process below the root and
//! every thread of each, seized with ptrace until a full pass finds nothing new.

use crate::error::{Error, Result};
use crate::infect::Tracee;
use crate::procinfo;
use nix::unistd::Pid;
use std::collections::BTreeSet;

/// One process of the frozen tree.
pub struct FrozenProc {
    /// PID as crtool sees it.
    pub pid: i32,
    /// PID in the tree's own PID namespace.
    pub vpid: i32,
    pub ppid: i32,
    /// Threads, the main thread first (empty for a zombie).
    pub threads: Vec<Tracee>,
    pub zombie: Option<i32>,
    /// tid → what the thread was blocked in before the freeze (timed calls only).
    pub blocked: std::collections::BTreeMap<i32, crate::task::syscall::Blocked>,
    /// The process was in group-stop: the stop signal, and whether its parent had
    /// yet to collect the stop (wait status still pending).
    pub stopped: Option<(i32, bool)>,
}

pub struct FrozenTree {
    /// Parents before children (breadth first from the root).
    pub procs: Vec<FrozenProc>,
    /// The root is PID 1 of a PID namespace of its own.
    pub new_pid_ns: bool,
    pub new_mount_ns: bool,
}

fn read(path: String) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn stat_state(pid: i32) -> Option<(char, i32, i32)> {
    let s = read(format!("/proc/{pid}/stat"))?;
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // state, ppid, ..., exit_code is field 52 (index 49 after the name)
    let state = f.first()?.chars().next()?;
    let ppid = f.get(1)?.parse().ok()?;
    let exit = f.get(49).and_then(|v| v.parse().ok()).unwrap_or(0);
    Some((state, ppid, exit))
}

/// Most passes over a changing tree before giving up.
const MAX_PASSES: usize = 100;

/// The thread is on its way out (gone, a zombie, or PF_EXITING).
fn exiting(tid: i32) -> bool {
    match read(format!("/proc/{tid}/stat")) {
        None => true,
        Some(s) => {
            let f: Vec<&str> = s.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
            f.first().is_some_and(|st| *st == "Z" || *st == "X") || f.get(6).and_then(|v| v.parse::<u64>().ok()).is_some_and(|fl| fl & 0x4 != 0)
        }
    }
}

fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for t in tasks.flatten() {
        let tid = t.file_name().to_string_lossy().into_owned();
        if let Some(c) = read(format!("/proc/{pid}/task/{tid}/children")) {
            out.extend(c.split_whitespace().filter_map(|v| v.parse::<i32>().ok()));
        }
    }
    out.sort();
    out
}

fn threads_of(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_string_lossy().parse().ok()).collect())
        .unwrap_or_default();
    v.sort();
    // The main thread first.
    if let Some(i) = v.iter().position(|&t| t == pid) {
        v.remove(i);
        v.insert(0, pid);
    }
    v
}

fn ns_id(pid: i32, ns: &str) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).ok()
}

/// The pids, in the tree's PID namespace, of the processes in the tree of
/// `root` as it is now (not frozen: a guess of what `freeze` will find).
pub fn predict(root: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        if out.len() >= 100_000 {
            break;
        }
        out.push(crate::procinfo::innermost_pid(p).unwrap_or(p));
        todo.extend(children_of(p));
    }
    out
}

/// Seizes every thread of every process in the tree rooted at `root`.
pub fn freeze(root: i32, xsave_size: usize) -> Result<FrozenTree> {
    let root_ns = procinfo::ids(root, "NSpid").ok_or(Error::NoProcess(root))?;
    let own_levels = procinfo::ids(std::process::id() as i32, "NSpid").map(|v| v.len()).unwrap_or(1);
    let (new_pid_ns, levels) = match root_ns.len() {
        n if n == own_levels => (false, n),
        n if n == own_levels + 1 && root_ns[n - 1] == 1 => (true, n),
        _ => {
            return Err(Error::Unsupported {
                pid: root,
                fd: None,
                what: format!("it lives in a nested PID namespace ({root_ns:?}) but is not its init"),
                hint: Some("dump the namespace's init (PID 1) instead"),
            })
        }
    };
    let new_mount_ns = new_pid_ns && ns_id(root, "mnt") != ns_id(std::process::id() as i32, "mnt");

    let mut procs: Vec<FrozenProc> = Vec::new();
    let mut seen_threads: BTreeSet<i32> = BTreeSet::new();
    // Tasks that exit or fork while the tree is being seized change it under our
    // feet: passes repeat until one finds nothing new (bounded).
    let mut passes = 0;
    loop {
        crate::error::check_interrupt()?;
        passes += 1;
        if passes > MAX_PASSES {
            return Err(Error::Unsupported {
                pid: root,
                fd: None,
                what: format!("its tree kept changing (processes forking or exiting) through {MAX_PASSES} passes of seizing it"),
                hint: Some("try again when it is quieter"),
            });
        }
        let mut changed = false;
        let mut queue: Vec<i32> = vec![root];
        let mut i = 0;
        while i < queue.len() {
            let pid = queue[i];
            i += 1;
            let Some((state, ppid, exit)) = stat_state(pid) else {
                if pid == root {
                    return Err(Error::NoProcess(root));
                }
                continue; // gone before we got to it
            };
            let idx = match procs.iter().position(|p| p.pid == pid) {
                Some(idx) => idx,
                None => {
                    let ns = procinfo::ids(pid, "NSpid").unwrap_or_default();
                    if ns.len() != levels {
                        return Err(Error::Unsupported { pid, fd: None, what: format!("it is in a nested PID namespace ({ns:?})"), hint: Some("nested PID namespaces are not supported yet") });
                    }
                    let vpid = *ns.last().unwrap_or(&pid);
                    procs.push(FrozenProc { pid, vpid, ppid, threads: Vec::new(), zombie: None, blocked: Default::default(), stopped: None });
                    changed = true;
                    procs.len() - 1
                }
            };
            if state == 'Z' {
                let threads = procinfo::ids(pid, "Threads").and_then(|v| v.first().copied()).unwrap_or(1);
                if threads > 1 {
                    return Err(Error::Unsupported {
                        pid,
                        fd: None,
                        what: format!("its main thread has exited while {} other threads run on", threads - 1),
                        hint: Some("not supported yet"),
                    });
                }
                procs[idx].zombie = Some(exit);
                continue;
            }
            for tid in threads_of(pid) {
                if seen_threads.contains(&tid) {
                    continue;
                }
                if tid == std::process::id() as i32 {
                    return Err(Error::Unsupported { pid, fd: None, what: "crtool itself is part of the tree".into(), hint: Some("run crtool from outside the tree it dumps") });
                }
                if let Some(tracer) = procinfo::tracer(tid) {
                    return Err(Error::Unsupported { pid, fd: None, what: format!("thread {tid} is traced by pid {tracer}"), hint: Some("detach the debugger or tracer first") });
                }
                let blocked = crate::task::syscall::probe(pid, tid);
                let timers = blocked.filter(|b| b.timed).and_then(|_| crate::task::sleepers::Snapshot::take());
                match Tracee::seize(Pid::from_raw(tid), xsave_size) {
                    Ok(mut t) => {
                        crate::task::rseq_fixup(&mut t);
                        seen_threads.insert(tid);
                        if let Some(sig) = t.group_stop {
                            // exit_code (stat field 52) holds the stop until the
                            // parent's waitpid(WUNTRACED) collects it.
                            procs[idx].stopped.get_or_insert((sig, exit != 0));
                        }
                        procs[idx].threads.push(t);
                        if let Some(mut b) = blocked {
                            if let Some(before) = &timers {
                                b.left_ns = crate::task::sleepers::Snapshot::take().and_then(|after| before.vanished_confirmed(&after));
                                log::info!("thread {tid}: in a timed wait, {}", b.left_ns.map_or("its timer not found".into(), |ns| format!("{ns} ns left")));
                            }
                            procs[idx].blocked.insert(tid, b);
                        }
                        changed = true;
                    }
                    Err(Error::NoProcess(_)) | Err(Error::TaskGone { .. }) if tid != root => {
                        changed = true;
                        continue;
                    }
                    // EPERM: the thread is exiting (PF_EXITING); the next pass sees
                    // it gone, or its process a zombie.
                    Err(Error::Ptrace { errno: nix::errno::Errno::EPERM, .. }) if exiting(tid) => {
                        changed = true;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            // Keep the main thread first even if it was seized after others.
            procs[idx].threads.sort_by_key(|t| (t.pid.as_raw() != pid, t.pid.as_raw()));
            for c in children_of(pid) {
                if !queue.contains(&c) {
                    queue.push(c);
                }
            }
        }
        if !changed {
            break;
        }
    }
    // Processes that vanished before any of their threads was seized.
    procs.retain(|p| !p.threads.is_empty() || p.zombie.is_some());
    // Resolve parents to the tree's namespace.
    let vpids: Vec<(i32, i32)> = procs.iter().map(|p| (p.pid, p.vpid)).collect();
    for p in procs.iter_mut() {
        p.ppid = vpids.iter().find(|(pid, _)| *pid == p.ppid).map(|&(_, v)| v).unwrap_or(0);
    }
    Ok(FrozenTree { procs, new_pid_ns, new_mount_ns })
}
