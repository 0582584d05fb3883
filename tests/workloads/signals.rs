//! `signals`: pending signals, interval timers, alarm() and POSIX timers.
//!
//!     signals DIR [timer-to-thread]
//!
//! Set up (main thread M, second thread T, and a child process A):
//! - pending, blocked by every thread: SIGUSR2 sent to T only (tgkill), SIGRTMIN+3
//!   queued to T only with value 444 (rt_tgsigqueueinfo), SIGHUP sent to the process
//!   (kill), SIGRTMIN+2 queued to the process three times with values 111, 222, 333
//!   (sigqueue);
//! - ITIMER_REAL due in 1.7 s, then every 5 s (SIGALRM, counted in M);
//! - POSIX timers (raw ids, after three throw-away timers were created and deleted so
//!   that the ids do not start at 0): t1 CLOCK_MONOTONIC → SIGRTMIN+4 value 0x1001,
//!   due in 2.1 s, then every 5 s, handled in M; t2 CLOCK_REALTIME → SIGRTMIN+5 value 0x2002 to
//!   thread M (SIGEV_THREAD_ID; to T with `timer-to-thread`), due in 60 s then every
//!   30 s; t3 CLOCK_MONOTONIC → SIGRTMIN+6, never armed;
//! - child A: alarm(100).
//!
//! Every signal is caught by an SA_SIGINFO handler that logs signo, si_code, pid or
//! timer id, si_value and the thread.
//!
//! On SIGUSR1 it checks: the pending sets of M and T (/proc/self/task/TID/status
//! SigPnd and ShdPnd) and sigpending(); /proc/self/timers unchanged; the interval and
//! remaining time of ITIMER_REAL and of every POSIX timer (timer_gettime); that
//! ITIMER_REAL and t1 first fire when their remaining time runs out, which must be
//! their first value after they were armed plus at most the time the task was down
//! (DIR/downtime: "START END" in microseconds of CLOCK_REALTIME, from right before the
//! dump to right after the restore, written by the test) and a little: a restore that
//! re-armed them with their interval (5 s) instead of what was left would fire seconds
//! late; t1 with its siginfo; then T unblocks its two signals, M its two, and each
//! must be delivered with its siginfo (values in queue order). A checks what alarm()
//! has left. Writes DIR/result.

#[path = "common.rs"]
mod common;

use common::*;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicUsize, Ordering::SeqCst};

const SI_USER: i32 = 0;
const SI_QUEUE: i32 = -1;
const SI_TIMER: i32 = -2;
const SI_TKILL: i32 = -6;
const SIGEV_SIGNAL: i32 = 0;
const SIGEV_THREAD_ID: i32 = 4;

fn rt(n: i32) -> i32 {
    libc::SIGRTMIN() + n
}

// ---------------------------------------------------------------- handler log

/// signo, si_code, pid or timer id, uid or overrun, si_value, receiving thread.
type Entry = [i64; 6];
static LOG: [[AtomicI64; 6]; 256] = [const { [const { AtomicI64::new(0) }; 6] }; 256];
static LOGGED: AtomicUsize = AtomicUsize::new(0);
static ALARMS: AtomicI32 = AtomicI32::new(0);
/// CLOCK_REALTIME (ns) of the first expiry of ITIMER_REAL (SIGALRM) and of t1
/// (SIGRTMIN+4), as the kernel timed it: the handler's time less what the reloaded
/// interval has run since, so that a handler scheduled late does not count.
static FIRST_ALARM: AtomicI64 = AtomicI64::new(0);
static FIRST_T1: AtomicI64 = AtomicI64::new(0);
/// t1's timer id, for its handler.
static T1_ID: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let now = now_ns(libc::CLOCK_REALTIME);
    if sig == libc::SIGALRM {
        // SAFETY: itimerval is plain data; getitimer(2) writes into it.
        let mut v: libc::itimerval = unsafe { std::mem::zeroed() };
        // SAFETY: getitimer into a local (async-signal-safe).
        unsafe { libc::getitimer(libc::ITIMER_REAL, &mut v) };
        let left = v.it_value.tv_sec * 1_000_000_000 + v.it_value.tv_usec * 1000;
        let _ = FIRST_ALARM.compare_exchange(0, now - (REAL_INTERVAL_MS * 1_000_000 - left), SeqCst, SeqCst);
        ALARMS.fetch_add(1, SeqCst);
        return;
    }
    if sig == rt(4) {
        let left = timer_gettime(T1_ID.load(SeqCst)).map_or(T1_INTERVAL_MS * 1_000_000, |its| ns(its.value));
        let _ = FIRST_T1.compare_exchange(0, now - (T1_INTERVAL_MS * 1_000_000 - left), SeqCst, SeqCst);
    }
    // SAFETY: the kernel passes a valid siginfo.
    let (code, a, b, value) = siginfo_fields(unsafe { &*info });
    let i = LOGGED.fetch_add(1, SeqCst);
    if i < LOG.len() {
        let e = [sig as i64, code as i64, a as i64, b as i64, value as i64, gettid() as i64];
        for (slot, v) in LOG[i].iter().zip(e) {
            slot.store(v, SeqCst);
        }
    }
}

