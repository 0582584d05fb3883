//! End-to-end tests of file locks (tests/workloads/locks.py): refused without
//! --file-locks, taken again at restore with it. See tests/common/mod.rs.

mod common;

use common::*;

/// POSIX record locks (two ranges, a second fd of the file open), an flock on a
/// description shared with a child and an OFD lock: without --file-locks the dump
/// is refused saying so and the tree runs on; with it, after the restore another
/// process finds every lock held by its owner, and nothing more locked.
#[test]
fn posix_flock_and_ofd_locks_come_back_with_file_locks() {
    let s = Scenario::run_as(
        "file-locks",
        Creds::User,
        r#"
LOCKS="$(dirname "$LOOP_PY")/locks.py"
"${AS_WL[@]}" setsid "$PY3" "$LOCKS" "$T" </dev/null >"$T/out.txt" 2>"$T/locks.err" & P=$!; put pid $P
wait_until nonempty "$T/ready" && wait_until has_lines "$T/out.txt" 3 || fail "locks.py did not start: $(cat "$T/locks.err")"
PIDS=$(tree_of $P | sort -n | tr '\n' ' ')
grep -v -- '->' /proc/locks | awk '{print $2, $3, $4, $5, $7, $8}' | sort >"$T/locks.before"
run refused crt dump -t $P -D "$T/ck"
put tracer "$(tracer $P)"
snapshot before $P --no-pos
pidset before
run dump crt dump -t $P -D "$T/ck" --file-locks
need dump
wait_until gone $PIDS || fail "the dumped processes are still there"
run restore crt restore -D "$T/ck" -d
need restore
grep -v -- '->' /proc/locks | awk '{print $2, $3, $4, $5, $7, $8}' | sort >"$T/locks.after"
pidset after
snapshot after $P --no-pos
wait_until has_lines "$T/out.txt" $(( $(lines "$T/out.txt") + 10 )) && put counting yes
kill -USR1 $P
wait_until nonempty "$T/result" || fail "locks.py wrote no result: $(cat "$T/locks.err")"
"#,
    );
    s.failed_saying("refused", &["lock", "--file-locks"]);
    s.ensure(s.var("tracer") == "0", || "still traced after the refused dump".into());
    s.ok("dump");
    s.ok("restore");
    let (before, after) = (s.read("locks.before"), s.read("locks.after"));
    s.ensure(before.lines().count() >= 4, || format!("setup: /proc/locks shows {before}"));
    s.ensure(before == after, || format!("/proc/locks differs (kind, type, pid, range):\nbefore:\n{before}after:\n{after}"));
    s.ensure(s.var("counting") == "yes", || "the restored process does not count".into());
    s.roundtrip_ok("result");
    s.counter("out.txt");
}
