//! End-to-end tests of job control (the `jobctl` workload): processes stopped by
//! SIGSTOP or SIGTSTP, alone or as the child of a parent waiting in
//! waitpid(WUNTRACED|WCONTINUED), single- and multithreaded, are dumped stopped and
//! come back stopped (every thread in state T, untraced), SIGCONT resumes them, and
//! the parent sees exactly the reports and SIGCHLDs it would have seen without the
//! dump. See tests/common/mod.rs for how scenarios run.

mod common;

use common::*;

/// Every thread's state letter after the name in /proc/PID/task/*/stat, as "N X"
/// counts, e.g. "4 T".
const HELPERS: &str = r#"
task_states() { for t in /proc/$1/task/*; do read -r s <$t/stat; s=${s##*) }; echo ${s%% *}; done | sort | uniq -c | tr -s ' \n' ' '; }
# field52 PID: /proc/PID/stat field 52 (exit_code: the stop signal until the parent
# collects the stop with waitpid, then 0).
field52() { local s; read -r s <"/proc/$1/stat"; s=${s##*) }; set -- $s; echo ${50}; }
all_tracers() { for t in /proc/$1/task/*; do tracer ${t#/proc/}; done | sort -u | tr '\n' ' '; }
"#;

/// The child case: `jobctl child ARGS` (P and its stopped child C with `threads`
/// extra threads). Dumped and restored with C stopped; after the restore C and its
/// threads must all be stopped, untraced, with the same stat field 52 as before;
/// then (for `nocollect`, after P collected the stop) SIGCONT, and P's verdict on its
/// waitpid reports and SIGCHLDs.
fn stopped_child(name: &str, args: &str, threads: usize, sig: i32, collect: bool) {
    let s = Scenario::run(
        name,
        &format!(
            r#"{HELPERS}
start_wl jobctl child {args}; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "jobctl did not get ready"
C=$(cat "$T/child"); put child $C
PIDS=$(tree_of $P | sort -n | tr '\n' ' '); put pids "$PIDS"
put c_states_before "$(task_states $C)"
put f52_before "$(field52 $C)"
snapshot before $P
pidset before
run dump crt dump -t $P -D "$T/ck"
need dump
wait_until gone $PIDS || fail "the dumped tree is still there"
run restore crt restore -D "$T/ck" -d
need restore
pidset after
snapshot after $P
put c_states_after "$(task_states $C)"
put f52_after "$(field52 $C)"
put tracers "$(all_tracers $P) $(all_tracers $C)"
sleep 0.3
put c_states_later "$(task_states $C)"
if [ {collect} = no ]; then
    kill -USR2 $P
    wait_until nonempty "$T/collected" || fail "the parent did not collect the stop after the restore"
fi
kill -CONT $C
wait_until nonempty "$T/child-done" || fail "the child did not exit after SIGCONT (events: $(cat "$T/events" 2>/dev/null))"
kill -USR1 $P
wait_until nonempty "$T/result" || fail "jobctl wrote no result after SIGUSR1"
"#,
            collect = if collect { "yes" } else { "no" }
        ),
    );
    s.ok("dump");
    s.ok("restore");
    let want_states = format!("{} T", threads + 1);
    for key in ["c_states_before", "c_states_after", "c_states_later"] {
        let v = s.var(key);
        s.ensure(v.trim() == want_states, || format!("{key}: the child's threads are in states {v:?}, expected all {} stopped ({want_states:?})", threads + 1));
    }
    let tracers = s.var("tracers");
    s.ensure(tracers.split_whitespace().all(|t| t == "0"), || format!("TracerPids after the restore: {tracers}"));
    let f52 = (s.num("f52_before"), s.num("f52_after"));
    let want52 = if collect { 0 } else { sig as i64 };
    s.ensure(f52.0 == want52, || format!("setup: stat field 52 of the child before the dump is {}, expected {want52}", f52.0));
    s.ensure(f52.1 == want52, || format!("stat field 52 of the stopped child after the restore is {} (before: {}): the stop is {} the parent", f52.1, f52.0, if collect { "reported again to" } else { "no longer pending for" }));
    let mut p: Vec<String> = s.verdict("result").err().map(|e| format!("{e}\n(waitpid reports: {:?})", s.read("events"))).into_iter().collect();
    p.extend(s.state_problems("before", "after"));
    p.extend(s.pidset_problems("before", "after"));
    s.all_ok(p);
}

/// SIGSTOP, stop collected before the dump: after SIGCONT the parent sees CONTINUED
/// and EXITED 7, no second STOPPED; SIGCHLDs CLD_CONTINUED, CLD_EXITED only.
#[test]
fn stopped_child_collected_comes_back_stopped() {
    stopped_child("stop-collected", "", 0, libc::SIGSTOP, true);
}

/// SIGSTOP, stop not collected: after the restore waitpid(WUNTRACED) still reports
/// STOPPED 19 (stat field 52 is 19 before and after).
#[test]
fn stopped_child_uncollected_stop_is_still_reported_after_restore() {
    stopped_child("stop-uncollected", "nocollect", 0, libc::SIGSTOP, false);
}

/// SIGTSTP (the child leads its own process group), not collected: the parent's
/// waitpid after the restore reports STOPPED 20, the signal that stopped it.
#[test]
fn child_stopped_by_sigtstp_reports_sigtstp_after_restore() {
    stopped_child("tstp-uncollected", "tstp nocollect", 0, libc::SIGTSTP, false);
}

/// SIGTSTP, collected, the child with 3 more threads: all 4 stay stopped, all resume.
#[test]
fn multithreaded_child_stopped_by_sigtstp_comes_back_stopped() {
    stopped_child("tstp-threads", "tstp threads=3", 3, libc::SIGTSTP, true);
}

/// SIGCHLD blocked in the parent and the stop's SIGCHLD taken (none pending at the
/// dump): none may be pending after the restore (ShdPnd in the snapshots), though
/// putting the child back into its stop raises one.
#[test]
fn no_spurious_sigchld_pending_after_restoring_a_stopped_child() {
    stopped_child("stop-sigchld-blocked", "threads=2 sigchld-blocked", 2, libc::SIGSTOP, true);
}

/// The same with the stop not collected.
#[test]
fn no_spurious_sigchld_pending_after_restoring_an_uncollected_stop() {
    stopped_child("stop-sigchld-blocked-uncollected", "nocollect sigchld-blocked", 0, libc::SIGSTOP, false);
}

/// The dumped process itself stopped (SIGSTOP), alone, with `threads` extra threads:
/// it comes back stopped, every thread in T, untraced, with stat field 52 still 19
/// (its parent, the scenario's shell, never collects it); SIGCONT resumes every
/// thread.
fn stopped_alone(name: &str, threads: usize) {
    let s = Scenario::run(
        name,
        &format!(
            r#"{HELPERS}
is_stopped() {{ [ "$(state $1)" = T ]; }}
start_wl jobctl self threads={threads}; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "jobctl did not get ready"
wait_until is_stopped $P || fail "it did not stop itself"
put states_before "$(task_states $P)"
put f52_before "$(field52 $P)"
snapshot before $P
pidset before
run dump crt dump -t $P -D "$T/ck"
need dump
wait_until gone $P || fail "the dumped process is still there"
run restore crt restore -D "$T/ck" -d
need restore
pidset after
snapshot after $P
put states_after "$(task_states $P)"
put f52_after "$(field52 $P)"
put tracers "$(all_tracers $P)"
sleep 0.3
put states_later "$(task_states $P)"
kill -CONT $P
sleep 0.1
put states_continued "$(task_states $P)"
kill -USR1 $P
wait_until nonempty "$T/result" || fail "jobctl wrote no result after SIGUSR1"
"#
        ),
    );
    s.ok("dump");
    s.ok("restore");
    let want = format!("{} T", threads + 1);
    for key in ["states_before", "states_after", "states_later"] {
        let v = s.var(key);
        s.ensure(v.trim() == want, || format!("{key}: the threads are in states {v:?}, expected all {} stopped ({want:?})", threads + 1));
    }
    let cont = s.var("states_continued");
    s.ensure(!cont.contains('T'), || format!("after SIGCONT the threads are in states {cont:?}"));
    let tracers = s.var("tracers");
    s.ensure(tracers.trim() == "0", || format!("TracerPids after the restore: {tracers}"));
    let f52 = (s.num("f52_before"), s.num("f52_after"));
    s.ensure(f52 == (19, 19), || format!("stat field 52 before the dump {}, after the restore {} (expected 19, 19: the stop is not collected)", f52.0, f52.1));
    s.roundtrip_ok("result");
}

#[test]
fn process_stopped_alone_comes_back_stopped() {
    stopped_alone("stopped-alone", 0);
}

#[test]
fn multithreaded_process_stopped_alone_comes_back_stopped() {
    stopped_alone("stopped-alone-threads", 3);
}
