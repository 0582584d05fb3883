//! End-to-end tests of deleted files (ghost files, tests/workloads/ghost.py). See
//! tests/common/mod.rs for how scenarios run.

mod common;

use common::*;

const START_GHOST: &str = r#"
GHOST="$(dirname "$LOOP_PY")/ghost.py"
# (PYEXE: another interpreter.)
start_ghost() { "${AS_WL[@]}" setsid "${PYEXE:-$PY3}" "$GHOST" "$T" "$@" </dev/null >"$T/out.txt" 2>"$T/ghost.err" & }
"#;

/// Deleted files open (offset, mode, mtime, holes) and mapped shared and private
/// come back deleted, under their names, with their data; a deleted file whose name
/// a new file took comes back beside it, leaving the new file alone; nothing is left
/// in the directory.
#[test]
fn deleted_files_open_and_mapped_come_back() {
    let s = py_roundtrip("ghost", Creds::User, "ghost", "", LEAVE_RUNNING_FIRST, "", "", "");
    // The deleted file that came back beside its taken name shows that name in
    // /proc (the snapshot would differ in it): checked by the workload instead.
    if let Err(e) = s.verdict("result") {
        s.fail(&e);
    }
    let p: Vec<String> = s.state_problems("before", "after").into_iter().filter(|l| !l.contains("replaced.dat") && !l.contains(".crtool-ghost")).collect();
    s.all_ok(p);
    s.counter("out.txt");
}

/// A deleted file over the ghost limit is refused, naming --ghost-limit, and the
/// process runs on; with a larger --ghost-limit it is dumped and restored. The
/// interpreter runs from a copy deleted after it started (a program rebuilt in place
/// while it runs): it comes back as its deleted executable.
#[test]
fn a_deleted_file_over_the_ghost_limit_needs_ghost_limit() {
    let s = Scenario::run_as(
        "ghost-limit",
        Creds::User,
        &format!(
            r#"{START_GHOST}
mkdir "$T/bin"; cp "$(readlink -f "$PY3")" "$T/bin/python3"; chmod 755 "$T/bin/python3"
PYEXE="$T/bin/python3" start_ghost big; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "ghost.py did not start: $(cat "$T/ghost.err")"
rm "$T/bin/python3"
put exe_before "$(readlink /proc/$P/exe)"
run refused crt dump -t $P -D "$T/ck"
put tracer "$(tracer $P)"
run dump crt dump -t $P -D "$T/ck" --ghost-limit 16M
need dump
wait_until gone $P || fail "the dumped process is still there"
run restore crt restore -D "$T/ck" -d
need restore
put exe_after "$(readlink /proc/$P/exe)"
put bin_after "$(ls -A "$T/bin")"
kill -USR1 $P
wait_until nonempty "$T/result" || fail "ghost.py wrote no result: $(cat "$T/ghost.err")"
"#
        ),
    );
    s.failed_saying("refused", &["ghost limit", "--ghost-limit"]);
    s.ensure(s.var("exe_before").ends_with("/bin/python3 (deleted)") && s.var("exe_after") == s.var("exe_before"), || format!("/proc/PID/exe was {:?}, is {:?} after the restore", s.var("exe_before"), s.var("exe_after")));
    s.ensure(s.var("bin_after").is_empty(), || format!("left in the executable's directory: {}", s.var("bin_after")));
    s.ensure(s.var("tracer") == "0", || "still traced after the refused dump".into());
    s.ok("dump");
    s.ok("restore");
    s.passed("result");
}
