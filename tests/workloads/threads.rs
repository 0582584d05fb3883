//! `threads`: one process with eight threads, each counting in its own variable in a
//! different way, for dumping and restoring threads.
//!
//!     threads DIR
//!
//! Threads (index: what it does):
//!   0 spin: a tight user-space asm loop holding a pattern in ymm8..ymm11
//!   1 yield: the same loop with a sched_yield syscall in it
//!   2 count: counts with std::thread::sleep(1 ms) (nanosleep with `rem`) and
//!     poll(NULL, 0, 1 ms) (a restart-block syscall)
//!   3 asm-sleep: the asm loop around nanosleep(1 ms, NULL), ymm8..ymm11 held
//!   4 futex: waits on a condvar (futex); counts each wake-up
//!   5, 7 sleepers: on SIGUSR2 each pins itself to a CPU (5 to the first allowed one,
//!     7 to the last) and sleeps once for 3 s in nanosleep(3 s, NULL), then counts
//!   6 reader: blocks in read() on a pipe; counts each read
//! Every thread blocks SIGUSR1, SIGUSR2 and its own SIGRTMIN+i (odd ones also
//! SIGWINCH), has its own sigaltstack of 4+i pages, and records its TID.
//!
//! Writes DIR/ready when all threads run, DIR/sleeping.I ("TID CPU") when sleeper I
//! starts its 3 s sleep and DIR/sleep.I ("ELAPSED_MS RET ERRNO") when it returns
//! (a test bounds ELAPSED_MS from above with the time the process was down). The two
//! sleepers sit on different CPUs so that a dump run on one CPU sees one sleeper on
//! its own CPU and one on the other. On SIGUSR1 the main thread checks
//! the thread list, that every counter moves on, that the futex and pipe readers wake
//! when signalled, stops all threads (each checks its TID, signal mask, sigaltstack,
//! vector registers and rseq registration) and writes DIR/result.

#[path = "common.rs"]
mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering::SeqCst};
use std::sync::{Condvar, Mutex};

const N: usize = 8;
const ROLES: [&str; N] = ["spin", "yield", "count", "asm-sleep", "futex", "sleeper", "reader", "sleeper"];
const SLEEP_MS: i64 = 3000;

static COUNTERS: [AtomicU64; N] = [const { AtomicU64::new(0) }; N];
static TIDS: [AtomicI32; N] = [const { AtomicI32::new(0) }; N];
static STOP: AtomicBool = AtomicBool::new(false);
/// Set by the main thread on SIGUSR2: the sleepers start their long sleep.
static SLEEP_NOW: AtomicBool = AtomicBool::new(false);
static GENERATION: Mutex<u64> = Mutex::new(0);
static WAKE: Condvar = Condvar::new();
static READ_DATA: Mutex<Vec<u8>> = Mutex::new(Vec::new());

fn bump(i: usize) {
    COUNTERS[i].fetch_add(1, SeqCst);
}

fn stopped() -> bool {
    STOP.load(SeqCst)
}

// ---------------------------------------------------------------- vector registers

const YMM: usize = 4 * 32;

/// Loads ymm8..ymm11 from `pat`, loops incrementing `*counter` until `*stop` is set
/// (mode 0: nothing else; 1: sched_yield; 2: nanosleep(ts, NULL)), then stores
/// ymm8..ymm11 into `out`; one asm block, so no compiled code touches them between.
///
/// # Safety
/// AVX must be available; the pointers must be valid.
#[target_feature(enable = "avx")]
unsafe fn loop_holding_ymm(mode: u64, pat: &[u8; YMM], out: &mut [u8; YMM], counter: *mut u64, stop: *const u8, ts: *const libc::timespec) {
    // SAFETY: reads `pat`, `ts`, `stop`, writes `out` and `counter`; every register it
    // changes is declared.
    unsafe {
        std::arch::asm!(
            "vmovdqu ymm8,  [{p}]",
            "vmovdqu ymm9,  [{p} + 32]",
            "vmovdqu ymm10, [{p} + 64]",
            "vmovdqu ymm11, [{p} + 96]",
            "2:",
            "inc qword ptr [{c}]",
            "test {mode}, {mode}",
            "jz 4f",
            "cmp {mode}, 1",
            "jne 3f",
            "mov eax, {nr_yield}",
            "syscall",
            "jmp 4f",
            "3:",
            "mov eax, {nr_sleep}",
            "mov rdi, {ts}",
            "xor esi, esi",
            "syscall",
            "4:",
            "pause",
            "cmp byte ptr [{stop}], 0",
            "je 2b",
            "vmovdqu [{o}],      ymm8",
            "vmovdqu [{o} + 32], ymm9",
            "vmovdqu [{o} + 64], ymm10",
            "vmovdqu [{o} + 96], ymm11",
            "vzeroupper",
            p = in(reg) pat.as_ptr(),
            o = in(reg) out.as_mut_ptr(),
            c = in(reg) counter,
            stop = in(reg) stop,
            ts = in(reg) ts,
            mode = in(reg) mode,
            nr_yield = const libc::SYS_sched_yield,
            nr_sleep = const libc::SYS_nanosleep,
            out("rax") _, out("rdi") _, out("rsi") _, out("rcx") _, out("r11") _,
            out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
        );
    }
}

