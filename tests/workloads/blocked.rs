//! `blocked`: threads blocked in system calls while the process is dumped, each
//! recording what its call returned and when.
//!
//!     blocked DIR [--due MS]          (the timed calls, default)
//!     blocked DIR sarestart           (reads interrupted by handlers with and without SA_RESTART)
//!
//! Default mode: one thread per call, all started at T0 (CLOCK_MONOTONIC when the
//! workload started); every timed call is due MS (default 6000) ms after it started
//! (relative timeouts) or at T0 + MS (absolute deadlines, events):
//!   futex FUTEX_WAIT with a relative timeout, FUTEX_WAIT_BITSET with an absolute
//!   CLOCK_MONOTONIC and an absolute CLOCK_REALTIME deadline, poll (no fds, and one fd
//!   that never gets data), select, pselect6, ppoll, nanosleep with and without `rem`,
//!   clock_nanosleep relative and TIMER_ABSTIME on CLOCK_MONOTONIC and CLOCK_REALTIME,
//!   rt_sigtimedwait with a timeout, read on a pipe (a writer thread writes 5 bytes at
//!   T0 + MS), wait4 on a child (it exits 4 at T0 + MS), pthread_cond_timedwait on a
//!   CLOCK_MONOTONIC and on a CLOCK_REALTIME condition variable.
//! Every call is made with the raw system call (but the condition variables), so the
//! results are the kernel's. Writes DIR/ready once every thread sits in its call
//! (/proc/self/task/TID/syscall) and DIR/all-returned when all calls have returned.
//! On SIGUSR1 it writes "NAME RET ERRNO START_MS END_MS" (ms since T0) for each call
//! to DIR/calls and checks each against what the kernel returns without a dump:
//!   - the result: 0 (poll, select, sleeps), ETIMEDOUT (futex, condvars), EAGAIN
//!     (sigtimedwait), 5 (read), the child's pid with exit status 4 (wait4); never
//!     EINTR, except rt_sigtimedwait, which the kernel itself fails with EINTR when the
//!     freeze interrupts it (signal(7)): accepted only if it returned after the first
//!     dump began;
//!   - never early: a relative call lasted at least MS, an absolute one returned at
//!     or after its deadline on its clock, read/wait4 not before T0 + MS;
//!   - still waiting when the last dump began (else the dump came too late to test
//!     anything: a setup failure);
//!   - never late beyond what the dumps explain: DIR/downtime holds one line "START
//!     END" (µs of CLOCK_REALTIME) per dump/restore window (written by the test
//!     before SIGUSR1); a relative call lasts at most MS + the sum of the windows +
//!     SLACK_MS (so a restarted call that waits its full timeout again after a
//!     restore fails), an absolute one returns at most SLACK_MS after its deadline or
//!     after the last window ended, whichever is later.
//!
//! `sarestart`: thread A blocks in read() on an empty pipe with only SIGUSR2 unblocked
//! (its handler has SA_RESTART), thread B in read() on another with only SIGURG
//! unblocked (handler without SA_RESTART); the main thread blocks both. The test stops
//! the process (SIGSTOP), sends SIGUSR2 and SIGURG while it is stopped, and continues it
//! (SIGCONT) after a dump and restore or not. As the kernel decides: B's read fails
//! with EINTR once its handler ran (DIR/returned.B), A's read restarts and keeps
//! waiting; on SIGUSR1 the main thread writes "hello" into A's pipe and A must return
//! those 5 bytes, after the write, its handler having run exactly once.

#[path = "common.rs"]
mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering::SeqCst};
use std::sync::Mutex;

/// How late a call may return beyond what the downtime explains (wake-up and
/// scheduling on a loaded machine).
const SLACK_MS: i64 = 300;

const FUTEX_WAIT: i64 = 0;
const FUTEX_WAIT_BITSET: i64 = 9;
const FUTEX_PRIVATE_FLAG: i64 = 128;
const FUTEX_CLOCK_REALTIME: i64 = 256;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Due {
    /// Relative timeout of DUE ms from the call's start.
    Rel,
    /// Absolute deadline T0 + DUE on CLOCK_MONOTONIC.
    AbsMono,
    /// Absolute deadline R0 + DUE on CLOCK_REALTIME.
    AbsReal,
    /// Returns when something happens at T0 + DUE.
    Event,
}

