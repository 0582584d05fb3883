//! End-to-end test of shell jobs (--shell-job): a job started from one terminal is
//! dumped and restored from another, which it gets (tests/workloads/shelljob.py).
//! Terminals are made with util-linux `script`. See tests/common/mod.rs.

mod common;

use common::*;

/// A job started in the background of a shell on terminal A (its stdin, stdout,
/// stderr and controlling terminal): without --shell-job the dump is refused
/// saying so; with it, the job is restored by `crtool restore --shell-job` running
/// on terminal B, and its fds and controlling terminal are B (it writes there).
#[test]
fn a_shell_job_gets_the_terminal_it_is_restored_on() {
    let s = Scenario::run_as(
        "shell-job",
        Creds::Root,
        r#"
JOB="$(dirname "$LOOP_PY")/shelljob.py"
export T PY3 JOB CRTOOL
cat >"$T/phase1.sh" <<'SH'
"$PY3" "$JOB" "$T" </dev/tty &
P=$!
for i in $(seq 100); do [ -s "$T/ready" ] && break; sleep 0.1; done
echo $P >"$T/pid"
tty >"$T/tty1"
timeout 60 "$CRTOOL" dump -t $P -D "$T/ck0" >"$T/refused.out" 2>"$T/refused.err"; echo $? >"$T/refused.rc"
timeout 60 "$CRTOOL" dump -t $P -D "$T/ck" --shell-job >"$T/dump.out" 2>"$T/dump.err"; echo $? >"$T/dump.rc"
# Terminal A stays open while B is used, so that B is another terminal.
for i in $(seq 300); do [ -e "$T/done" ] && break; sleep 0.1; done
SH
cat >"$T/phase2.sh" <<'SH'
tty >"$T/newtty"
timeout 60 "$CRTOOL" restore -D "$T/ck" -d --shell-job >"$T/restore.out" 2>"$T/restore.err"; echo $? >"$T/restore.rc"
P=$(cat "$T/pid")
kill -USR1 $P
for i in $(seq 100); do [ -s "$T/result" ] && break; sleep 0.1; done
SH
timeout 60 script -qfec "bash $T/phase1.sh" "$T/typescript1" </dev/null >/dev/null 2>&1 &
wait_until nonempty "$T/dump.rc" || fail "phase 1 did not dump"
put pid "$(cat "$T/pid")"
timeout 60 script -qfec "bash $T/phase2.sh" "$T/typescript2" </dev/null >/dev/null 2>&1
touch "$T/done"
wait
put tty1 "$(cat "$T/tty1")"
put tty2 "$(cat "$T/newtty")"
put written "$(grep -c 'restored job writes to its new terminal' "$T/typescript2")"
"#,
    );
    s.failed_saying("refused", &["--shell-job"]);
    s.ok("dump");
    s.ok("restore");
    s.ensure(s.var("tty1") != s.var("tty2"), || format!("setup: both phases ran on {}", s.var("tty1")));
    s.ensure(s.var("written") == "1", || "the restored job's line is not on the new terminal".into());
    s.passed("result");
}
