//! End-to-end tests of process trees: a shell pipeline session, the tree workload
//! (groups, sessions, zombies, orphans) and a nested PID namespace. See
//! tests/common/mod.rs for how scenarios run.

mod common;

use common::*;

/// A shell pipeline in its own session: the session leader bash, the subshell running
/// the loop, cat, and the loop's current `sleep 0.05` (dumped in its nanosleep). All
/// come back with their pid, parent, process group and session; out.txt goes on with
/// no gap and no repeat.
#[test]
fn shell_pipeline_session_comes_back_whole() {
    let s = Scenario::run(
        "pipeline",
        r#"
cd "$T"
"${AS_WL[@]}" setsid bash -c 'i=0; while :; do echo $i; i=$((i+1)); sleep 0.05; done | cat >> out.txt' </dev/null >/dev/null 2>&1 & P=$!; put pid $P
wait_until has_lines "$T/out.txt" 10 || fail "the pipeline did not start counting"
for k in $(cat /proc/$P/task/$P/children); do case "$(cat /proc/$k/comm)" in cat) CAT=$k;; bash) SUB=$k;; esac; done
[ -n "${CAT:-}" ] && [ -n "${SUB:-}" ] || fail "no subshell and cat below the session leader"
# find_sleep OLD: sets SL to a `sleep` child of the subshell, other than OLD, that
# is in its nanosleep (syscall 230); builtins only, to catch it as it starts.
find_sleep() {
    local c comm nr kids=()
    # (no newline at the end of the children file: read "fails" but fills kids)
    read -r -a kids 2>/dev/null </proc/$SUB/task/$SUB/children
    for c in "${kids[@]}"; do
        [ "$c" != "$1" ] || continue
        read -r comm 2>/dev/null </proc/$c/comm || continue
        [ "$comm" = sleep ] || continue
        read -r nr _ 2>/dev/null </proc/$c/syscall || continue
        [ "$nr" = 230 ] && SL=$c && return 0
    done
    return 1
}
# Dump right after a new sleep started, so that it still has most of its 50 ms to
# sleep after the restore. Should the freeze come late (a loaded machine: the sleep
# had ended, or had less than 20 ms left), restore and try again.
for attempt in $(seq 1 15); do
    SL=; wait_until find_sleep none || fail "no sleep below the subshell"
    OLD=$SL; SL=
    for i in $(seq 1 50000); do quietly find_sleep $OLD && break; done
    [ -n "$SL" ] || fail "never caught the loop's next sleep"
    T_CAUGHT=${EPOCHREALTIME/./}
    snap $P $SUB $CAT $SL >"$T/before"
    run dump "$CRTOOL" dump -t $P -D "$T/ck"
    T_DUMPED=${EPOCHREALTIME/./}
    need dump
    # ms from catching the sleep to the freeze: the dump's duration minus its frozen time
    LATE=$(( (T_DUMPED - T_CAUGHT) / 1000 - $(sed -n 's/.*frozen \([0-9]*\).*/\1/p' "$T/dump.err") ))
    wait_until gone $P $SUB $CAT $SL || fail "the dumped processes are still there"
    run pstree crt decode "$T/ck/pstree.img" --json
    grep -q "\"pid\": $SL," "$T/pstree.out" && [ "$LATE" -lt 35 ] && break
    [ "$attempt" = 15 ] && fail "the machine is too busy: the dump never froze the tree within 35 ms of a sleep's start"
    run retry crt restore -D "$T/ck" -d
    need retry
    rm -rf "$T/ck"