#[derive(Clone, Copy, Debug)]
enum Want {
    /// Returns this value.
    Ret(i64),
    /// Fails with this errno.
    Err(i32),
    /// Returns the child's pid (status checked separately).
    Child,
}

struct Call {
    name: &'static str,
    due: Due,
    want: Want,
    /// The syscall the thread sits in (/proc/self/task/TID/syscall).
    nr: i64,
}

const CALLS: &[Call] = &[
    Call { name: "futex-wait-rel", due: Due::Rel, want: Want::Err(libc::ETIMEDOUT), nr: libc::SYS_futex },
    Call { name: "futex-bitset-abs-mono", due: Due::AbsMono, want: Want::Err(libc::ETIMEDOUT), nr: libc::SYS_futex },
    Call { name: "futex-bitset-abs-real", due: Due::AbsReal, want: Want::Err(libc::ETIMEDOUT), nr: libc::SYS_futex },
    Call { name: "poll-nofds", due: Due::Rel, want: Want::Ret(0), nr: libc::SYS_poll },
    Call { name: "poll-pipe", due: Due::Rel, want: Want::Ret(0), nr: libc::SYS_poll },
    Call { name: "select", due: Due::Rel, want: Want::Ret(0), nr: libc::SYS_select },
    Call { name: "pselect6", due: Due::Rel, want: Want::Ret(0), nr: libc::SYS_pselect6 },
    Call { name: "ppoll", due: Due::Rel, want: Want::Ret(0), nr: libc::SYS_ppoll },
    Call { name: "nanosleep-rem", due: Due::Rel, want: Want::Ret(0), nr: libc::SYS_nanosleep },
    Call { name: "nanosleep-null", due: Due::Rel, want: Want::Ret(0), nr: libc::SYS_nanosleep },
    Call { name: "clock_nanosleep-mono-rel", due: Due::Rel, want: Want::Ret(0), nr: libc::SYS_clock_nanosleep },
    Call { name: "clock_nanosleep-real-rel", due: Due::Rel, want: Want::Ret(0), nr: libc::SYS_clock_nanosleep },
    Call { name: "clock_nanosleep-mono-abs", due: Due::AbsMono, want: Want::Ret(0), nr: libc::SYS_clock_nanosleep },
    Call { name: "clock_nanosleep-real-abs", due: Due::AbsReal, want: Want::Ret(0), nr: libc::SYS_clock_nanosleep },
    Call { name: "rt_sigtimedwait", due: Due::Rel, want: Want::Err(libc::EAGAIN), nr: libc::SYS_rt_sigtimedwait },
    Call { name: "read-pipe", due: Due::Event, want: Want::Ret(5), nr: libc::SYS_read },
    Call { name: "wait4-child", due: Due::Event, want: Want::Child, nr: libc::SYS_wait4 },
    Call { name: "cond_timedwait-mono", due: Due::AbsMono, want: Want::Err(libc::ETIMEDOUT), nr: libc::SYS_futex },
    Call { name: "cond_timedwait-real", due: Due::AbsReal, want: Want::Err(libc::ETIMEDOUT), nr: libc::SYS_futex },
];

/// One returned call.
#[derive(Clone, Debug)]
struct Rec {
    ret: i64,
    errno: i32,
    /// CLOCK_MONOTONIC ns at the call's start and end; CLOCK_REALTIME ns at its end.
    start: i64,
    end: i64,
    end_real: i64,
    /// wait4: the raw status.
    status: i32,
}

struct Ctx {
    dir: PathBuf,
    due_ns: i64,
    t0: i64,
    r0: i64,
    pipe_r: i32,
    quiet_r: i32,
    child: i32,
    cond_mono: usize,
    cond_real: usize,
    mutex: usize,
}

static FUT: AtomicU32 = AtomicU32::new(0);
static TIDS: [AtomicI32; 32] = [const { AtomicI32::new(0) }; 32];
static RESULTS: Mutex<Vec<Option<Rec>>> = Mutex::new(Vec::new());

