//! `jobctl`: processes stopped by job control signals, for dumping them stopped.
//!
//!     jobctl DIR self [threads=N]
//!     jobctl DIR child [tstp] [threads=N] [nocollect] [sigchld-blocked]
//!
//! `self`: the process starts N threads that count (1 ms sleeps), writes DIR/ready
//! and stops itself with SIGSTOP. Once continued it waits for SIGUSR1 and checks that
//! every thread counts again.
//!
//! `child`: the process (P) forks a child (C) that starts N counting threads and stops
//! itself with SIGSTOP (or SIGTSTP with `tstp`; C then leads a process group of its
//! own, so that the group is not orphaned and SIGTSTP stops it). P either collects the
//! stop with waitpid(WUNTRACED) (default) or only waits until every thread of C is
//! stopped (`nocollect`: the stop stays unreported, /proc/C/stat field 52 holds the
//! signal). P catches SIGCHLD with an SA_SIGINFO|SA_RESTART handler that logs each
//! si_code, or with `sigchld-blocked` blocks SIGCHLD and takes the one the stop raised
//! (so none is pending). Then P writes C's pid to DIR/child and DIR/ready, and by
//! default blocks in waitpid(C, WUNTRACED|WCONTINUED) across the dump; with
//! `nocollect` it waits for SIGUSR2 (sent by the test after the restore), then calls
//! waitpid(C, WUNTRACED|WCONTINUED), which must report the stop (the signal that
//! stopped C), and writes DIR/collected.
//!
//! On CONTINUED (the test sends SIGCONT to C) P tells C to exit (SIGUSR2); C checks that
//! its threads count again and exits 7 (8 if they do not). P records every waitpid
//! report in DIR/events and writes DIR/child-done once C exited. On SIGUSR1 P checks:
//! the reports after the setup were exactly [STOPPED SIG (nocollect only),
//! CONTINUED, EXITED 7] (no second STOPPED report for a stop collected before the
//! dump), and with the handler, that the SIGCHLDs it got after the setup were exactly
//! CLD_CONTINUED then CLD_EXITED (none for a stop, none extra).

#[path = "common.rs"]
mod common;

use common::*;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering::SeqCst};

static STOP: AtomicBool = AtomicBool::new(false);
static COUNTERS: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

fn counting_threads(n: usize) -> Vec<std::thread::JoinHandle<()>> {
    (0..n)
        .map(|i| {
            std::thread::Builder::new()
                .name(format!("count{i}"))
                .spawn(move || {
                    while !STOP.load(SeqCst) {
                        COUNTERS[i].fetch_add(1, SeqCst);
                        sleep_ms(1);
                    }
                })
                .unwrap()
        })
        .collect()
}

/// Every one of the first `n` counters moves within a second.
fn all_count(n: usize) -> Result<(), String> {
    let before: Vec<u64> = (0..n).map(|i| COUNTERS[i].load(SeqCst)).collect();
    let moved = wait_for(1000, || (0..n).all(|i| COUNTERS[i].load(SeqCst) > before[i]));
    if moved { Ok(()) } else { Err(format!("threads do not count after SIGCONT: {before:?} then {:?}", (0..n).map(|i| COUNTERS[i].load(SeqCst)).collect::<Vec<_>>())) }
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2).
    check(unsafe { libc::kill(pid, sig) } == 0, "kill");
}

fn self_mode(dir: &Path, threads: usize) -> ! {
    block(&[libc::SIGUSR1]);
    let hs = counting_threads(threads);
    check(wait_for(2000, || (0..threads).all(|i| COUNTERS[i].load(SeqCst) > 0)), "threads did not start");
    write_file(&dir.join("ready"), "ready\n");
    // SAFETY: getpid(2).
    kill(unsafe { libc::getpid() }, libc::SIGSTOP);
    wait_usr1();
    let mut r = Report::default();
    if let Err(e) = all_count(threads) {
        r.0.push(e);
    }
    STOP.store(true, SeqCst);
    for h in hs {
        let _ = h.join();
    }
    std::process::exit(r.write(&dir.join("result")));
}

// ---------------------------------------------------------------- child mode

/// si_codes of the SIGCHLDs P handled, in order.
static CODES: [AtomicI32; 16] = [const { AtomicI32::new(0) }; 16];
static NCODES: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_chld(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo.
    let code = unsafe { (*info).si_code };
    let i = NCODES.fetch_add(1, SeqCst);
    if i < CODES.len() {
        CODES[i].store(code, SeqCst);
    }
}

fn codes() -> Vec<i32> {
    (0..NCODES.load(SeqCst).min(CODES.len())).map(|i| CODES[i].load(SeqCst)).collect()
}

fn code_name(c: i32) -> String {
    match c {
        libc::CLD_EXITED => "CLD_EXITED".into(),
        libc::CLD_KILLED => "CLD_KILLED".into(),
        libc::CLD_STOPPED => "CLD_STOPPED".into(),
        libc::CLD_CONTINUED => "CLD_CONTINUED".into(),
        c => format!("si_code {c}"),
    }
}

fn report(st: i32) -> String {
    if libc::WIFSTOPPED(st) {
        format!("STOPPED {}", libc::WSTOPSIG(st))
    } else if libc::WIFCONTINUED(st) {
        "CONTINUED".into()
    } else if libc::WIFEXITED(st) {
        format!("EXITED {}", libc::WEXITSTATUS(st))
    } else if libc::WIFSIGNALED(st) {
        format!("KILLED {}", libc::WTERMSIG(st))
    } else {
        format!("status {st:#x}")
    }
}