done
put attempts $attempt
put n_dumped "$(lines "$T/out.txt")"
# The short sleep may end soon after the restore: catch it the moment crtool lets it go.
watch_sleep() {
    local k v end=$(( ${EPOCHREALTIME/./} + 10000000 ))
    while (( ${EPOCHREALTIME/./} < end )); do
        [ -e /proc/$SL ] || continue
        while read -r k v; do [ "$k" = TracerPid: ] && break; done 2>/dev/null </proc/$SL/status
        [ "$v" = 0 ] && snap $SL >"$T/after.sleep" && return
    done
}
quietly watch_sleep & W=$!
run restore "$CRTOOL" restore -D "$T/ck" -d
snap $P $SUB $CAT >"$T/after"
wait $W
cat "$T/after.sleep" >>"$T/after"
need restore
wait_until has_lines "$T/out.txt" $(( $(lines "$T/out.txt") + 20 )) && put counting yes
kill -TERM -- -$P
wait_until gone $P $SUB $CAT
"#,
    );
    s.ok("dump");
    s.ok("restore");
    let rows = |rel: &str| -> Vec<Vec<String>> { s.read(rel).lines().map(|l| l.split_whitespace().take(5).map(str::to_string).collect()).collect() };
    let (before, after) = (rows("before"), rows("after"));
    s.ensure(before.len() == 4 && before.iter().all(|r| r.len() == 5), || format!("bad snapshot before the dump:\n{}", s.read("before")));
    let names = ["session leader bash", "subshell", "cat", "sleep"];
    s.ensure(after.len() == 4, || format!("the sleep (pid {}) was never seen running after the restore", before[3][0]));
    for (i, (b, a)) in before.iter().zip(after.iter()).enumerate() {
        s.ensure(a.len() == 5, || format!("the {} (pid {}) is gone right after the restore", names[i], b[0]));
        s.ensure(a[2..5] == b[2..5], || format!("the {} (pid {}) has ppid/pgid/sid {:?} after the restore, {:?} before", names[i], b[0], &a[2..5], &b[2..5]));
    }
    let json: serde_json::Value = serde_json::from_str(&s.out("pstree")).unwrap_or_else(|e| s.fail(&format!("pstree.img does not decode: {e}")));
    let mut dumped: Vec<String> = json["entries"].as_array().map(|a| a.iter().map(|e| e["pid"].to_string()).collect()).unwrap_or_default();
    dumped.sort();
    let mut want: Vec<String> = before.iter().map(|r| r[0].clone()).collect();
    want.sort();
    s.ensure(dumped == want, || format!("pstree.img holds pids {dumped:?}, the session was {want:?}"));
    s.ensure(s.var("counting") == "yes", || "out.txt did not keep growing after the restore".into());
    let n = s.counter("out.txt");
    let dumped_lines = s.num("n_dumped") as u64;
    s.ensure(n >= dumped_lines + 20, || format!("only {n} lines, {dumped_lines} at the dump"));
}

/// A tree of 43 processes (depth 3, width 3; a process group led by a non-leader of
/// the session, a second session, a process orphaned and reparented to the subreaper
/// root): every process checks its pid, parent, group and session; the root checks
/// `ps` and that it is still a child subreaper.
#[test]
fn process_tree_keeps_pids_parents_groups_and_sessions() {
    let s = workload_roundtrip("tree", "tree", "", "", "", "");
    let n = s.var("pids").split_whitespace().count();
    s.ensure(n == 43, || format!("the tree had {n} processes, expected 43: {}", s.var("pids")));
}

/// The tree with two zombies (exited 42, killed by SIGTERM) that their parent only
/// reaps after the restore, checking their status.
#[test]
fn zombies_come_back_for_their_parent_to_reap() {
    workload_roundtrip("tree-zombies", "tree", "zombies", "", "", "");
}

/// The tree where the orphans' process group has lost its leader (it exited; its two
/// members were reparented to the root): the group must come back with its id.
#[test]
fn process_group_whose_leader_exited_comes_back() {
    workload_roundtrip("tree-leaderless", "tree", "leaderless", "", "", "");
}