fn ts(ns: i64) -> libc::timespec {
    libc::timespec { tv_sec: ns / 1_000_000_000, tv_nsec: ns % 1_000_000_000 }
}

fn sys(r: libc::c_long) -> (i64, i32) {
    let e = if r < 0 { errno().raw_os_error().unwrap_or(0) } else { 0 };
    (r, e)
}

/// Makes call `i` (in its own thread); returns (ret, errno, status).
fn make_call(i: usize, c: &Ctx) -> (i64, i32, i32) {
    let due = c.due_ns;
    let null = std::ptr::null_mut::<libc::c_void>();
    let fut = FUT.as_ptr();
    // SAFETY: each arm is one system call with pointers to live locals or statics.
    unsafe {
        match CALLS[i].name {
            "futex-wait-rel" => {
                let t = ts(due);
                let r = sys(libc::syscall(libc::SYS_futex, fut, FUTEX_WAIT | FUTEX_PRIVATE_FLAG, 0, &t, null, 0));
                (r.0, r.1, 0)
            }
            "futex-bitset-abs-mono" | "futex-bitset-abs-real" => {
                let real = CALLS[i].name.ends_with("real");
                let t = ts(if real { c.r0 + due } else { c.t0 + due });
                let op = FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG | if real { FUTEX_CLOCK_REALTIME } else { 0 };
                let r = sys(libc::syscall(libc::SYS_futex, fut, op, 0, &t, null, 0xffff_ffffu32));
                (r.0, r.1, 0)
            }
            "poll-nofds" => {
                let r = sys(libc::syscall(libc::SYS_poll, null, 0, due / 1_000_000));
                (r.0, r.1, 0)
            }
            "poll-pipe" => {
                let mut p = libc::pollfd { fd: c.quiet_r, events: libc::POLLIN, revents: 0 };
                let r = sys(libc::syscall(libc::SYS_poll, &mut p, 1, due / 1_000_000));
                (r.0, r.1, 0)
            }
            "select" => {
                let mut tv = libc::timeval { tv_sec: due / 1_000_000_000, tv_usec: (due % 1_000_000_000) / 1000 };
                let r = sys(libc::syscall(libc::SYS_select, 0, null, null, null, &mut tv));
                (r.0, r.1, 0)
            }
            "pselect6" => {
                let mut t = ts(due);
                let r = sys(libc::syscall(libc::SYS_pselect6, 0, null, null, null, &mut t, null));
                (r.0, r.1, 0)
            }
            "ppoll" => {
                let mut t = ts(due);
                let r = sys(libc::syscall(libc::SYS_ppoll, null, 0, &mut t, null, 8));
                (r.0, r.1, 0)
            }
            "nanosleep-rem" | "nanosleep-null" => {
                let t = ts(due);
                let mut rem = ts(0);
                let remp: *mut libc::timespec = if CALLS[i].name.ends_with("rem") { &mut rem } else { std::ptr::null_mut() };
                let r = sys(libc::syscall(libc::SYS_nanosleep, &t, remp));
                (r.0, r.1, 0)
            }
            "clock_nanosleep-mono-rel" | "clock_nanosleep-real-rel" => {
                let clock = if CALLS[i].name.contains("real") { libc::CLOCK_REALTIME } else { libc::CLOCK_MONOTONIC };
                let t = ts(due);
                let mut rem = ts(0);
                let r = sys(libc::syscall(libc::SYS_clock_nanosleep, clock, 0, &t, &mut rem));
                (r.0, r.1, 0)
            }
            "clock_nanosleep-mono-abs" | "clock_nanosleep-real-abs" => {
                let real = CALLS[i].name.contains("real");
                let t = ts(if real { c.r0 + due } else { c.t0 + due });
                let clock = if real { libc::CLOCK_REALTIME } else { libc::CLOCK_MONOTONIC };
                let r = sys(libc::syscall(libc::SYS_clock_nanosleep, clock, libc::TIMER_ABSTIME, &t, null));
                (r.0, r.1, 0)
            }
            "rt_sigtimedwait" => {
                let set = sigset(&[libc::SIGUSR2]);
                let t = ts(due);
                let r = sys(libc::syscall(libc::SYS_rt_sigtimedwait, &set, null, &t, 8));
                (r.0, r.1, 0)
            }
            "read-pipe" => {
                let mut b = [0u8; 16];
                let r = sys(libc::syscall(libc::SYS_read, c.pipe_r, b.as_mut_ptr(), b.len()));
                (r.0, r.1, 0)
            }
            "wait4-child" => {
                let mut st = 0i32;
                let r = sys(libc::syscall(libc::SYS_wait4, c.child, &mut st, 0, null));
                (r.0, r.1, st)
            }
            "cond_timedwait-mono" | "cond_timedwait-real" => {
                let real = CALLS[i].name.ends_with("real");
                let cond = (if real { c.cond_real } else { c.cond_mono }) as *mut libc::pthread_cond_t;
                let m = c.mutex as *mut libc::pthread_mutex_t;
                let t = ts(if real { c.r0 + due } else { c.t0 + due });
                libc::pthread_mutex_lock(m);
                let r = libc::pthread_cond_timedwait(cond, m, &t);
                libc::pthread_mutex_unlock(m);
                if r == 0 { (0, 0, 0) } else { (-1, r, 0) }
            }
            _ => unreachable!(),
        }
    }
}