// ---------------------------------------------------------------- rseq

unsafe extern "C" {
    static __rseq_offset: isize;
    static __rseq_size: u32;
}
const RSEQ_SIG: u32 = 0x5305_3053;

/// glibc's rseq area of the calling thread.
fn rseq_area() -> usize {
    let tp: usize;
    // SAFETY: reads the thread pointer and a glibc constant.
    unsafe {
        std::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly));
        (tp as isize + __rseq_offset) as usize
    }
}

/// Registering glibc's area again must fail with EBUSY if the thread still has it
/// registered (a lost registration would succeed, a different one gives EINVAL).
fn rseq_register_again() -> Result<(), String> {
    // SAFETY: reading a glibc constant.
    let len = unsafe { __rseq_size }.max(32);
    // SAFETY: rseq(2) with glibc's own area, length and signature.
    let r = unsafe { libc::syscall(libc::SYS_rseq, rseq_area(), len, 0, RSEQ_SIG) };
    let e = errno();
    match (r, e.raw_os_error()) {
        (-1, Some(libc::EBUSY)) => Ok(()),
        (0, _) => Err("rseq was not registered (registering it again succeeded)".into()),
        _ => Err(format!("rseq(2) of glibc's area gave {r} ({e}), expected EBUSY")),
    }
}

fn getcpu() -> i32 {
    let mut cpu: u32 = 0;
    // SAFETY: getcpu(2) into a local.
    unsafe { libc::syscall(libc::SYS_getcpu, &mut cpu as *mut u32, 0usize, 0usize) };
    cpu as i32
}

/// The rseq registration still works: the kernel updates cpu_id in the area when the
/// thread moves to another CPU, and glibc's sched_getcpu (which reads it) agrees.
fn check_rseq(r: &mut Report, who: &str) {
    if let Err(e) = rseq_register_again() {
        r.0.push(format!("{who}: {e}"));
        return;
    }
    // SAFETY: sched_{get,set}affinity on the calling thread with local sets.
    unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut old);
        let here = getcpu();
        let other = (0..libc::CPU_SETSIZE as usize).find(|&c| c as i32 != here && libc::CPU_ISSET(c, &old));
        if let Some(cpu) = other {
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut one);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one);
            libc::sched_yield();
        }
        let now = getcpu();
        let area_cpu = std::ptr::read_volatile((rseq_area() + 4) as *const u32) as i32;
        let glibc_cpu = libc::sched_getcpu();
        r.expect(area_cpu == now && glibc_cpu == now, || format!("{who}: on CPU {now} but rseq cpu_id is {area_cpu} and sched_getcpu() {glibc_cpu}"));
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &old);
    }
}

// ---------------------------------------------------------------- threads

fn thread_signals(i: usize) -> Vec<i32> {
    let mut s = vec![libc::SIGUSR1, libc::SIGUSR2, libc::SIGRTMIN() + i as i32];
    if i % 2 == 1 {
        s.push(libc::SIGWINCH);
    }
    s.sort();
    s
}

fn ymm_pattern(i: usize) -> [u8; YMM] {
    let mut p = [0u8; YMM];
    fill(&mut p, 0xA0 + i as u64);
    p
}

struct Shared {
    dir: PathBuf,
    pipe_r: i32,
}

