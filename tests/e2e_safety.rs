//! End-to-end tests of failures: refused dumps leave every process running, failed
//! restores leave nothing behind, corrupt images and taken pids are refused. See
//! tests/common/mod.rs for how scenarios run.

mod common;

use common::*;

// ------------------------------------------------------------------ refused dumps

/// loop.py holding `hold`: the dump must fail naming pid and fd, leave the process
/// running untraced and counting, its visible state as it was, and no images behind.
fn unsupported_fd(name: &str, setup: &str, hold: &str) {
    let s = Scenario::run(
        name,
        &format!(
            r#"
{setup}
start_loop --hold {hold}; P=$!; put pid $P
wait_until has_lines "$T/out.txt" 5 || fail "loop.py did not start counting"
# The lowest fd that is not a regular file or /dev/null.
fd=$(for f in /proc/$P/fd/*; do l=$(readlink "$f"); case "$l" in /dev/null|*/out.txt|*/loop.err) ;; *) basename "$f";; esac; done | sort -n | head -1)
put fd "$fd"; put link "$(readlink /proc/$P/fd/$fd)"
snapshot before $P --no-pos
pidset before
run dump "$CRTOOL" dump -t $P -D "$T/ck"
pidset after
snapshot after $P --no-pos
alive $P && put alive yes
put state "$(state $P)"; put tracer "$(tracer $P)"
put images "$(images "$T/ck")"
wait_until has_lines "$T/out.txt" $(( $(lines "$T/out.txt") + 10 )) && put counting yes
kill $P
wait_until dead $P
"#
        ),
    );
    let p = s.pid();
    let fd = s.var("fd");
    s.ensure(!fd.is_empty(), || "the workload holds no unsupported fd (setup problem)".into());
    s.failed_saying("dump", &[&format!("pid {p}"), &format!("fd {fd}")]);
    s.ensure(s.var("alive") == "yes", || format!("pid {p} is gone after the refused dump"));
    let state = s.var("state");
    s.ensure(state == "S" || state == "R", || format!("pid {p} is in state {state} after the refused dump (stopped?)"));
    s.ensure(s.var("tracer") == "0", || format!("pid {p} is still traced (TracerPid {})", s.var("tracer")));
    s.ensure(s.var("counting") == "yes", || format!("pid {p} stopped counting after the refused dump"));
    s.ensure(s.var("images").trim().is_empty(), || format!("a refused dump left images behind: {}", s.var("images")));
    s.counter("out.txt");
    let mut p = s.state_problems("before", "after");
    p.extend(s.pidset_problems("before", "after"));
    s.all_ok(p);
}

#[test]
fn dump_refuses_a_udplite_socket_and_the_process_runs_on() {
    unsupported_fd("udplite-socket", "", "udplite");
}

/// A pseudo-terminal in EXTPROC mode passes the by-name precheck and is only
/// refused once its fd was received from the task: the cure path must leave the
/// task as it was.
#[test]
fn dump_refuses_a_terminal_after_infection_and_the_process_runs_on() {
    unsupported_fd("ptmx", "", "ptmx");
}

