//! The end-to-end test harness shared by tests/e2e_*.rs (each includes it with
//! `mod common;`): end-to-end tests run real processes dumped and restored by the
//! crtool binary.
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
//! Needs root, util-linux (unshare, setsid, setpriv, taskset), procps (ps) and
//! python3. The workloads are cargo examples (`memstate`, `threads`, `tree`, ... in
//! tests/workloads/), built by `cargo test`, plus tests/workloads/loop.py and hold.py.
//! Most of them follow one protocol: `NAME DIR [options]` sets itself up, writes DIR/ready,
//! waits for SIGUSR1, checks its own state and writes PASS or FAIL: ... to
//! DIR/result ("PASS (skipped: WHAT)" when the CPU cannot run a part of the check,
//! which the test then reports on stderr).
//!
//! As in CRIU's zdtm, the workloads run as an unprivileged user ([`WL_UID`], with
//! supplementary groups, no capabilities) unless a test needs root, so that
//! credentials cannot come back right by being inherited from crtool. Besides the
//! workload's own verdict, every roundtrip compares the visible state of the whole
//! tree (tests/workloads/procstate.py: ids, credentials, capabilities, signal
//! dispositions and masks, limits, mappings, fds, ...) taken after `ready` and before
//! the dump with the one taken after the restore and before SIGUSR1 (`snapshot`,
//! printed as a unified diff when they differ), and the processes of the scenario's
//! PID namespace before the dump with those after the restore (`pidset`): nothing
//! extra, nothing missing.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const SCENARIO_TIMEOUT: Duration = Duration::from_secs(120);

pub fn crtool() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_crtool"))
}

/// A cargo example built next to the crtool binary (target/PROFILE/examples/NAME).
pub fn example(name: &str) -> PathBuf {
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
const WORKLOADS: &[&str] = &["memstate", "threads", "tree", "shm", "signals", "pipes", "sharedfd", "blocked", "jobctl", "sigactions", "idle", "attrs", "bench_mem", "sysvipc"];

pub fn loop_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/loop.py")
}

/// The process-state snapshot tool (`snapshot NAME PID` in the prelude).
pub fn procstate_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/procstate.py")
}

/// Helpers every scenario script starts with.
const PRELUDE: &str = include_str!("prelude.sh");

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// One scenario run: its directory, the script's exit status and log.
pub struct Scenario {
    name: String,
    dir: PathBuf,
    status: Option<i32>,
    log: String,
}

/// Who the workloads of a scenario run as.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Creds {
    /// uid/gid [`WL_UID`]/[`WL_GID`] with supplementary groups [`WL_GROUPS`] and no
    /// capabilities (`setpriv`), as in the reference suite: credentials restored
    /// wrong cannot pass by being inherited from crtool (root).
    User,
    /// root, for what needs it (and to cover a task with every capability).
    Root,
}

/// The unprivileged credentials workloads run with (they need not exist in
/// /etc/passwd).
pub const WL_UID: u32 = 1000;
pub const WL_GID: u32 = 1000;
pub const WL_GROUPS: &str = "1000,1001,1002";

impl Scenario {
    /// Runs `body` (after the prelude) in a private PID and mount namespace, its
    /// workloads as the unprivileged user (`Creds::User`).
    pub fn run(name: &str, body: &str) -> Scenario {
        Self::run_as(name, Creds::User, body)
    }

