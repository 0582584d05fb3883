//! Fault injection (`CRTOOL_FAULT=N`, `N:kill`, see src/fault.rs), as CRIU's zdtm
//! runs with `CRIU_FAULT`: at every step of a dump crtool fails, or is killed with
//! SIGKILL, and the tree must run on untraced and unchanged while the earlier
//! checkpoint in the image directory stays intact; at every step of a restore it
//! fails or is killed, and nothing of the tree may be left running.

mod common;
use common::*;

const DUMP_STEPS: &[u32] = &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
/// The steps at which a parasite runs in a process, or its mapping is made: killed
/// there, crtool leaves the (cured, idle) blob mapped in that process (README: known
/// limitations). These come last, so that every other check is exact.
const PARASITE_STEPS: &[u32] = &[3, 4, 5, 13, 15, 16];
/// Step 14 fails the parasite's munmap itself: its mapping stays (run last too).
const MUNMAP_FAILS: u32 = 14;
const RESTORE_STEPS: &[u32] = &[101, 102, 103, 104, 105, 106];

#[test]
fn faults_at_every_step_harm_neither_the_tree_nor_the_checkpoint() {
    let steps = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
    let runs = dump_runs();
    let s = Scenario::run(
        "faults",
        &format!(
            r#"
export T LOOP_PY
"${{AS_WL[@]}}" setsid bash -c '"$PY3" "$LOOP_PY" >"$T/c0.txt" & "$PY3" "$LOOP_PY" >"$T/c1.txt" & wait' </dev/null >/dev/null 2>"$T/loop.err" & P=$!; put pid $P
for f in c0 c1; do wait_until has_lines "$T/$f.txt" 5 || fail "$f did not start counting"; done
PIDS=$(tree_of $P | sort -n | tr '\n' ' '); put pids "$PIDS"
snapshot before $P --no-pos
pidset before
# The earlier checkpoint every failed dump must leave as it is.
run first crt dump -t $P -D "$T/ck" -R
need first
sums() {{ (cd "$T/ck" && ls -A | sort && sha256sum *.img); }}
sums >"$T/sums.first"
: >"$T/faults"
# (Breadth first, children by pid: the order crtool dumps them in.)
KIDS=$(tree_of $P | grep -vx $P | sort -n | tr '\n' ' '); FIRST=${{KIDS%% *}}; SECOND=$(echo $KIDS | cut -d' ' -f2)
dump_with_fault() {{
    n=$1 f=$2 step=${{2%%[@:]*}}
    CRTOOL_FAULT=$f run $n crt dump -t $P -D "$T/ck"
    cp "$T/ck/dump.log" "$T/$n.log" 2>/dev/null
    # The next command of a user: verify puts back what a killed dump set aside.
    run v$n crt verify "$T/ck"
    sums >"$T/sums.$n"
    # Step 12 comes after the commit: the new checkpoint is complete and stays.
    [ $step = 12 ] && cp "$T/sums.$n" "$T/sums.first"
    quietly cmp -s "$T/sums.first" "$T/sums.$n" || echo "$n: the checkpoint changed: $(diff "$T/sums.first" "$T/sums.$n" | tr '\n' ' ')" >>"$T/faults"
    for p in $PIDS; do
      st=$(state $p); tr=$(tracer $p)
      {{ [ "$st" = S ] || [ "$st" = R ]; }} && [ "$tr" = 0 ] || echo "$n: pid $p is in state $st, traced by $tr" >>"$T/faults"
    done
    for c in c0 c1; do
      wait_until has_lines "$T/$c.txt" $(( $(lines "$T/$c.txt") + 3 )) || echo "$n: $c stopped counting" >>"$T/faults"
    done
    snapshot $n $P --no-pos
    echo "$n $(cat "$T/$n.rc") $(tail -1 "$T/$n.err")" >>"$T/dump_results"
}}
for run in {dump_runs}; do
    step=${{run%:*}}; mode=${{run#*:}}
    f=$step; [ $mode = kill ] && f=$step:kill
    dump_with_fault "d$step$mode" $f
done
# Failures in the middle of the tree, while the other child's memory is being
# copied on a thread of its own (see dump::collect).
nproc >"$T/nproc"
dump_with_fault m4fail "4@$SECOND"
dump_with_fault m5fail "5@$FIRST"
dump_with_fault m7fail "7@$SECOND"
# Now for real; each failed restore must leave nothing behind.
snapshot last $P --no-pos
run last crt dump -t $P -D "$T/ck"
need last
wait_until gone $PIDS || fail "the dumped tree is still there"
pidset dumped
for step in {restore_steps}; do
  for mode in fail kill; do
    f=$step; [ $mode = kill ] && f=$step:kill
    n="r$step$mode"
    CRTOOL_FAULT=$f run $n crt restore -D "$T/ck" -d
    wait_until gone $PIDS || echo "$n: left $(snap $PIDS | tr '\n' ' ')" >>"$T/faults"
    pidset $n
    echo "$n $(cat "$T/$n.rc") $(tail -1 "$T/$n.err")" >>"$T/restore_results"
  done
done
run restore crt restore -D "$T/ck" -d
need restore
pidset after
snapshot after $P --no-pos
for c in c0 c1; do wait_until has_lines "$T/$c.txt" $(( $(lines "$T/$c.txt") + 10 )) || echo "restored: $c does not count" >>"$T/faults"; done
kill -TERM -- -$P
"#,
            dump_runs = dump_runs().iter().map(|(s, m)| format!("{s}:{m}")).collect::<Vec<_>>().join(" "),
            restore_steps = steps(RESTORE_STEPS),
        ),
    );
    let mut p: Vec<String> = s.read("faults").lines().map(str::to_string).collect();
    // Every injected fault makes the command fail (SIGKILL: 137) and says so.
    for (file, steps, prefix) in [("dump_results", DUMP_STEPS, "d"), ("restore_results", RESTORE_STEPS, "r")] {
        let results = s.read(file);
        for step in steps {
            for mode in ["fail", "kill"] {
                let n = format!("{prefix}{step}{mode}");
                let line = results.lines().find(|l| l.split_whitespace().next() == Some(n.as_str())).unwrap_or("");
                let rc: i32 = line.split_whitespace().nth(1).and_then(|r| r.parse().ok()).unwrap_or(-1);
                let ok = match mode {
                    // A killed restoring task (103, 104) fails the restore with a message.
                    "kill" if step < &103 || step > &104 => rc == 137,
                    _ => rc != 0 && rc != 124 && rc != 137 && line.contains(if mode == "fail" { "step" } else { "pid" }),
                };
                if !ok {
                    p.push(format!("{n}: unexpected outcome (exit code, last line of stderr): {line}"));
                }
            }
        }
    }
    let mut prev = "before".to_string();
    for (step, mode) in &runs {
        let n = format!("d{step}{mode}");
        s.ensure(s.rc(&format!("v{n}")) == 0, || format!("verify after {n} failed: {}", s.err(&format!("v{n}"))));
        if (*mode == "kill" && PARASITE_STEPS.contains(step)) || (*mode == "fail" && *step == MUNMAP_FAILS) {
            p.extend(only_blob_added(&s, &prev, &n));
        } else {
            p.extend(s.state_problems("before", &n).into_iter().map(|e| format!("after {n}: {e}")));
        }
        prev = n;
    }
    let results = s.read("dump_results");
    // (After the runs above, which may have left parasite mappings: nothing changes.)
    for n in ["m4fail", "m5fail", "m7fail"] {
        let line = results.lines().find(|l| l.split_whitespace().next() == Some(n)).unwrap_or("");
        let rc: i32 = line.split_whitespace().nth(1).and_then(|r| r.parse().ok()).unwrap_or(-1);
        if rc == 0 || rc == 124 || rc == 137 || !line.contains("step") {
            p.push(format!("{n}: unexpected outcome (exit code, last line of stderr): {line}"));
        }
        s.ensure(s.rc(&format!("v{n}")) == 0, || format!("verify after {n} failed: {}", s.err(&format!("v{n}"))));
        p.extend(s.state_problems(&prev, n).into_iter().map(|e| format!("after {n}: {e}")));
        prev = n.to_string();
        // With two CPUs or more, the two children's memory was copied at once
        // when m5 failed.
        let cpus: u32 = s.read("nproc").trim().parse().unwrap_or(1);
        if n == "m5fail" && cpus >= 2 && !s.read("m5fail.log").contains("2 processes' memory being copied") {
            p.push(format!("m5fail: the second child's memory was not being copied when the first failed (dump log: {})", s.read("m5fail.log")));
        }
    }
    for step in RESTORE_STEPS {
        for mode in ["fail", "kill"] {
            p.extend(s.pidset_problems("dumped", &format!("r{step}{mode}")));
        }
    }
    s.ok("restore");
    for f in ["c0.txt", "c1.txt"] {
        s.counter(f);
    }
    p.extend(s.state_problems("last", "after"));
    p.extend(s.pidset_problems("before", "after"));
    s.all_ok(p);
}

/// Every step failing, then every step killed, the parasite's steps last.
fn dump_runs() -> Vec<(u32, &'static str)> {
    let mut runs: Vec<(u32, &str)> = DUMP_STEPS.iter().filter(|&&s| s != MUNMAP_FAILS).map(|&s| (s, "fail")).collect();
    runs.extend(DUMP_STEPS.iter().filter(|s| !PARASITE_STEPS.contains(s)).map(|&s| (s, "kill")));
    runs.push((MUNMAP_FAILS, "fail"));
    runs.extend(PARASITE_STEPS.iter().map(|&s| (s, "kill")));
    runs
}

/// The state after `n` is the one after `prev` but for one process's anonymous
/// rwx mapping (the parasite blob) added or grown. (Lines are counted, not just
/// compared as sets: two processes can show the same line.)
fn only_blob_added(s: &Scenario, prev: &str, n: &str) -> Vec<String> {
    let count = |name: &str| {
        let mut m = std::collections::BTreeMap::<String, i64>::new();
        for l in s.read(&format!("state.{name}")).lines() {
            *m.entry(l.to_string()).or_default() += 1;
        }
        m
    };
    let (a, b) = (count(prev), count(n));
    let blob = |l: &str| l.contains(" rwxp anon ");
    let mut other = Vec::new();
    let mut blobs = 0;
    for l in a.keys().chain(b.keys()).collect::<std::collections::BTreeSet<_>>() {
        let d = b.get(l).copied().unwrap_or(0) - a.get(l).copied().unwrap_or(0);
        if d == 0 {
            continue;
        }
        if blob(l) {
            blobs += d.max(0);
        } else {
            other.push(format!("{d:+} {l}"));
        }
    }
    if other.is_empty() && blobs == 1 {
        return vec![];
    }
    vec![format!("after {n} (crtool killed with a parasite in a process), the state differs from after {prev} by more than the parasite's mapping: {blobs} new rwx mappings; other changes {other:?}")]
}

fn only_blob_added_or_same(s: &Scenario, prev: &str, n: &str) -> Vec<String> {
    if s.state_problems(prev, n).is_empty() {
        return vec![];
    }
    only_blob_added(s, prev, n)
}

/// crtool dump -R of a two-process tree with 64 MiB each (CRTOOL_E2E_DUMP_MIB=512
/// for the 1 GiB tree `tools/bench LONG=1` runs), interrupted by SIGTERM,
/// SIGINT, SIGHUP or SIGKILL at twelve points spread over a whole dump's duration:
/// every time the tree runs on untraced with its state as it was, and the image
/// directory holds either the earlier checkpoint, byte-identical, or (the signal
/// came after the commit) a complete new one.
#[test]
fn signals_during_a_large_dump_leave_the_tree_and_the_checkpoint_intact() {
    let mib: u32 = std::env::var("CRTOOL_E2E_DUMP_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let s = Scenario::run(
        "interrupted",
        &r#"
"${AS_WL[@]}" setsid "$EXAMPLES/bench_mem" MIB "$T/bm_ready" procs 2 </dev/null >"$T/bench_mem.log" 2>&1 & P=$!; put pid $P
wait_until nonempty "$T/bm_ready" || fail "bench_mem did not get ready: $(cat "$T/bench_mem.log")"
PIDS=$(tree_of $P | sort -n | tr '\n' ' '); put pids "$PIDS"
snapshot before $P --no-pos
t0=${EPOCHREALTIME/./}
run first crt dump -t $P -D "$T/ck" -R
need first
dur=$(( (${EPOCHREALTIME/./} - t0) )); put dur_us $dur
sums() { (cd "$T/ck" && ls -A | sort && sha256sum *.img); }
sums >"$T/sums.first"
sigs=(TERM INT KILL HUP)
: >"$T/faults"
for k in $(seq 0 11); do
    sig=${sigs[$((k % 4))]}
    n="i$k$sig"
    "$CRTOOL" dump -t $P -D "$T/ck" -R >"$T/$n.out" 2>"$T/$n.err" & C=$!
    sleep "$(awk -v d=$dur -v k=$k 'BEGIN { printf "%.6f", d * k / 12 / 1e6 }')"
    kill -$sig $C 2>/dev/null
    wait $C; echo $? >"$T/$n.rc"
    run v$n crt verify "$T/ck"
    sums >"$T/sums.$n"
    if ! cmp -s "$T/sums.first" "$T/sums.$n"; then
        # Only a dump that committed may have replaced the checkpoint: one that
        # finished, or was killed (SIGKILL cannot wait) after its commit.
        [ "$(cat "$T/$n.rc")" = 0 ] || [ $sig = KILL ] || echo "$n: exit $(cat "$T/$n.rc") but the checkpoint changed" >>"$T/faults"
        cp "$T/sums.$n" "$T/sums.first"
    fi
    for p in $PIDS; do
      st=$(state $p); tr=$(tracer $p)
      { [ "$st" = S ] || [ "$st" = R ]; } && [ "$tr" = 0 ] || echo "$n: pid $p is in state $st, traced by $tr" >>"$T/faults"
    done
    snapshot $n $P --no-pos
    echo "$n $(cat "$T/$n.rc")" >>"$T/results"
done
kill -KILL $PIDS
"#
        .replace("MIB", &mib.to_string()),
    );
    let mut p: Vec<String> = s.read("faults").lines().map(str::to_string).collect();
    let results = s.read("results");
    let mut prev = "before".to_string();
    for line in results.lines() {
        let (n, rc) = line.split_once(' ').unwrap_or((line, ""));
        // 0: finished first; 1: stopped by the signal; 128 + N: killed by signal N
        // (SIGKILL, or another one that came before crtool set up its handling).
        if !matches!(rc, "0" | "1" | "129" | "130" | "137" | "143") {
            p.push(format!("{n}: exit {rc}: {}", tail(&s.err(n), 3)));
        }
        s.ensure(s.rc(&format!("v{n}")) == 0, || format!("verify after {n} failed: {}", s.err(&format!("v{n}"))));
        if n.ends_with("KILL") {
            // SIGKILL while a parasite runs leaves its blob (README: known limitations).
            p.extend(only_blob_added_or_same(&s, &prev, n));
        } else {
            p.extend(s.state_problems(&prev, n).into_iter().map(|e| format!("after {n}: {e}")));
        }
        prev = n.to_string();
    }
    s.note(&format!("a whole dump took {} us; results:\n{results}", s.var("dur_us")));
    s.all_ok(p);
}

/// A dump killed in the middle of its commit (steps 10 and 11) from inside a nested
/// PID namespace, where its PID means nothing outside: `crtool verify` from outside
/// puts the earlier checkpoint back. A file of the user's in the image directory
/// (`disk.img`) is never touched. A dump that is still running is never disturbed
/// by a verify (its lock is held).
#[test]
fn a_commit_cut_short_in_another_pid_namespace_is_undone_and_user_files_stay() {
    let s = Scenario::run(
        "commit-nested",
        r#"
mkdir -p "$T/ck"; echo "the user's data" >"$T/ck/disk.img"
sums() { (cd "$T/ck" && ls -A | sort && sha256sum *.img); }
export -f sums
export T CRTOOL LOOP_PY
for step in 10 11; do
    # All in a PID namespace of its own, gone when verify runs.
    unshare -pf --kill-child --mount-proc bash -c '
        setsid "$PY3" "$LOOP_PY" </dev/null >"$T/out$0.txt" 2>/dev/null & P=$!
        while [ "$(wc -l <"$T/out$0.txt")" -lt 3 ]; do sleep 0.05; done
        "$CRTOOL" dump -t $P -D "$T/ck" -R >"$T/first$0.out" 2>&1 || exit 3
        sums >"$T/sums.first$0"
        CRTOOL_FAULT=$0:kill "$CRTOOL" dump -t $P -D "$T/ck" -R >"$T/k$0.out" 2>&1
        echo $? >"$T/k$0.rc"
        ls -A "$T/ck" >"$T/left.$0"' $step
    run v$step crt verify "$T/ck"
    sums >"$T/sums.$step"
done
start_loop; P=$!; put pid $P
wait_until has_lines "$T/out.txt" 5 || fail "loop.py did not start counting"
# A verify while a dump runs (a slow one: compression) leaves it alone.
"$CRTOOL" dump -t $P -D "$T/ck" -R --compress >"$T/slow.out" 2>"$T/slow.err" & D=$!
for i in $(seq 1 50); do "$CRTOOL" verify "$T/ck" >/dev/null 2>&1; done
wait $D; echo $? >"$T/slow.rc"
cat "$T/ck/disk.img" >"$T/disk.after"
kill $P
"#,
    );
    let mut p = Vec::new();
    for step in ["10", "11"] {
        let rc = s.read(&format!("k{step}.rc"));
        s.ensure(rc.trim() == "137", || format!("the dump killed at step {step} exited {rc}"));
        s.ensure(s.read(&format!("left.{step}")).contains(".crtool-old-"), || format!("step {step}: nothing was set aside, so nothing was tested: {}", s.read(&format!("left.{step}"))));
        s.ok(&format!("v{step}"));
        if s.read(&format!("sums.first{step}")) != s.read(&format!("sums.{step}")) {
            p.push(format!("after the dump killed at step {step} and a verify, the directory is not the earlier checkpoint:\n{}", s.read(&format!("sums.{step}"))));
        }
    }
    s.ensure(s.read("slow.rc").trim() == "0", || format!("a dump with verify running beside it failed: {}", s.read("slow.err")));
    s.ensure(s.read("disk.after") == "the user's data\n", || "disk.img was changed".into());
    s.all_ok(p);
}
