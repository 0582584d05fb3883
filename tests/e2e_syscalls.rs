//! End-to-end tests of threads blocked in system calls across a dump (the `blocked`
//! workload): every call returns what the kernel would have returned without the
//! dump, never before its deadline, and relative timeouts only last what was left of
//! them; the kernel, not crtool, decides between restarting a call (SA_RESTART) and
//! EINTR. See tests/common/mod.rs for how scenarios run.

mod common;

use common::*;

/// The `blocked` workload (timed calls due 6 s after they start) through `cycles`,
/// bash that dumps and restores it (each window from right before a dump to right
/// after its restore appended to $T/downtime.all). Then waits for every call to
/// return, hands the windows to the workload and collects its verdict; the tree's
/// visible state and processes must be as before each dump.
fn blocked_calls(name: &str, cycles: &str) -> Scenario {
    let s = Scenario::run(
        name,
        &format!(
            r#"
# window: the last down_start/down_end window, kept for the workload.
window() {{ cat "$T/downtime" >>"$T/downtime.all"; }}
start_wl blocked; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "blocked did not get ready"
PIDS=$(tree_of $P | sort -n | tr '\n' ' '); put pids "$PIDS"
[ "$(echo $PIDS | wc -w)" = 2 ] || fail "the tree is $PIDS, expected the workload and its child"
{cycles}
# The calls are due 6 s after they started, plus the time the tree was down.
wait_until nonempty "$T/all-returned" || put not_returned yes
cp "$T/downtime.all" "$T/downtime"
kill -USR1 $P
wait_until nonempty "$T/result" || fail "blocked wrote no result after SIGUSR1"
"#
        ),
    );
    s.ensure(s.var("not_returned").is_empty(), || format!("not every call returned within 20 s of the last restore; calls:\n{}", s.read("calls")));
    s
}

/// Each of the `run` steps must have succeeded.
fn steps_ok(s: &Scenario, steps: &[&str]) {
    for st in steps {
        s.ok(st);
    }
}

fn verdict_with_calls(s: &Scenario, mut p: Vec<String>) {
    if let Err(e) = s.verdict("result") {
        p.push(format!("{e}\n--- calls (name ret errno start_ms end_ms after the workload started)\n{}", s.read("calls")));
    }
    s.all_ok(p);
}

/// Dumped about 2 s into 6 s timeouts, restored after 1 s: futex (relative,
/// absolute CLOCK_MONOTONIC and CLOCK_REALTIME bitset), poll, select, pselect6, ppoll,
/// nanosleep with and without rem, clock_nanosleep (relative and TIMER_ABSTIME, both
/// clocks), rt_sigtimedwait, read on a pipe, wait4 on a child, pthread_cond_timedwait
/// (both clocks): exact results, none before its deadline, relative ones within 6 s +
/// the downtime + 300 ms (a restart with the full timeout would take about 9 s).
#[test]
fn blocked_calls_return_exactly_after_restore() {
    let s = blocked_calls(
        "blocked",
        r#"sleep 1.8
snapshot before $P
pidset before
down_start
run dump1 crt dump -t $P -D "$T/ck"
need dump1
wait_until gone $PIDS || fail "the dumped tree is still there"
sleep 1
run restore1 crt restore -D "$T/ck" -d
down_end; window
need restore1
pidset after
snapshot after $P"#,
    );
    steps_ok(&s, &["dump1", "restore1"]);
    let mut p = s.state_problems("before", "after");
    p.extend(s.pidset_problems("before", "after"));
    verdict_with_calls(&s, p);
}

/// `dump --leave-running` about 2 s in: the calls go on and return exactly as
/// without a dump (rt_sigtimedwait may fail with EINTR at the freeze, as the kernel
/// does for any stop), within the dump's duration + 300 ms of their deadlines; the
/// tree's visible state is unchanged by the dump.
#[test]
fn blocked_calls_return_exactly_after_dump_leave_running() {
    let s = blocked_calls(
        "blocked-leave-running",
        r#"sleep 1.8
snapshot before $P
pidset before
down_start
run dump1 crt dump -t $P -D "$T/ck" --leave-running
down_end; window
pidset after
snapshot after $P
put tracers "$(for t in /proc/$P/task/*; do tracer ${t#/proc/}; done | sort -u | tr '\n' ' ')""#,
    );
    steps_ok(&s, &["dump1"]);
    s.ensure(s.var("tracers").trim() == "0", || format!("TracerPid of the threads after dump --leave-running: {}", s.var("tracers")));
    let mut p = s.state_problems("before", "after");
    p.extend(s.pidset_problems("before", "after"));
    verdict_with_calls(&s, p);
}