fn worker(i: usize, sh: &Shared) -> Report {
    let who = format!("thread {i} ({})", ROLES[i]);
    let mut r = Report::default();
    let tid = gettid();
    block(&thread_signals(i));
    let alt = set_altstack(4 + i);
    let mask = blocked();
    TIDS[i].store(tid, SeqCst);

    let counter = COUNTERS[i].as_ptr();
    let stop = STOP.as_ptr() as *const u8;
    let ms1 = libc::timespec { tv_sec: 0, tv_nsec: 1_000_000 };
    let mut regs = None;
    match ROLES[i] {
        "spin" | "yield" | "asm-sleep" => {
            let mode = match ROLES[i] { "spin" => 0, "yield" => 1, _ => 2 };
            let pat = ymm_pattern(i);
            let mut out = [0u8; YMM];
            // SAFETY: AVX was checked in main; all pointers are live for the call.
            unsafe { loop_holding_ymm(mode, &pat, &mut out, counter, stop, &ms1) };
            regs = Some((pat, out));
        }
        "count" => {
            while !stopped() {
                bump(i);
                sleep_ms(1);
                // SAFETY: poll(2) on no fds: only a timeout.
                unsafe { libc::poll(std::ptr::null_mut(), 0, 1) };
            }
        }
        "futex" => loop {
            let mut g = GENERATION.lock().unwrap();
            let seen = *g;
            while *g == seen && !stopped() {
                g = WAKE.wait(g).unwrap();
            }
            if stopped() {
                break;
            }
            drop(g);
            bump(i);
        },
        "sleeper" => {
            while !stopped() && !SLEEP_NOW.load(SeqCst) {
                sleep_ms(10);
            }
            if !stopped() {
                r.add(sleep_once(&sh.dir, i));
            }
            while !stopped() {
                bump(i);
                sleep_ms(1);
            }
        }
        "reader" => {
            let mut buf = [0u8; 64];
            loop {
                // SAFETY: read(2) into a local buffer.
                let n = unsafe { libc::read(sh.pipe_r, buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 && errno().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                if n <= 0 {
                    r.0.push(format!("{who}: read gave {n} ({})", errno()));
                    break;
                }
                READ_DATA.lock().unwrap().extend_from_slice(&buf[..n as usize]);
                bump(i);
                if buf[..n as usize].contains(&b'q') {
                    break;
                }
            }
        }
        _ => unreachable!(),
    }

    let tid_now = gettid();
    r.expect(tid_now == tid, || format!("{who}: gettid() is {tid_now}, was {tid}"));
    let mask_now = blocked();
    r.expect(mask_now == mask, || format!("{who}: blocked signals {mask_now:?}, expected {mask:?}"));
    r.expect(mask == thread_signals(i), || format!("setup: {who} blocked {mask:?}"));
    let alt_now = altstack();
    r.expect(alt_now == alt, || format!("{who}: sigaltstack {alt_now:x?}, expected {alt:x?}"));
    if let Some((pat, out)) = regs {
        for (k, (a, b)) in pat.chunks(32).zip(out.chunks(32)).enumerate() {
            r.expect(a == b, || format!("{who}: ymm{} differs", 8 + k));
        }
    }
    check_rseq(&mut r, &who);
    r
}

/// A sleeper's one long sleep, pinned to a CPU: nanosleep(3 s, NULL) must return 0
/// (not EINTR) after at least 3 s; DIR/sleep.I gets the numbers for the test to
/// bound it from above.
fn sleep_once(dir: &Path, i: usize) -> Report {
    let mut r = Report::default();
    let cpu = pin_sleeper(i);
    write_file(&dir.join(format!("sleeping.{i}")), &format!("{} {cpu}\n", gettid()));
    let req = libc::timespec { tv_sec: SLEEP_MS / 1000, tv_nsec: 0 };
    let t0 = now_ns(libc::CLOCK_MONOTONIC);
    // SAFETY: nanosleep(2) with a local request and no `rem`.
    let ret = unsafe { libc::nanosleep(&req, std::ptr::null_mut()) };
    let err = errno().raw_os_error().unwrap_or(0);
    let elapsed = (now_ns(libc::CLOCK_MONOTONIC) - t0) / 1_000_000;
    write_file(&dir.join(format!("sleep.{i}")), &format!("{elapsed} {ret} {}\n", if ret == 0 { 0 } else { err }));
    let who = format!("thread {i} (sleeper on CPU {cpu})");
    r.expect(ret == 0, || format!("{who}: nanosleep({SLEEP_MS} ms, NULL) returned {ret} (errno {err}) after {elapsed} ms"));
    r.expect(elapsed >= SLEEP_MS - 20, || format!("{who}: nanosleep({SLEEP_MS} ms, NULL) returned after only {elapsed} ms"));
    r
}

/// Pins the calling sleeper to the first (thread 5) or last (thread 7) allowed CPU.
fn pin_sleeper(i: usize) -> usize {
    // SAFETY: sched_{get,set}affinity of the calling thread with local sets.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        let allowed: Vec<usize> = (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect();
        let cpu = if i == 5 { allowed[0] } else { *allowed.last().unwrap() };
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        check(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one) == 0, "sched_setaffinity");
        libc::sched_yield();
        cpu
    }
}