fn caller(i: usize, c: &'static Ctx) {
    // Only the main thread takes SIGUSR1; SIGUSR2 is for rt_sigtimedwait (never sent).
    block(&[libc::SIGUSR1, libc::SIGUSR2]);
    TIDS[i].store(gettid(), SeqCst);
    let start = now_ns(libc::CLOCK_MONOTONIC);
    let (ret, errno, status) = make_call(i, c);
    let end = now_ns(libc::CLOCK_MONOTONIC);
    let end_real = now_ns(libc::CLOCK_REALTIME);
    let rec = Rec { ret, errno, start, end, end_real, status };
    let all = {
        let mut res = RESULTS.lock().unwrap();
        res[i] = Some(rec);
        res.iter().all(|r| r.is_some())
    };
    if all {
        write_file(&c.dir.join("all-returned"), "yes\n");
    }
    // The thread stays (a thread that exits would change the process's visible
    // state), and rt_sigtimedwait's keeps the mask it had in the call (without
    // SIGUSR2, which nobody sends): when the freeze fails it with EINTR, as the kernel
    // does, the process looks as it did while the thread waited.
    if CALLS[i].name == "rt_sigtimedwait" {
        unblock(&[libc::SIGUSR2]);
    }
    loop {
        // SAFETY: pause(2); every signal it could take is blocked.
        unsafe { libc::pause() };
    }
}

/// The thread's current system call number (first field of /proc/self/task/TID/syscall).
fn in_syscall(tid: i32) -> Option<i64> {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?.split_whitespace().next()?.parse().ok()
}

/// DIR/downtime: every "START END" line, in ns of CLOCK_REALTIME.
fn windows(dir: &Path) -> Vec<(i64, i64)> {
    let text = std::fs::read_to_string(dir.join("downtime")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let v: Vec<i64> = l.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            (v.len() == 2 && v[1] >= v[0]).then(|| (v[0] * 1000, v[1] * 1000))
        })
        .collect()
}

