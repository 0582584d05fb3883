//! End-to-end tests: real processes dumped and restored by the crtool binary.
//!
//! Each test writes a bash scenario into its own temporary directory and runs it as
//! PID 1 of a private PID namespace (`unshare -pf --kill-child --mount-proc`), so
//! that PIDs are free to reuse, tests can run in parallel, and everything a scenario
//! started dies with it. The script does the work and records what happened (exit
//! codes, stdout and stderr of each crtool command in STEP.rc/.out/.err, other facts
//! in var.KEY); the Rust side then checks those records. On failure the message
//! shows the scenario log and how to re-run the script by hand (the directory is
//! kept; CRTOOL_E2E_KEEP=1 keeps those of passing scenarios too).
//!
//! Needs root, util-linux (unshare, setsid, taskset), procps (ps) and python3. The
//! workloads are cargo examples (`memstate`, `threads`, `tree`, ... in
//! tests/workloads/), built by `cargo test`, plus tests/workloads/loop.py. Most of
//! them follow one protocol: `NAME DIR [options]` sets itself up, writes DIR/ready,
//! waits for SIGUSR1, checks its own state and writes PASS or FAIL: ... to
//! DIR/result.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const SCENARIO_TIMEOUT: Duration = Duration::from_secs(120);

fn crtool() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_crtool"))
}

/// A cargo example built next to the crtool binary (target/PROFILE/examples/NAME).
fn example(name: &str) -> PathBuf {
    let p = crtool().parent().expect("crtool has a directory").join("examples").join(name);
    assert!(
        p.exists(),
        "{} is missing: the workloads are cargo examples; run the whole suite with `cargo test --release` \
         (which builds them) or `cargo build --release --examples` first",
        p.display()
    );
    p
}

/// The workloads every scenario may start (`start_wl NAME`).
const WORKLOADS: &[&str] = &["memstate", "threads", "tree", "shm", "signals", "pipes", "sharedfd"];

fn loop_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/loop.py")
}

