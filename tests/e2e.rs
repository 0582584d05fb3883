//! End-to-end tests: real processes dumped and restored by the crtool binary.
//!
//! Each test writes a bash scenario into its own temporary directory and runs it as
//! PID 1 of a private PID namespace (`unshare -pf --kill-child --mount-proc`), so
//! that PIDs are free to reuse, tests can run in parallel, and everything a scenario
//! started dies with it. The script does the work and records what happened (exit
//! codes, stdout and stderr of each crtool command in STEP.rc/.out/.err, other facts
//! in var.KEY); the Rust side then checks those records. On failure the message
//! shows the scenario log and how to re-run the script by hand (the directory is
//! kept).
//!
//! Needs root, util-linux (unshare, setsid, taskset) and python3. The workloads are
//! cargo examples (`memstate`), built by `cargo test`, plus tests/workloads/loop.py.

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

fn loop_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/loop.py")
}

/// Helpers every scenario script starts with.
const PRELUDE: &str = r#"
set -u
# Only stdin, stdout and stderr: crtool refuses fds it cannot restore (pipes, ...)
# and workloads inherit ours.
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
# need STEP: stop the scenario unless `run STEP ...` succeeded.
need() { [ "$(cat "$T/$1.rc" 2>/dev/null)" = 0 ] || fail "$1 failed (exit $(cat "$T/$1.rc" 2>/dev/null)): $(cat "$T/$1.err" 2>/dev/null)"; }
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
             T={}\nCRTOOL={}\nMEMSTATE={}\nLOOP_PY={}\n",
            dir.join("scenario.sh").display(),
            shq(&dir),
            shq(&crtool()),
            shq(&example("memstate")),
            shq(&loop_py()),
        );
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
        for log in ["ck/dump.log", "ck/restore.log", "memstate.log", "loop.err"] {
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
        self.ensure(rc == 0, || format!("`{step}` exited with {rc}; stderr:\n{}", self.err(step)));
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
        if !std::thread::panicking() {
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

#[test]
fn dump_refuses_a_pipe_and_the_process_runs_on() {
    unsupported_fd("pipe", "", "pipe");
}

/// A named FIFO passes the by-name precheck and is only refused after the parasite
/// is in the task: the cure path must leave the task as it was.
#[test]
fn dump_refuses_a_fifo_after_infection_and_the_process_runs_on() {
    unsupported_fd("fifo", r#"mkfifo "$T/fifo""#, r#"fifo:"$T/fifo""#);
}

/// Like the FIFO: /dev/ptmx is only refused once its fd was received from the task.
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
    s.ok("dump1");
    s.ok("dump2");
    let (a, b) = (image_files(&s.path("ck1")), image_files(&s.path("ck2")));
    s.ensure(a.len() >= 8, || format!("only {} images: {:?}", a.len(), a.keys().collect::<Vec<_>>()));
    s.ensure(a.keys().eq(b.keys()), || format!("different image sets: {:?} vs {:?}", a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>()));
    for (name, x) in &a {
        let y = &b[name];
        let at = x.iter().zip(y.iter()).position(|(p, q)| p != q);
        s.ensure(x == y, || format!("{name} differs between the two dumps ({} vs {} bytes, first difference at offset {at:?})", x.len(), y.len()));
    }
    let result = s.read("result");
    s.ensure(result.trim() == "PASS", || format!("memstate after two dumps with --leave-running: {result:?}"));
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