fn check_calls(c: &Ctx) -> Report {
    let mut r = Report::default();
    let wins = windows(&c.dir);
    let down: i64 = wins.iter().map(|(a, b)| b - a).sum();
    let first_start = wins.iter().map(|w| w.0).min();
    // The end of the last window on CLOCK_MONOTONIC (the clocks were read together at T0).
    let last_end = wins.iter().map(|w| w.1).max().map(|e| c.t0 + (e - c.r0));
    let slack = SLACK_MS * 1_000_000;
    let ms = |ns: i64| format!("{:.3} s", ns as f64 / 1e9);
    let res = RESULTS.lock().unwrap().clone();
    let table: String = CALLS
        .iter()
        .zip(&res)
        .map(|(call, x)| match x {
            Some(x) => format!("{} {} {} {} {}\n", call.name, x.ret, x.errno, (x.start - c.t0) / 1_000_000, (x.end - c.t0) / 1_000_000),
            None => format!("{} never returned\n", call.name),
        })
        .collect();
    write_file(&c.dir.join("calls"), &table);
    for (call, rec) in CALLS.iter().zip(res) {
        let n = call.name;
        let Some(x) = rec else {
            r.0.push(format!("{n} never returned"));
            continue;
        };
        let got = if x.ret < 0 { format!("-1 ({})", std::io::Error::from_raw_os_error(x.errno)) } else { x.ret.to_string() };
        if n == "rt_sigtimedwait" && x.ret < 0 && x.errno == libc::EINTR {
            // The freeze itself interrupts it: after the first dump started, and returned
            // right after the restore (or the dump with --leave-running).
            let ok = first_start.is_some_and(|s| x.end_real >= s) && last_end.is_some_and(|e| x.end <= e + slack);
            r.expect(ok, || format!("{n} failed with EINTR {} after T0, not during a dump (downtime windows {wins:?})", ms(x.end - c.t0)));
            continue;
        }
        // The test must have dumped while the call still waited.
        if let Some(ls) = wins.iter().map(|w| w.0).max() {
            r.expect(x.end_real >= ls, || format!("setup: {n} returned {} after T0, before the last dump began: the dump came too late to test it", ms(x.end - c.t0)));
        }
        let right = match call.want {
            Want::Ret(v) => x.ret == v,
            Want::Err(e) => x.ret == -1 && x.errno == e,
            Want::Child => x.ret == c.child as i64 && libc::WIFEXITED(x.status) && libc::WEXITSTATUS(x.status) == 4,
        };
        let want = match call.want {
            Want::Ret(v) => v.to_string(),
            Want::Err(e) => format!("-1 ({})", std::io::Error::from_raw_os_error(e)),
            Want::Child => format!("{} with exit status 4", c.child),
        };
        r.expect(right, || format!("{n} returned {got} (status {:#x}) {} after it started, expected {want}", x.status, ms(x.end - x.start)));
        match call.due {
            Due::Rel => {
                let took = x.end - x.start;
                r.expect(took >= c.due_ns, || format!("{n} returned early: after {} of its {} timeout", ms(took), ms(c.due_ns)));
                r.expect(took <= c.due_ns + down + slack, || {
                    format!("{n} returned {} after it started: more than its {} timeout + {} down + {SLACK_MS} ms (restarted with more than the time it had left?)", ms(took), ms(c.due_ns), ms(down))
                });
            }
            Due::AbsMono | Due::AbsReal | Due::Event => {
                let early = if call.due == Due::AbsReal { x.end_real < c.r0 + c.due_ns } else { x.end < c.t0 + c.due_ns };
                r.expect(!early, || format!("{n} returned early: {} after T0, its deadline is {}", ms(x.end - c.t0), ms(c.due_ns)));
                let latest = (c.t0 + c.due_ns).max(last_end.unwrap_or(0)) + slack;
                r.expect(x.end <= latest, || {
                    format!("{n} returned {} after T0: later than its deadline ({}) or the last restore ({}) + {SLACK_MS} ms", ms(x.end - c.t0), ms(c.due_ns), last_end.map_or("none".into(), |e| ms(e - c.t0)))
                });
            }
        }
    }
    r
}

