//! `attrs`: task attributes set to values that differ from every default, for checking
//! that a restore brings each one back exactly.
//!
//!     attrs DIR [caps | rt]
//!
//! Per thread (the main thread and two more, B and C, started before the main thread
//! sets its own): nice (3, 7, 12; -5, 7, 12 with `rt`), I/O priority (best-effort 7,
//! idle, best-effort 3), timer slack (123456 ns, 654321 ns, default), parent-death
//! signal (SIGRTMIN+3, SIGRTMIN+4, none) and machine-check kill policy (early, late,
//! default). Per process: no_new_privs 1,
//! dumpable 0, THP disabled (1), membarrier registrations (global expedited, private
//! expedited, sync-core, rseq), personality ADDR_NO_RANDOMIZE|READ_IMPLIES_EXEC (with
//! a PROT_READ mapping made before it, which must stay r--, and one made after, r-x),
//! oom_score_adj 500, coredump_filter 0x5b, lowered soft and hard limits (NOFILE,
//! CORE, MEMLOCK, RTTIME, MSGQUEUE), and a pipe whose read end sends SIGRTMIN+2
//! (F_SETSIG) to the process (F_SETOWN) on input (O_ASYNC). Two children made with a
//! raw clone(): A with exit signal SIGUSR2, parent-death signal SIGRTMIN+6 and THP
//! disabled except where advised (PR_THP_DISABLE_EXCEPT_ADVISED: 3), B with exit
//! signal 0; the parent reaps both with __WCLONE.
//!
//! `caps` (started as root): before anything else the process sets securebits
//! KEEP_CAPS|NOROOT|NOROOT_LOCKED, drops CAP_SYS_MODULE, CAP_SYS_BOOT and CAP_MKNOD from
//! its bounding set, becomes uid/gid 1000 (groups 1000-1002) and keeps permitted
//! CHOWN|NET_BIND_SERVICE|NET_RAW, effective NET_BIND_SERVICE, inheritable
//! NET_BIND_SERVICE|NET_RAW and ambient NET_BIND_SERVICE.
//! `rt` (root): thread B runs SCHED_FIFO priority 10 with SCHED_RESET_ON_FORK, thread
//! C SCHED_RR priority 20 (their timer slack is 0, as the kernel keeps it for RT).
//!
//! Every value, as the task reads it itself, goes to DIR/attrs.before ("key value"
//! lines; the children write DIR/child.A and child.B). On SIGUSR1 they are read again
//! into DIR/attrs.after (and child.*.after) and must be the same; then the task checks
//! that they work: child A exits 3 and its SIGUSR2 arrives once, B exits 4 and nothing
//! arrives, both found with waitpid(__WCLONE) (all that in DIR/result); no
//! parent-death signal was delivered, since no parent died (DIR/result.pdeath); a
//! write into the pipe delivers SIGRTMIN+2 with si_code POLL_IN and si_fd of the read
//! end (DIR/result.sigio).

#[path = "common.rs"]
mod common;

use common::*;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{Condvar, Mutex};

const SECBIT_NOROOT: i32 = 1 << 0;
const SECBIT_NOROOT_LOCKED: i32 = 1 << 1;
const SECBIT_KEEP_CAPS: i32 = 1 << 4;
const CAP_CHOWN: u32 = 0;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_RAW: u32 = 13;
const PR_THP_DISABLE_EXCEPT_ADVISED: u64 = 1 << 1;
const MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED: i32 = 1 << 2;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: i32 = 1 << 4;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE: i32 = 1 << 6;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ: i32 = 1 << 8;
const MEMBARRIER_CMD_GET_REGISTRATIONS: i32 = 1 << 9;
const ADDR_NO_RANDOMIZE: u64 = 0x0040000;
const READ_IMPLIES_EXEC: u64 = 0x0400000;
const F_SETSIG: i32 = 10;
const F_GETSIG: i32 = 11;
const IOPRIO_WHO_PROCESS: i32 = 1;
const SCHED_RESET_ON_FORK: i32 = 0x4000_0000;
const CLONE_WAIT: i32 = 0x8000_0000u32 as i32; // __WCLONE
const POLL_IN: i32 = 1;