    /// As `run`, with the workloads running as `creds`. The prelude's `AS_WL` array is
    /// the command prefix that drops to them (empty for root), `PY3` a python3 they
    /// can run; the scenario directory belongs to them.
    pub fn run_as(name: &str, creds: Creds, body: &str) -> Scenario {
        // SAFETY: geteuid(2) cannot fail.
        assert!(unsafe { libc::geteuid() } == 0, "the end-to-end tests must run as root (ptrace, PID namespaces)");
        let dir = std::env::temp_dir().join(format!("crtool-e2e-{name}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let as_wl = match creds {
            Creds::User => {
                std::os::unix::fs::chown(&dir, Some(WL_UID), Some(WL_GID)).unwrap();
                format!("(setpriv --reuid={WL_UID} --regid={WL_GID} --groups={WL_GROUPS})")
            }
            Creds::Root => "()".to_string(),
        };
        let header = format!(
            "#!/bin/bash\n# crtool e2e scenario {name}; run as root: unshare -pf --kill-child --mount-proc bash {}\n\
             T={}\nCRTOOL={}\nMEMSTATE={}\nLOOP_PY={}\nEXAMPLES={}\nPROCSTATE={}\nAS_WL={as_wl}\n",
            dir.join("scenario.sh").display(),
            shq(&dir),
            shq(&crtool()),
            shq(&example("memstate")),
            shq(&loop_py()),
            shq(example("memstate").parent().unwrap()),
            shq(&procstate_py()),
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

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_default()
    }

    pub fn var_opt(&self, key: &str) -> Option<String> {
        std::fs::read_to_string(self.path(&format!("var.{key}"))).ok()
    }

    pub fn var(&self, key: &str) -> String {
        self.var_opt(key).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.var("pid").trim().parse().unwrap_or_else(|_| self.fail("the scenario recorded no pid"))
    }

    /// Exit code of a `run` step.
    pub fn rc(&self, step: &str) -> i32 {
        match self.read(&format!("{step}.rc")).trim().parse() {
            Ok(c) => c,
            Err(_) => self.fail(&format!("step {step} did not run")),
        }
    }

    pub fn out(&self, step: &str) -> String {
        self.read(&format!("{step}.out"))
    }

    pub fn err(&self, step: &str) -> String {
        self.read(&format!("{step}.err"))
    }

    pub fn fail(&self, msg: &str) -> ! {
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

    pub fn ensure(&self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.fail(&msg());
        }
    }

    /// A `run` step must have succeeded.
    pub fn ok(&self, step: &str) {
        let rc = self.rc(step);
        let hung = if rc == 124 { " (killed by `timeout`: it hung)" } else { "" };
        self.ensure(rc == 0, || format!("`{step}` exited with {rc}{hung}; stderr:\n{}", self.err(step)));
    }

    /// A `run` step must have failed, with all of `needles` in its output.
    pub fn failed_saying(&self, step: &str, needles: &[&str]) {
        let rc = self.rc(step);
        let text = format!("{}{}", self.out(step), self.err(step));
        self.ensure(rc != 0, || format!("`{step}` should have failed but exited 0; output:\n{text}"));
        for n in needles {
            self.ensure(text.contains(n), || format!("`{step}` failed (exit {rc}) but its message does not mention {n:?}:\n{text}"));
        }
    }

    /// A workload's verdict file must say PASS (or "PASS (skipped: WHAT)": a part
    /// of the check this machine cannot run, reported on stderr).
    pub fn passed(&self, rel: &str) {
        if let Err(e) = self.verdict(rel) {
            self.fail(&e);
        }
    }

    /// The verdict in `rel`: Ok for "PASS" and "PASS (skipped: WHAT)" (after saying
    /// on stderr, past the test harness's capture, what was skipped), else why not.
    pub fn verdict(&self, rel: &str) -> Result<(), String> {
        let text = self.read(rel);
        let t = text.trim();
        if t == "PASS" {
            return Ok(());
        }
        if let Some(what) = t.strip_prefix("PASS (skipped: ").and_then(|r| r.strip_suffix(')')) {
            self.note(&format!("SKIPPED in {rel}: {what} (this CPU or kernel cannot run that part of the check)"));
            return Ok(());
        }
        Err(if text.is_empty() { format!("the workload wrote no {rel}") } else { format!("the workload after the restore: {t}") })
    }

    /// Says `msg` on the test process's stderr even when the test passes (libtest
    /// captures only the print macros, not writes to the stderr handle).
    pub fn note(&self, msg: &str) {
        use std::io::Write;
        let _ = writeln!(std::io::stderr().lock(), "[{}] {msg}", self.name);
    }

    /// Problems with the snapshots `snapshot A` and `snapshot B` (tests/workloads/
    /// procstate.py): they must exist, read cleanly and be identical; a unified diff
    /// shows what differs.
    pub fn state_problems(&self, a: &str, b: &str) -> Vec<String> {
        let mut out = Vec::new();
        let (fa, fb) = (format!("state.{a}"), format!("state.{b}"));
        for f in [&fa, &fb] {
            if !self.path(f).exists() {
                out.push(format!("no snapshot {f} was taken"));
            }
            let err = self.read(&format!("{f}.err"));
            if !err.trim().is_empty() {
                out.push(format!("procstate for {f} reported:\n{}", tail(&err, 10)));
            }
        }
        if out.is_empty() && self.read(&fa) != self.read(&fb) {
            let diff = Command::new("diff").arg("-u").arg(&fa).arg(&fb).current_dir(&self.dir).output();
            let text = match diff {
                Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
                Err(e) => format!("(diff -u could not run: {e})"),
            };
            let lines: Vec<&str> = text.lines().collect();
            let shown = if lines.len() > 200 { format!("{}\n... ({} more lines)", lines[..200].join("\n"), lines.len() - 200) } else { text.clone() };
            out.push(format!("the visible state of the tree differs between {fa} and {fb} (procstate.py):\n{shown}"));
        }
        out
    }

    /// Problems with the process sets `pidset A` and `pidset B` (every process in
    /// the scenario's PID namespace but its bash): they must be the same pids with
    /// the same names, no extra process and none missing.
    pub fn pidset_problems(&self, a: &str, b: &str) -> Vec<String> {
        let set = |n: &str| -> Option<BTreeMap<i32, String>> {
            let text = std::fs::read_to_string(self.path(&format!("pids.{n}"))).ok()?;
            Some(text.lines().filter_map(|l| l.split_once(' ')).filter_map(|(p, c)| Some((p.parse().ok()?, c.to_string()))).collect())
        };
        let (Some(x), Some(y)) = (set(a), set(b)) else { return vec![format!("pidset {a} or {b} was not recorded")] };
        let mut out = Vec::new();
        // The baseline taken before a dump holds at least the workload.
        if a == "before" && x.is_empty() {
            out.push("pidset before is empty: the scenario recorded it at the wrong moment".into());
        }
        let extra: Vec<String> = y.iter().filter(|(p, c)| x.get(p) != Some(c)).map(|(p, c)| format!("{p} ({c})")).collect();
        let missing: Vec<String> = x.iter().filter(|(p, c)| y.get(p) != Some(c)).map(|(p, c)| format!("{p} ({c})")).collect();
        if !extra.is_empty() || !missing.is_empty() {
            out.push(format!(
                "the processes in the scenario's PID namespace differ: {} at {b} but not at {a}: {}; {} at {a} but not at {b}: {}",
                extra.len(), extra.join(", "), missing.len(), missing.join(", ")
            ));
        }
        out
    }

    /// Fails with every problem in `problems`, if any.
    pub fn all_ok(&self, problems: Vec<String>) {
        if !problems.is_empty() {
            self.fail(&problems.join("\n\n"));
        }
    }

    /// After a roundtrip: the workload's verdict in `rel`, the snapshots before/after
    /// and the process sets before/after, all reported together.
    pub fn roundtrip_ok(&self, rel: &str) {
        let mut p: Vec<String> = self.verdict(rel).err().into_iter().collect();
        p.extend(self.state_problems("before", "after"));
        p.extend(self.pidset_problems("before", "after"));
        self.all_ok(p);
    }

    /// The window (ms) from right before the dump to right after the restore, as
    /// `down_start`/`down_end` recorded it in $T/downtime.
    pub fn down_ms(&self) -> i64 {
        let t = self.read("downtime");
        let v: Vec<i64> = t.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        if v.len() != 2 {
            self.fail(&format!("$T/downtime is {t:?}"));
        }
        (v[1] - v[0]) / 1000
    }

    /// A `var.KEY` holding a number.
    pub fn num(&self, key: &str) -> i64 {
        self.var(key).trim().parse().unwrap_or_else(|_| self.fail(&format!("var.{key} is {:?}, not a number", self.var(key))))
    }

    /// The counter file written by loop.py: must be 0, 1, 2, ... with no gap or repeat.
    pub fn counter(&self, rel: &str) -> u64 {
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

pub fn shq(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn image_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".img") {
            out.insert(name, std::fs::read(e.path()).unwrap());
        }
    }
    out
}

// ------------------------------------------------------------------ roundtrips

/// Starts memstate with `args` (as the unprivileged user), dumps it with
/// `dump_flags`, restores it detached, sends SIGUSR1 and collects the verdict. The
/// visible state (procstate.py) after the restore must be what it was before the dump,
/// and the PID namespace must hold the same processes.
pub fn memstate_roundtrip(name: &str, args: &str, dump_flags: &str) -> Scenario {
    memstate_roundtrip_as(name, Creds::User, args, dump_flags)
}

pub fn memstate_roundtrip_as(name: &str, creds: Creds, args: &str, dump_flags: &str) -> Scenario {
    let s = Scenario::run_as(
        name,
        creds,
        &format!(
            r#"
start_memstate {args}; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "memstate did not get ready"
snapshot before $P
pidset before
down_start
run dump "$CRTOOL" dump -t $P -D "$T/ck" {dump_flags}
need dump
wait_until dead $P || fail "the dumped process is still alive"
run restore "$CRTOOL" restore -D "$T/ck" -d
down_end
alive $P && put alive_after_restore yes
pidset after
snapshot after $P
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
    s.ensure(!s.read("result").is_empty(), || format!("memstate wrote no result after SIGUSR1 (log: {})", s.read("memstate.log")));
    s.roundtrip_ok("result");
    s.ok("show");
    s
}

/// Starts workload `wl ARGS` as a session leader (as the unprivileged user), runs
/// `before_dump`, takes a snapshot of the tree's visible state and of the processes
/// in the PID namespace, dumps the whole tree (`run dump WRAP crtool dump ...`), waits
/// until every process of it is gone, restores it detached, runs `after_restore`,
/// takes the snapshots again, sends SIGUSR1 to the root and requires the workload's
/// verdict PASS and both snapshots unchanged. Records the tree's pids (var.pids) and
/// which of them are missing (var.missing) or traced (var.traced) after the restore.
pub fn workload_roundtrip(name: &str, wl: &str, args: &str, before_dump: &str, wrap: &str, after_restore: &str) -> Scenario {
    workload_roundtrip_with(name, wl, args, before_dump, wrap, after_restore, "")
}

/// As `workload_roundtrip`, with `procstate` options for both snapshots.
pub fn workload_roundtrip_with(name: &str, wl: &str, args: &str, before_dump: &str, wrap: &str, after_restore: &str, procstate: &str) -> Scenario {
    let s = Scenario::run(
        name,
        &format!(
            r#"
start_wl {wl} {args}; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "{wl} did not get ready"
{before_dump}
PIDS=$(tree_of $P | sort -n | tr '\n' ' '); put pids "$PIDS"
snapshot before $P {procstate}
pidset before
down_start
run dump {wrap} timeout 60 "$CRTOOL" dump -t $P -D "$T/ck"
need dump
wait_until gone $PIDS || fail "processes of the dumped tree are still there"
run restore crt restore -D "$T/ck" -d
down_end
need restore
pidset after
{after_restore}
snapshot after $P {procstate}
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
    s.roundtrip_ok("result");
    s
}

/// A Python workload of tests/workloads (`py_wl NAME ARGS`: `$PY3 NAME.py $T ARGS` as
/// a session leader, as `creds`) that writes `$T/ready`, prints a counter to
/// `$T/out.txt` and on SIGUSR1 checks itself into `$T/result`: run `before_dump`,
/// snapshot the tree and the PID namespace, dump it (`dump_flags`), wait until it is
/// gone, restore it detached (`restore_flags`), run `after_restore`, snapshot again,
/// require the counter to go on, send SIGUSR1. Checks the dump and restore, the
/// tracer, the verdict, the snapshots and the counter.
#[allow(clippy::too_many_arguments)]
pub fn py_roundtrip(name: &str, creds: Creds, wl: &str, args: &str, before_dump: &str, dump_flags: &str, restore_flags: &str, after_restore: &str) -> Scenario {
    let s = Scenario::run_as(
        name,
        creds,
        &format!(
            r#"
"${{AS_WL[@]}}" setsid "$PY3" "$(dirname "$LOOP_PY")/{wl}.py" "$T" {args} </dev/null >"$T/out.txt" 2>"$T/wl.err" & P=$!; put pid $P
wait_until nonempty "$T/ready" && wait_until has_lines "$T/out.txt" 3 || fail "{wl}.py did not start: $(cat "$T/wl.err")"
PIDS=$(tree_of $P | sort -n | tr '\n' ' ')
{before_dump}
snapshot before $P --no-pos
pidset before
run dump crt dump -t $P -D "$T/ck" {dump_flags}
need dump
wait_until gone $PIDS || fail "the dumped processes are still there"
run restore crt restore -D "$T/ck" -d {restore_flags}
need restore
{after_restore}
pidset after
snapshot after $P --no-pos
put tracer "$(tracer $P)"
wait_until has_lines "$T/out.txt" $(( $(lines "$T/out.txt") + 10 )) && put counting yes
kill -USR1 $P
wait_until nonempty "$T/result" || fail "{wl}.py wrote no result after SIGUSR1: $(cat "$T/wl.err")"
"#
        ),
    );
    s.ok("dump");
    s.ok("restore");
    s.ensure(s.var("tracer") == "0", || format!("TracerPid after the restore: {}", s.var("tracer")));
    s.ensure(s.var("counting") == "yes", || "the restored process does not count".into());
    s
}

/// A --leave-running dump first (`$T/ck-r`): it must not move anything (offsets
/// included), which the workload's own check after the real dump shows.
pub const LEAVE_RUNNING_FIRST: &str = r#"run dump_r crt dump -t $P -D "$T/ck-r" -R
need dump_r"#;

/// How the images in ck1 and ck2 (two dumps of one unchanged tree) differ: they
/// must be the same files, byte for byte, and at least `min_images` of them.
pub fn dump_differences(s: &Scenario, min_images: usize) -> Vec<String> {
    dump_differences_between(s, "ck1", "ck2", min_images)
}

/// The same for the dumps in directories `d1` and `d2` of the scenario.
pub fn dump_differences_between(s: &Scenario, d1: &str, d2: &str, min_images: usize) -> Vec<String> {
    let (a, b) = (image_files(&s.path(d1)), image_files(&s.path(d2)));
    let mut out = Vec::new();
    if a.len() < min_images {
        out.push(format!("only {} images: {:?}", a.len(), a.keys().collect::<Vec<_>>()));
    }
    if !a.keys().eq(b.keys()) {
        out.push(format!("different image sets: {:?} vs {:?}", a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>()));
    }
    for (name, x) in &a {
        let Some(y) = b.get(name) else { continue };
        if x != y {
            let at = x.iter().zip(y.iter()).position(|(p, q)| p != q);
            out.push(format!("{name} differs between the two dumps ({} vs {} bytes, first difference at offset {at:?})", x.len(), y.len()));
        }
    }
    out
}
