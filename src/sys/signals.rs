//! crtool's own signal handling: SIGINT, SIGTERM, SIGHUP and SIGPIPE sent to crtool
//! while it works do not kill it half-way; they are noted, and the dump or restore
//! under way stops at its next check and rolls back as after any failure (a dump
//! puts every task back as it was, a restore kills what it built).
//!
//! The note is the one piece of process-wide state in crtool: a signal handler can
//! reach nothing else.

use std::sync::atomic::{AtomicI32, Ordering};

static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn note(sig: i32) {
    RECEIVED.store(sig, Ordering::SeqCst);
}

/// The signals that interrupt crtool's work.
pub const INTERRUPTING: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGPIPE];

/// Installs the handlers (without SA_RESTART: a blocking call returns EINTR, so
/// that crtool notices at once).
pub fn catch_interrupts() {
    for sig in INTERRUPTING {
        // SAFETY: a handler that only stores to an atomic is async-signal-safe; the
        // sigaction struct is a zeroed local.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = note as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Puts the default actions back (in a process forked from crtool that lives
/// on by itself: SIGTERM ends it).
pub fn default_interrupts() {
    for sig in INTERRUPTING {
        // SAFETY: SIG_DFL with a zeroed sigaction struct.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = libc::SIG_DFL;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// The interrupting signal received, if any.
pub fn interrupted() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Takes the note (the signal has been handled, e.g. forwarded to a restored task).
pub fn take() -> Option<i32> {
    match RECEIVED.swap(0, Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Runs `f` with signal `sig` blocked in this thread (e.g. SIGTTOU around
/// TIOCSPGRP from a background process group), then restores the mask.
pub fn with_blocked<T>(sig: i32, f: impl FnOnce() -> T) -> T {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
    let mut set = SigSet::empty();
    if let Ok(s) = Signal::try_from(sig) {
        set.add(s);
    }
    let mut old = SigSet::empty();
    let blocked = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old)).is_ok();
    let r = f();
    if blocked {
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    }
    r
}
