//! `idle`: a multithreaded process where nothing changes while it waits: every
//! thread is blocked in a call without a timeout, after running on a CPU of its own.
//!
//!     idle DIR
//!
//! Four threads, each first pinned to CPU i % ncpus (so that they last ran on
//! different CPUs and their rseq areas name different CPUs), then allowed every CPU
//! again, then blocked: 0 in futex(FUTEX_WAIT) without a timeout, 1 in read() on a
//! pipe, 2 in ppoll() on another pipe with no timeout, 3 in rt_sigsuspend() until
//! SIGUSR2. These are calls the kernel restarts exactly as they were after a freeze
//! interrupts them (poll() would go on through restart_syscall after the first dump,
//! sigwaitinfo() would fail with EINTR: the kernel, not the dump, would change the
//! task). The CPU each was on is written to DIR/cpus. On SIGUSR1 the main thread wakes
//! each one (futex wake, a byte into each pipe, tgkill SIGUSR2), and each checks that
//! its call returned what the wake-up makes it return and that its TID did not
//! change.

#[path = "common.rs"]
mod common;

use common::*;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering::SeqCst};

static FUT: AtomicU32 = AtomicU32::new(0);
static TIDS: [AtomicI32; 4] = [const { AtomicI32::new(0) }; 4];
static CPUS: [AtomicI32; 4] = [const { AtomicI32::new(-1) }; 4];
static GOT_USR2: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_usr2(_: libc::c_int) {
    GOT_USR2.fetch_add(1, SeqCst);
}

fn set_cpus(cpus: &[usize]) {
    // SAFETY: sched_setaffinity of the calling thread with a local set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        check(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0, "sched_setaffinity");
    }
}

fn allowed() -> Vec<usize> {
    // SAFETY: sched_getaffinity into a local set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

fn worker(i: usize, all: Vec<usize>, rfd: i32, pfd: i32) -> Result<(), String> {
    block(&[libc::SIGUSR1, libc::SIGUSR2]);
    let tid = gettid();
    set_cpus(&[all[i % all.len()]]);
    // Run a moment there (the kernel writes the CPU into the rseq area on the way out).
    let end = now_ns(libc::CLOCK_MONOTONIC) + 5_000_000;
    while now_ns(libc::CLOCK_MONOTONIC) < end {
        std::hint::spin_loop();
    }
    // SAFETY: sched_getcpu(3).
    CPUS[i].store(unsafe { libc::sched_getcpu() }, SeqCst);
    set_cpus(&all);
    TIDS[i].store(tid, SeqCst);
    let null = std::ptr::null_mut::<libc::c_void>();
    let (what, ok) = match i {
        0 => loop {
            // SAFETY: futex(FUTEX_WAIT) on a static word, no timeout.
            let r = unsafe { libc::syscall(libc::SYS_futex, FUT.as_ptr(), 128, 0, null, null, 0) };
            if r == 0 || FUT.load(SeqCst) != 0 {
                break ("futex", FUT.load(SeqCst) == 1);
            }
        },
        1 => {
            let mut b = [0u8; 8];
            // SAFETY: read(2) into a local buffer.
            let n = unsafe { libc::read(rfd, b.as_mut_ptr().cast(), b.len()) };
            ("read", n == 1 && b[0] == b'r')
        }
        2 => {
            let mut p = libc::pollfd { fd: pfd, events: libc::POLLIN, revents: 0 };
            // SAFETY: ppoll(2) on one local pollfd, no timeout, no mask.
            let n = unsafe { libc::syscall(libc::SYS_ppoll, &mut p, 1, null, null, 8) };
            ("ppoll", n == 1 && p.revents == libc::POLLIN)
        }
        _ => {
            // SAFETY: a handler that only sets an atomic flag; rt_sigsuspend with the
            // current mask minus SIGUSR2.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_usr2 as extern "C" fn(libc::c_int) as usize;
                check(libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()) == 0, "sigaction");
                let mut mask = sigset(&[]);
                libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask);
                libc::sigdelset(&mut mask, libc::SIGUSR2);
                while GOT_USR2.load(SeqCst) == 0 {
                    libc::sigsuspend(&mask);
                }
            }
            ("sigsuspend", GOT_USR2.load(SeqCst) == 1)
        }
    };
    let now = gettid();
    if !ok {
        return Err(format!("thread {i}: {what} did not return what its wake-up gives"));
    }
    if now != tid {
        return Err(format!("thread {i}: gettid() is {now}, was {tid}"));
    }
    Ok(())
}

fn main() {
    let (dir, _) = args();
    block(&[libc::SIGUSR1, libc::SIGUSR2]);
    let all = allowed();
    let (mut a, mut b) = ([0i32; 2], [0i32; 2]);
    // SAFETY: pipe(2) into local arrays.
    check(unsafe { libc::pipe(a.as_mut_ptr()) == 0 && libc::pipe(b.as_mut_ptr()) == 0 }, "pipe");
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let all = all.clone();
            let (rfd, pfd) = (a[0], b[0]);
            std::thread::Builder::new().name(format!("idle{i}")).spawn(move || worker(i, all, rfd, pfd)).unwrap()
        })
        .collect();
    let sleeping = |tid: i32| std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok().and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().starts_with('S'))).unwrap_or(false);
    check(wait_for(5000, || TIDS.iter().all(|t| t.load(SeqCst) != 0 && sleeping(t.load(SeqCst)))), "threads did not block");
    write_file(&dir.join("cpus"), &format!("{}\n", CPUS.iter().map(|c| c.load(SeqCst).to_string()).collect::<Vec<_>>().join(" ")));
    write_file(&dir.join("ready"), "ready\n");
    wait_usr1();
    FUT.store(1, SeqCst);
    // SAFETY: futex wake on the static word; writes of one byte to our pipes; tgkill.
    unsafe {
        libc::syscall(libc::SYS_futex, FUT.as_ptr(), 129, i32::MAX);
        libc::write(a[1], b"r".as_ptr().cast(), 1);
        libc::write(b[1], b"p".as_ptr().cast(), 1);
        libc::syscall(libc::SYS_tgkill, libc::getpid(), TIDS[3].load(SeqCst), libc::SIGUSR2);
    }
    let mut r = Report::default();
    for (i, h) in handles.into_iter().enumerate() {
        let done = wait_for(2000, || h.is_finished());
        if !done {
            r.0.push(format!("thread {i} did not wake up"));
            continue;
        }
        if let Err(e) = h.join().unwrap_or_else(|_| Err(format!("thread {i} panicked"))) {
            r.0.push(e);
        }
    }
    std::process::exit(r.write(&dir.join("result")));
}