fn log() -> Vec<Entry> {
    (0..LOGGED.load(SeqCst).min(LOG.len())).map(|i| std::array::from_fn(|k| LOG[i][k].load(SeqCst))).collect()
}

fn install(sig: i32) {
    // SAFETY: sigaction with a zeroed struct and a handler of the SA_SIGINFO type.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        check(libc::sigaction(sig, &sa, std::ptr::null_mut()) == 0, "sigaction");
    }
}

// ---------------------------------------------------------------- timers

#[repr(C)]
#[derive(Default, Clone, Copy, PartialEq, Debug)]
struct Its {
    interval: (i64, i64),
    value: (i64, i64),
}

fn ns(t: (i64, i64)) -> i64 {
    t.0 * 1_000_000_000 + t.1
}

#[repr(C)]
struct KSigevent {
    value: u64,
    signo: i32,
    notify: i32,
    tid: i32,
    _pad: [i32; 11],
}

/// timer_create(2) without glibc's wrapping: the kernel's timer id.
fn timer_create(clock: i32, notify: i32, signo: i32, value: u64, tid: i32) -> i32 {
    let ev = KSigevent { value, signo, notify, tid, _pad: [0; 11] };
    let mut id: i32 = -1;
    // SAFETY: timer_create with a local sigevent and result.
    let r = unsafe { libc::syscall(libc::SYS_timer_create, clock, &ev as *const KSigevent, &mut id as *mut i32) };
    check(r == 0, "timer_create");
    id
}

fn timer_settime(id: i32, value_ms: i64, interval_ms: i64) {
    let ms = |v: i64| (v / 1000, (v % 1000) * 1_000_000);
    let its = Its { interval: ms(interval_ms), value: ms(value_ms) };
    // SAFETY: timer_settime with a local itimerspec.
    check(unsafe { libc::syscall(libc::SYS_timer_settime, id, 0, &its as *const Its, 0usize) } == 0, "timer_settime");
}

fn timer_gettime(id: i32) -> Result<Its, std::io::Error> {
    let mut its = Its::default();
    // SAFETY: timer_gettime into a local.
    let r = unsafe { libc::syscall(libc::SYS_timer_gettime, id, &mut its as *mut Its) };
    if r == 0 { Ok(its) } else { Err(errno()) }
}

fn timer_delete(id: i32) {
    // SAFETY: deleting our own timer.
    check(unsafe { libc::syscall(libc::SYS_timer_delete, id) } == 0, "timer_delete");
}

// ---------------------------------------------------------------- timing

/// ITIMER_REAL's first expiry and interval, t1's (ms).
const REAL_VALUE_MS: i64 = 1700;
const REAL_INTERVAL_MS: i64 = 5000;
const T1_VALUE_MS: i64 = 2100;
const T1_INTERVAL_MS: i64 = 5000;
/// How late a timer may fire, or how far its remaining time may be off, beyond what
/// the task's downtime explains (signal delivery, scheduling). Far below the 3 s a
/// timer re-armed with its interval instead of its remaining time would be late.
const SLACK_MS: i64 = 300;

fn realtime_ms() -> i64 {
    now_ns(libc::CLOCK_REALTIME) / 1_000_000
}

/// DIR/downtime: (start, end) in ms of CLOCK_REALTIME.
fn downtime(dir: &std::path::Path) -> Option<(i64, i64)> {
    let text = std::fs::read_to_string(dir.join("downtime")).ok()?;
    let v: Vec<i64> = text.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    (v.len() == 2 && v[1] >= v[0]).then(|| (v[0] / 1000, v[1] / 1000))
}