fn ioprio(class: i32, level: i32) -> i32 {
    class << 13 | level
}

static HITS: [AtomicU32; 65] = [const { AtomicU32::new(0) }; 65];

extern "C" fn count(sig: libc::c_int) {
    HITS[sig as usize].fetch_add(1, SeqCst);
}

fn handle(sig: i32) {
    // SAFETY: a handler that only bumps an atomic counter.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = count as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        check(libc::sigaction(sig, &sa, std::ptr::null_mut()) == 0, "sigaction");
    }
}

fn prctl(op: i32, a: u64) -> i64 {
    // SAFETY: prctl(2) with integer arguments.
    unsafe { libc::prctl(op, a, 0u64, 0u64, 0u64) as i64 }
}

fn prctl_ok(op: i32, a: u64, what: &str) {
    check(prctl(op, a) >= 0, what);
}

fn status_field(key: &str) -> String {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string())).unwrap_or_default()
}

// ---------------------------------------------------------------- per thread

struct PerThread {
    nice: i32,
    ioprio: i32,
    slack: u64,
    pdeath: i32,
    /// PR_MCE_KILL_SET argument: None = default.
    mce: Option<u64>,
    /// (policy, priority) for `rt`.
    sched: Option<(i32, i32)>,
}

fn apply(t: &PerThread) {
    let tid = gettid();
    // SAFETY: setpriority/ioprio_set/sched_setscheduler on the calling thread.
    unsafe {
        if let Some((policy, prio)) = t.sched {
            let p = libc::sched_param { sched_priority: prio };
            check(libc::sched_setscheduler(0, policy, &p) == 0, "sched_setscheduler");
        }
        check(libc::setpriority(libc::PRIO_PROCESS, tid as u32, t.nice) == 0, "setpriority");
        check(libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, t.ioprio) == 0, "ioprio_set");
    }
    if t.slack != 0 {
        prctl_ok(libc::PR_SET_TIMERSLACK, t.slack, "PR_SET_TIMERSLACK");
    }
    if t.pdeath != 0 {
        prctl_ok(libc::PR_SET_PDEATHSIG, t.pdeath as u64, "PR_SET_PDEATHSIG");
    }
    if let Some(m) = t.mce {
        // SAFETY: prctl(PR_MCE_KILL, PR_MCE_KILL_SET, policy).
        check(unsafe { libc::prctl(libc::PR_MCE_KILL, libc::PR_MCE_KILL_SET as u64, m, 0u64, 0u64) } == 0, "PR_MCE_KILL");
    }
}

/// The calling thread's attributes, as it reads them itself.
fn thread_line(name: &str) -> String {
    let mut pdeath = 0i32;
    // SAFETY: queries about the calling thread.
    unsafe {
        libc::prctl(libc::PR_GET_PDEATHSIG, &mut pdeath as *mut i32, 0u64, 0u64, 0u64);
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
        let io = libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0);
        let policy = libc::sched_getscheduler(0);
        let mut p = libc::sched_param { sched_priority: 0 };
        libc::sched_getparam(0, &mut p);
        format!(
            "thread {name} nice {nice} ioprio {io:#x} timerslack {} pdeathsig {pdeath} mce {} policy {policy:#x} rtprio {}\n",
            prctl(libc::PR_GET_TIMERSLACK, 0),
            libc::prctl(libc::PR_MCE_KILL_GET, 0u64, 0u64, 0u64, 0u64),
            p.sched_priority
        )
    }
}

/// Generation of the report request and the reports of the extra threads.
static REQ: Mutex<(u64, [String; 2])> = Mutex::new((0, [String::new(), String::new()]));
static REQ_CV: Condvar = Condvar::new();
static DONE: AtomicU64 = AtomicU64::new(0);

