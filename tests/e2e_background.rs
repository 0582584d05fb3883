//! End-to-end tests of background snapshots (`dump --leave-running`): the tree
//! runs while its memory is copied, and the images hold the memory of the
//! frozen instant (tests/workloads/bgsnap.py writes without pause and checks
//! after restore that every page is of one instant). See src/mem/background.rs.

mod common;

use common::*;

/// `dump -R` of a process writing memory all the time (from user and kernel
/// mode), as an unprivileged user (the userfaultfd comes from
/// /dev/userfaultfd): frozen briefly, pages the process was about to write
/// saved first, nothing of the protection left afterwards; the restored
/// process finds every page of the same instant. Before that, the copy cut
/// short (failed, and crtool killed) leaves the process running as before,
/// its memory intact and unprotected, and no images (a killed dump leaves its
/// work directory, which the next crtool command clears: see e2e_faults).
#[test]
fn a_background_snapshot_holds_one_instant_of_memory_written_during_the_copy() {
    let s = Scenario::run(
        "bgsnap",
        r#"
"${AS_WL[@]}" setsid "$PY3" "$(dirname "$LOOP_PY")/bgsnap.py" "$T" </dev/null >"$T/out.txt" 2>"$T/wl.err" & P=$!; put pid $P
wait_until nonempty "$T/ready" && wait_until has_lines "$T/out.txt" 3 || fail "bgsnap.py did not start: $(cat "$T/wl.err")"
uw() { grep -cE '^VmFlags:.* uw( |$)' /proc/$P/smaps || true; }
: >"$T/cut"
for f in 17 17:kill; do
    CRTOOL_FAULT=$f run cut crt dump -R -t $P -D "$T/ckcut" -v
    echo "$f rc=$(cat "$T/cut.rc") images=$(ls "$T/ckcut" 2>/dev/null | grep -c '\.img$') uw=$(uw) tracer=$(tracer $P) state=$(state $P) $(grep -c 'copying it in the background' "$T/cut.err")" >>"$T/cut"
    L=$(lines "$T/out.txt"); wait_until has_lines "$T/out.txt" $((L + 3)) || echo "$f: stopped counting" >>"$T/cut"
done
snapshot before $P --no-pos
pidset before
run dump crt dump -R -t $P -D "$T/ck" -v
need dump
put uw "$(uw)"
L=$(lines "$T/out.txt"); wait_until has_lines "$T/out.txt" $((L + 3)) && put ran_on yes
kill -9 $P; wait_until gone $P
run restore crt restore -D "$T/ck" -d
need restore
pidset after
snapshot after $P --no-pos
L=$(lines "$T/out.txt"); wait_until has_lines "$T/out.txt" $((L + 3)) && put counting yes
kill -USR1 $P
wait_until nonempty "$T/result" || fail "bgsnap.py wrote no result: $(cat "$T/wl.err")"
"#,
    );
    let cut = s.read("cut");
    for (f, killed) in [("17", false), ("17:kill", true)] {
        let line = cut.lines().find(|l| l.split_whitespace().next() == Some(f)).unwrap_or("");
        let rc_ok = if killed { line.contains("rc=137") } else { !line.contains("rc=0 ") && !line.contains("rc=137") && line.contains("rc=") };
        s.ensure(rc_ok, || format!("CRTOOL_FAULT={f}: {line}"));
        s.ensure(line.contains("images=0 ") && line.contains("uw=0") && line.contains("tracer=0") && line.ends_with(" 1"), || {
            format!("CRTOOL_FAULT={f} (in the background copy) left something behind, or never got there: {line}\n{cut}")
        });
    }
    s.ensure(!cut.contains("stopped counting"), || format!("a cut background copy stopped the process:\n{cut}"));
    s.ok("dump");
    let log = s.read("ck/dump.log");
    let saved: u64 = log.lines().find_map(|l| l.split("; ").nth(1)?.strip_suffix(" pages saved before the tree wrote them")?.parse().ok()).unwrap_or(0);
    s.ensure(log.contains("copied in the background") && saved > 0, || format!("no page was saved before a write during the copy:\n{log}"));
    s.ensure(s.var("uw") == "0", || format!("{} VMAs still write-protected after the dump", s.var("uw")));
    s.ensure(s.var_opt("ran_on").as_deref() == Some("yes"), || "the process did not run on after the dump".into());
    s.ok("restore");
    s.ensure(s.var_opt("counting").as_deref() == Some("yes"), || "the restored process does not count".into());
    s.roundtrip_ok("result");
}