/// A tree (bash → loop.py, and a bash subshell → loop.py, loop.py holding `hold`)
/// whose last grandchild holds what crtool refuses: the dump fails naming that pid
/// and fd (`link` matches the fd's target), every process of the tree runs on
/// untraced and unstopped with its visible state as it was, the loops keep counting,
/// and no images are left.
fn refused_tree(name: &str, hold: &str, link: &str) {
    let s = Scenario::run(
        name,
        &format!(
            r#"
export T LOOP_PY
"${{AS_WL[@]}}" setsid bash -c '"$PY3" "$LOOP_PY" >"$T/c0.txt" & ("$PY3" "$LOOP_PY" >"$T/c1.txt" & "$PY3" "$LOOP_PY" --hold {hold} >"$T/c2.txt" & wait) & wait' </dev/null >/dev/null 2>"$T/loop.err" & P=$!; put pid $P
for f in c0 c1 c2; do wait_until has_lines "$T/$f.txt" 5 || fail "$f did not start counting"; done
PIDS=$(tree_of $P | sort -n | tr '\n' ' '); put pids "$PIDS"
H=$(for p in $PIDS; do [ "$(cat /proc/$p/comm)" = python3 ] && grep -q -- --hold /proc/$p/cmdline && echo $p; done); put holder "$H"
fd=$(for f in /proc/$H/fd/*; do case "$(readlink "$f")" in {link}) basename "$f";; esac; done | sort -n | head -1); put fd "$fd"
snapshot before $P --no-pos
pidset before
run dump crt dump -t $P -D "$T/ck"
pidset after
snapshot after $P --no-pos
put states "$(for p in $PIDS; do echo "$p $(state $p) $(tracer $p)"; done)"
put images "$(images "$T/ck")"
for f in c0 c1 c2; do wait_until has_lines "$T/$f.txt" $(( $(lines "$T/$f.txt") + 10 )) || put stuck "$f"; done
kill -TERM -- -$P
"#
        ),
    );
    let holder = s.var("holder");
    let fd = s.var("fd");
    s.ensure(!holder.is_empty() && !fd.is_empty(), || format!("setup: no {hold} holder found in {}", s.var("pids")));
    s.ensure(s.var("pids").split_whitespace().count() == 5, || format!("setup: the tree is {}", s.var("pids")));
    s.failed_saying("dump", &[&format!("pid {holder}"), &format!("fd {fd}")]);
    for line in s.var("states").lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        s.ensure(f.len() == 3 && (f[1] == "S" || f[1] == "R") && f[2] == "0", || format!("after the refused dump a process is not running untraced (pid state tracer): {line}"));
    }
    s.ensure(s.var("stuck").is_empty(), || format!("{} stopped counting after the refused dump", s.var("stuck")));
    s.ensure(s.var("images").trim().is_empty(), || format!("a refused dump left images behind: {}", s.var("images")));
    for f in ["c0.txt", "c1.txt", "c2.txt"] {
        s.counter(f);
    }
    let mut p = s.state_problems("before", "after");
    p.extend(s.pidset_problems("before", "after"));
    s.all_ok(p);
}

#[test]
fn refused_tree_dump_leaves_every_process_running() {
    refused_tree("tree-refused-socket", "udplite", "socket:*");
}

/// The same with a terminal in EXTPROC mode (/dev/ptmx), which is only refused once
/// its fd was received from the task: the processes dumped before it were infected
/// and cured.
#[test]
fn tree_dump_refused_after_infection_leaves_every_process_running() {
    refused_tree("tree-refused-ptmx", "ptmx", "/dev/ptmx|/dev/pts/ptmx");
}

// ------------------------------------------------------------------ failed restores

/// A tree (bash → loop.py and memstate, which leads a session of its own and maps
/// memstate-cwd/mapped.dat) whose mapped file is removed before the restore: the
/// restore fails part-way naming the file and leaves no process of the tree (nor any
/// other) behind. With the file back, the same images restore, with the visible
/// state of the tree and the processes of the PID namespace as they were.
#[test]
fn failed_tree_restore_leaves_nothing_behind() {
    let s = Scenario::run(
        "tree-restore-fails",
        r#"
export T LOOP_PY MEMSTATE
"${AS_WL[@]}" setsid bash -c '"$PY3" "$LOOP_PY" >"$T/out.txt" & setsid "$MEMSTATE" "$T/ready" "$T/result" idle no-shared-anon >"$T/memstate.log" 2>&1 & wait' </dev/null >/dev/null 2>"$T/loop.err" & P=$!; put pid $P
wait_until nonempty "$T/ready" && wait_until has_lines "$T/out.txt" 5 || fail "the tree did not start"
PIDS=$(tree_of $P | sort -n | tr '\n' ' '); put pids "$PIDS"
M=$(for p in $PIDS; do [ "$(cat /proc/$p/comm)" = memstate-comm ] && echo $p; done); put memstate "$M"
grep -q mapped.dat /proc/$M/maps || fail "memstate does not map mapped.dat"
snapshot before $P --no-pos
pidset before
run dump crt dump -t $P -D "$T/ck"
need dump
wait_until gone $PIDS || fail "the dumped tree is still there"
pidset dumped
mv "$T/memstate-cwd/mapped.dat" "$T/mapped.dat.away"
run restore crt restore -D "$T/ck" -d
sleep 0.3
pidset failed
put left "$(for p in $PIDS; do [ -e /proc/$p ] && echo "$p $(state $p)"; done; ps -e -o pid=,stat=,comm= | awk '$3 != "bash" && $3 != "ps" && $3 != "awk"')"
put n "$(lines "$T/out.txt")"
sleep 0.3
put n_later "$(lines "$T/out.txt")"
mv "$T/mapped.dat.away" "$T/memstate-cwd/mapped.dat"
run restore_good crt restore -D "$T/ck" -d
pidset after
snapshot after $P --no-pos
wait_until has_lines "$T/out.txt" $(( $(lines "$T/out.txt") + 10 )) && put counting yes
kill -USR1 $M
wait_until nonempty "$T/result"
kill -TERM -- -$P
"#,
    );
    s.ok("dump");
    s.failed_saying("restore", &["mapped.dat"]);
    s.ensure(s.var("left").trim().is_empty(), || format!("processes left after the failed restore:\n{}", s.var("left")));
    s.ensure(s.var("n") == s.var("n_later"), || "out.txt grew after the failed restore".into());
    s.ok("restore_good");
    s.ensure(s.var("counting") == "yes", || "the intact tree did not count after the second restore".into());
    s.counter("out.txt");
    let mut p = s.pidset_problems("dumped", "failed");
    p.extend(s.verdict("result").err());
    p.extend(s.state_problems("before", "after"));
    p.extend(s.pidset_problems("before", "after"));
    s.all_ok(p);
}

#[test]
fn corrupt_images_are_refused() {
    let s = Scenario::run(
        "corrupt",
        r#"
# flip FILE: invert the byte in the middle of FILE.
flip() { python3 -c 'import os, sys
p = sys.argv[1]; off = os.path.getsize(p) // 2
with open(p, "r+b") as f:
    f.seek(off); b = f.read(1); f.seek(off); f.write(bytes([b[0] ^ 0xff]))' "$1"; }
start_loop; P=$!; put pid $P
wait_until has_lines "$T/out.txt" 5 || fail "loop.py did not start counting"
snapshot before $P --no-pos
pidset before
run dump "$CRTOOL" dump -t $P -D "$T/ck"
need dump
wait_until dead $P || fail "the dumped process is still alive"
pidset dumped
cp -a "$T/ck" "$T/ck_pages"; flip "$T/ck_pages/pages-$P.img"
cp -a "$T/ck" "$T/ck_core"; flip "$T/ck_core/core-$P.img"
run verify_pages "$CRTOOL" verify "$T/ck_pages"
run verify_core "$CRTOOL" verify "$T/ck_core"
run verify_good "$CRTOOL" verify "$T/ck"
run restore_pages "$CRTOOL" restore -D "$T/ck_pages" -d
sleep 0.2; put after_pages "$(state $P)"; pidset failed_pages; kill -9 $P 2>/dev/null
wait_until dead $P
run restore_core "$CRTOOL" restore -D "$T/ck_core" -d
sleep 0.2; put after_core "$(state $P)"; pidset failed_core; kill -9 $P 2>/dev/null
wait_until dead $P
# The intact images still restore (so the failures above are the corruption's).
run restore_good "$CRTOOL" restore -D "$T/ck" -d
pidset after
snapshot after $P --no-pos
wait_until has_lines "$T/out.txt" $(( $(lines "$T/out.txt") + 10 )) && put counting yes
kill $P
"#,
    );
    let p = s.pid();
    s.ok("dump");
    let (pages, core) = (format!("pages-{p}.img"), format!("core-{p}.img"));
    s.failed_saying("verify_pages", &[&pages]);
    s.failed_saying("verify_core", &[&core]);
    s.ok("verify_good");
    s.failed_saying("restore_pages", &[&pages]);
    s.ensure(s.var("after_pages") == "gone", || format!("a process with pid {p} is left after the failed restore (state {})", s.var("after_pages")));
    s.failed_saying("restore_core", &[&core]);
    s.ensure(s.var("after_core") == "gone", || format!("a process with pid {p} is left after the failed restore (state {})", s.var("after_core")));
    s.ok("restore_good");
    s.ensure(s.var("counting") == "yes", || "the intact images did not restore a counting process".into());
    s.counter("out.txt");
    let mut p = s.pidset_problems("dumped", "failed_pages");
    p.extend(s.pidset_problems("dumped", "failed_core"));
    p.extend(s.state_problems("before", "after"));
    p.extend(s.pidset_problems("before", "after"));
    s.all_ok(p);
}

#[test]
fn restore_refuses_a_taken_pid() {
    let s = Scenario::run(
        "pid-taken",
        r#"
start_loop; P=$!; put pid $P
wait_until has_lines "$T/out.txt" 5 || fail "loop.py did not start counting"
snapshot before $P --no-pos
pidset before
run dump "$CRTOOL" dump -t $P -D "$T/ck" --leave-running
run restore "$CRTOOL" restore -D "$T/ck" -d
pidset after
snapshot after $P --no-pos
alive $P && put alive yes
put state "$(state $P)"; put tracer "$(tracer $P)"
wait_until has_lines "$T/out.txt" $(( $(lines "$T/out.txt") + 10 )) && put counting yes
kill $P
wait_until dead $P
"#,
    );
    let p = s.pid();
    s.ok("dump");
    s.failed_saying("restore", &[&format!("pid {p}"), "taken"]);
    s.ensure(s.var("alive") == "yes", || format!("the original pid {p} is gone"));
    s.ensure(s.var("tracer") == "0", || format!("pid {p} is traced (TracerPid {})", s.var("tracer")));
    s.ensure(s.var("counting") == "yes", || format!("the original pid {p} stopped counting (state {})", s.var("state")));
    s.counter("out.txt");
    // The dump with --leave-running and the refused restore leave the original as it was.
    let mut p = s.state_problems("before", "after");
    p.extend(s.pidset_problems("before", "after"));
    s.all_ok(p);
}
