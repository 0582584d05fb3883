//! End-to-end tests of the workloads that check one kind of state each: threads,
//! shared memory, pending signals and timers, pipes and FIFOs, shared open files.
//! See tests/common/mod.rs for how scenarios run.

mod common;

use common::*;

/// Eight threads counting in different ways (tight loops, futex, pipe read,
/// nanosleep, ...): same TIDs, every thread moves on, per-thread masks, altstacks, ymm
/// registers and rseq. Two threads are in a 3 s nanosleep(NULL rem) across the dump,
/// one on each CPU, with crtool on the first one's CPU: the sleeps must last 3 s,
/// plus at most the time the process was down (and a little), on either CPU.
#[test]
fn threads_keep_tids_state_and_sleeps() {
    let s = workload_roundtrip(
        "threads",
        "threads",
        "",
        r#"kill -USR2 $P
wait_until nonempty "$T/sleeping.5" && wait_until nonempty "$T/sleeping.7" || fail "the sleepers did not start"
CPU=$(cut -d' ' -f2 "$T/sleeping.5")
put tasks_before "$(ls /proc/$P/task | sort -n | tr '\n' ' ')"
sleep 1"#,
        "taskset -c $CPU",
        r#"put tasks_after "$(ls /proc/$P/task | sort -n | tr '\n' ' ')""#,
    );
    let (before, after) = (s.var("tasks_before"), s.var("tasks_after"));
    s.ensure(before.split_whitespace().count() == 9 && before == after, || format!("/proc/PID/task lists {after:?} after the restore, {before:?} before"));
    // From right before the dump to right after the restore (the snapshots are
    // taken outside this window).
    let down = s.down_ms();
    for i in [5, 7] {
        let f: Vec<i64> = s.read(&format!("sleep.{i}")).split_whitespace().filter_map(|v| v.parse().ok()).collect();
        s.ensure(f.len() == 3, || format!("sleep.{i} is {:?}", s.read(&format!("sleep.{i}"))));
        let most = 3000 + down + 100;
        s.ensure(f[0] <= most, || format!("thread {i}'s nanosleep(3 s) took {} ms, more than 3 s + {down} ms down + 100 ms", f[0]));
    }
}

#[test]
fn shared_anonymous_and_copy_on_write_memory_between_processes() {
    workload_roundtrip("shm", "shm", "", "", "", "");
}

/// Pending signals (thread-directed and process-wide, rt with values), ITIMER_REAL,
/// alarm() and three POSIX timers (one SIGEV_THREAD_ID to the main thread).
#[test]
fn pending_signals_itimers_and_posix_timers() {
    // SIGALRM (14) and SIGRTMIN+4 (38) come from the timers: pending for an instant
    // before each delivery, whenever the snapshot happens to look.
    workload_roundtrip_with("signals", "signals", "", "", "", "", "--ignore-pending 14,38");
}

/// As above, with the SIGEV_THREAD_ID timer aimed at the second thread.
#[test]
fn posix_timer_aimed_at_another_thread() {
    workload_roundtrip_with("signals-thread-timer", "signals", "timer-to-thread", "", "", "", "--ignore-pending 14,38");
}

/// A pipe with 100000 unread bytes and 256 KiB capacity between two processes, a FIFO
/// with 3000 unread bytes and an O_NONBLOCK read end, a non-blocking self-pipe.
#[test]
fn pipes_and_fifos_keep_their_data_capacity_and_flags() {
    workload_roundtrip("pipes", "pipes", "", "", "", "");
}

/// dup()ed fds and fds inherited over fork share one offset and status flags again,
/// a separate open does not; fd numbers (100, 101, 150, 200) and FD_CLOEXEC exact.
#[test]
fn fds_sharing_descriptions_across_processes() {
    workload_roundtrip("sharedfd", "sharedfd", "", "", "", "");
}