/// Helpers every scenario script starts with.
const PRELUDE: &str = r#"
set -u
# Only stdin, stdout and stderr: workloads inherit our fds, and those of the test
# harness (pipes to cargo) are not theirs to keep.
for fd in $(ls /proc/$$/fd); do [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null; done
cd "$T"
PS4='+ [${SECONDS}s] '
set -x

# fail MSG: record why the scenario could not go on, and stop.
fail() { echo "$*" >"$T/var.fail"; echo "SCENARIO FAILED: $*" >&2; exit 1; }
# put KEY VALUE: a fact for the Rust side (var.KEY).
put() { printf '%s' "$2" >"$T/var.$1"; }
# run STEP CMD...: run CMD, keeping its stdout, stderr and exit code as STEP.out/.err/.rc.
run() { local n=$1; shift; "$@" >"$T/$n.out" 2>"$T/$n.err"; echo $? >"$T/$n.rc"; }
# crt ARGS...: crtool, killed if it hangs for 60 s (exit 124; its tracees die with it).
crt() ( { set +x; } 2>/dev/null; exec timeout 60 "$CRTOOL" "$@" )
# need STEP: stop the scenario unless `run STEP ...` succeeded.
need() {
    local rc; rc=$(cat "$T/$1.rc" 2>/dev/null)
    [ "$rc" = 124 ] && fail "$1 hung (killed after 60 s): $(cat "$T/$1.err" 2>/dev/null)"
    [ "$rc" = 0 ] || fail "$1 failed (exit $rc): $(cat "$T/$1.err" 2>/dev/null)"
}
# quietly CMD...: run CMD without tracing it.
quietly() { { local x=$-; set +x; } 2>/dev/null; "$@"; local rc=$?; [[ $x == *x* ]] && set -x; return $rc; }
# wait_until CMD...: poll CMD for up to 20 s.
wait_until() {
    { local x=$-; set +x; } 2>/dev/null
    local i
    for i in $(seq 1 400); do
        if "$@"; then [[ $x == *x* ]] && set -x; return 0; fi
        sleep 0.05
    done
    [[ $x == *x* ]] && set -x
    echo "timed out waiting for: $*" >&2
    return 1
}
# alive PID: the process exists and is not a zombie.
alive() { [ -e "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
dead() { ! alive "$1"; }
# state PID: the State letter (R, S, T, t, Z, ...), or "gone".
state() { awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo gone; }
tracer() { awk '/^TracerPid:/ {print $2}' "/proc/$1/status" 2>/dev/null; }
# lines FILE: number of complete lines in FILE.
lines() { if [ -e "$1" ]; then wc -l <"$1"; else echo 0; fi; }
# has_lines FILE N: FILE has at least N lines.
has_lines() { [ "$(lines "$1")" -ge "$2" ]; }
nonempty() { [ -s "$1" ]; }
# images DIR: the *.img files in DIR, space separated.
images() { (cd "$1" 2>/dev/null && ls | grep '\.img$' | tr '\n' ' '); }
# The workloads, each started as a session leader with files as stdio.
start_memstate() { setsid "$MEMSTATE" "$T/ready" "$T/result" "$@" </dev/null >"$T/memstate.log" 2>&1 & }
start_loop() { setsid python3 "$LOOP_PY" "$@" </dev/null >"$T/out.txt" 2>"$T/loop.err" & }
# start_wl NAME ARGS...: a workload of tests/workloads (NAME DIR ARGS), log in NAME.log.
start_wl() { local n=$1; shift; setsid "$EXAMPLES/$n" "$T" "$@" </dev/null >"$T/$n.log" 2>&1 & }
# tree_of PID: PID and all its descendants, one a line.
tree_of() { local p=$1 c; echo "$p"; for c in $(cat /proc/$p/task/*/children 2>/dev/null); do tree_of "$c"; done; }
# gone PID...: none of them exists any more, not even as a zombie.
gone() { local p; for p in "$@"; do [ -e "/proc/$p" ] && return 1; done; return 0; }
# snap PID...: "PID STATE PPID PGID SID ..." (/proc/PID/stat after the name) of each,
# or "PID gone", without forking.
snap() { local p s; for p in "$@"; do if read -r s 2>/dev/null <"/proc/$p/stat"; then echo "$p ${s##*) }"; else echo "$p gone"; fi; done; }
"#;

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// One scenario run: its directory, the script's exit status and log.
struct Scenario {
    name: String,
    dir: PathBuf,
    status: Option<i32>,
    log: String,
}

impl Scenario {
    /// Runs `body` (after the prelude) in a private PID and mount namespace.
    fn run(name: &str, body: &str) -> Scenario {
        // SAFETY: geteuid(2) cannot fail.
        assert!(unsafe { libc::geteuid() } == 0, "the end-to-end tests must run as root (ptrace, PID namespaces)");
        let dir = std::env::temp_dir().join(format!("crtool-e2e-{name}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let header = format!(
            "#!/bin/bash\n# crtool e2e scenario {name}; run as root: unshare -pf --kill-child --mount-proc bash {}\n\
             T={}\nCRTOOL={}\nMEMSTATE={}\nLOOP_PY={}\nEXAMPLES={}\n",
            dir.join("scenario.sh").display(),
            shq(&dir),
            shq(&crtool()),
            shq(&example("memstate")),
            shq(&loop_py()),
            shq(example("memstate").parent().unwrap()),
        );
        for w in WORKLOADS {
            example(w);
        }
        let script = dir.join("scenario.sh");
        std::fs::write(&script, format!("{header}{PRELUDE}\n# ---- scenario\n{body}\nexit 0\n")).unwrap();
        let log_path = dir.join("scenario.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new("unshare")
            .args(["-pf", "--kill-child", "--mount-proc", "bash"])
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("running unshare (util-linux) — the e2e tests need root");
        let start = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st.code();
            }
            if start.elapsed() > SCENARIO_TIMEOUT {
                let _ = child.kill(); // --kill-child takes the whole namespace down
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        eprintln!("[{name}] scenario took {:.1} s", start.elapsed().as_secs_f64());
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let s = Scenario { name: name.to_string(), dir, status, log };
        if s.status != Some(0) {
            let why = s.var_opt("fail").unwrap_or_else(|| match s.status {
                None => format!("timed out after {SCENARIO_TIMEOUT:?}"),
                Some(c) => format!("script exited with {c}"),
            });
            s.fail(&format!("scenario did not complete: {why}"));
        }
        s
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_default()
    }

    fn var_opt(&self, key: &str) -> Option<String> {
        std::fs::read_to_string(self.path(&format!("var.{key}"))).ok()
    }

    fn var(&self, key: &str) -> String {
        self.var_opt(key).unwrap_or_default()
    }

    fn pid(&self) -> i32 {
        self.var("pid").trim().parse().unwrap_or_else(|_| self.fail("the scenario recorded no pid"))
    }

    /// Exit code of a `run` step.
    fn rc(&self, step: &str) -> i32 {
        match self.read(&format!("{step}.rc")).trim().parse() {
            Ok(c) => c,
            Err(_) => self.fail(&format!("step {step} did not run")),
        }
    }

    fn out(&self, step: &str) -> String {
        self.read(&format!("{step}.out"))
    }

    fn err(&self, step: &str) -> String {
        self.read(&format!("{step}.err"))
    }

    fn fail(&self, msg: &str) -> ! {
        let mut extra = String::new();
        let mut logs: Vec<String> = ["ck/dump.log", "ck/restore.log", "loop.err"].iter().map(|l| l.to_string()).collect();
        let mut own: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".log") && n != "scenario.log")
            .collect();
        own.sort();
        logs.extend(own);
        for log in &logs {
            let text = self.read(log);
            if !text.trim().is_empty() {
                extra += &format!("--- {log} (last lines)\n{}\n", tail(&text, 15));
            }
        }
        panic!(
            "[{}] {msg}\n--- scenario log (last lines)\n{}\n{extra}--- files kept in {}; re-run by hand with:\n    unshare -pf --kill-child --mount-proc bash {}",
            self.name,
            tail(&self.log, 60),
            self.dir.display(),
            self.path("scenario.sh").display()
        );
    }

    fn ensure(&self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.fail(&msg());
        }
    }

    /// A `run` step must have succeeded.
    fn ok(&self, step: &str) {
        let rc = self.rc(step);
        let hung = if rc == 124 { " (killed by `timeout`: it hung)" } else { "" };
        self.ensure(rc == 0, || format!("`{step}` exited with {rc}{hung}; stderr:\n{}", self.err(step)));
    }

    /// A `run` step must have failed, with all of `needles` in its output.
    fn failed_saying(&self, step: &str, needles: &[&str]) {
        let rc = self.rc(step);
        let text = format!("{}{}", self.out(step), self.err(step));
        self.ensure(rc != 0, || format!("`{step}` should have failed but exited 0; output:\n{text}"));
        for n in needles {
            self.ensure(text.contains(n), || format!("`{step}` failed (exit {rc}) but its message does not mention {n:?}:\n{text}"));
        }
    }

    /// A workload's verdict file must say PASS.
    fn passed(&self, rel: &str) {
        let text = self.read(rel);
        self.ensure(text.trim() == "PASS", || {
            if text.is_empty() { format!("the workload wrote no {rel}") } else { format!("the workload after the restore: {}", text.trim()) }
        });
    }

    /// A `var.KEY` holding a number.
    fn num(&self, key: &str) -> i64 {
        self.var(key).trim().parse().unwrap_or_else(|_| self.fail(&format!("var.{key} is {:?}, not a number", self.var(key))))
    }

    /// The counter file written by loop.py: must be 0, 1, 2, ... with no gap or repeat.
    fn counter(&self, rel: &str) -> u64 {
        let text = self.read(rel);
        let mut n = 0u64;
        for line in text.lines() {
            let v: u64 = line.trim().parse().unwrap_or_else(|_| self.fail(&format!("{rel}: line {n} is {line:?}, not a number")));
            self.ensure(v == n, || format!("{rel}: line {n} is {v} (expected {n}: a {} in the counter)", if v < n { "repeat" } else { "gap" }));
            n += 1;
        }
        n
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        // CRTOOL_E2E_KEEP=1 keeps the directories of passing scenarios too.
        if !std::thread::panicking() && std::env::var_os("CRTOOL_E2E_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn shq(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn image_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".img") {
            out.insert(name, std::fs::read(e.path()).unwrap());
        }
    }
    out
}

// ------------------------------------------------------------------ memstate

/// Starts memstate with `args`, dumps it with `dump_flags`, restores it detached,
/// sends SIGUSR1 and collects the verdict.
fn memstate_roundtrip(name: &str, args: &str, dump_flags: &str) -> Scenario {
    let s = Scenario::run(
        name,
        &format!(
            r#"
start_memstate {args}; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "memstate did not get ready"
run dump "$CRTOOL" dump -t $P -D "$T/ck" {dump_flags}
need dump
wait_until dead $P || fail "the dumped process is still alive"
run restore "$CRTOOL" restore -D "$T/ck" -d
alive $P && put alive_after_restore yes
kill -USR1 $P
wait_until nonempty "$T/result"
wait_until dead $P
run show "$CRTOOL" show "$T/ck"
"#
        ),
    );
    let p = s.pid();
    s.ok("dump");
    s.ensure(s.err("dump").contains(&format!("dumped pid {p}")), || format!("dump did not report the pid:\n{}", s.err("dump")));
    s.ok("restore");
    s.ensure(s.var("alive_after_restore") == "yes", || format!("pid {p} is not running after `restore -d`"));
    let result = s.read("result");
    s.ensure(result.trim() == "PASS", || {
        if result.is_empty() { format!("memstate wrote no result after SIGUSR1 (log: {})", s.read("memstate.log")) } else { format!("memstate after restore: {}", result.trim()) }
    });
    s.ok("show");
    s
}

#[test]
fn memstate_survives_dump_and_restore() {
    let s = memstate_roundtrip("memstate-raw", "no-shared-anon", "");
    s.ensure(s.out("show").contains("raw pages"), || format!("show does not say raw pages:\n{}", s.out("show")));
}

#[test]
fn memstate_survives_dump_and_restore_compressed() {
    let s = memstate_roundtrip("memstate-zstd", "no-shared-anon", "--compress");
    s.ensure(s.out("show").contains("zstd pages"), || format!("show does not say zstd pages:\n{}", s.out("show")));
}

/// The same as above with a MAP_SHARED|MAP_ANONYMOUS region in the task as well.
#[test]
fn memstate_with_shared_anonymous_memory() {
    memstate_roundtrip("memstate-shared", "", "");
}

#[test]
fn restore_without_detach_exits_with_the_task_status() {
    let s = Scenario::run(
        "exit-status",
        r#"
# restore_up LOG PID: crtool (PID) logged that the task runs, or crtool is gone.
restore_up() { grep -q "restored and running" "$1" 2>/dev/null || dead "$2"; }
# idle: no interval timers, so the verdict depends on nothing but the restore.
start_memstate idle no-shared-anon; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "memstate did not get ready"
run dump "$CRTOOL" dump -t $P -D "$T/ck"
need dump
wait_until dead $P || fail "the dumped process is still alive"
# 1: SIGUSR1, the task verifies itself and exits 0 (PASS) or 1.
"$CRTOOL" restore -D "$T/ck" -o restore1.log >"$T/restore1.out" 2>"$T/restore1.err" & R=$!
wait_until restore_up "$T/ck/restore1.log" $R
grep -q "restored and running" "$T/ck/restore1.log" || fail "restore 1 did not get the task running: $(cat "$T/restore1.err")"
alive $P && put alive1 yes
kill -USR1 $P
wait $R; echo $? >"$T/restore1.rc"
# 2: the same images again; this time the task is killed by SIGTERM: 128 + 15.
"$CRTOOL" restore -D "$T/ck" -o restore2.log >"$T/restore2.out" 2>"$T/restore2.err" & R=$!
wait_until restore_up "$T/ck/restore2.log" $R
grep -q "restored and running" "$T/ck/restore2.log" || fail "restore 2 did not get the task running: $(cat "$T/restore2.err")"
alive $P && put alive2 yes
kill -TERM $P
wait $R; echo $? >"$T/restore2.rc"
"#,
    );
    s.ensure(s.var("alive1") == "yes", || "the task was not running during restore 1".into());
    let result = s.read("result");
    s.ensure(result.trim() == "PASS", || format!("memstate after restore: {result:?}"));
    let rc1 = s.rc("restore1");
    s.ensure(rc1 == 0, || format!("crtool restore exited {rc1}, the task exited 0 after PASS; stderr:\n{}", s.err("restore1")));
    s.ensure(s.var("alive2") == "yes", || "the task was not running during restore 2".into());
    let rc2 = s.rc("restore2");
    s.ensure(rc2 == 128 + libc::SIGTERM, || format!("crtool restore exited {rc2}, expected 143 (task killed by SIGTERM); stderr:\n{}", s.err("restore2")));
}

// ------------------------------------------------------------------ trees, threads, files

/// Starts workload `wl ARGS` as a session leader, runs `before_dump`, dumps its whole
/// tree (`run dump WRAP crtool dump ...`), waits until every process of it is gone,
/// restores it detached, runs `after_restore`, sends SIGUSR1 to the root and requires
/// the workload's verdict PASS. Records the tree's pids (var.pids) and which of them
/// are missing (var.missing) or traced (var.traced) after the restore.
fn workload_roundtrip(name: &str, wl: &str, args: &str, before_dump: &str, wrap: &str, after_restore: &str) -> Scenario {
    let s = Scenario::run(
        name,
        &format!(
            r#"
start_wl {wl} {args}; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "{wl} did not get ready"
{before_dump}
PIDS=$(tree_of $P | sort -n | tr '\n' ' '); put pids "$PIDS"
run dump {wrap} timeout 60 "$CRTOOL" dump -t $P -D "$T/ck"
need dump
wait_until gone $PIDS || fail "processes of the dumped tree are still there"
run restore crt restore -D "$T/ck" -d
need restore
{after_restore}
put missing "$(for p in $PIDS; do [ -e /proc/$p ] || echo $p; done | tr '\n' ' ')"
put traced "$(for p in $PIDS; do t=$(tracer $p); [ "${{t:-0}}" = 0 ] || echo $p; done | tr '\n' ' ')"
kill -USR1 $P
wait_until nonempty "$T/result" || fail "{wl} wrote no result after SIGUSR1"
"#
        ),
    );
    s.ok("dump");
    s.ok("restore");
    s.ensure(s.var("missing").trim().is_empty(), || format!("processes missing after the restore: {} (the tree was {})", s.var("missing"), s.var("pids")));
    s.ensure(s.var("traced").trim().is_empty(), || format!("processes still traced after the restore: {}", s.var("traced")));
    s.passed("result");
    s
}

/// Eight threads counting in different ways (tight loops, futex, pipe read,
/// nanosleep, ...): same TIDs, every thread moves on, per-thread masks, altstacks, ymm
/// registers and rseq. Two threads are in a 3 s nanosleep(NULL rem) across the dump,
/// one on each CPU, with crtool on the first one's CPU: the sleeps must last 3 s,
/// plus at most the time the process was down (and a little), on either CPU.
#[test]
fn threads_keep_tids_state_and_sleeps() {
    let s = workload_roundtrip(
        "threads",
        "threads",
        "",
        r#"kill -USR2 $P
wait_until nonempty "$T/sleeping.5" && wait_until nonempty "$T/sleeping.7" || fail "the sleepers did not start"
CPU=$(cut -d' ' -f2 "$T/sleeping.5")
put tasks_before "$(ls /proc/$P/task | sort -n | tr '\n' ' ')"
sleep 1
T0=$(date +%s%N)"#,
        "taskset -c $CPU",
        r#"T1=$(date +%s%N); put down_ms $(( (T1 - T0) / 1000000 ))
put tasks_after "$(ls /proc/$P/task | sort -n | tr '\n' ' ')""#,
    );
    let (before, after) = (s.var("tasks_before"), s.var("tasks_after"));
    s.ensure(before.split_whitespace().count() == 9 && before == after, || format!("/proc/PID/task lists {after:?} after the restore, {before:?} before"));
    let down = s.num("down_ms");
    for i in [5, 7] {
        let f: Vec<i64> = s.read(&format!("sleep.{i}")).split_whitespace().filter_map(|v| v.parse().ok()).collect();
        s.ensure(f.len() == 3, || format!("sleep.{i} is {:?}", s.read(&format!("sleep.{i}"))));
        let most = 3000 + down + 100;
        s.ensure(f[0] <= most, || format!("thread {i}'s nanosleep(3 s) took {} ms, more than 3 s + {down} ms down + 100 ms", f[0]));
    }
}

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
setsid bash -c 'i=0; while :; do echo $i; i=$((i+1)); sleep 0.05; done | cat >> out.txt' </dev/null >/dev/null 2>&1 & P=$!; put pid $P
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

#[test]
fn shared_anonymous_and_copy_on_write_memory_between_processes() {
    workload_roundtrip("shm", "shm", "", "", "", "");
}

/// Pending signals (thread-directed and process-wide, rt with values), ITIMER_REAL,
/// alarm() and three POSIX timers (one SIGEV_THREAD_ID to the main thread).
#[test]
fn pending_signals_itimers_and_posix_timers() {
    workload_roundtrip("signals", "signals", "", "", "", "");
}

/// As above, with the SIGEV_THREAD_ID timer aimed at the second thread.
#[test]
fn posix_timer_aimed_at_another_thread() {
    workload_roundtrip("signals-thread-timer", "signals", "timer-to-thread", "", "", "");
}

/// A pipe with 100000 unread bytes and 256 KiB capacity between two processes, a FIFO
/// with 3000 unread bytes and an O_NONBLOCK read end, a non-blocking self-pipe.
#[test]
fn pipes_and_fifos_keep_their_data_capacity_and_flags() {
    workload_roundtrip("pipes", "pipes", "", "", "", "");
}

/// dup()ed fds and fds inherited over fork share one offset and status flags again,
/// a separate open does not; fd numbers (100, 101, 150, 200) and FD_CLOEXEC exact.
#[test]
fn fds_sharing_descriptions_across_processes() {
    workload_roundtrip("sharedfd", "sharedfd", "", "", "", "");
}

/// The tree workload as PID 1 of a nested PID namespace with its own /proc (unshare
/// -pf --mount-proc inside the test's namespace), dumped by the init's outer pid:
/// after the restore the processes see the same inner pids and `ps` inside lists
/// exactly the tree.
#[test]
fn nested_pid_namespace_comes_back_with_the_same_inner_pids() {
    let s = Scenario::run(
        "pidns",
        r#"
unshare -pf --mount-proc setsid "$EXAMPLES/tree" "$T" </dev/null >"$T/tree.log" 2>&1 & U=$!
wait_until nonempty "$T/ready" || fail "the tree did not get ready"
read -r INIT _ </proc/$U/task/$U/children; put pid "$INIT"
put nspid "$(awk '/^NSpid:/ {print $2, $3}' /proc/$INIT/status)"
PIDS=$(tree_of $INIT | sort -n | tr '\n' ' '); put pids "$PIDS"
run dump crt dump -t $INIT -D "$T/ck"
need dump
wait_until gone $PIDS $U || fail "the dumped namespace is still there"
run restore crt restore -D "$T/ck" -d
need restore
# The restored init: a "tree" that is PID 1 of a namespace below ours.
R=$(for f in /proc/[0-9]*/status; do awk '/^Name:/ {n = $2} /^NSpid:/ && NF == 3 && $3 == 1 && n == "tree" {print $2}' "$f" 2>/dev/null; done | head -1)
[ -n "$R" ] || fail "no restored init found"
put restored_nspid "$(awk '/^NSpid:/ {print $2, $3}' /proc/$R/status)"
put inner "$(for p in $(tree_of $R); do awk '/^NSpid:/ {print $3}' /proc/$p/status; done | sort -n | tr '\n' ' ')"
put outer_ns_of_ps "$(readlink /proc/$R/ns/pid)"
kill -USR1 $R
wait_until nonempty "$T/result" || fail "the tree wrote no result after SIGUSR1"
"#,
    );
    s.ok("dump");
    s.ok("restore");
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
    s.passed("result");
    let ps = s.read("ps.after");
    s.ensure(ps.lines().count() == 43 && ps.lines().any(|l| l.starts_with("1 0 1 1 ")), || format!("`ps -e` inside after the restore:\n{ps}"));
}

// ------------------------------------------------------------------ safety of trees

/// A tree (bash → loop.py, and a bash subshell → loop.py, loop.py holding `hold`)
/// whose last grandchild holds what crtool refuses: the dump fails naming that pid
/// and fd (`link` matches the fd's target), every process of the tree runs on
/// untraced and unstopped, the loops keep counting, and no images are left.
fn refused_tree(name: &str, hold: &str, link: &str) {
    let s = Scenario::run(
        name,
        &format!(
            r#"
export T LOOP_PY
setsid bash -c 'python3 "$LOOP_PY" >"$T/c0.txt" & (python3 "$LOOP_PY" >"$T/c1.txt" & python3 "$LOOP_PY" --hold {hold} >"$T/c2.txt" & wait) & wait' </dev/null >/dev/null 2>"$T/loop.err" & P=$!; put pid $P
for f in c0 c1 c2; do wait_until has_lines "$T/$f.txt" 5 || fail "$f did not start counting"; done
PIDS=$(tree_of $P | sort -n | tr '\n' ' '); put pids "$PIDS"
H=$(for p in $PIDS; do [ "$(cat /proc/$p/comm)" = python3 ] && grep -q -- --hold /proc/$p/cmdline && echo $p; done); put holder "$H"
fd=$(for f in /proc/$H/fd/*; do case "$(readlink "$f")" in {link}) basename "$f";; esac; done | sort -n | head -1); put fd "$fd"
run dump crt dump -t $P -D "$T/ck"
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
}

#[test]
fn refused_tree_dump_leaves_every_process_running() {
    refused_tree("tree-refused-socket", "socket", "socket:*");
}

/// The same with a terminal (/dev/ptmx), which is only refused once its fd was
/// received from the task: the processes dumped before it were infected and cured.
#[test]
fn tree_dump_refused_after_infection_leaves_every_process_running() {
    refused_tree("tree-refused-ptmx", "ptmx", "/dev/ptmx|/dev/pts/ptmx");
}

/// A tree (bash → loop.py and memstate, which leads a session of its own and maps
/// memstate-cwd/mapped.dat) whose mapped file is removed before the restore: the
/// restore fails part-way naming the file and leaves no process of the tree (nor any
/// other) behind. With the file back, the same images restore.
#[test]
fn failed_tree_restore_leaves_nothing_behind() {
    let s = Scenario::run(
        "tree-restore-fails",
        r#"
export T LOOP_PY MEMSTATE
setsid bash -c 'python3 "$LOOP_PY" >"$T/out.txt" & setsid "$MEMSTATE" "$T/ready" "$T/result" idle no-shared-anon >"$T/memstate.log" 2>&1 & wait' </dev/null >/dev/null 2>"$T/loop.err" & P=$!; put pid $P
wait_until nonempty "$T/ready" && wait_until has_lines "$T/out.txt" 5 || fail "the tree did not start"
PIDS=$(tree_of $P | sort -n | tr '\n' ' '); put pids "$PIDS"
M=$(for p in $PIDS; do [ "$(cat /proc/$p/comm)" = memstate-comm ] && echo $p; done); put memstate "$M"
grep -q mapped.dat /proc/$M/maps || fail "memstate does not map mapped.dat"
run dump crt dump -t $P -D "$T/ck"
need dump
wait_until gone $PIDS || fail "the dumped tree is still there"
mv "$T/memstate-cwd/mapped.dat" "$T/mapped.dat.away"
run restore crt restore -D "$T/ck" -d
sleep 0.3
put left "$(for p in $PIDS; do [ -e /proc/$p ] && echo "$p $(state $p)"; done; ps -e -o pid=,stat=,comm= | awk '$3 != "bash" && $3 != "ps" && $3 != "awk"')"
put n "$(lines "$T/out.txt")"
sleep 0.3
put n_later "$(lines "$T/out.txt")"
mv "$T/mapped.dat.away" "$T/memstate-cwd/mapped.dat"
run restore_good crt restore -D "$T/ck" -d
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
    s.passed("result");
    s.counter("out.txt");
}

// ------------------------------------------------------------------ python loop

#[test]
fn python_loop_continues_after_restore() {
    let s = Scenario::run(
        "pyloop",
        r#"
start_loop; P=$!; put pid $P
wait_until has_lines "$T/out.txt" 10 || fail "loop.py did not start counting"
run dump "$CRTOOL" dump -t $P -D "$T/ck"
need dump
wait_until dead $P || fail "the dumped process is still alive"
put n_dumped "$(lines "$T/out.txt")"
sleep 0.5
put n_dead "$(lines "$T/out.txt")"
run restore "$CRTOOL" restore -D "$T/ck" -d
wait_until has_lines "$T/out.txt" $(( $(lines "$T/out.txt") + 20 )) && put counting yes
put tracer "$(tracer $P)"
kill $P
wait_until dead $P
"#,
    );
    let p = s.pid();
    s.ok("dump");
    s.ok("restore");
    let (dumped, dead) = (s.var("n_dumped"), s.var("n_dead"));
    s.ensure(dumped == dead, || format!("lines were written while the process was dumped and dead ({dumped} → {dead})"));
    s.ensure(s.var("counting") == "yes", || format!("pid {p} did not keep counting after restore"));
    s.ensure(s.var("tracer") == "0", || format!("pid {p} is still traced after restore (TracerPid {})", s.var("tracer")));
    let n = s.counter("out.txt");
    let dumped: u64 = dumped.trim().parse().unwrap();
    s.ensure(n >= dumped + 20, || format!("only {n} lines, {dumped} at the dump"));
}

/// `>out.txt 2>&1`: fds 1 and 2 share one open file description (one offset). After
/// the restore they must still share it, or the two streams overwrite each other.
#[test]
fn fds_sharing_a_file_description_stay_shared() {
    let s = Scenario::run(
        "shared-description",
        r#"
setsid python3 "$LOOP_PY" --alternate </dev/null >"$T/out.txt" 2>&1 & P=$!; put pid $P
wait_until has_lines "$T/out.txt" 10 || fail "loop.py did not start counting"
run dump "$CRTOOL" dump -t $P -D "$T/ck"
need dump
wait_until dead $P || fail "the dumped process is still alive"
run restore "$CRTOOL" restore -D "$T/ck" -d
need restore
sleep 1
kill $P
wait_until dead $P
put size "$(stat -c %s "$T/out.txt")"
"#,
    );
    let n = s.counter("out.txt");
    s.ensure(n >= 20, || format!("only {n} lines in out.txt (size {})", s.var("size")));
}

// ------------------------------------------------------------------ refusals

/// loop.py holding `hold`: the dump must fail naming pid and fd, leave the process
/// running untraced and counting, and leave no images behind.
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
run dump "$CRTOOL" dump -t $P -D "$T/ck"
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
}

#[test]
fn dump_refuses_a_socket_and_the_process_runs_on() {
    unsupported_fd("socket", "", "socket");
}

/// /dev/ptmx passes the by-name precheck and is only refused once its fd was
/// received from the task: the cure path must leave the task as it was.
#[test]
fn dump_refuses_a_terminal_after_infection_and_the_process_runs_on() {
    unsupported_fd("ptmx", "", "ptmx");
}

// ------------------------------------------------------------------ bad images

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
run dump "$CRTOOL" dump -t $P -D "$T/ck"
need dump
wait_until dead $P || fail "the dumped process is still alive"
cp -a "$T/ck" "$T/ck_pages"; flip "$T/ck_pages/pages-$P.img"
cp -a "$T/ck" "$T/ck_core"; flip "$T/ck_core/core-$P.img"
run verify_pages "$CRTOOL" verify "$T/ck_pages"
run verify_core "$CRTOOL" verify "$T/ck_core"
run verify_good "$CRTOOL" verify "$T/ck"
run restore_pages "$CRTOOL" restore -D "$T/ck_pages" -d
sleep 0.2; put after_pages "$(state $P)"; kill -9 $P 2>/dev/null
wait_until dead $P
run restore_core "$CRTOOL" restore -D "$T/ck_core" -d
sleep 0.2; put after_core "$(state $P)"; kill -9 $P 2>/dev/null
wait_until dead $P
# The intact images still restore (so the failures above are the corruption's).
run restore_good "$CRTOOL" restore -D "$T/ck" -d
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
}

#[test]
fn restore_refuses_a_taken_pid() {
    let s = Scenario::run(
        "pid-taken",
        r#"
start_loop; P=$!; put pid $P
wait_until has_lines "$T/out.txt" 5 || fail "loop.py did not start counting"
run dump "$CRTOOL" dump -t $P -D "$T/ck" --leave-running
run restore "$CRTOOL" restore -D "$T/ck" -d
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
}

// ------------------------------------------------------------------ determinism

/// Steps dump1 and dump2 succeeded and wrote the same image files, byte for byte.
fn identical_dumps(s: &Scenario, min_images: usize) {
    s.ok("dump1");
    s.ok("dump2");
    let (a, b) = (image_files(&s.path("ck1")), image_files(&s.path("ck2")));
    s.ensure(a.len() >= min_images, || format!("only {} images: {:?}", a.len(), a.keys().collect::<Vec<_>>()));
    s.ensure(a.keys().eq(b.keys()), || format!("different image sets: {:?} vs {:?}", a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>()));
    for (name, x) in &a {
        let y = &b[name];
        let at = x.iter().zip(y.iter()).position(|(p, q)| p != q);
        s.ensure(x == y, || format!("{name} differs between the two dumps ({} vs {} bytes, first difference at offset {at:?})", x.len(), y.len()));
    }
}

#[test]
fn two_dumps_of_an_idle_task_are_identical() {
    // Pinned to one CPU: the kernel writes the CPU number into the task's rseq area
    // whenever it runs (the parasite runs in it), which would differ between dumps.
    let s = Scenario::run(
        "double-dump",
        r#"
setsid taskset -c 0 "$MEMSTATE" "$T/ready" "$T/result" idle no-shared-anon </dev/null >"$T/memstate.log" 2>&1 & P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "memstate did not get ready"
run dump1 "$CRTOOL" dump -t $P -D "$T/ck1" --leave-running
sleep 0.3
run dump2 "$CRTOOL" dump -t $P -D "$T/ck2" --leave-running
kill -USR1 $P
wait_until nonempty "$T/result"
"#,
    );
    identical_dumps(&s, 8);
    let result = s.read("result");
    s.ensure(result.trim() == "PASS", || format!("memstate after two dumps with --leave-running: {result:?}"));
}

/// The same for a small idle tree: the `pipes` workload (two processes, a pipe and a
/// FIFO with data in them), both pinned to one CPU. It must still verify afterwards
/// (the dumps read the pipes' data without consuming it).
#[test]
fn two_dumps_of_an_idle_tree_are_identical() {
    let s = Scenario::run(
        "double-dump-tree",
        r#"
setsid taskset -c 0 "$EXAMPLES/pipes" "$T" </dev/null >"$T/pipes.log" 2>&1 & P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "pipes did not get ready"
put pids "$(tree_of $P | tr '\n' ' ')"
run dump1 "$CRTOOL" dump -t $P -D "$T/ck1" --leave-running
sleep 0.3
run dump2 "$CRTOOL" dump -t $P -D "$T/ck2" --leave-running
kill -USR1 $P
wait_until nonempty "$T/result"
"#,
    );
    s.ensure(s.var("pids").split_whitespace().count() == 2, || format!("setup: the tree is {}", s.var("pids")));
    identical_dumps(&s, 13);
    s.ensure(image_files(&s.path("ck1")).contains_key("pipes.img"), || "no pipes.img in the dump".into());
    s.passed("result");
}

// ------------------------------------------------------------------ tools

#[test]
fn show_decode_verify_and_check() {
    let s = Scenario::run(
        "tools",
        r#"
start_loop; P=$!; put pid $P
wait_until has_lines "$T/out.txt" 5 || fail "loop.py did not start counting"
run dump "$CRTOOL" dump -t $P -D "$T/ck" --leave-running
run dumpz "$CRTOOL" dump -t $P -D "$T/ckz" --leave-running --compress
kill $P
run show "$CRTOOL" show "$T/ck"
run showz "$CRTOOL" show "$T/ckz"
run verify "$CRTOOL" verify "$T/ck"
run verifyz "$CRTOOL" verify "$T/ckz"
for d in ck ckz; do
    for f in "$T/$d"/*.img; do run "decode-$d-$(basename "$f")" "$CRTOOL" decode "$f" --json; done
done
run check "$CRTOOL" check
"#,
    );
    let p = s.pid();
    s.ok("dump");
    s.ok("dumpz");
    for (step, kind) in [("show", "raw pages"), ("showz", "zstd pages")] {
        s.ok(step);
        let out = s.out(step);
        for needle in [&format!("{p} "), "python", "files:", "out.txt", kind] {
            s.ensure(out.contains(needle), || format!("`crtool {step}` does not mention {needle:?}:\n{out}"));
        }
    }
    let kinds = ["inventory.img", "pstree.img", "files.img", &format!("core-{p}.img"), &format!("mm-{p}.img"), &format!("pagemap-{p}.img"), &format!("fdinfo-{p}.img"), &format!("pages-{p}.img")];
    for d in ["ck", "ckz"] {
        let step = if d == "ck" { "verify" } else { "verifyz" };
        s.ok(step);
        let present = image_files(&s.path(d));
        for k in kinds {
            s.ensure(present.contains_key(k), || format!("{d}/{k} is missing; images: {:?}", present.keys().collect::<Vec<_>>()));
            s.ensure(s.out(step).contains(k), || format!("`crtool verify {d}` does not list {k}:\n{}", s.out(step)));
            let step = format!("decode-{d}-{k}");
            s.ok(&step);
            let json: serde_json::Value = serde_json::from_str(&s.out(&step))
                .unwrap_or_else(|e| s.fail(&format!("`crtool decode {d}/{k} --json` is not JSON ({e}):\n{}", tail(&s.out(&step), 20))));
            s.ensure(!json.is_null(), || format!("{d}/{k} decodes to null"));
        }
        let core = s.out(&format!("decode-{d}-core-{p}.img"));
        s.ensure(core.contains(&p.to_string()) && core.contains("python"), || format!("{d}/core-{p}.img decodes without its pid or comm:\n{}", tail(&core, 30)));
    }
    s.ok("check");
    s.ensure(s.out("check").contains("Looks good."), || format!("`crtool check`:\n{}", s.out("check")));
}