fn thread_main(i: usize, t: PerThread) {
    apply(&t);
    let name = ["B", "C"][i];
    let mut seen = 0;
    loop {
        let mut g = REQ.lock().unwrap();
        while g.0 == seen {
            g = REQ_CV.wait(g).unwrap();
        }
        seen = g.0;
        g.1[i] = thread_line(name);
        drop(g);
        DONE.fetch_add(1, SeqCst);
        REQ_CV.notify_all();
    }
}

/// Every thread's line, main first.
fn thread_lines() -> String {
    let before = DONE.load(SeqCst);
    {
        let mut g = REQ.lock().unwrap();
        g.0 += 1;
    }
    REQ_CV.notify_all();
    check(wait_for(5000, || DONE.load(SeqCst) >= before + 2), "threads did not report");
    let g = REQ.lock().unwrap();
    format!("{}{}{}", thread_line("main"), g.1[0], g.1[1])
}

// ---------------------------------------------------------------- caps

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn become_user_with_caps() {
    prctl_ok(libc::PR_SET_SECUREBITS, (SECBIT_KEEP_CAPS | SECBIT_NOROOT | SECBIT_NOROOT_LOCKED) as u64, "PR_SET_SECUREBITS");
    for cap in [16u64, 22, 27] {
        prctl_ok(libc::PR_CAPBSET_DROP, cap, "PR_CAPBSET_DROP");
    }
    let groups = [1000u32, 1001, 1002];
    // SAFETY: setgroups/setresgid/setresuid/capset with local data.
    unsafe {
        check(libc::setgroups(3, groups.as_ptr()) == 0, "setgroups");
        check(libc::setresgid(1000, 1000, 1000) == 0, "setresgid");
        check(libc::setresuid(1000, 1000, 1000) == 0, "setresuid");
        let mut hdr = CapHeader { version: 0x2008_0522, pid: 0 };
        let bit = |c: u32| 1u32 << c;
        let data = [
            CapData { effective: bit(CAP_NET_BIND_SERVICE), permitted: bit(CAP_CHOWN) | bit(CAP_NET_BIND_SERVICE) | bit(CAP_NET_RAW), inheritable: bit(CAP_NET_BIND_SERVICE) | bit(CAP_NET_RAW) },
            CapData::default(),
        ];
        check(libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) == 0, "capset");
    }
    // SAFETY: prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap).
    check(unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE as u64, CAP_NET_BIND_SERVICE as u64, 0u64, 0u64) } == 0, "PR_CAP_AMBIENT_RAISE");
}

// ---------------------------------------------------------------- children

/// A child made with a raw clone(2) (no CLONE_VM: a fork with `exit_signal`). It
/// writes its attributes to DIR/child.NAME, waits for a byte on `go`, writes them
/// again to DIR/child.NAME.after and exits `code` if they are the same (1 if not).
fn clone_child(dir: &Path, name: &str, exit_signal: i32, code: i32, setup: impl FnOnce()) -> (i32, i32) {
    let mut fds = [0i32; 2];
    // SAFETY: pipe(2) into a local array.
    check(unsafe { libc::pipe(fds.as_mut_ptr()) } == 0, "pipe");
    // SAFETY: clone without CLONE_VM behaves like fork; the parent has no other
    // threads yet.
    let pid = unsafe { libc::syscall(libc::SYS_clone, exit_signal as u64, 0u64, 0u64, 0u64, 0u64) } as i32;
    check(pid >= 0, "clone");
    if pid > 0 {
        // SAFETY: closing our copy of the read end.
        unsafe { libc::close(fds[0]) };
        return (pid, fds[1]);
    }
    // SAFETY: the child closes the write end and only makes system calls and writes
    // files before _exit.
    unsafe {
        libc::close(fds[1]);
        setup();
        let line = || {
            let mut pdeath = 0i32;
            libc::prctl(libc::PR_GET_PDEATHSIG, &mut pdeath as *mut i32, 0u64, 0u64, 0u64);
            format!("pdeathsig {pdeath} thp {}\n", prctl(libc::PR_GET_THP_DISABLE, 0))
        };
        let before = line();
        write_file(&dir.join(format!("child.{name}")), &before);
        let mut b = [0u8; 1];
        while libc::read(fds[0], b.as_mut_ptr().cast(), 1) < 0 {}
        let after = line();
        write_file(&dir.join(format!("child.{name}.after")), &after);
        libc::_exit(if after == before { code } else { 1 });
    }
}

