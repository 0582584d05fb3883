//! Threads frozen inside a blocking system call, and how they resume.
//!
//! A freeze interrupts whatever call a thread is blocked in. The kernel reports the
//! call as `orig_rax` and its verdict as a negative "restart" code in `rax`
//! (include/linux/errno.h): `ERESTARTSYS`, `ERESTARTNOINTR` and `ERESTARTNOHAND`
//! mean "run the same call again" (depending on signal handlers and `SA_RESTART`);
//! `ERESTART_RESTARTBLOCK` means "continue through restart_syscall(2) with the
//! per-thread restart block", which holds what the call needs to go on (for timed
//! sleeps and waits, the absolute expiry). Restore gives every thread its dumped
//! registers back, so the kernel itself takes the first decisions exactly as it
//! would have; the restart block lives in the kernel and is lost, so restore
//! rebuilds it by making the same call again in the restored thread with the time
//! that was left (see `restore::supervise`). This module works out that call at
//! dump time: which call it was (also behind `restart_syscall`, from the kernel
//! stack), its arguments, and how much of its timeout had passed.

use crate::sys::process::read_remote;
use crate::sys::ptrace::Regs;
use images_format::pb;
use nix::unistd::Pid;

pub const NR_POLL: u64 = 7;
pub const NR_NANOSLEEP: u64 = 35;
pub const NR_FUTEX: u64 = 202;
pub const NR_RESTART_SYSCALL: u64 = 219;
pub const NR_CLOCK_NANOSLEEP: u64 = 230;

/// -ERESTART_RESTARTBLOCK as the kernel leaves it in rax.
pub const ERESTART_RESTARTBLOCK: i64 = -516;

const FUTEX_CMD_MASK: u64 = !(128 | 256); // ~(FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME)
const FUTEX_WAIT: u64 = 0;
const FUTEX_WAIT_BITSET: u64 = 9;
const FUTEX_BITSET_MATCH_ANY: u64 = 0xffff_ffff;
const TIMER_ABSTIME: u64 = 1;

/// What a thread was blocked in, seen from /proc before the freeze touched it.
#[derive(Debug, Clone, Copy)]
pub struct Blocked {
    /// The call `restart_syscall` continues, when the thread was in one (`None`: the
    /// thread was not in restart_syscall, or the kernel stack did not say).
    pub restarted: Option<u64>,
    /// How long the thread had been blocked (since it last went to sleep), in ns,
    /// or `None` when it could not be measured.
    pub elapsed_ns: Option<u64>,
    /// Whether the call has a relative timeout (its timer is worth finding).
    pub timed: bool,
    /// What its timer had left when the freeze interrupted it, in ns (see
    /// `sleepers`), when known: exact, and preferred over `elapsed_ns`.
    pub left_ns: Option<u64>,
}

/// Looks at a thread that may be blocked in a timed call, before it is seized: the
/// call (/proc/PID/task/TID/syscall), and for timed sleeps and waits how long it has
/// been asleep — the time since the scheduler last ran it (`se.exec_start` in
/// /proc/PID/task/TID/sched), compared with crtool's own scheduler clock on the CPU
/// the thread last ran on (the clocks are per CPU and exclude steal time, so the
/// result errs towards less time passed: a resumed wait never ends early).
pub fn probe(pid: i32, tid: i32) -> Option<Blocked> {
    let base = format!("/proc/{pid}/task/{tid}");
    let sc = std::fs::read_to_string(format!("{base}/syscall")).ok()?;
    let nr: u64 = sc.split_whitespace().next()?.parse().ok()?;
    if !matches!(nr, NR_POLL | NR_NANOSLEEP | NR_FUTEX | NR_RESTART_SYSCALL | NR_CLOCK_NANOSLEEP) {
        return None;
    }
    let restarted = if nr == NR_RESTART_SYSCALL { restarted_call(&base) } else { None };
    // The call's arguments as it was entered (restart_syscall keeps them).
    let arg = |i: usize| sc.split_whitespace().nth(1 + i).and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok()).unwrap_or(0);
    let timed = match restarted.unwrap_or(nr) {
        NR_NANOSLEEP => true,
        NR_CLOCK_NANOSLEEP => nr == NR_RESTART_SYSCALL || arg(1) & TIMER_ABSTIME == 0,
        NR_FUTEX => arg(1) & FUTEX_CMD_MASK == FUTEX_WAIT && arg(3) != 0,
        NR_POLL => (arg(2) as i32) >= 0,
        _ => false,
    };
    Some(Blocked { restarted, elapsed_ns: asleep_for(pid, tid), timed, left_ns: None })
}

