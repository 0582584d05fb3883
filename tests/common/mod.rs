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
//! Needs root, util-linux (unshare, setsid, taskset), procps (ps) and python3. The
//! workloads are cargo examples (`memstate`, `threads`, `tree`, ... in
//! tests/workloads/), built by `cargo test`, plus tests/workloads/loop.py. Most of
//! them follow one protocol: `NAME DIR [options]` sets itself up, writes DIR/ready,
//! waits for SIGUSR1, checks its own state and writes PASS or FAIL: ... to
//! DIR/result.
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
const WORKLOADS: &[&str] = &["memstate", "threads", "tree", "shm", "signals", "pipes", "sharedfd"];

pub fn loop_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/loop.py")
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

impl Scenario {
    /// Runs `body` (after the prelude) in a private PID and mount namespace.
    pub fn run(name: &str, body: &str) -> Scenario {
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

    /// A workload's verdict file must say PASS.
    pub fn passed(&self, rel: &str) {
        let text = self.read(rel);
        self.ensure(text.trim() == "PASS", || {
            if text.is_empty() { format!("the workload wrote no {rel}") } else { format!("the workload after the restore: {}", text.trim()) }
        });
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

/// Starts memstate with `args`, dumps it with `dump_flags`, restores it detached,
/// sends SIGUSR1 and collects the verdict.
pub fn memstate_roundtrip(name: &str, args: &str, dump_flags: &str) -> Scenario {
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

/// Starts workload `wl ARGS` as a session leader, runs `before_dump`, dumps its whole
/// tree (`run dump WRAP crtool dump ...`), waits until every process of it is gone,
/// restores it detached, runs `after_restore`, sends SIGUSR1 to the root and requires
/// the workload's verdict PASS. Records the tree's pids (var.pids) and which of them
/// are missing (var.missing) or traced (var.traced) after the restore.
pub fn workload_roundtrip(name: &str, wl: &str, args: &str, before_dump: &str, wrap: &str, after_restore: &str) -> Scenario {
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

/// Steps dump1 and dump2 succeeded and wrote the same image files, byte for byte.
pub fn identical_dumps(s: &Scenario, min_images: usize) {
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
