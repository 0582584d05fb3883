//! End-to-end tests of unix sockets (tests/workloads/unixsk.py): every socket type
//! with data in flight, listeners with accepted and waiting connections, files and
//! credentials in flight between processes, a real program's sockets (Python's
//! multiprocessing manager), dumps that must not consume anything, peers outside the
//! tree (refused, or dumped with --ext-unix-sk), a failed restore leaving no socket
//! file behind. See tests/common/mod.rs for how scenarios run.

mod common;

use common::*;

const START_UNIXSK: &str = r#"
UNIXSK="$(dirname "$LOOP_PY")/unixsk.py"
# start_unixsk WHAT ARGS...: unixsk.py as a session leader.
start_unixsk() { "${AS_WL[@]}" setsid "$PY3" "$UNIXSK" "$T" "$@" </dev/null >"$T/out.txt" 2>"$T/unixsk.err" & }
"#;

/// `unixsk.py WHAT` through a dump (with `dump_flags`) and a restore (with
/// `restore_flags`), then SIGUSR1: the verdict, the snapshots and the processes
/// before and after, and the counter must be right.
fn roundtrip(name: &str, creds: Creds, what: &str, dump_flags: &str, restore_flags: &str) -> Scenario {
    let s = py_roundtrip(name, creds, "unixsk", what, "", dump_flags, restore_flags, "");
    s.roundtrip_ok("result");
    s.counter("out.txt");
    s
}

/// Socketpairs of the three types with data both ways (bytes, boundaries, an empty
/// datagram), a listener with an accepted connection and one waiting in its queue,
/// a bound datagram server with messages from a bound, an autobound and an unbound
/// sender (the senders' names come back), a socket bound to a since-unlinked path,
/// shutdown and closed-peer states, options and a peek offset inside a partly
/// peeked queue; new connections and traffic afterwards.
#[test]
fn every_socket_kind_with_data_in_flight() {
    roundtrip("unix-pairs", Creds::User, "pairs", "", "");
}

/// Files in flight between two processes (a pipe's read end with bytes in the pipe,
/// a file at offset 5, a unix socket with its own queue), credentials in flight (of
/// the parent, of the receiver itself, of a process that has exited since).
#[test]
fn files_and_credentials_in_flight_between_processes() {
    roundtrip("unix-tree", Creds::User, "tree", "", "");
}

/// A real program: Python's multiprocessing Manager (a server process with a
/// listener and a thread per connection) with a dict and a queue in use; after the
/// restore the same proxies work and a new one connects.
#[test]
fn python_multiprocessing_manager_keeps_serving() {
    roundtrip("unix-mp-manager", Creds::User, "mp-manager", "", "");
}

/// Two --leave-running dumps of an idle tree holding sockets with data, files and
/// credentials in flight are byte-identical, and leave everything where it was: the
/// tree then verifies itself without any restore.
#[test]
fn dumps_consume_nothing_and_are_identical() {
    let s = Scenario::run(
        "unix-double-dump",
        &format!(
            r#"{START_UNIXSK}
export UNIXSK_IDLE=1
start_unixsk tree; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "unixsk.py did not start: $(cat "$T/unixsk.err")"
sleep 0.3
snapshot before $P
pidset before
run dump1 crt dump -t $P -D "$T/ck1" --leave-running
sleep 0.3
run dump2 crt dump -t $P -D "$T/ck2" --leave-running
pidset after
snapshot after $P
kill -USR1 $P
wait_until nonempty "$T/result" || fail "no result: $(cat "$T/unixsk.err")"
"#
        ),
    );
    s.ok("dump1");
    s.ok("dump2");
    let mut p = dump_differences(&s, 8);
    p.extend(s.state_problems("before", "after"));
    p.extend(s.pidset_problems("before", "after"));
    if let Err(e) = s.verdict("result") {
        p.push(format!("after two dumps without a restore: {e}"));
    }
    s.all_ok(p);
}

/// A stream socket whose peer is outside the tree: the dump refuses it, naming the
/// pid, fd, inode and --ext-unix-sk, and the process runs on with its queue intact.
#[test]
fn a_peer_outside_the_tree_is_refused() {
    let s = Scenario::run(
        "unix-external-refused",
        &format!(
            r#"{START_UNIXSK}
start_unixsk external; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "unixsk.py did not start: $(cat "$T/unixsk.err")"
run dump crt dump -t $P -D "$T/ck"
put tracer "$(tracer $P)"
put state "$(state $P)"
kill -USR1 $P
wait_until nonempty "$T/result" || fail "no result after the refused dump"
kill "$(cat "$T/peer")" 2>/dev/null
"#
        ),
    );
    s.failed_saying("dump", &["socket:[", "outside the dumped tree", "--ext-unix-sk"]);
    let err = s.err("dump");
    s.ensure(err.contains(&format!("pid {}", s.pid())) || err.contains(&s.pid().to_string()), || format!("the refusal does not name pid {}: {err}", s.pid()));
    s.ensure(s.var("tracer") == "0", || format!("still traced after the refused dump: {}", s.var("tracer")));
    s.passed("result");
}

/// With --ext-unix-sk, a datagram socket connected to a server outside the tree is
/// dumped and connected to it again by name at restore: the message the server had
/// queued is there and the server answers new ones.
#[test]
fn ext_unix_sk_reconnects_a_datagram_socket() {
    let s = roundtrip("unix-ext-dgram", Creds::User, "ext-dgram", "--ext-unix-sk", "--ext-unix-sk");
    let _ = std::fs::read_to_string(s.path("peer")).map(|p| p.trim().parse::<i32>().map(|p| nix_kill(p)));
}