/// Two dump/restore cycles (at about 1.3 s and 3 s, 0.5 s down each): at the second
/// dump the timed calls run in restart_syscall (orig_rax 219, which the scenario
/// checks), and must still return exactly, never early, and within 6 s + both
/// downtimes + 300 ms.
#[test]
fn blocked_calls_return_exactly_after_two_dump_restore_cycles() {
    let s = blocked_calls(
        "blocked-twice",
        r#"sleep 1.1
snapshot before $P
pidset before
down_start
run dump1 crt dump -t $P -D "$T/ck1"
need dump1
wait_until gone $PIDS || fail "the dumped tree is still there"
sleep 0.5
run restore1 crt restore -D "$T/ck1" -d
down_end; window
need restore1
pidset after1
snapshot after1 $P
sleep 0.8
# Which threads now sit in restart_syscall (219)?
put in_restart "$(for t in /proc/$P/task/*; do read -r nr _ <$t/syscall; [ "$nr" = 219 ] && basename $t; done | wc -l)"
down_start
run dump2 crt dump -t $P -D "$T/ck2"
need dump2
wait_until gone $PIDS || fail "the dumped tree is still there"
sleep 0.5
run restore2 crt restore -D "$T/ck2" -d
down_end; window
need restore2
pidset after2
snapshot after2 $P"#,
    );
    steps_ok(&s, &["dump1", "restore1", "dump2", "restore2"]);
    // futex x3, the condvars x2 (futex), poll x2, nanosleep x2, relative
    // clock_nanosleep x2 (absolute ones, select, pselect6 and ppoll restart themselves).
    let n = s.num("in_restart");
    s.ensure(n >= 11, || format!("only {n} threads were in restart_syscall at the second dump (expected 11): the scenario does not test what it claims"));
    let mut p = s.state_problems("before", "after1");
    p.extend(s.state_problems("before", "after2"));
    p.extend(s.pidset_problems("before", "after1"));
    p.extend(s.pidset_problems("before", "after2"));
    verdict_with_calls(&s, p);
}

/// Thread A blocks in read() with a SIGUSR2 handler that has SA_RESTART, thread B in
/// read() with a SIGURG handler without it; the process is stopped (SIGSTOP), both
/// signals are sent while it is stopped (pending), it is dumped stopped and restored
/// stopped, then continued: B's read fails with EINTR after its handler ran, A's
/// restarts, keeps waiting, and returns the 5 bytes written later. The same sequence
/// without a dump first (a second instance), to show it is what the kernel does.
#[test]
fn sa_restart_decides_restart_or_eintr_after_restore_of_a_stopped_process() {
    let s = Scenario::run(
        "sarestart",
        r#"
is_state() { [ "$(state $1)" = "$2" ]; }
# run_case NAME DUMP: the whole sequence in $T/NAME (dumped and restored if DUMP=yes).
run_case() {
    local d="$T/$1"; mkdir -p "$d"; chown --reference="$T" "$d"
    "${AS_WL[@]}" setsid "$EXAMPLES/blocked" "$d" sarestart </dev/null >"$d/blocked.log" 2>&1 & local p=$!
    put pid_$1 $p
    wait_until nonempty "$d/ready" || fail "$1: blocked did not get ready"
    kill -STOP $p
    wait_until is_state $p T || fail "$1: did not stop"
    kill -USR2 $p; kill -URG $p
    put pending_$1 "$(awk '/^ShdPnd:/ {print $2}' /proc/$p/status)"
    if [ "$2" = yes ]; then
        snapshot before $p
        pidset before
        run dump crt dump -t $p -D "$T/ck"
        need dump
        wait_until gone $p || fail "the dumped process is still there"
        run restore crt restore -D "$T/ck" -d
        need restore
        pidset after
        snapshot after $p
        put states_after "$(for t in /proc/$p/task/*; do awk '{print $3}' $t/stat; done | sort | uniq -c | tr -s ' \n' ' ')"
    fi
    kill -CONT $p
    wait_until nonempty "$d/returned.B" || put b_stuck_$1 yes
    sleep 0.5
    kill -USR1 $p
    wait_until nonempty "$d/result" || fail "$1: no result after SIGUSR1"
}
run_case kernel no
run_case restored yes
"#,
    );
    for case in ["kernel", "restored"] {
        // SIGUSR2 (12) and SIGURG (23) pending while stopped: bits 11 and 22.
        let pend = s.var(&format!("pending_{case}"));
        s.ensure(pend == "0000000000400800", || format!("{case}: ShdPnd while stopped is {pend}, expected SIGUSR2 and SIGURG (0000000000400800)"));
        s.ensure(s.var(&format!("b_stuck_{case}")).is_empty(), || format!("{case}: the read without SA_RESTART did not return after SIGCONT"));
    }
    if let Err(e) = s.verdict("kernel/result") {
        s.fail(&format!("without any dump (the kernel's own behaviour): {e}"));
    }
    s.ok("dump");
    s.ok("restore");
    let states = s.var("states_after");
    s.ensure(states.trim() == "3 T", || format!("after the restore the threads' states are {states:?}, expected all 3 stopped (T)"));
    let mut p: Vec<String> = s.verdict("restored/result").err().into_iter().collect();
    p.extend(s.state_problems("before", "after"));
    p.extend(s.pidset_problems("before", "after"));
    s.all_ok(p);
}