/// A timer set at `armed` (ms, realtime) to expire after `value` ms: checks its
/// remaining time `left` (ms, read at `now`) while it has not fired yet. It counts
/// down all the time but from when crtool read it to when the restore re-armed it,
/// which lies within the downtime `down`.
fn expect_left(r: &mut Report, name: &str, left_ns: i64, value: i64, armed: i64, now: i64, down: i64) {
    let ran = now - armed;
    let (lo, hi) = (value - ran - SLACK_MS, value - ran + down + SLACK_MS);
    r.expect(left_ns > 0 && left_ns >= lo * 1_000_000 && left_ns <= hi * 1_000_000, || {
        format!("{name} has {:.3} s left {:.3} s after it was set to {:.3} s (down {:.3} s), expected [{:.3}, {:.3}] s",
            left_ns as f64 / 1e9, ran as f64 / 1e3, value as f64 / 1e3, down as f64 / 1e3, lo as f64 / 1e3, hi as f64 / 1e3)
    });
}

/// Waits for the first expiry of a timer set at `armed` (ms, realtime) to `value` ms
/// (`first`: its handler's realtime ns, 0 until it fired) and checks when it came:
/// after the dump started, not before `value`, and at most `value` + `down` + slack
/// after it was armed.
fn expect_first_expiry(r: &mut Report, name: &str, first: &AtomicI64, value: i64, armed: i64, (d0, d1): (i64, i64)) {
    let down = d1 - d0;
    let due = armed + value + down + SLACK_MS;
    // Wait a few seconds longer than it may take, to say how late it came.
    wait_for(due - realtime_ms() + 6000, || first.load(SeqCst) != 0);
    let at = first.load(SeqCst) / 1_000_000;
    if at == 0 {
        r.0.push(format!("{name} never fired (set to {value} ms, {} ms ago; down {down} ms)", realtime_ms() - armed));
        return;
    }
    r.expect(at >= d0, || format!("setup: {name} fired {} ms after it was set, before the dump ({} ms after): the dump came too late to test it", at - armed, d0 - armed));
    r.expect(at - armed >= value - 10 && at <= due, || {
        format!("{name} (set to {value} ms) first fired {} ms after it was set, expected [{value}, {value} + {down} down + {SLACK_MS}] ms: \
            restored with the wrong remaining time (its interval?)", at - armed)
    });
}

// ---------------------------------------------------------------- pending signals

/// (SigPnd, ShdPnd) of a thread as signal lists, without the signals the timers keep
/// generating (SIGALRM, SIGRTMIN+4: pending for an instant before delivery).
fn pending_of(tid: i32) -> (Vec<i32>, Vec<i32>) {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap_or_default();
    let field = |name: &str| -> Vec<i32> {
        let hex = status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or("0");
        let bits = u64::from_str_radix(hex, 16).unwrap_or(0);
        (1..=64).filter(|&s| bits & (1 << (s - 1)) != 0 && s != libc::SIGALRM && s != rt(4)).collect()
    };
    (field("SigPnd:"), field("ShdPnd:"))
}

fn sigpending() -> Vec<i32> {
    let mut s = sigset(&[]);
    // SAFETY: sigpending into a local set.
    unsafe { libc::sigpending(&mut s) };
    members(&s).into_iter().filter(|&s| s != libc::SIGALRM && s != rt(4)).collect()
}

fn sorted(mut v: Vec<i32>) -> Vec<i32> {
    v.sort();
    v
}

/// rt_tgsigqueueinfo(2): queues `sig` with `value` to thread `tid`.
fn queue_to_thread(tid: i32, sig: i32, value: u64) {
    // SAFETY: a zeroed siginfo with the SI_QUEUE fields set, at the x86-64 offsets.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let p = &mut info as *mut libc::siginfo_t as *mut u8;
        *(p as *mut i32) = sig;
        *(p.add(8) as *mut i32) = SI_QUEUE;
        *(p.add(16) as *mut i32) = libc::getpid();
        *(p.add(20) as *mut u32) = libc::getuid();
        *(p.add(24) as *mut u64) = value;
        check(libc::syscall(libc::SYS_rt_tgsigqueueinfo, libc::getpid(), tid, sig, &info as *const libc::siginfo_t) == 0, "rt_tgsigqueueinfo");
    }
}