/// Which call `restart_syscall` is continuing, from the restart function on the
/// kernel stack (/proc/PID/task/TID/stack, root only), or the wait channel.
fn restarted_call(base: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("{base}/stack"))
        .or_else(|_| std::fs::read_to_string(format!("{base}/wchan")))
        .ok()?;
    if text.contains("futex_wait_restart") || text.contains("futex_do_wait") || text.contains("futex_wait_queue") {
        Some(NR_FUTEX)
    } else if text.contains("do_restart_poll") {
        Some(NR_POLL)
    } else {
        // hrtimer_nanosleep_restart, posix_cpu_nsleep_restart, alarm_timer_nsleep_restart
        // (the first does not show on the stack): a sleep; nanosleep or clock_nanosleep
        // is told apart by its arguments.
        Some(NR_CLOCK_NANOSLEEP)
    }
}

fn sched_exec_start(path: &str) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find(|l| l.starts_with("se.exec_start"))?.split(':').nth(1)?.trim().parse().ok()
}

fn asleep_for(pid: i32, tid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    let cpu: usize = stat.rsplit_once(')')?.1.split_whitespace().nth(36)?.parse().ok()?;
    let then = sched_exec_start(&format!("/proc/{pid}/task/{tid}/sched"))?;
    let now = crate::sys::process::on_cpu(cpu, || sched_exec_start("/proc/thread-self/sched"))?;
    Some(((now - then).max(0.0) * 1e6) as u64)
}

fn read_timespec(pid: Pid, addr: u64) -> Option<u64> {
    if addr == 0 {
        return None;
    }
    let mut ts = [0u8; 16];
    read_remote(pid, addr, &mut ts).ok()?;
    let sec = i64::from_le_bytes(ts[0..8].try_into().ok()?).max(0) as u64;
    let nsec = i64::from_le_bytes(ts[8..16].try_into().ok()?).max(0) as u64;
    Some(sec.saturating_mul(1_000_000_000).saturating_add(nsec))
}

/// For a thread whose registers say `ERESTART_RESTARTBLOCK`, the call that rebuilds
/// its restart block at restore. `blocked` is what `probe` saw before the freeze;
/// the task's memory is read for timeouts and for the time the kernel wrote to a
/// sleep's `rem` when the freeze interrupted it (exact where present). Relative
/// timeouts become what was left of them (never more than asked, never less than
/// what was left); absolute deadlines are kept as they are. `None` for a thread
/// that is not waiting on its restart block, or whose call is not known (its
/// restart block then answers EINTR, as the kernel's own fallback does).
pub fn restart_for(tid: Pid, r: &Regs, blocked: Option<Blocked>) -> Option<pb::SyscallRestart> {
    if r.rax as i64 != ERESTART_RESTARTBLOCK || (r.orig_rax as i64) < 0 {
        return None;
    }
    let elapsed = blocked.and_then(|b| b.elapsed_ns);
    let known_left = blocked.and_then(|b| b.left_ns);
    let nr = match r.orig_rax {
        NR_RESTART_SYSCALL => blocked.and_then(|b| b.restarted)?,
        n => n,
    };
    let args = [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9];
    let left = |request: Option<u64>| request.map(|ns| known_left.map_or(ns.saturating_sub(elapsed.unwrap_or(0)), |l| l.min(ns)));
    let restart = |nr: u64, args: [u64; 6], timeout_arg: Option<u32>, remaining_ns: u64| pb::SyscallRestart {
        nr,
        args: args.to_vec(),
        timeout_arg,
        remaining_ns,
    };
    match nr {
        // nanosleep(req, rem), or clock_nanosleep(clock, flags, req, rem) behind a
        // restart_syscall (a clock id is small, a pointer is not).
        NR_NANOSLEEP => Some(sleep(tid, nr, [0, 0, args[0], args[1], 0, 0], elapsed, known_left)),
        NR_CLOCK_NANOSLEEP if r.orig_rax == NR_RESTART_SYSCALL && args[0] >= 4096 => {
            Some(sleep(tid, NR_NANOSLEEP, [0, 0, args[0], args[1], 0, 0], elapsed, known_left))
        }
        NR_CLOCK_NANOSLEEP => {
            let clock = args[0] as i32;
            if args[1] & TIMER_ABSTIME != 0 {
                Some(restart(nr, args, None, 0))
            } else if clock < 0 || clock == libc::CLOCK_PROCESS_CPUTIME_ID || clock == libc::CLOCK_THREAD_CPUTIME_ID {
                // CPU-time clocks: asleep says nothing about CPU time used; without
                // `rem` the full request is the bound that never ends early.
                let ns = read_timespec(tid, args[3]).or_else(|| read_timespec(tid, args[2])).unwrap_or(0);
                Some(restart(nr, [args[0], 0, 0, args[3], 0, 0], Some(2), ns))
            } else {
                Some(sleep(tid, nr, args, elapsed, known_left))
            }
        }
        NR_FUTEX => {
            let cmd = args[1] & FUTEX_CMD_MASK;
            let flags = args[1] & !FUTEX_CMD_MASK;
            match cmd {
                FUTEX_WAIT_BITSET => Some(restart(nr, args, None, 0)),
                FUTEX_WAIT => {
                    let ns = left(read_timespec(tid, args[3])).unwrap_or(0);
                    Some(restart(nr, [args[0], FUTEX_WAIT | flags, args[2], 0, 0, FUTEX_BITSET_MATCH_ANY], Some(3), ns))
                }
                _ => None,
            }
        }
        NR_POLL => {
            let ms = args[2] as i32;
            if ms < 0 {
                Some(restart(nr, args, None, 0))
            } else {
                let ns = left(Some(ms as u64 * 1_000_000)).unwrap_or(0);
                Some(restart(nr, args, Some(2), ns))
            }
        }
        _ => None,
    }
}

