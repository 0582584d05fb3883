//! End-to-end tests that a dump leaves no trace: after `dump --leave-running` the
//! tree is indistinguishable from before (snapshot, its own checks, signal actions
//! including SIGTRAP's, a stop still unreported), and dumps of an idle multithreaded
//! task are byte-identical whatever CPUs its threads and crtool run on. See
//! tests/common/mod.rs for how scenarios run.

mod common;

use common::*;

/// memstate with its interval timers running: `dump --leave-running` must leave its
/// visible state as it was, untraced, and its own check (memory, registers, signal
/// state, limits, fds, timers within the dump's duration) must pass afterwards.
#[test]
fn dump_leave_running_leaves_memstate_as_it_was() {
    let s = Scenario::run(
        "leave-running-memstate",
        r#"
start_memstate; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "memstate did not get ready"
snapshot before $P
pidset before
down_start
run dump crt dump -t $P -D "$T/ck" --leave-running
down_end
pidset after
snapshot after $P
put state "$(state $P)"; put tracer "$(tracer $P)"
kill -USR1 $P
wait_until nonempty "$T/result" || fail "memstate wrote no result after SIGUSR1"
"#,
    );
    s.ok("dump");
    s.ensure(s.var("tracer") == "0", || format!("TracerPid after the dump: {}", s.var("tracer")));
    let st = s.var("state");
    s.ensure(st == "S" || st == "R", || format!("state after the dump: {st}"));
    s.roundtrip_ok("result");
}

/// `sigactions [trap-ignored]`: every signal's action (SIGTRAP with a handler, or
/// ignored) read back identical by the task itself and by /proc (SigCgt, SigIgn in
/// the snapshot) after `dump --leave-running` (restore = false) or after a dump and
/// restore, and the handlers run: SIGTRAP from int3 and raise() reaches its handler
/// (an ignored SIGTRAP stays ignored), SIGTERM, SIGWINCH and SIGRTMIN+2 theirs.
fn sigtrap(name: &str, args: &str, restore: bool) {
    let cycle = if restore {
        r#"run dump crt dump -t $P -D "$T/ck"
need dump
wait_until gone $P || fail "the dumped process is still there"
run restore crt restore -D "$T/ck" -d
need restore"#
    } else {
        r#"run dump crt dump -t $P -D "$T/ck" --leave-running
need dump"#
    };
    let s = Scenario::run(
        name,
        &format!(
            r#"
start_wl sigactions {args}; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "sigactions did not get ready"
snapshot before $P
pidset before
{cycle}
pidset after
snapshot after $P
put sig "$(grep -E '^Sig(Cgt|Ign)' /proc/$P/status | tr -s '\t\n' '  ')"
kill -USR1 $P
wait_until nonempty "$T/result" || fail "sigactions wrote no result after SIGUSR1"
wait_until dead $P
"#
        ),
    );
    // SIGTRAP is bit 4 (signal 5) of SigCgt, or of SigIgn when ignored.
    let sig = s.var("sig");
    let field = |k: &str| sig.split_whitespace().skip_while(|w| *w != k).nth(1).and_then(|v| u64::from_str_radix(v, 16).ok()).unwrap_or(0);
    let (cgt, ign) = (field("SigCgt:"), field("SigIgn:"));
    let ignored = args.contains("trap-ignored");
    s.ensure(if ignored { ign & 0x10 != 0 && cgt & 0x10 == 0 } else { cgt & 0x10 != 0 && ign & 0x10 == 0 }, || {
        format!("SIGTRAP after the {}: SigCgt {cgt:016x} SigIgn {ign:016x} (expected it {})", if restore { "restore" } else { "dump" }, if ignored { "ignored" } else { "caught" })
    });
    let mut p: Vec<String> = s.verdict("result").err().into_iter().collect();
    p.extend(s.state_problems("before", "after"));
    p.extend(s.pidset_problems("before", "after"));
    s.all_ok(p);
}

#[test]
fn sigtrap_handler_survives_dump_leave_running() {
    sigtrap("sigtrap-live", "", false);
}

#[test]
fn sigtrap_handler_survives_dump_and_restore() {
    sigtrap("sigtrap-restored", "", true);
}

#[test]
fn ignored_sigtrap_stays_ignored_after_dump_leave_running() {
    sigtrap("sigtrap-ignored-live", "trap-ignored", false);
}

#[test]
fn ignored_sigtrap_stays_ignored_after_dump_and_restore() {
    sigtrap("sigtrap-ignored-restored", "trap-ignored", true);
}