// ---------------------------------------------------------------- the alarm child

fn alarm_child(dir: &std::path::Path) -> ! {
    let t0 = mono_ms();
    // SAFETY: alarm(2).
    unsafe { libc::alarm(100) };
    wait_usr1();
    let elapsed = (mono_ms() - t0 + 999) / 1000;
    // SAFETY: alarm(2); returns what was left of the previous one.
    let left = unsafe { libc::alarm(0) } as i64;
    let mut r = Report::default();
    r.expect(left > 0 && left >= 100 - elapsed - 1 && left <= 100, || format!("alarm(100) set {elapsed} s ago has {left} s left"));
    std::process::exit(r.write(&dir.join("result.alarm")));
}

fn main() {
    let (dir, opts) = args();
    let to_thread = opts.iter().any(|o| o == "timer-to-thread");
    let pid = std::process::id() as i32;
    let blocked_everywhere = [libc::SIGUSR1, libc::SIGUSR2, libc::SIGHUP, rt(2), rt(3), rt(5), rt(6)];
    block(&blocked_everywhere);
    let child = fork();
    if child == 0 {
        alarm_child(&dir);
    }
    for sig in [libc::SIGUSR2, libc::SIGHUP, rt(2), rt(3), rt(4), rt(5), rt(6), libc::SIGALRM] {
        install(sig);
    }

    // Thread T: blocks also what M handles, and waits for its turn to unblock.
    let mut go = [0i32; 2];
    // SAFETY: pipe(2) into a local array.
    check(unsafe { libc::pipe(go.as_mut_ptr()) } == 0, "pipe");
    let t_tid = std::sync::Arc::new(AtomicI32::new(0));
    let tt = t_tid.clone();
    let go_r = go[0];
    let thread = std::thread::spawn(move || {
        block(&[libc::SIGALRM, rt(4)]);
        tt.store(gettid(), SeqCst);
        let mut b = 0u8;
        // SAFETY: read(2) of one byte into a local.
        while unsafe { libc::read(go_r, (&mut b as *mut u8).cast(), 1) } != 1 {}
        let pending = sorted(sigpending());
        unblock(&[libc::SIGUSR2, rt(3)]);
        pending
    });
    check(wait_for(5000, || t_tid.load(SeqCst) != 0), "thread T did not start");
    let t = t_tid.load(SeqCst);

    // Timers.
    let throwaway: Vec<i32> = (0..3).map(|_| timer_create(libc::CLOCK_MONOTONIC, SIGEV_SIGNAL, rt(6), 0, 0)).collect();
    let t1 = timer_create(libc::CLOCK_MONOTONIC, SIGEV_SIGNAL, rt(4), 0x1001, 0);
    T1_ID.store(t1, SeqCst);
    let t2 = timer_create(libc::CLOCK_REALTIME, SIGEV_THREAD_ID, rt(5), 0x2002, if to_thread { t } else { gettid() });
    let t3 = timer_create(libc::CLOCK_MONOTONIC, SIGEV_SIGNAL, rt(6), 0x3003, 0);
    throwaway.into_iter().for_each(timer_delete);
    let t1_set = realtime_ms();
    timer_settime(t1, T1_VALUE_MS, T1_INTERVAL_MS);
    let t2_set = realtime_ms();
    timer_settime(t2, 60_000, 30_000);
    let tv = |ms: i64| libc::timeval { tv_sec: ms / 1000, tv_usec: (ms % 1000) * 1000 };
    let itv = libc::itimerval { it_interval: tv(REAL_INTERVAL_MS), it_value: tv(REAL_VALUE_MS) };
    let real_set = realtime_ms();
    // SAFETY: setitimer with a local value.
    check(unsafe { libc::setitimer(libc::ITIMER_REAL, &itv, std::ptr::null_mut()) } == 0, "setitimer");
    let timers_before = std::fs::read_to_string("/proc/self/timers").unwrap_or_default();

    // Pending signals.
    // SAFETY: kill/tgkill/sigqueue to ourselves, all blocked.
    unsafe {
        check(libc::syscall(libc::SYS_tgkill, pid, t, libc::SIGUSR2) == 0, "tgkill");
        check(libc::kill(pid, libc::SIGHUP) == 0, "kill");
        for v in [111usize, 222, 333] {
            check(libc::sigqueue(pid, rt(2), libc::sigval { sival_ptr: v as *mut libc::c_void }) == 0, "sigqueue");
        }
    }
    queue_to_thread(t, rt(3), 444);
    let m = gettid();
    let (m_pending, t_pending) = (pending_of(m), pending_of(t));
    let shared = sorted(vec![libc::SIGHUP, rt(2)]);
    check(m_pending == (vec![], shared.clone()) && t_pending == (sorted(vec![libc::SIGUSR2, rt(3)]), shared.clone()), "pending signals were not queued");
    write_file(&dir.join("ready"), "ready\n");

    wait_usr1();
    let mut r = Report::default();
    let down = downtime(&dir);
    r.expect(down.is_some(), || format!("no valid {} (written by the test before SIGUSR1)", dir.join("downtime").display()));
    let (d0, d1) = down.unwrap_or((0, 0));
    // Still pending, where they were.
    let (m_now, t_now) = (pending_of(m), pending_of(t));
    r.expect(m_now == m_pending, || format!("main thread: pending (SigPnd, ShdPnd) {m_now:?}, expected {m_pending:?}"));
    r.expect(t_now == t_pending, || format!("thread T: pending (SigPnd, ShdPnd) {t_now:?}, expected {t_pending:?}"));
    let sp = sorted(sigpending());
    r.expect(sp == shared, || format!("main thread: sigpending() {sp:?}, expected {shared:?}"));

    // ITIMER_REAL: interval, and what is left of the first value unless it fired.
    let getitimer = || {
        // SAFETY: itimerval is plain data; all zeros is a valid value.
        let mut v: libc::itimerval = unsafe { std::mem::zeroed() };
        // SAFETY: getitimer into a local.
        unsafe { libc::getitimer(libc::ITIMER_REAL, &mut v) };
        v
    };
    let us = |t: libc::timeval| t.tv_sec * 1_000_000 + t.tv_usec;
    let (fired, now_ms, real) = (FIRST_ALARM.load(SeqCst) != 0, realtime_ms(), getitimer());
    r.expect(us(real.it_interval) == REAL_INTERVAL_MS * 1000, || format!("ITIMER_REAL interval is {} us, expected {}", us(real.it_interval), REAL_INTERVAL_MS * 1000));
    if !fired {
        expect_left(&mut r, "ITIMER_REAL", us(real.it_value) * 1000, REAL_VALUE_MS, real_set, now_ms, d1 - d0);
    }

    // POSIX timers.
    let timers_now = std::fs::read_to_string("/proc/self/timers").unwrap_or_default();
    r.expect(timers_now == timers_before, || format!("/proc/self/timers is {timers_now:?}, was {timers_before:?}"));
    let down_ms = d1 - d0;
    let gettime = |r: &mut Report, name: &str, id: i32| match timer_gettime(id) {
        Err(e) => {
            r.0.push(format!("timer_gettime({name}, id {id}): {e}"));
            None
        }
        Ok(its) => Some((ns(its.interval), ns(its.value))),
    };
    let t1_fired = FIRST_T1.load(SeqCst) != 0;
    if let Some((i, v)) = gettime(&mut r, "t1", t1) {
        r.expect(i == T1_INTERVAL_MS * 1_000_000, || format!("t1 (id {t1}) has interval {i} ns, expected {T1_INTERVAL_MS} ms"));
        if !t1_fired {
            expect_left(&mut r, &format!("t1 (id {t1})"), v, T1_VALUE_MS, t1_set, realtime_ms(), down_ms);
        }
    }
    if let Some((i, v)) = gettime(&mut r, "t2", t2) {
        r.expect(i == 30_000_000_000, || format!("t2 (id {t2}) has interval {i} ns, expected 30 s"));
        expect_left(&mut r, &format!("t2 (id {t2})"), v, 60_000, t2_set, realtime_ms(), down_ms);
    }
    if let Some((i, v)) = gettime(&mut r, "t3", t3) {
        r.expect(i == 0 && v == 0, || format!("t3 (id {t3}), never armed, has interval {i} ns and {v} ns left"));
    }

    // ITIMER_REAL and t1 first fire when what they had left runs out, and reload
    // their interval.
    expect_first_expiry(&mut r, "ITIMER_REAL", &FIRST_ALARM, REAL_VALUE_MS, real_set, (d0, d1));
    let (since, after) = (realtime_ms() - FIRST_ALARM.load(SeqCst) / 1_000_000, getitimer());
    r.expect(us(after.it_value) > (REAL_INTERVAL_MS - since - SLACK_MS) * 1000 && us(after.it_value) <= REAL_INTERVAL_MS * 1000, || {
        format!("ITIMER_REAL has {} us left {since} ms after it fired, expected about {} ms (its interval)", us(after.it_value), REAL_INTERVAL_MS - since)
    });
    expect_first_expiry(&mut r, &format!("t1 (id {t1})"), &FIRST_T1, T1_VALUE_MS, t1_set, (d0, d1));
    let fired: Vec<Entry> = log().iter().filter(|e| e[0] == rt(4) as i64).copied().collect();
    r.expect(!fired.is_empty(), || "t1's signal was never logged".into());
    for e in &fired {
        r.expect(e[1] == SI_TIMER as i64 && e[2] == t1 as i64 && e[4] == 0x1001, || format!("t1's signal came with si_code {}, timer id {}, value {:#x}, expected {SI_TIMER}, {t1}, 0x1001", e[1], e[2], e[4]));
    }

    // Delivery with siginfo: T first, then M.
    write_all(go[1], b"g");
    let t_saw = thread.join().unwrap_or_default();
    let t_want = sorted(vec![libc::SIGUSR2, libc::SIGHUP, rt(2), rt(3)]);
    r.expect(t_saw == t_want, || format!("thread T: sigpending() {t_saw:?}, expected {t_want:?}"));
    unblock(&[libc::SIGHUP, rt(2)]);
    let got: Vec<Entry> = log().into_iter().filter(|e| e[0] != rt(4) as i64).collect();
    let (p, t, m) = (pid as i64, t as i64, m as i64);
    // si_uid: the sender's real uid, ours (the workloads run unprivileged).
    // SAFETY: getuid(2) cannot fail.
    let u = unsafe { libc::getuid() } as i64;
    let want: Vec<Entry> = vec![
        [libc::SIGUSR2 as i64, SI_TKILL as i64, p, u, 0, t],
        [rt(3) as i64, SI_QUEUE as i64, p, u, 444, t],
        [libc::SIGHUP as i64, SI_USER as i64, p, u, 0, m],
        [rt(2) as i64, SI_QUEUE as i64, p, u, 111, m],
        [rt(2) as i64, SI_QUEUE as i64, p, u, 222, m],
        [rt(2) as i64, SI_QUEUE as i64, p, u, 333, m],
    ];
    // For SI_TKILL and SI_USER only si_pid and si_uid are meaningful.
    let normalize = |e: &Entry| if e[1] == SI_TKILL as i64 || e[1] == SI_USER as i64 { [e[0], e[1], e[2], e[3], 0, e[5]] } else { *e };
    // Signals unblocked together are delivered nested (the last one set up runs
    // first): compare per thread and signal, keeping the order of one signal's queue.
    let order = |v: &mut Vec<Entry>| v.sort_by_key(|e| (e[5] != t, e[0]));
    let mut got_n: Vec<Entry> = got.iter().map(normalize).collect();
    let mut want_n = want;
    order(&mut got_n);
    order(&mut want_n);
    r.expect(got_n == want_n, || format!("signals delivered (signo, si_code, si_pid, si_uid, si_value, tid): {got_n:?}, expected {want_n:?}"));
    let left = sigpending();
    r.expect(left.is_empty(), || format!("still pending after delivery: {left:?}"));

    // The alarm child.
    // SAFETY: kill(2) of our child.
    unsafe { libc::kill(child, libc::SIGUSR1) };
    waitpid(child, 0);
    match std::fs::read_to_string(dir.join("result.alarm")) {
        Ok(t) if t.trim() == "PASS" => {}
        Ok(t) => r.0.push(format!("alarm child: {}", t.trim().trim_start_matches("FAIL: "))),
        Err(_) => r.0.push("the alarm child wrote no result".into()),
    }
    std::process::exit(r.write(&dir.join("result")));
}