/// A relative nanosleep or clock_nanosleep (`args` as clock_nanosleep's: clock,
/// flags, req, rem): the time left is what the kernel wrote to `rem`, or the request
/// minus the time asleep.
fn sleep(tid: Pid, nr: u64, args: [u64; 6], elapsed: Option<u64>, known_left: Option<u64>) -> pb::SyscallRestart {
    let (req, rem) = (args[2], args[3]);
    let left = read_timespec(tid, rem)
        .filter(|_| rem != 0)
        .or(known_left)
        .or_else(|| read_timespec(tid, req).map(|ns| ns.saturating_sub(elapsed.unwrap_or(0))))
        .unwrap_or(0);
    if nr == NR_NANOSLEEP {
        pb::SyscallRestart { nr, args: vec![0, rem, 0, 0, 0, 0], timeout_arg: Some(0), remaining_ns: left }
    } else {
        pb::SyscallRestart { nr, args: vec![args[0], 0, 0, rem, 0, 0], timeout_arg: Some(2), remaining_ns: left }
    }
}

/// The arguments to make `rs` with at restore: the timeout argument becomes
/// `timespec_at` (where the caller writes `timespec(rs.remaining_ns)`) or, for poll,
/// the time left in milliseconds, rounded up.
pub fn restart_args(rs: &pb::SyscallRestart, timespec_at: u64) -> [u64; 6] {
    let mut a = [0u64; 6];
    for (d, s) in a.iter_mut().zip(rs.args.iter()) {
        *d = *s;
    }
    if let Some(i) = rs.timeout_arg.map(|i| i as usize).filter(|&i| i < 6) {
        a[i] = if rs.nr == NR_POLL { rs.remaining_ns.div_ceil(1_000_000) } else { timespec_at };
    }
    a
}