/// A child stopped by SIGSTOP whose stop its parent has not collected: after `dump
/// --leave-running` it is still stopped (every thread T), untraced, stat field 52
/// still 19, and the parent's waitpid(WUNTRACED) still reports STOPPED 19, then
/// CONTINUED and EXITED 7.
#[test]
fn dump_leave_running_leaves_an_uncollected_stop_pending() {
    let s = Scenario::run(
        "leave-running-stopped",
        r#"
task_states() { for t in /proc/$1/task/*; do read -r s <$t/stat; s=${s##*) }; echo ${s%% *}; done | sort | uniq -c | tr -s ' \n' ' '; }
field52() { local s; read -r s <"/proc/$1/stat"; s=${s##*) }; set -- $s; echo ${50}; }
start_wl jobctl child threads=2 nocollect; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "jobctl did not get ready"
C=$(cat "$T/child")
snapshot before $P
pidset before
run dump crt dump -t $P -D "$T/ck" --leave-running
need dump
pidset after
snapshot after $P
sleep 0.2
put states "$(task_states $C)"
put f52 "$(field52 $C)"
put tracers "$(for t in /proc/$C/task/* /proc/$P/task/*; do tracer ${t#/proc/}; done | sort -u | tr '\n' ' ')"
kill -USR2 $P
wait_until nonempty "$T/collected" || fail "the parent did not collect the stop"
kill -CONT $C
wait_until nonempty "$T/child-done" || fail "the child did not exit after SIGCONT"
kill -USR1 $P
wait_until nonempty "$T/result" || fail "jobctl wrote no result after SIGUSR1"
"#,
    );
    s.ensure(s.var("states").trim() == "3 T", || format!("after dump --leave-running the child's threads are in states {:?}, expected 3 T", s.var("states")));
    s.ensure(s.var("f52").trim() == "19", || format!("after dump --leave-running stat field 52 of the child is {} (expected 19: the stop still unreported)", s.var("f52")));
    s.ensure(s.var("tracers").trim() == "0", || format!("TracerPids after the dump: {}", s.var("tracers")));
    let mut p: Vec<String> = s.verdict("result").err().map(|e| format!("{e} (waitpid reports: {:?})", s.read("events"))).into_iter().collect();
    p.extend(s.state_problems("before", "after"));
    p.extend(s.pidset_problems("before", "after"));
    s.all_ok(p);
}

/// The `idle` workload (4 threads blocked without timeouts in futex, read, poll and
/// sigwaitinfo, each last run on CPU i % ncpus) dumped twice with --leave-running,
/// crtool on the first allowed CPU for one dump and on the last for the other (the
/// task is not pinned): the images must be byte-identical, the task as it was, and
/// every thread must wake and check itself afterwards.
#[test]
fn two_dumps_of_an_idle_multithreaded_task_are_identical() {
    let s = Scenario::run(
        "double-dump-threads",
        r#"
start_wl idle; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "idle did not get ready"
FIRST=$(python3 -c 'import os; print(min(os.sched_getaffinity(0)))'); LAST=$(python3 -c 'import os; print(max(os.sched_getaffinity(0)))')
put ncpus "$(python3 -c 'import os; print(len(os.sched_getaffinity(0)))')"
snapshot before $P
pidset before
run dump1 taskset -c $FIRST timeout 60 "$CRTOOL" dump -t $P -D "$T/ck1" --leave-running
sleep 0.3
run dump2 taskset -c $LAST timeout 60 "$CRTOOL" dump -t $P -D "$T/ck2" --leave-running
pidset after
snapshot after $P
kill -USR1 $P
wait_until nonempty "$T/result" || fail "idle wrote no result after SIGUSR1"
"#,
    );
    s.ok("dump1");
    s.ok("dump2");
    let cpus: Vec<i64> = s.read("cpus").split_whitespace().filter_map(|c| c.parse().ok()).collect();
    let mut distinct = cpus.clone();
    distinct.sort();
    distinct.dedup();
    let ncpus = s.num("ncpus");
    s.ensure(cpus.len() == 4 && (ncpus < 2 || distinct.len() >= 2), || format!("setup: the threads ran on CPUs {cpus:?} ({ncpus} allowed)"));
    let mut p = dump_differences(&s, 8);
    p.extend(s.verdict("result").err().map(|e| format!("after two dumps with --leave-running: {e}")));
    p.extend(s.state_problems("before", "after"));
    p.extend(s.pidset_problems("before", "after"));
    s.all_ok(p);
}

/// A process stopped (SIGSTOP) while its main thread waits in rt_sigsuspend (with a
/// temporary mask: SigBlk shows the mask sigsuspend set, not the thread's own) and
/// two threads in read(), SIGUSR2 and SIGURG pending: `dump --leave-running` must
/// leave it as it was (snapshot: every thread's SigBlk, SigPnd, ShdPnd, states), and
/// once continued it behaves as the kernel decides (the `blocked sarestart` check).
#[test]
fn dump_leave_running_leaves_a_stopped_sigsuspend_mask() {
    let s = Scenario::run(
        "leave-running-stopped-sigsuspend",
        r#"
is_state() { [ "$(state $1)" = "$2" ]; }
start_wl blocked sarestart; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "blocked did not get ready"
kill -STOP $P
wait_until is_state $P T || fail "it did not stop"
kill -USR2 $P; kill -URG $P
put main_sigblk "$(awk '/^SigBlk:/ {print $2}' /proc/$P/task/$P/status)"
snapshot before $P
pidset before
run dump crt dump -t $P -D "$T/ck" --leave-running
need dump
pidset after
snapshot after $P
kill -CONT $P
wait_until nonempty "$T/returned.B" || fail "the read without SA_RESTART did not return after SIGCONT"
sleep 0.3
kill -USR1 $P
wait_until nonempty "$T/result" || fail "blocked wrote no result after SIGUSR1"
"#,
    );
    // sigsuspend's mask: the thread's own (SIGUSR1, SIGUSR2, SIGURG) without SIGUSR1.
    s.ensure(s.var("main_sigblk") == "0000000000400800", || format!("setup: the main thread's SigBlk while stopped in sigsuspend is {:?}", s.var("main_sigblk")));
    let mut p: Vec<String> = s.verdict("result").err().into_iter().collect();
    p.extend(s.state_problems("before", "after"));
    p.extend(s.pidset_problems("before", "after"));
    s.all_ok(p);
}
