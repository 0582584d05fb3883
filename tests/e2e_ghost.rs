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

/// A deleted file that still has another name, open and mapped: refused without
/// --link-remap, naming the flag; a dump with it that fails (fault injected after
/// the link was made) leaves no link behind; a --leave-running dump and the real
/// dump with it restore the very file (same inode, writes seen both ways, offset,
/// deleted name) and the restored dump's link is gone afterwards (each images
/// directory has its own).
#[test]
fn a_deleted_file_with_another_name_needs_link_remap() {
    let before = r#"run refused crt dump -t $P -D "$T/ck0"
CRTOOL_FAULT=9 run failed crt dump -t $P -D "$T/ck1" --link-remap
put left_after_failure "$(ls -A "$T" | grep -c crtool-link-remap)"
put tracer_after_failure "$(tracer $P)"
run dump_r crt dump -t $P -D "$T/ck-r" -R --link-remap
need dump_r"#;
    // The --leave-running dump's link (its images need it) stays; the restored
    // dump's goes. The workload then checks the file has no other name left.
    let after = r#"put left_after_restore "$(ls -A "$T" | grep -c crtool-link-remap)"
rm -f "$T"/.crtool-link-remap.*"#;
    let s = py_roundtrip("link-remap", Creds::User, "linkremap", "", before, "--link-remap", "", after);
    s.failed_saying("refused", &["linked.dat", "other name", "--link-remap"]);
    s.ensure(s.rc("failed") != 0, || "the dump with a fault injected succeeded".into());
    s.ensure(s.var("left_after_failure") == "0", || "a failed dump left its link-remap link".into());
    s.ensure(s.var("tracer_after_failure") == "0", || "still traced after the failed dump".into());
    s.ensure(s.var("left_after_restore") == "1", || format!("{} link-remap links after the restore, want the --leave-running dump's only", s.var("left_after_restore")));
    s.roundtrip_ok("result");
    s.counter("out.txt");
}