fn timed_mode(dir: PathBuf, due_ms: i64) -> ! {
    block(&[libc::SIGUSR1, libc::SIGUSR2]);
    let t0 = now_ns(libc::CLOCK_MONOTONIC);
    let r0 = now_ns(libc::CLOCK_REALTIME);
    let due_ns = due_ms * 1_000_000;
    // The child to wait for: exits 4 at T0 + DUE (forked before any thread).
    let child = fork();
    if child == 0 {
        let t = ts(t0 + due_ns);
        // SAFETY: sleeping until an absolute time, then exiting without unwinding.
        unsafe {
            while libc::clock_nanosleep(libc::CLOCK_MONOTONIC, libc::TIMER_ABSTIME, &t, std::ptr::null_mut()) != 0 {}
            libc::_exit(4);
        }
    }
    let (mut data, mut quiet) = ([0i32; 2], [0i32; 2]);
    // SAFETY: pipe(2) into local arrays.
    check(unsafe { libc::pipe(data.as_mut_ptr()) == 0 && libc::pipe(quiet.as_mut_ptr()) == 0 }, "pipe");
    // SAFETY: condition variables and a mutex initialised once and never freed.
    let (cond_mono, cond_real, mutex) = unsafe {
        let mono: &'static mut libc::pthread_cond_t = Box::leak(Box::new(std::mem::zeroed()));
        let real: &'static mut libc::pthread_cond_t = Box::leak(Box::new(std::mem::zeroed()));
        let m: &'static mut libc::pthread_mutex_t = Box::leak(Box::new(libc::PTHREAD_MUTEX_INITIALIZER));
        let mut attr: libc::pthread_condattr_t = std::mem::zeroed();
        libc::pthread_condattr_init(&mut attr);
        libc::pthread_condattr_setclock(&mut attr, libc::CLOCK_MONOTONIC);
        check(libc::pthread_cond_init(mono, &attr) == 0 && libc::pthread_cond_init(real, std::ptr::null()) == 0, "pthread_cond_init");
        (mono as *mut _ as usize, real as *mut _ as usize, m as *mut _ as usize)
    };
    let ctx: &'static Ctx = Box::leak(Box::new(Ctx { dir: dir.clone(), due_ns, t0, r0, pipe_r: data[0], quiet_r: quiet[0], child, cond_mono, cond_real, mutex }));
    *RESULTS.lock().unwrap() = vec![None; CALLS.len()];
    // The writer: 5 bytes into the pipe at T0 + DUE.
    let wfd = data[1];
    std::thread::spawn(move || {
        let t = ts(t0 + due_ns);
        // SAFETY: as in the child.
        unsafe { while libc::clock_nanosleep(libc::CLOCK_MONOTONIC, libc::TIMER_ABSTIME, &t, std::ptr::null_mut()) != 0 {} }
        write_all(wfd, b"hello");
    });
    for i in 0..CALLS.len() {
        std::thread::Builder::new().name(format!("c{i}")).spawn(move || caller(i, ctx)).unwrap();
    }
    let all_in = wait_for(5000, || (0..CALLS.len()).all(|i| {
        let tid = TIDS[i].load(SeqCst);
        tid != 0 && in_syscall(tid) == Some(CALLS[i].nr)
    }));
    if !all_in {
        let late: Vec<&str> = (0..CALLS.len()).filter(|&i| in_syscall(TIDS[i].load(SeqCst)) != Some(CALLS[i].nr)).map(|i| CALLS[i].name).collect();
        die(&format!("threads not in their calls after 5 s: {late:?}"));
    }
    write_file(&dir.join("tids"), &(0..CALLS.len()).map(|i| format!("{} {}\n", CALLS[i].name, TIDS[i].load(SeqCst))).collect::<String>());
    write_file(&dir.join("ready"), "ready\n");
    wait_usr1();
    std::process::exit(check_calls(ctx).write(&dir.join("result")));
}

// ---------------------------------------------------------------- sarestart

static HANDLED: [AtomicU32; 65] = [const { AtomicU32::new(0) }; 65];

extern "C" fn count(sig: libc::c_int) {
    HANDLED[sig as usize].fetch_add(1, SeqCst);
}

fn handle(sig: i32, flags: i32) {
    // SAFETY: installing a handler that only bumps an atomic counter.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = count as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = flags;
        check(libc::sigaction(sig, &sa, std::ptr::null_mut()) == 0, "sigaction");
    }
}

/// (ret, errno, data, handler count at return, CLOCK_MONOTONIC ns at return)
type ReadRec = (i64, i32, Vec<u8>, u32, i64);