fn exit_signal_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(35).map(str::to_string)))
        .unwrap_or_else(|| "?".into())
}

// ---------------------------------------------------------------- process

struct Proc {
    r1: usize,
    r2: usize,
    rfd: i32,
    kids: [(i32, i32); 2],
}

fn perms_at(addr: usize) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines()
        .find_map(|l| {
            let (range, rest) = l.split_once(' ')?;
            let (s, e) = range.split_once('-')?;
            let (s, e) = (usize::from_str_radix(s, 16).ok()?, usize::from_str_radix(e, 16).ok()?);
            (s <= addr && addr < e).then(|| rest.split_whitespace().next().unwrap_or("").to_string())
        })
        .unwrap_or_else(|| "unmapped".into())
}

const LIMITS: [(&str, i32); 5] =
    [("NOFILE", libc::RLIMIT_NOFILE as i32), ("CORE", libc::RLIMIT_CORE as i32), ("MEMLOCK", libc::RLIMIT_MEMLOCK as i32), ("RTTIME", libc::RLIMIT_RTTIME as i32), ("MSGQUEUE", libc::RLIMIT_MSGQUEUE as i32)];
const LIMIT_VALUES: [(u64, u64); 5] = [(200, 400), (0, 1 << 20), (32768, 65536), (100_000, 200_000), (4096, 8192)];

fn process_lines(p: &Proc) -> String {
    let mut out = String::new();
    out += &format!("securebits {:#x}\n", prctl(libc::PR_GET_SECUREBITS, 0));
    for k in ["Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        out += &format!("{k} {}\n", status_field(&format!("{k}:")));
    }
    out += &format!("no_new_privs {}\n", prctl(libc::PR_GET_NO_NEW_PRIVS, 0));
    out += &format!("dumpable {}\n", prctl(libc::PR_GET_DUMPABLE, 0));
    out += &format!("thp_disable {}\n", prctl(libc::PR_GET_THP_DISABLE, 0));
    // SAFETY: membarrier(2) query and personality(2) query (0xffffffff changes nothing).
    unsafe {
        out += &format!("membarrier {:#x}\n", libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0));
        out += &format!("personality {:#x}\n", libc::personality(0xffff_ffff));
    }
    for f in ["oom_score_adj", "coredump_filter"] {
        out += &format!("{f} {}\n", std::fs::read_to_string(format!("/proc/self/{f}")).unwrap_or_default().trim());
    }
    for (name, res) in LIMITS {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit into a local.
        unsafe { libc::getrlimit(res as _, &mut l) };
        out += &format!("rlimit {name} {} {}\n", l.rlim_cur, l.rlim_max);
    }
    // SAFETY: fcntl queries on our pipe.
    unsafe {
        let fl = libc::fcntl(p.rfd, libc::F_GETFL);
        out += &format!("sigio owner {} sig {} async {}\n", libc::fcntl(p.rfd, libc::F_GETOWN), libc::fcntl(p.rfd, F_GETSIG), (fl & libc::O_ASYNC != 0) as i32);
    }
    out += &format!("map before-personality {}\nmap after-personality {}\n", perms_at(p.r1), perms_at(p.r2));
    out += &format!("child A exit_signal {}\nchild B exit_signal {}\n", exit_signal_of(p.kids[0].0), exit_signal_of(p.kids[1].0));
    out
}

