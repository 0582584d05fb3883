//! `sigactions`: every signal's action set, SIGTRAP with a handler (as JVMs use it)
//! or ignored, for checking that a dump (also with --leave-running) and a restore
//! leave every action as it was.
//!
//!     sigactions DIR [trap-ignored]
//!
//! Every signal but SIGKILL, SIGSTOP, 32, 33 and SIGUSR1 (the harness's) gets an
//! action by its number: ignored, or one of two handlers with SA_SIGINFO|SA_RESTART,
//! SA_SIGINFO|SA_ONSTACK|SA_NODEFER, SA_RESETHAND or no flags, each with its own
//! mask; SIGTRAP has a handler with SA_SIGINFO|SA_RESTART (or, with `trap-ignored`,
//! SIG_IGN). The table (handler, flags without SA_RESTORER, mask) goes to
//! DIR/actions.before; on SIGUSR1 it is read again into DIR/actions.after and must be
//! identical, then the handlers must run: SIGTRAP from the CPU (int3) and from
//! raise() (twice in all; with `trap-ignored` raise() only, and the process must live
//! on), SIGTERM, SIGWINCH and SIGRTMIN+2 once each.

#[path = "common.rs"]
mod common;

use common::*;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

static HITS: [AtomicU32; 65] = [const { AtomicU32::new(0) }; 65];

extern "C" fn h(sig: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    HITS[sig as usize].fetch_add(1, SeqCst);
}

extern "C" fn h2(sig: libc::c_int) {
    HITS[sig as usize].fetch_add(1, SeqCst);
}

fn h_addr() -> usize {
    h as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize
}

fn h2_addr() -> usize {
    h2 as extern "C" fn(libc::c_int) as usize
}

fn skipped(s: i32) -> bool {
    s == libc::SIGKILL || s == libc::SIGSTOP || s == 32 || s == 33 || s == libc::SIGUSR1
}

fn action_for(s: i32, trap_ignored: bool) -> (usize, i32, Vec<i32>) {
    let mask: Vec<i32> = (1..65).step_by((s % 7) as usize + 1).filter(|&j| j != libc::SIGKILL && j != libc::SIGSTOP && j != 32 && j != 33).collect();
    let (handler, flags) = match s % 5 {
        0 => (libc::SIG_IGN, 0),
        1 => (h_addr(), libc::SA_SIGINFO | libc::SA_RESTART),
        2 => (h_addr(), libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER),
        3 => (h2_addr(), libc::SA_RESETHAND),
        _ => (h2_addr(), 0),
    };
    match s {
        libc::SIGTRAP if trap_ignored => (libc::SIG_IGN, 0, mask),
        libc::SIGTRAP => (h_addr(), libc::SA_SIGINFO | libc::SA_RESTART, mask),
        libc::SIGTERM | libc::SIGSEGV | libc::SIGCHLD | libc::SIGWINCH | libc::SIGURG => (h2_addr(), 0, mask),
        _ => (handler, flags, mask),
    }
}

fn table() -> String {
    let mut out = String::new();
    for s in (1..65).filter(|&s| !skipped(s)) {
        // SAFETY: querying an action into a local.
        let mut o: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::sigaction(s, std::ptr::null(), &mut o) };
        let name = match o.sa_sigaction {
            libc::SIG_IGN => "IGN".to_string(),
            libc::SIG_DFL => "DFL".to_string(),
            a if a == h_addr() => "h".to_string(),
            a if a == h2_addr() => "h2".to_string(),
            a => format!("{a:#x}"),
        };
        let m: u64 = members(&o.sa_mask).iter().fold(0, |acc, &j| acc | 1u64 << (j - 1));
        out += &format!("sig {s} handler {name} flags {:#x} mask {m:#018x}\n", o.sa_flags & !0x0400_0000);
    }
    out
}

fn raise(sig: i32) {
    // SAFETY: raise(3) to ourselves, with a handler (or SIG_IGN) in place.
    unsafe { libc::raise(sig) };
}

fn main() {
    let (dir, args) = args();
    let trap_ignored = args.iter().any(|a| a == "trap-ignored");
    block_usr1();
    set_altstack(16);
    for s in (1..65).filter(|&s| !skipped(s)) {
        let (handler, flags, mask) = action_for(s, trap_ignored);
        // SAFETY: installing handlers that only bump atomic counters.
        unsafe {
            let mut a: libc::sigaction = std::mem::zeroed();
            a.sa_sigaction = handler;
            a.sa_flags = flags;
            a.sa_mask = sigset(&mask);
            check(libc::sigaction(s, &a, std::ptr::null_mut()) == 0, &format!("sigaction({s})"));
        }
    }
    let before = table();
    write_file(&dir.join("actions.before"), &before);
    write_file(&dir.join("ready"), "ready\n");
    wait_usr1();
    let after = table();
    write_file(&dir.join("actions.after"), &after);
    let mut r = Report::default();
    let diff: Vec<String> = before.lines().zip(after.lines()).filter(|(a, b)| a != b).map(|(a, b)| format!("{a} → {b}")).collect();
    r.expect(diff.is_empty(), || format!("signal actions changed: {}", diff.join(", ")));
    if !trap_ignored {
        // SAFETY: a breakpoint trap; the SIGTRAP handler returns past it.
        unsafe { std::arch::asm!("int3") };
    }
    raise(libc::SIGTRAP);
    let rt2 = libc::SIGRTMIN() + 2;
    for s in [libc::SIGTERM, libc::SIGWINCH, rt2] {
        raise(s);
    }
    let hits = |s: i32| HITS[s as usize].load(SeqCst);
    let want_trap = if trap_ignored { 0 } else { 2 };
    r.expect(hits(libc::SIGTRAP) == want_trap, || format!("the SIGTRAP handler ran {} times, expected {want_trap}", hits(libc::SIGTRAP)));
    for s in [libc::SIGTERM, libc::SIGWINCH, rt2] {
        r.expect(hits(s) == 1, || format!("the handler of signal {s} ran {} times, expected once", hits(s)));
    }
    std::process::exit(r.write(&dir.join("result")));
}