/// The tree workload as PID 1 of a nested PID namespace with its own /proc (unshare
/// -pf --mount-proc inside the test's namespace), dumped by the init's outer pid:
/// after the restore the processes see the same inner pids and `ps` inside lists
/// exactly the tree. Three of its processes hold 40 MiB each (`bigmem`), which
/// the restore fills with a helper process per restoring process (PIDs in both
/// namespaces that no process of the tree needs): every word comes back.
#[test]
fn nested_pid_namespace_comes_back_with_the_same_inner_pids() {
    let s = Scenario::run(
        "pidns",
        r#"
# unshare (root) makes the namespace; its init drops to the workloads' credentials.
unshare -pf --mount-proc "${AS_WL[@]}" setsid "$EXAMPLES/tree" "$T" bigmem </dev/null >"$T/tree.log" 2>&1 & U=$!
wait_until nonempty "$T/ready" || fail "the tree did not get ready"
read -r INIT _ </proc/$U/task/$U/children; put pid "$INIT"
put nspid "$(awk '/^NSpid:/ {print $2, $3}' /proc/$INIT/status)"
PIDS=$(tree_of $INIT | sort -n | tr '\n' ' '); put pids "$PIDS"
# The init's parent, unshare, is not dumped: it goes, and the restored init gets
# another parent.
snapshot before $INIT --ignore-root-ppid
pidset before $U
run dump crt dump -t $INIT -D "$T/ck"
need dump
wait_until gone $PIDS $U || fail "the dumped namespace is still there"
run restore crt restore -D "$T/ck" -d
need restore
pidset after
# The restored init: a "tree" that is PID 1 of a namespace below ours.
R=$(for f in /proc/[0-9]*/status; do awk '/^Name:/ {n = $2} /^NSpid:/ && NF == 3 && $3 == 1 && n == "tree" {print $2}' "$f" 2>/dev/null; done | head -1)
[ -n "$R" ] || fail "no restored init found"
snapshot after $R --ignore-root-ppid
put restored_nspid "$(awk '/^NSpid:/ {print $2, $3}' /proc/$R/status)"
put inner "$(for p in $(tree_of $R); do awk '/^NSpid:/ {print $3}' /proc/$p/status; done | sort -n | tr '\n' ' ')"
put outer_ns_of_ps "$(readlink /proc/$R/ns/pid)"
kill -USR1 $R
wait_until nonempty "$T/result" || fail "the tree wrote no result after SIGUSR1"
"#,
    );
    s.ok("dump");
    s.ok("restore");
    let helped = s.read("ck/restore.log").matches("memory filled with a helper").count();
    s.ensure(helped >= 3 || std::thread::available_parallelism().map_or(1, |n| n.get()) < 2, || format!("{helped} processes had their memory filled with a helper, expected 3:\n{}", s.read("ck/restore.log")));
    let nspid = s.var("nspid");
    s.ensure(nspid.split_whitespace().nth(1) == Some("1"), || format!("setup: the namespace's init has NSpid {nspid}"));
    let restored = s.var("restored_nspid");
    s.ensure(restored.split_whitespace().nth(1) == Some("1"), || format!("the restored init has NSpid {restored}"));
    let inner_before: Vec<i32> = {
        let mut v: Vec<i32> = std::fs::read_dir(s.path("tree")).into_iter().flatten().flatten().filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".rec").and_then(|p| p.parse().ok())).collect();
        v.sort();
        v
    };
    let inner_after: Vec<i32> = s.var("inner").split_whitespace().filter_map(|v| v.parse().ok()).collect();
    s.ensure(inner_before == inner_after, || format!("inner pids after the restore {inner_after:?}, before {inner_before:?}"));
    s.roundtrip_ok("result");
    let ps = s.read("ps.after");
    s.ensure(ps.lines().count() == 43 && ps.lines().any(|l| l.starts_with("1 0 1 1 ")), || format!("`ps -e` inside after the restore:\n{ps}"));
}

/// Shared anonymous memory with pages only a child wrote (in the shared object but
/// not in the parent's page tables, the parent being the object's owner in the
/// images): after a --leave-running dump and the real dump and restore every page
/// holds what it held and the memory is still shared both ways
/// (tests/workloads/shmanon.py). PostgreSQL's buffer pool is such memory.
#[test]
fn shared_anonymous_pages_only_a_child_touched_come_back() {
    let s = py_roundtrip("shmanon", Creds::User, "shmanon", "", LEAVE_RUNNING_FIRST, "", "", "");
    s.roundtrip_ok("result");
    s.counter("out.txt");
}