/// A `struct timespec` holding `ns`.
pub fn timespec(ns: u64) -> [u8; 16] {
    let mut ts = [0u8; 16];
    ts[0..8].copy_from_slice(&((ns / 1_000_000_000) as i64).to_le_bytes());
    ts[8..16].copy_from_slice(&((ns % 1_000_000_000) as i64).to_le_bytes());
    ts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(nr: u64, args: [u64; 6]) -> Regs {
        // SAFETY: plain integers.
        let mut r: Regs = unsafe { std::mem::zeroed() };
        r.orig_rax = nr;
        r.rax = ERESTART_RESTARTBLOCK as u64;
        (r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9) = (args[0], args[1], args[2], args[3], args[4], args[5]);
        r
    }

    fn me() -> Pid {
        Pid::this()
    }

    #[test]
    fn absolute_deadlines_are_kept_unchanged() {
        let futex = regs(NR_FUTEX, [0x1000, FUTEX_WAIT_BITSET | 128, 0, 0x2000, 0, FUTEX_BITSET_MATCH_ANY]);
        let rs = restart_for(me(), &futex, None).unwrap();
        assert_eq!((rs.nr, rs.timeout_arg), (NR_FUTEX, None));
        assert_eq!(rs.args, vec![0x1000, FUTEX_WAIT_BITSET | 128, 0, 0x2000, 0, FUTEX_BITSET_MATCH_ANY]);
        let cns = regs(NR_CLOCK_NANOSLEEP, [1, TIMER_ABSTIME, 0x3000, 0, 0, 0]);
        assert_eq!(restart_for(me(), &cns, None).unwrap().timeout_arg, None);
    }

    #[test]
    fn relative_timeouts_lose_the_time_already_waited() {
        let ts = timespec(6_000_000_000);
        let futex = regs(NR_FUTEX, [0x1000, FUTEX_WAIT | 128, 7, ts.as_ptr() as u64, 0, 0]);
        let b = Blocked { restarted: None, elapsed_ns: Some(2_000_000_000), timed: true, left_ns: None };
        let rs = restart_for(me(), &futex, Some(b)).unwrap();
        assert_eq!(rs.remaining_ns, 4_000_000_000);
        assert_eq!(restart_args(&rs, 0xabc), [0x1000, 128, 7, 0xabc, 0, FUTEX_BITSET_MATCH_ANY]);
        let poll = regs(NR_POLL, [0x5000, 2, 6000, 0, 0, 0]);
        let rs = restart_for(me(), &poll, Some(Blocked { restarted: None, elapsed_ns: Some(1_999_999_999), timed: true, left_ns: None })).unwrap();
        assert_eq!(restart_args(&rs, 0)[2], 4001, "poll's milliseconds round up");
    }

    #[test]
    fn the_timer_s_own_time_left_wins_over_the_estimate() {
        // A wait resumed by an earlier restore: asleep only 1 s since, but its
        // timer (the restart block's deadline) had 0.5 s left.
        let ts = timespec(6_000_000_000);
        let r = regs(NR_RESTART_SYSCALL, [0x1000, FUTEX_WAIT, 7, ts.as_ptr() as u64, 0, 0]);
        let b = Blocked { restarted: Some(NR_FUTEX), elapsed_ns: Some(1_000_000_000), timed: true, left_ns: Some(500_000_000) };
        assert_eq!(restart_for(me(), &r, Some(b)).unwrap().remaining_ns, 500_000_000);
        let req = timespec(2_000_000_000);
        let r = regs(NR_NANOSLEEP, [req.as_ptr() as u64, 0, 0, 0, 0, 0]);
        let b = Blocked { restarted: None, elapsed_ns: Some(1), timed: true, left_ns: Some(700) };
        assert_eq!(restart_for(me(), &r, Some(b)).unwrap().remaining_ns, 700);
    }

    #[test]
    fn a_sleep_with_rem_uses_what_the_kernel_wrote() {
        let req = timespec(6_000_000_000);
        let rem = timespec(3_500_000_000);
        let r = regs(NR_NANOSLEEP, [req.as_ptr() as u64, rem.as_ptr() as u64, 0, 0, 0, 0]);
        let rs = restart_for(me(), &r, Some(Blocked { restarted: None, elapsed_ns: Some(1), timed: true, left_ns: None })).unwrap();
        assert_eq!((rs.nr, rs.remaining_ns), (NR_NANOSLEEP, 3_500_000_000));
        assert_eq!(restart_args(&rs, 0x77), [0x77, rem.as_ptr() as u64, 0, 0, 0, 0]);
    }

    #[test]
    fn restart_syscall_is_resolved_from_the_kernel_stack() {
        let ts = timespec(6_000_000_000);
        let r = regs(NR_RESTART_SYSCALL, [0x1000, FUTEX_WAIT, 7, ts.as_ptr() as u64, 0, 0]);
        let b = Blocked { restarted: Some(NR_FUTEX), elapsed_ns: Some(1_000_000_000), timed: true, left_ns: None };
        let rs = restart_for(me(), &r, Some(b)).unwrap();
        assert_eq!((rs.nr, rs.remaining_ns), (NR_FUTEX, 5_000_000_000));
        // Unknown restart function: no rebuilt block (the kernel answers EINTR).
        assert!(restart_for(me(), &r, Some(Blocked { restarted: None, elapsed_ns: None, timed: true, left_ns: None })).is_none());
        // A clock_nanosleep behind restart_syscall with a pointer first is nanosleep.
        let req = timespec(2_000_000_000);
        let r = regs(NR_RESTART_SYSCALL, [req.as_ptr() as u64, 0, 0, 0, 0, 0]);
        let b = Blocked { restarted: Some(NR_CLOCK_NANOSLEEP), elapsed_ns: Some(500_000_000), timed: true, left_ns: None };
        let rs = restart_for(me(), &r, Some(b)).unwrap();
        assert_eq!((rs.nr, rs.remaining_ns), (NR_NANOSLEEP, 1_500_000_000));
    }

    #[test]
    fn other_stops_need_nothing() {
        let mut r = regs(0, [0; 6]);
        r.rax = (-512i64) as u64;
        assert!(restart_for(me(), &r, None).is_none());
    }
}