/// Memory that changes without a write fault during the copy (a mapping
/// replaced by a new one: the kernel reports nothing) is noticed, and the
/// dump is done again with the memory copied while the tree is frozen: the
/// dump succeeds and the restored process is of one instant.
#[test]
fn memory_remapped_during_a_background_copy_is_dumped_again_frozen() {
    let s = Scenario::run(
        "bgsnap-churn",
        r#"
"${AS_WL[@]}" setsid "$PY3" "$(dirname "$LOOP_PY")/bgsnap.py" "$T" churn </dev/null >"$T/out.txt" 2>"$T/wl.err" & P=$!; put pid $P
wait_until nonempty "$T/ready" && wait_until has_lines "$T/out.txt" 3 || fail "bgsnap.py did not start: $(cat "$T/wl.err")"
snapshot before $P --no-pos
pidset before
run dump crt dump -R -t $P -D "$T/ck" -v
need dump
kill -9 $P; wait_until gone $P
run restore crt restore -D "$T/ck" -d
need restore
pidset after
snapshot after $P --no-pos
kill -USR1 $P
wait_until nonempty "$T/result" || fail "bgsnap.py wrote no result: $(cat "$T/wl.err")"
"#,
    );
    s.ok("dump");
    let err = s.read("dump.err");
    s.ensure(err.contains("its memory changed under the background copy") && err.contains("dumping again"), || format!("the remapping went unnoticed:\n{err}"));
    s.ok("restore");
    s.roundtrip_ok("result");
}

/// Threads that end while the background copy runs (tests/workloads/bgthreads.rs
/// ends them once it sees its memory write-protected): the kernel's writes at their exit
/// (clear_child_tid, which pthread_join waits on) cannot wait for a
/// userfaultfd, so their pages must not be write-protected: every join
/// returns. (A liveness test of the process left running: its threads end
/// on purpose, so there is no state to compare; the images restore and the
/// restored process, told by SIGUSR2, ends its threads and joins them again.)
#[test]
fn threads_that_end_during_a_background_copy_are_joined() {
    let s = Scenario::run(
        "bgthreads",
        r#"
start_wl bgthreads; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "bgthreads did not start: $(cat "$T/bgthreads.log")"
run dump crt dump -R -t $P -D "$T/ck" -v
need dump
# (The workload looks every millisecond; the probe page is protected only
# until the copy reaches it, a few milliseconds: on a busy machine it may
# miss it, and then its threads end after the copy, told by SIGUSR2.)
for _ in $(seq 60); do [ -s "$T/joined" ] && break; sleep 0.05; done
[ -s "$T/joined" ] || { put probe_missed yes; kill -USR2 $P; }
wait_until nonempty "$T/joined" && put joined "$(cat "$T/joined")"
kill -9 $P; wait_until gone $P
rm -f "$T/joined"
run restore crt restore -D "$T/ck" -d
need restore
kill -USR2 $P
wait_until nonempty "$T/joined" && put joined_after "$(cat "$T/joined")"
kill -USR1 $P
wait_until nonempty "$T/result" || fail "bgthreads wrote no result: $(cat "$T/bgthreads.log")"
"#,
    );
    s.ok("dump");
    let log = s.read("ck/dump.log");
    // (A thread's exit drops part of its stack, MADV_DONTNEED by glibc: if
    // that happens before the copy got there, the dump is done again frozen.)
    s.ensure(log.contains("copying it in the background"), || format!("the memory was not protected for a background copy:\n{log}"));
    s.ensure(s.var_opt("joined").is_some(), || format!("threads that ended during the copy could not be joined (pthread_join hangs):\n{log}"));
    s.ok("restore");
    s.ensure(s.var_opt("joined_after").is_some(), || "the restored process could not join its threads".into());
    s.all_ok(s.verdict("result").err().into_iter().collect());
}
