//! End-to-end tests of lazy restore (`restore --lazy-pages` with the
//! `lazy-pages` daemon, src/lazy/): the restored tree runs before its private
//! memory is there; the daemon supplies pages on fault and pushes the rest.

mod common;

use common::*;

/// The start of a scenario: tests/workloads/`wl`.py (incmem or lazyfork) dumped,
/// then restored with --lazy-pages while the daemon's background push is held
/// (CRTOOL_FAULT=201:hold, until $T/ck/lazy-pages.hold goes): only faults are
/// answered. Leaves P (the process), D (the daemon) and the before/after
/// snapshots and pid sets.
fn held_lazy_restore(wl: &str) -> String {
    r#"
"${AS_WL[@]}" setsid "$PY3" "$(dirname "$LOOP_PY")/@WORKLOAD@.py" "$T" </dev/null >"$T/out.txt" 2>"$T/wl.err" & P=$!; put pid $P
wait_until nonempty "$T/ready" && wait_until has_lines "$T/out.txt" 3 || fail "@WORKLOAD@.py did not start: $(cat "$T/wl.err")"
snapshot before $P --no-pos
pidset before
run dump crt dump -t $P -D "$T/ck"
need dump
wait_until gone $P || fail "the dumped process is still there"
touch "$T/ck/lazy-pages.hold"
CRTOOL_FAULT=201:hold "$CRTOOL" lazy-pages -D "$T/ck" >"$T/daemon.out" 2>&1 & D=$!
run restore crt restore -D "$T/ck" -d --lazy-pages
need restore
snapshot after $P --no-pos --lazy
pidset after $D $(pgrep -f __lazy-watchdog)
"#
    .replace("@WORKLOAD@", wl)
}