/// Calls that run with a temporary signal mask and put the thread's own back on
/// return (`set_restore_sigmask` in the kernel): rt_sigsuspend, pselect6, ppoll,
/// epoll_pwait, io_pgetevents, epoll_pwait2.
const TEMP_MASK_CALLS: [u64; 6] = [130, 270, 271, 281, 333, 441];
/// -ERESTARTNOHAND as the kernel leaves it in rax.
const ERESTARTNOHAND: i64 = -514;

/// A thread stopped (group-stop) inside a call with a temporary signal mask shows
/// that mask as blocked, and the kernel keeps its own mask aside until the call
/// returns. PTRACE_GETSIGMASK reports the thread's own mask (which the image keeps),
/// and putting any mask with PTRACE_SETSIGMASK drops the temporary one. This makes
/// the thread, whose registers and own mask `mask` are in place, enter the same
/// call again and be interrupted in it, so that both masks are as before; then it
/// sits at the call's exit and stops again when detached (its group is stopped).
/// Returns false (nothing done) when `regs` are not such a call; a signal that
/// arrives meanwhile stays pending (ptrace requeues it while blocked) and the
/// thread gets its registers and mask back.
pub fn rearm_temporary_mask(tid: Pid, regs: &Regs, mask: u64) -> Result<bool, nix::errno::Errno> {
    use crate::sys::ptrace::{self, Stop};
    if !TEMP_MASK_CALLS.contains(&regs.orig_rax) || regs.rax as i64 != ERESTARTNOHAND {
        return Ok(false);
    }
    let mut again = *regs;
    again.rip -= 2; // the syscall instruction
    again.rax = regs.orig_rax;
    ptrace::setregs(tid, &again)?;
    // To the call's entry.
    let mut signalled = false;
    loop {
        ptrace::cont_syscall(tid)?;
        match ptrace::wait(tid, false)? {
            Some(Stop::Syscall) => break,
            Some(Stop::Event(..)) => {}
            Some(Stop::Signal(sig)) => {
                // Requeued, since blocked: it waits for the thread's own mask.
                signalled = true;
                ptrace::set_sigmask(tid, mask | 1u64 << (sig - 1))?;
                ptrace::syscall_signal(tid, sig)?;
                if let Some(Stop::Syscall) = ptrace::wait(tid, false)? {
                    break;
                }
                return Err(nix::errno::Errno::EINTR);
            }
            _ => return Err(nix::errno::Errno::ESRCH),
        }
    }
    if signalled {
        // Skip the call: the thread keeps its registers and own mask.
        let mut skip = ptrace::getregs(tid)?;
        skip.orig_rax = u64::MAX;
        ptrace::setregs(tid, &skip)?;
        ptrace::cont_syscall(tid)?;
        ptrace::wait(tid, false)?;
        ptrace::setregs(tid, regs)?;
        ptrace::set_sigmask(tid, mask)?;
        return Ok(false);
    }
    // Into the call, which sleeps with its temporary mask until interrupted.
    // (An interrupt that comes before it sleeps makes it return at once, the same way.)
    ptrace::cont_syscall(tid)?;
    ptrace::interrupt(tid)?;
    loop {
        // The exit stop comes before any signal is dequeued.
        match ptrace::wait(tid, false)? {
            Some(Stop::Syscall) => return Ok(true),
            Some(Stop::Event(..)) => ptrace::cont_syscall(tid)?,
            _ => return Err(nix::errno::Errno::ESRCH),
        }
    }
}