/// Every thread of `pid` is in state T.
fn all_stopped(pid: i32) -> bool {
    let Ok(d) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    let states: Vec<char> = d
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|s| s.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next()))
        .collect();
    !states.is_empty() && states.iter().all(|&c| c == 'T')
}

fn child(sig: i32, threads: usize, tstp_group: bool) -> ! {
    if tstp_group {
        // SAFETY: setpgid(2) on ourselves.
        check(unsafe { libc::setpgid(0, 0) } == 0, "setpgid");
    }
    block(&[libc::SIGUSR1, libc::SIGUSR2]);
    let hs = counting_threads(threads);
    check(wait_for(2000, || (0..threads).all(|i| COUNTERS[i].load(SeqCst) > 0)), "threads did not start");
    // SAFETY: getpid(2).
    kill(unsafe { libc::getpid() }, sig);
    wait_signal(&[libc::SIGUSR2]);
    let ok = all_count(threads);
    STOP.store(true, SeqCst);
    for h in hs {
        let _ = h.join();
    }
    if let Err(e) = &ok {
        eprintln!("jobctl child: {e}");
    }
    // SAFETY: leaving without running the parent's exit handlers twice.
    unsafe { libc::_exit(if ok.is_ok() { 7 } else { 8 }) }
}

fn child_mode(dir: &Path, sig: i32, threads: usize, collect: bool, sigchld_blocked: bool) -> ! {
    block(&[libc::SIGUSR1, libc::SIGUSR2]);
    if sigchld_blocked {
        block(&[libc::SIGCHLD]);
    } else {
        // SAFETY: a handler that only stores into atomics.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_chld as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            check(libc::sigaction(libc::SIGCHLD, &sa, std::ptr::null_mut()) == 0, "sigaction");
        }
    }
    let c = fork();
    if c == 0 {
        child(sig, threads, sig == libc::SIGTSTP);
    }
    if collect {
        let st = waitpid(c, libc::WUNTRACED).map(|(_, st)| st).unwrap_or_else(|| die("waitpid(WUNTRACED)"));
        check(libc::WIFSTOPPED(st) && libc::WSTOPSIG(st) == sig, &format!("the child reported {} instead of its stop", report(st)));
    } else {
        check(wait_for(5000, || all_stopped(c)), "the child did not stop");
    }
    if sigchld_blocked {
        // Take the SIGCHLD of the stop: none is pending at the dump.
        let info = wait_signal(&[libc::SIGCHLD]);
        check(info.si_code == libc::CLD_STOPPED, "the SIGCHLD of the stop");
    } else {
        check(wait_for(2000, || codes().contains(&libc::CLD_STOPPED)), "no SIGCHLD for the stop");
        NCODES.store(0, SeqCst);
    }
    write_file(&dir.join("child"), &format!("{c}\n"));
    write_file(&dir.join("ready"), "ready\n");
    if !collect {
        wait_signal(&[libc::SIGUSR2]);
    }
    let mut events = Vec::new();
    loop {
        let Some((_, st)) = waitpid(c, libc::WUNTRACED | libc::WCONTINUED) else {
            events.push(format!("waitpid: {}", errno()));
            break;
        };
        events.push(report(st));
        if libc::WIFSTOPPED(st) && events.len() == 1 {
            write_file(&dir.join("collected"), &format!("{}\n", report(st)));
        }
        if libc::WIFCONTINUED(st) {
            kill(c, libc::SIGUSR2);
        }
        if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) || events.len() > 6 {
            break;
        }
    }
    write_file(&dir.join("events"), &events.join("\n"));
    write_file(&dir.join("child-done"), "done\n");
    wait_usr1();
    let mut r = Report::default();
    let mut want: Vec<String> = Vec::new();
    if !collect {
        want.push(format!("STOPPED {sig}"));
    }
    want.push("CONTINUED".into());
    want.push("EXITED 7".into());
    r.expect(events == want, || format!("waitpid(WUNTRACED|WCONTINUED) reported {events:?}, expected {want:?}"));
    if !sigchld_blocked {
        let got: Vec<String> = codes().into_iter().map(code_name).collect();
        r.expect(got == ["CLD_CONTINUED", "CLD_EXITED"], || format!("SIGCHLDs handled after the setup: {got:?}, expected [\"CLD_CONTINUED\", \"CLD_EXITED\"]"));
    }
    std::process::exit(r.write(&dir.join("result")));
}

fn main() {
    let (dir, args) = args();
    let mode = args.first().cloned().unwrap_or_default();
    let mut threads = 0;
    let (mut tstp, mut collect, mut sigchld_blocked) = (false, true, false);
    for a in &args[1..] {
        match a.as_str() {
            "tstp" => tstp = true,
            "nocollect" => collect = false,
            "sigchld-blocked" => sigchld_blocked = true,
            t if t.starts_with("threads=") => threads = t[8..].parse().unwrap_or_else(|_| die("threads=N")),
            other => die(&format!("unknown argument {other}")),
        }
    }
    check(threads <= COUNTERS.len(), "at most 8 threads");
    match mode.as_str() {
        "self" if !tstp => self_mode(&dir, threads),
        "child" => child_mode(&dir, if tstp { libc::SIGTSTP } else { libc::SIGSTOP }, threads, collect, sigchld_blocked),
        _ => die("usage: jobctl DIR self|child [tstp] [threads=N] [nocollect] [sigchld-blocked]"),
    }
}
