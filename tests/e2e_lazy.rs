//! End-to-end tests of lazy restore (`restore --lazy-pages` with the
//! `lazy-pages` daemon, src/lazy/): the restored tree runs before its private
//! memory is there; the daemon supplies pages on fault and pushes the rest.

mod common;

use common::*;

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
        r#"
"${AS_WL[@]}" setsid "$PY3" "$(dirname "$LOOP_PY")/incmem.py" "$T" </dev/null >"$T/out.txt" 2>"$T/wl.err" & P=$!; put pid $P
wait_until nonempty "$T/ready" && wait_until has_lines "$T/out.txt" 3 || fail "incmem.py did not start: $(cat "$T/wl.err")"
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
"#,
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