fn nix_kill(pid: i32) {
    let _ = std::process::Command::new("kill").arg(pid.to_string()).status();
}

/// A restore that fails after the sockets were made (fault 106) kills the tree and
/// removes the socket file it bound; a restore after that succeeds.
#[test]
fn a_failed_restore_removes_its_socket_files() {
    let s = Scenario::run_as(
        "unix-failed-restore",
        Creds::User,
        &format!(
            r#"{START_UNIXSK}
start_unixsk pairs; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "unixsk.py did not start: $(cat "$T/unixsk.err")"
run dump crt dump -t $P -D "$T/ck"
need dump
wait_until gone $P || fail "the dumped process is still there"
CRTOOL_FAULT=106 run restore1 crt restore -D "$T/ck" -d
put after_fail "$([ -e "$T/lsock" ] && echo present || echo absent)"
put alive_after_fail "$(alive $P && echo yes || echo no)"
run restore2 crt restore -D "$T/ck" -d
need restore2
kill -USR1 $P
wait_until nonempty "$T/result" || fail "no result: $(cat "$T/unixsk.err")"
"#
        ),
    );
    s.ok("dump");
    s.ensure(s.rc("restore1") != 0, || "the restore with fault 106 succeeded".into());
    s.ensure(s.var("after_fail") == "absent", || "the socket file DIR/lsock is left after the failed restore".into());
    s.ensure(s.var("alive_after_fail") == "no", || "the tree of the failed restore is still running".into());
    s.ok("restore2");
    s.passed("result");
}

/// With --ext-unix-sk, a stream socket whose peer is outside the tree is taken at
/// restore from the caller (--inherit-fd fd[N]:socket:[INO]): the restored process
/// talks with the caller's end; a wrong fd is refused with nothing left running.
#[test]
fn ext_unix_sk_takes_a_stream_socket_from_inherit_fd() {
    let s = Scenario::run_as(
        "unix-ext-stream",
        Creds::User,
        &format!(
            r#"{START_UNIXSK}
start_unixsk ext-stream; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "unixsk.py did not start: $(cat "$T/unixsk.err")"
INO=$(cat "$T/ino")
run refused crt dump -t $P -D "$T/ck" -R
run dump crt dump -t $P -D "$T/ck" --ext-unix-sk
need dump
wait_until gone $P || fail "the dumped process is still there"
kill "$(cat "$T/peer")"
# A pipe where a socket is expected: refused, nothing left running.
run wrongfd crt restore -D "$T/ck" -d --inherit-fd "fd[0]:socket:[$INO]"
put after_wrong "$(alive $P && echo alive || echo none)"
export CRTOOL INO T
"$PY3" - <<'PY' >"$T/caller.txt" 2>&1 &
import os, socket, subprocess
a, b = socket.socketpair()
fd = a.fileno()
os.set_inheritable(fd, True)
r = subprocess.run([os.environ["CRTOOL"], "restore", "-D", os.environ["T"] + "/ck", "-d", "--inherit-fd", "fd[%d]:socket:[%s]" % (fd, os.environ["INO"])], pass_fds=[fd], capture_output=True, text=True)
print("restore rc", r.returncode, r.stderr.strip())
a.close()
b.settimeout(30)
b.send(b"from-new-peer")
print("caller got", b.recv(100))
PY
CALLER=$!
wait_until alive $P || fail "not restored: $(cat "$T/caller.txt")"
wait_until has_lines "$T/out.txt" $(( $(lines "$T/out.txt") + 5 )) || fail "the restored process does not count: $(cat "$T/caller.txt")"
kill -USR1 $P
wait_until nonempty "$T/result" || fail "no result: $(cat "$T/unixsk.err")"
wait $CALLER
"#
        ),
    );
    s.failed_saying("refused", &["outside the dumped tree", "--ext-unix-sk"]);
    s.ok("dump");
    s.failed_saying("wrongfd", &["fd[0]", "not a unix stream socket"]);
    s.ensure(s.var("after_wrong") == "none", || "a process is left after the refused restore".into());
    let caller = s.read("caller.txt");
    s.ensure(caller.contains("restore rc 0") && caller.contains("caller got b'to-new-peer'"), || format!("the caller's side: {caller}"));
    s.passed("result");
}

/// What restore could not rebuild exactly is refused at dump, saying why, and the
/// process runs on with its sockets untouched: a name relative to a cwd left since
/// the bind, and a connection waiting in an accept queue whose client closed.
#[test]
fn sockets_restore_could_not_rebuild_are_refused() {
    for (what, needles) in [
        ("refuse-relative", &["relative path", "rel.sock"][..]),
        ("refuse-closed-client", &["waiting to be accepted", "client has closed"][..]),
    ] {
        let s = Scenario::run_as(
            &format!("unix-{what}"),
            Creds::User,
            &format!(
                r#"{START_UNIXSK}
start_unixsk {what}; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "unixsk.py did not start: $(cat "$T/unixsk.err")"
run dump crt dump -t $P -D "$T/ck"
put tracer "$(tracer $P)"
kill -USR1 $P
wait_until nonempty "$T/result" || fail "no result after the refused dump"
"#
            ),
        );
        let mut n = vec![format!("pid {}", s.pid())];
        n.extend(needles.iter().map(|x| x.to_string()));
        s.failed_saying("dump", &n.iter().map(String::as_str).collect::<Vec<_>>());
        s.ensure(s.var("tracer") == "0", || "still traced after the refused dump".into());
        s.passed("result");
    }
}