fn reader(dir: &Path, name: &str, fd: i32, sig: i32, tid: &AtomicI32) -> ReadRec {
    block(&(1..=64).filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP && s != 32 && s != 33).collect::<Vec<_>>());
    unblock(&[sig]);
    tid.store(gettid(), SeqCst);
    let mut b = [0u8; 16];
    // SAFETY: read(2) into a local buffer.
    let (ret, e) = sys(unsafe { libc::syscall(libc::SYS_read, fd, b.as_mut_ptr(), b.len()) });
    let at = now_ns(libc::CLOCK_MONOTONIC);
    let n = HANDLED[sig as usize].load(SeqCst);
    write_file(&dir.join(format!("returned.{name}")), &format!("{ret} {e} {n}\n"));
    (ret, e, b[..ret.max(0) as usize].to_vec(), n, at)
}

fn sarestart_mode(dir: PathBuf) -> ! {
    block(&[libc::SIGUSR1, libc::SIGUSR2, libc::SIGURG]);
    handle(libc::SIGUSR2, libc::SA_RESTART);
    handle(libc::SIGURG, 0);
    let (mut a, mut b) = ([0i32; 2], [0i32; 2]);
    // SAFETY: pipe(2) into local arrays.
    check(unsafe { libc::pipe(a.as_mut_ptr()) == 0 && libc::pipe(b.as_mut_ptr()) == 0 }, "pipe");
    static TID_A: AtomicI32 = AtomicI32::new(0);
    static TID_B: AtomicI32 = AtomicI32::new(0);
    let (da, db) = (dir.clone(), dir.clone());
    let (ra, rb) = (a[0], b[0]);
    let ha = std::thread::Builder::new().name("restart".into()).spawn(move || reader(&da, "A", ra, libc::SIGUSR2, &TID_A)).unwrap();
    let hb = std::thread::Builder::new().name("eintr".into()).spawn(move || reader(&db, "B", rb, libc::SIGURG, &TID_B)).unwrap();
    check(wait_for(5000, || [&TID_A, &TID_B].iter().all(|t| { let t = t.load(SeqCst); t != 0 && in_syscall(t) == Some(libc::SYS_read) })), "readers not in read()");
    write_file(&dir.join("ready"), "ready\n");
    wait_usr1();
    let mut r = Report::default();
    // B: EINTR, its handler ran once; A still waiting.
    let a_early = dir.join("returned.A").exists();
    r.expect(!a_early, || format!("the SA_RESTART read returned before anything was written: {}", std::fs::read_to_string(dir.join("returned.A")).unwrap_or_default().trim()));
    let written_at = now_ns(libc::CLOCK_MONOTONIC);
    write_all(a[1], b"hello");
    let (ra_ret, ra_err, ra_data, ra_n, ra_at) = ha.join().unwrap();
    r.expect(ra_ret == 5 && ra_data == b"hello", || format!("the SA_RESTART read returned {ra_ret} (errno {ra_err}) with {:?}, expected 5 bytes \"hello\"", String::from_utf8_lossy(&ra_data)));
    r.expect(ra_at >= written_at, || "the SA_RESTART read returned before the write".into());
    r.expect(ra_n == 1, || format!("the SIGUSR2 handler (SA_RESTART) ran {ra_n} times, expected once"));
    // B returned on its own (SIGCONT), before SIGUSR1: the test waited for it.
    let done = wait_for(2000, || hb.is_finished());
    if done {
        let (rb_ret, rb_err, _, rb_n, _) = hb.join().unwrap();
        r.expect(rb_ret == -1 && rb_err == libc::EINTR, || format!("the read without SA_RESTART returned {rb_ret} (errno {rb_err}), expected -1 EINTR"));
        r.expect(rb_n == 1, || format!("the SIGURG handler (no SA_RESTART) ran {rb_n} times, expected once"));
    } else {
        r.0.push("the read without SA_RESTART never returned".into());
    }
    std::process::exit(r.write(&dir.join("result")));
}

fn main() {
    let (dir, args) = args();
    let mut due = 6000;
    let mut sarestart = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "sarestart" => sarestart = true,
            "--due" => due = it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| die("--due MS")),
            other => die(&format!("unknown argument {other}")),
        }
    }
    if sarestart { sarestart_mode(dir) } else { timed_mode(dir, due) }
}