/// A process restored lazily with the daemon's background push held
/// (CRTOOL_FAULT=201:hold: only faults are answered) changes its memory and its
/// layout while pages are still owed: writes from user and kernel mode, a
/// mapping replaced, a fork whose child checks every page of its copy, pages
/// dropped with MADV_DONTNEED (they must read as zeros, not as the dumped data),
/// the bytearray grown by realloc (mremap). Then the push goes on; the daemon
/// exits 0 once everything is supplied, no range stays registered, and the
/// process finds every page as it recorded it (tests/workloads/incmem.py).
#[test]
fn a_lazily_restored_process_runs_forks_and_remaps_while_pages_are_owed() {
    let s = Scenario::run(
        "lazy-events",
        &(held_lazy_restore("incmem") + r#"
put um_held "$(grep -cE '^VmFlags:.* um( |$)' /proc/$P/smaps)"
L=$(lines "$T/out.txt"); wait_until has_lines "$T/out.txt" $((L + 3)) && put counting yes
for n in 1 2 3 4 5; do
    kill -USR2 $P
    wait_until nonempty "$T/round$n" || fail "round $n not done: $(cat "$T/wl.err")"
done
put daemon_held "$(kill -0 $D 2>/dev/null && echo running)"
rm "$T/ck/lazy-pages.hold"
wait $D; put daemon_rc $?
put um_after "$(grep -cE '^VmFlags:.* um( |$)' /proc/$P/smaps)"
kill -USR1 $P
wait_until nonempty "$T/result" || fail "incmem.py wrote no result: $(cat "$T/wl.err")"
"#),
    );
    s.ok("dump");
    s.ok("restore");
    s.ensure(s.num("um_held") > 0, || "no memory of the restored process was registered with the daemon's userfaultfd".into());
    s.ensure(s.var_opt("counting").as_deref() == Some("yes"), || "the lazily restored process does not count".into());
    s.ensure(s.var("daemon_held") == "running", || "the daemon finished while its push was held: nothing was left to fault".into());
    s.passed("child_result");
    let out = s.read("daemon.out");
    s.ensure(s.var("daemon_rc") == "0", || format!("the daemon failed (rc {}): {out}", s.var("daemon_rc")));
    let faults: u64 = out.split(" faults (").next().and_then(|h| h.rsplit(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(0);
    s.ensure(out.contains("2 processes served") && faults > 0, || format!("the daemon served no faults, or not the forked child: {out}"));
    s.ensure(s.num("um_after") == 0, || format!("{} VMAs still registered after the daemon ended", s.var("um_after")));
    s.roundtrip_ok("result");
}

/// A tree (43 processes: groups, sessions, an orphan; tests/workloads/tree.rs)
/// restored lazily: memory children share copy-on-write with their parent is
/// filled before they are forked, the rest comes from the daemon; every process
/// checks itself, and the tree is as it was once the daemon is done.
#[test]
fn a_process_tree_is_restored_lazily() {
    let s = Scenario::run(
        "lazy-tree",
        r#"
start_wl tree; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "tree did not get ready"
PIDS=$(tree_of $P | sort -n | tr '\n' ' '); put pids "$PIDS"
snapshot before $P
pidset before
run dump crt dump -t $P -D "$T/ck"
need dump
wait_until gone $PIDS || fail "processes of the dumped tree are still there"
"$CRTOOL" lazy-pages -D "$T/ck" >"$T/daemon.out" 2>&1 & D=$!
run restore crt restore -D "$T/ck" -d --lazy-pages
need restore
wait $D; put daemon_rc $?
pidset after
snapshot after $P
kill -USR1 $P
wait_until nonempty "$T/result" || fail "tree wrote no result after SIGUSR1"
"#,
    );
    s.ok("dump");
    s.ok("restore");
    let out = s.read("daemon.out");
    s.ensure(s.var("daemon_rc") == "0", || format!("the daemon failed (rc {}): {out}", s.var("daemon_rc")));
    s.ensure(out.contains(" processes served"), || format!("the daemon served no process: {out}"));
    s.roundtrip_ok("result");
}

/// When the daemon cannot supply a page (CRTOOL_FAULT=201: its first copy
/// fails), the task owed memory is killed and the daemon exits 1 saying so;
/// when the daemon is killed (SIGKILL) with pages owed, its watchdog kills the
/// task: it never reads zeros where it had data. `restore --lazy-pages` with no
/// daemon fails after waiting for one, naming the socket, and leaves nothing.
#[test]
fn a_task_whose_pages_cannot_come_is_killed_not_left_with_zeros() {
    let s = Scenario::run(
        "lazy-fail",
        r#"
"${AS_WL[@]}" setsid "$PY3" "$(dirname "$LOOP_PY")/incmem.py" "$T" </dev/null >"$T/out.txt" 2>"$T/wl.err" & P=$!; put pid $P
wait_until nonempty "$T/ready" && wait_until has_lines "$T/out.txt" 3 || fail "incmem.py did not start: $(cat "$T/wl.err")"
run dump crt dump -t $P -D "$T/ck"
need dump
wait_until gone $P || fail "the dumped process is still there"
run nodaemon crt restore -D "$T/ck" -d --lazy-pages
put left_nodaemon "$(gone $P || echo yes)"
# The daemon fails at its first page.
CRTOOL_FAULT=201 "$CRTOOL" lazy-pages -D "$T/ck" >"$T/daemon1.out" 2>&1 & D=$!
run restore1 crt restore -D "$T/ck" -d --lazy-pages
wait $D; put daemon1_rc $?
wait_until gone $P; put gone1 "$(gone $P && echo yes)"
# The daemon is killed while pages are owed.
touch "$T/ck/lazy-pages.hold"
CRTOOL_FAULT=201:hold "$CRTOOL" lazy-pages -D "$T/ck" >"$T/daemon2.out" 2>&1 & D=$!
run restore2 crt restore -D "$T/ck" -d --lazy-pages
need restore2
L=$(lines "$T/out.txt"); wait_until has_lines "$T/out.txt" $((L + 2)) && put ran2 yes
kill -9 $D
wait_until gone $P; put gone2 "$(gone $P && echo yes)"
put watchdogs "$(pgrep -fc __lazy-watchdog)"
"#,
    );
    s.failed_saying("nodaemon", &["lazy-pages.socket", "crtool lazy-pages -D"]);
    s.ensure(s.var("left_nodaemon").is_empty(), || "the restore without a daemon left its process behind".into());
    let out1 = s.read("daemon1.out");
    s.ensure(s.var("daemon1_rc") == "1" && out1.contains("killed"), || format!("the failing daemon: rc {}: {out1}", s.var("daemon1_rc")));
    s.ensure(s.var("gone1") == "yes", || "the task whose page could not be supplied still runs".into());
    s.ensure(s.var_opt("ran2").as_deref() == Some("yes"), || "the second lazy restore did not run".into());
    s.ensure(s.var("gone2") == "yes", || format!("the task still runs after its daemon was killed: {}", s.read("daemon2.out")));
    s.ensure(s.var("watchdogs") == "0", || format!("{} watchdogs left", s.var("watchdogs")));
}

/// Post-copy (CRIU's `dump --lazy-pages` with `lazy-pages --page-server`): the
/// dump stores everything but the private anonymous memory, which stays in the
/// stopped tree and is served over TCP; the restore (in a PID namespace of its
/// own: the stopped original still holds the PIDs) runs at once, the daemon
/// fetching pages on fault (its push held while the process forks, remaps and
/// drops memory) and then the rest; once it has everything the dump kills the
/// original and ends. A lazy restore that fails instead lets the original run on
/// and removes the images, which are useless without it.
#[test]
fn post_copy_fetches_memory_from_the_stopped_original() {
    let s = Scenario::run(
        "lazy-postcopy",
        r#"
PORT=$(free_port 10) || fail "no free TCP port"
"${AS_WL[@]}" setsid "$PY3" "$(dirname "$LOOP_PY")/incmem.py" "$T" </dev/null >"$T/out.txt" 2>"$T/wl.err" & P=$!; put pid $P
wait_until nonempty "$T/ready" && wait_until has_lines "$T/out.txt" 3 || fail "incmem.py did not start: $(cat "$T/wl.err")"
snapshot before $P --no-pos
# A restore that fails: the original runs on, the images go.
"$CRTOOL" dump -t $P -D "$T/ck0" --lazy-pages --address 127.0.0.1 --port $PORT --status-fd 3 3>"$T/status0" 2>"$T/dump0.err" & DP=$!
wait_until nonempty "$T/status0" || fail "the first lazy dump did not get ready: $(cat "$T/dump0.err")"
"$CRTOOL" lazy-pages -D "$T/ck0" --page-server --address 127.0.0.1 --port $PORT >"$T/daemon0.out" 2>&1 & D=$!
CRTOOL_FAULT=104 crt restore -D "$T/ck0" -d --lazy-pages --pidns >"$T/restore0.out" 2>&1
wait $D; put daemon0_rc $?
wait $DP; put dump0_rc $?
put images0 "$(ls "$T/ck0" | grep -c '\.img$')"
L=$(lines "$T/out.txt"); wait_until has_lines "$T/out.txt" $((L + 3)) && put ran_on yes
put state0 "$(state $P) $(tracer $P)"
# The migration.
PORT=$((PORT + 1))
"$CRTOOL" dump -t $P -D "$T/ck" --lazy-pages --address 127.0.0.1 --port $PORT --status-fd 3 3>"$T/status" 2>"$T/dump.err" & DP=$!
wait_until nonempty "$T/status" || fail "the lazy dump did not get ready: $(cat "$T/dump.err")"
put serving "$(state $P)"
run plain crt restore -D "$T/ck" -d
run again crt dump -t $P -D "$T/ck" --lazy-pages --port $((PORT + 7))
run pre crt pre-dump -t $P -D "$T/ck9" --lazy-pages --port $((PORT + 8))
touch "$T/ck/lazy-pages.hold"
CRTOOL_FAULT=201:hold "$CRTOOL" lazy-pages -D "$T/ck" --page-server --address 127.0.0.1 --port $PORT >"$T/daemon.out" 2>&1 & D=$!
run restore crt restore -D "$T/ck" -d --lazy-pages --pidns --pidfile "$T/newpid"
need restore
N=$(cat "$T/newpid"); put new $N
snapshot after $N --no-pos --lazy
L=$(lines "$T/out.txt"); wait_until has_lines "$T/out.txt" $((L + 3)) && put counting yes
for n in 1 2 3 4 5; do
    kill -USR2 $N
    wait_until nonempty "$T/round$n" || fail "round $n not done: $(cat "$T/wl.err")"
done
put original_held "$(state $P)"
rm "$T/ck/lazy-pages.hold"
wait $D; put daemon_rc $?
wait $DP; put dump_rc $?
wait_until gone $P; put original_gone "$(gone $P && echo yes)"
kill -USR1 $N
wait_until nonempty "$T/result" || fail "incmem.py wrote no result: $(cat "$T/wl.err")"
# The two snapshots differ in the PIDs seen from here (a new PID namespace).
sed -i -E "s/\\b$P\\b/PID/g; s/^  NSpid .*/  NSpid -/; s/^  ppid [0-9]+/  ppid -/" "$T/state.before"
sed -i -E "s/\\b$N\\b/PID/g; s/^  NSpid .*/  NSpid -/; s/^  ppid [0-9]+/  ppid -/" "$T/state.after"
"#,
    );
    let d0 = s.read("dump0.err");
    s.ensure(s.var("dump0_rc") != "0" && d0.contains("runs on"), || format!("the lazy dump whose restore failed: rc {}: {d0}", s.var("dump0_rc")));
    s.ensure(s.var("daemon0_rc") != "0", || format!("the daemon of the failed restore exited 0: {}", s.read("daemon0.out")));
    s.ensure(s.var("images0") == "0", || format!("{} image files left by the aborted lazy dump", s.var("images0")));
    s.ensure(s.var_opt("ran_on").as_deref() == Some("yes"), || format!("the original did not run on after the failed lazy restore (state {})", s.var("state0")));
    s.ensure(s.var("state0").ends_with(" 0"), || format!("the original is still traced: {}", s.var("state0")));
    s.ensure(s.var("serving").starts_with('t'), || format!("the original is not stopped while its memory is served: {}", s.var("serving")));
    s.failed_saying("plain", &["--lazy-pages", "lazy-pages -D DIR --page-server"]);
    s.failed_saying("again", &["holds a dump", "empty directory"]);
    s.failed_saying("pre", &["--lazy-pages", "pre-dump"]);
    s.ok("restore");
    s.ensure(s.var_opt("counting").as_deref() == Some("yes"), || "the lazily restored process does not count".into());
    s.ensure(s.var("original_held").starts_with('t'), || format!("the original left its stop while its memory was still owed: {}", s.var("original_held")));
    let out = s.read("daemon.out");
    s.ensure(s.var("daemon_rc") == "0" && out.contains("2 processes served"), || format!("the daemon: rc {}: {out}", s.var("daemon_rc")));
    let dump = s.read("dump.err");
    s.ensure(s.var("dump_rc") == "0" && dump.contains("served to the lazy-pages daemon"), || format!("the lazy dump: rc {}: {dump}", s.var("dump_rc")));
    s.ensure(s.var("original_gone") == "yes", || "the original still exists after the migration".into());
    s.passed("child_result");
    s.passed("result");
    s.all_ok(s.state_problems("before", "after"));
}

/// Forks while memory is owed (tests/workloads/lazyfork.py, the daemon's push
/// held): a child gets the owed pages of its copy, and its MADV_WIPEONFORK
/// memory empty (not the dumped data); then a child is orphaned (its parent
/// exits) and the daemon is SIGKILLed: the watchdog kills that child too, found
/// after its fork event, before it can read zeros where it had data.
#[test]
fn children_forked_while_memory_is_owed_get_it_or_are_killed() {
    let s = Scenario::run(
        "lazy-fork",
        &(held_lazy_restore("lazyfork") + r#"
kill -USR2 $P
wait_until nonempty "$T/child_result" || fail "no child result: $(cat "$T/wl.err")"
put um_held "$(grep -cE '^VmFlags:.* um( |$)' /proc/$P/smaps)"
kill -HUP $P
wait_until nonempty "$T/orphan" || fail "no orphan: $(cat "$T/wl.err")"
O=$(cat "$T/orphan"); put orphan $O
wait_until gone $P
put orphan_alive "$(alive $O && echo yes)"
kill -9 $D
wait_until gone $O; put orphan_gone "$(gone $O && echo yes)"
touch "$T/go"; sleep 0.3
put orphan_result "$(cat "$T/orphan_result" 2>/dev/null)"
"#),
    );
    s.ok("restore");
    s.ensure(s.num("um_held") > 0, || "nothing was registered with the daemon while its push was held".into());
    s.passed("child_result");
    s.ensure(s.var("orphan_alive") == "yes", || "the orphaned child was not running before the daemon died".into());
    s.ensure(s.var("orphan_gone") == "yes", || format!("the orphaned child {} survived its daemon's death (it would read zeros)", s.var("orphan")));
    s.ensure(s.var("orphan_result").is_empty(), || format!("the orphaned child ran on after its daemon died: {}", s.var("orphan_result")));
    s.all_ok([s.state_problems("before", "after"), s.pidset_problems("before", "after")].concat());
}