fn counters() -> [u64; N] {
    std::array::from_fn(|i| COUNTERS[i].load(SeqCst))
}

fn task_list() -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir("/proc/self/task")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_string_lossy().parse().ok()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn main() {
    let (dir, _) = args();
    check(std::arch::is_x86_feature_detected!("avx"), "this CPU has no AVX");
    // SAFETY: reading a glibc constant.
    let rseq_size = unsafe { __rseq_size };
    check(rseq_size != 0 && rseq_register_again().is_ok(), "glibc did not register rseq");
    block(&[libc::SIGUSR1, libc::SIGUSR2]);
    let main_alt = set_altstack(3);
    let main_mask = blocked();
    let main_tid = gettid();
    let mut fds = [0i32; 2];
    // SAFETY: pipe(2) into a local array.
    check(unsafe { libc::pipe(fds.as_mut_ptr()) } == 0, "pipe");
    let shared: &'static Shared = Box::leak(Box::new(Shared { dir: dir.clone(), pipe_r: fds[0] }));

    let handles: Vec<_> = (0..N).map(|i| std::thread::Builder::new().name(ROLES[i].into()).spawn(move || worker(i, shared)).unwrap()).collect();
    check(wait_for(5000, || TIDS.iter().all(|t| t.load(SeqCst) != 0) && counters()[..4].iter().all(|&c| c > 0)), "threads did not start");
    let tids: Vec<i32> = TIDS.iter().map(|t| t.load(SeqCst)).collect();
    let mut want_tasks = tids.clone();
    want_tasks.push(main_tid);
    want_tasks.sort();
    write_file(&dir.join("tids"), &format!("{}\n", want_tasks.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" ")));
    write_file(&dir.join("ready"), "ready\n");

    while wait_signal(&[libc::SIGUSR1, libc::SIGUSR2]).si_signo == libc::SIGUSR2 {
        SLEEP_NOW.store(true, SeqCst);
    }
    let mut r = Report::default();
    let tasks = task_list();
    r.expect(tasks == want_tasks, || format!("/proc/self/task lists {tasks:?}, expected {want_tasks:?}"));
    r.expect(gettid() == main_tid, || format!("main thread: gettid() is {}, was {main_tid}", gettid()));
    r.expect(blocked() == main_mask, || format!("main thread: blocked {:?}, expected {main_mask:?}", blocked()));
    r.expect(altstack() == main_alt, || format!("main thread: sigaltstack {:x?}, expected {main_alt:x?}", altstack()));

    // Every counting thread moves on.
    let c1 = counters();
    sleep_ms(300);
    let c2 = counters();
    for i in [0, 1, 2, 3] {
        r.expect(c2[i] > c1[i], || format!("thread {i} ({}) does not count: {} then {} 300 ms later", ROLES[i], c1[i], c2[i]));
    }
    // The futex waiter wakes when told to, once.
    let f = COUNTERS[4].load(SeqCst);
    {
        *GENERATION.lock().unwrap() += 1;
        WAKE.notify_all();
    }
    let woke = wait_for(2000, || COUNTERS[4].load(SeqCst) > f);
    r.expect(woke, || "thread 4 (futex) did not wake from its condvar wait".into());
    sleep_ms(50);
    r.expect(!woke || COUNTERS[4].load(SeqCst) == f + 1, || format!("thread 4 (futex) woke {} times for one notification", COUNTERS[4].load(SeqCst) - f));
    // The pipe reader gets what is written, and nothing else.
    let n = COUNTERS[6].load(SeqCst);
    write_all(fds[1], b"hello reader\n");
    let got = wait_for(2000, || READ_DATA.lock().unwrap().len() >= 13);
    let data = READ_DATA.lock().unwrap().clone();
    r.expect(got && data == b"hello reader\n" && n == 0, || format!("thread 6 (reader) read {:?} after {n} earlier reads", String::from_utf8_lossy(&data)));

    // Stop everybody; each thread checks itself.
    {
        let _g = GENERATION.lock().unwrap();
        STOP.store(true, SeqCst);
        WAKE.notify_all();
    }
    write_all(fds[1], b"q");
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(rep) => r.add(rep),
            Err(_) => r.0.push(format!("thread {i} panicked")),
        }
    }
    r.expect(dir.join("sleep.5").exists() && dir.join("sleep.7").exists(), || "setup: the sleepers never slept (no SIGUSR2?)".into());
    check_rseq(&mut r, "main thread");
    std::process::exit(r.write(&dir.join("result")));
}