fn main() {
    let (dir, args) = args();
    let caps = args.iter().any(|a| a == "caps");
    let rt = args.iter().any(|a| a == "rt");
    if caps {
        become_user_with_caps();
        // (the uid change made it non-dumpable: /proc/self would be root's)
        prctl_ok(libc::PR_SET_DUMPABLE, 1, "PR_SET_DUMPABLE");
    }
    let rt_min = libc::SIGRTMIN();
    let sigio = rt_min + 2;
    block(&[libc::SIGUSR1, sigio]);
    for s in [rt_min + 3, rt_min + 4, rt_min + 6, libc::SIGUSR2] {
        handle(s);
    }
    // (a per-thread flag: set before there are other threads)
    prctl_ok(libc::PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS");
    // Children first (raw clone needs a single-threaded parent).
    let kid_a = clone_child(&dir, "A", libc::SIGUSR2, 3, || {
        prctl_ok(libc::PR_SET_PDEATHSIG, (rt_min + 6) as u64, "PR_SET_PDEATHSIG");
        // SAFETY: prctl(PR_SET_THP_DISABLE, 1, PR_THP_DISABLE_EXCEPT_ADVISED).
        check(unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1u64, PR_THP_DISABLE_EXCEPT_ADVISED, 0u64, 0u64) } == 0, "PR_SET_THP_DISABLE except advised");
    });
    let kid_b = clone_child(&dir, "B", 0, 4, || {});
    // Threads, before the main thread's own settings (which they would inherit).
    let nice = if rt { [-5, 7, 12] } else { [3, 7, 12] };
    let (sched_b, sched_c) = if rt { (Some((libc::SCHED_FIFO | SCHED_RESET_ON_FORK, 10)), Some((libc::SCHED_RR, 20))) } else { (None, None) };
    let b = PerThread { nice: nice[1], ioprio: ioprio(3, 0), slack: 654_321, pdeath: rt_min + 4, mce: Some(libc::PR_MCE_KILL_LATE as u64), sched: sched_b };
    let c = PerThread { nice: nice[2], ioprio: ioprio(2, 3), slack: 0, pdeath: 0, mce: None, sched: sched_c };
    std::thread::Builder::new().name("B".into()).spawn(move || thread_main(0, b)).unwrap();
    std::thread::Builder::new().name("C".into()).spawn(move || thread_main(1, c)).unwrap();
    apply(&PerThread { nice: nice[0], ioprio: ioprio(2, 7), slack: 123_456, pdeath: rt_min + 3, mce: Some(libc::PR_MCE_KILL_EARLY as u64), sched: None });
    // A PROT_READ mapping before READ_IMPLIES_EXEC, one after.
    let r1 = map_ro();
    // SAFETY: personality(2) with flags that only affect later mappings and execs.
    check(unsafe { libc::personality(ADDR_NO_RANDOMIZE | READ_IMPLIES_EXEC) } >= 0, "personality");
    let r2 = map_ro();
    for (f, v) in [("oom_score_adj", "500"), ("coredump_filter", "0x5b")] {
        check(std::fs::write(format!("/proc/self/{f}"), v).is_ok(), f);
    }
    for ((_, res), (cur, max)) in LIMITS.iter().zip(LIMIT_VALUES) {
        let l = libc::rlimit { rlim_cur: cur, rlim_max: max };
        // SAFETY: setrlimit with a local.
        check(unsafe { libc::setrlimit(*res as _, &l) } == 0, "setrlimit");
    }
    let mut fds = [0i32; 2];
    // SAFETY: pipe(2) and fcntl(2) on it.
    unsafe {
        check(libc::pipe(fds.as_mut_ptr()) == 0, "pipe");
        check(libc::fcntl(fds[0], libc::F_SETOWN, libc::getpid()) == 0, "F_SETOWN");
        check(libc::fcntl(fds[0], F_SETSIG, sigio) == 0, "F_SETSIG");
        check(libc::fcntl(fds[0], libc::F_SETFL, libc::O_ASYNC) == 0, "F_SETFL O_ASYNC");
    }
    // mm-wide and process-wide flags, dumpable last (it makes /proc/self root's).
    prctl_ok(libc::PR_SET_THP_DISABLE, 1, "PR_SET_THP_DISABLE");
    for cmd in [MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ] {
        // SAFETY: membarrier(2) registration.
        check(unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) } == 0, &format!("membarrier register {cmd:#x}"));
    }
    prctl_ok(libc::PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE");
    let p = Proc { r1, r2, rfd: fds[0], kids: [kid_a, kid_b] };
    check(wait_for(5000, || dir.join("child.A").exists() && dir.join("child.B").exists()), "children did not start");
    let before = format!("{}{}", process_lines(&p), thread_lines());
    write_file(&dir.join("attrs.before"), &before);
    write_file(&dir.join("ready"), "ready\n");
    wait_usr1();

    let after = format!("{}{}", process_lines(&p), thread_lines());
    write_file(&dir.join("attrs.after"), &after);
    let mut r = Report::default();
    let diff: Vec<String> = before.lines().zip(after.lines()).filter(|(a, b)| a != b).map(|(a, b)| format!("{a:?} → {b:?}")).collect();
    r.expect(diff.is_empty(), || format!("attributes changed: {}", diff.join(", ")));
    // (parent-death signals and SIGIO have verdicts of their own)
    let mut rp = Report::default();
    for s in [rt_min + 3, rt_min + 4, rt_min + 6] {
        let n = HITS[s as usize].load(SeqCst);
        rp.expect(n == 0, || format!("parent-death signal {s} was delivered {n} times, though no parent died"));
    }
    rp.write(&dir.join("result.pdeath"));
    let mut rs = Report::default();
    // SIGIO: a byte into the pipe → SIGRTMIN+2 with POLL_IN and the read end's fd.
    write_all(fds[1], b"x");
    let s = sigset(&[sigio]);
    let ts = libc::timespec { tv_sec: 2, tv_nsec: 0 };
    // SAFETY: siginfo_t is plain data; sigtimedwait into a local.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let got = unsafe { libc::sigtimedwait(&s, &mut info, &ts) };
    let (code, _, _, _) = siginfo_fields(&info);
    // SAFETY: si_fd of a SIGPOLL siginfo is the int at offset 24 (x86-64).
    let si_fd = unsafe { *((&info as *const libc::siginfo_t as *const u8).add(24) as *const i32) };
    rs.expect(got == sigio && code == POLL_IN && si_fd == fds[0], || {
        format!("a write into the O_ASYNC pipe gave signal {got} si_code {code} si_fd {si_fd}, expected {sigio} POLL_IN ({}) fd {}", POLL_IN, fds[0])
    });
    rs.write(&dir.join("result.sigio"));
    // The children: A's exit raises SIGUSR2, B's nothing; both reaped with __WCLONE.
    for (i, (pid, go)) in p.kids.iter().enumerate() {
        write_all(*go, b"g");
        let name = ["A", "B"][i];
        let want = [3, 4][i];
        match waitpid(*pid, CLONE_WAIT) {
            Some((_, st)) => r.expect(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == want, || {
                format!("child {name} {} (expected exit {want}); its attributes before/after: {:?} / {:?}", describe_status(st),
                    std::fs::read_to_string(dir.join(format!("child.{name}"))).unwrap_or_default(), std::fs::read_to_string(dir.join(format!("child.{name}.after"))).unwrap_or_default())
            }),
            None => r.0.push(format!("waitpid(child {name}, __WCLONE): {}", errno())),
        }
    }
    let usr2 = wait_for(1000, || HITS[libc::SIGUSR2 as usize].load(SeqCst) > 0);
    sleep_ms(50);
    let n = HITS[libc::SIGUSR2 as usize].load(SeqCst);
    r.expect(usr2 && n == 1, || format!("child A's exit signal SIGUSR2 arrived {n} times, expected once"));
    std::process::exit(r.write(&dir.join("result")));
}

fn map_ro() -> usize {
    // SAFETY: a fresh read-only anonymous mapping.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
    check(p != libc::MAP_FAILED, "mmap");
    p as usize
}
