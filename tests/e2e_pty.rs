//! End-to-end tests of pseudo-terminal pairs held by the tree (tests/workloads/
//! pty.py) and of tmux, a real program built on them. See tests/common/mod.rs.

mod common;

use common::*;

/// Two pairs with unread data both ways (canonical lines, an EOF-ended line, an
/// unfinished line, raw bytes with NUL/^C/^Q/0xff, packet mode), a session with
/// one as controlling terminal and a foreground job holding /dev/tty: a
/// --leave-running dump first changes nothing the workload can see, and after
/// the real dump and restore every queue, mode, name and the session's terminal
/// and foreground group are as they were.
#[test]
fn pty_pairs_come_back_with_queues_modes_and_session() {
    let s = py_roundtrip("pty", Creds::User, "pty", "", LEAVE_RUNNING_FIRST, "", "", "");
    s.roundtrip_ok("result");
    s.counter("out.txt");
}

/// A session whose controlling terminal's master is held outside the dumped
/// subtree (pty.py's session, dumped without the process holding the masters) is
/// refused, naming the terminal and --shell-job; a process sharing a master with
/// its parent outside the tree is refused naming both; both keep running.
#[test]
fn a_terminal_whose_master_is_outside_the_tree_is_refused() {
    let s = Scenario::run(
        "pty-outside",
        r#"
"${AS_WL[@]}" setsid "$PY3" "$(dirname "$LOOP_PY")/pty.py" "$T" </dev/null >"$T/out.txt" 2>"$T/wl.err" & P=$!
wait_until nonempty "$T/ready" || fail "pty.py did not start: $(cat "$T/wl.err")"
read -r _ _ LEADER JOB <"$T/ptys"
run refused crt dump -t $LEADER -D "$T/ck"
kill -0 $LEADER && kill -0 $JOB && put alive yes
kill -USR1 $P
wait_until nonempty "$T/result" || fail "pty.py wrote no result"
# A master shared by a process of the tree and its parent outside it.
"${AS_WL[@]}" setsid "$PY3" -c '
import os, pty, sys, time
m, s = pty.openpty()
c = os.fork()
if c == 0:
    os.setsid()
    open(sys.argv[1], "w").write(str(os.getpid()))
    time.sleep(600)
time.sleep(600)' "$T/child" & Q=$!
wait_until nonempty "$T/child" || fail "the pty sharer did not start"
C=$(cat "$T/child")
run shared crt dump -t $C -D "$T/ck2"
kill -0 $C && put child_alive yes
kill $C $Q
"#,
    );
    s.failed_saying("refused", &["terminal", "--shell-job"]);
    s.ensure(s.var("alive") == "yes", || "the session did not survive the refused dump".into());
    s.failed_saying("shared", &["/dev/pts/", "master", "outside the dumped tree"]);
    s.ensure(s.var("child_alive") == "yes", || "the process did not survive the refused dump".into());
    s.passed("result");
}

/// tmux (Debian's, unmodified) with an interactive bash in a pane running a loop:
/// dumped mid-loop (after a --leave-running dump) and restored, the loop goes on,
/// ^C sent through tmux interrupts it (the terminal's foreground job and signals
/// work), and a new command typed into the pane runs and shows its output.
#[test]
fn tmux_with_a_shell_loop_keeps_running() {
    let s = Scenario::run(
        "tmux",
        r#"
command -v tmux >/dev/null || fail "tmux is not installed (.ci/run installs it)"
TM=(tmux -S "$T/sock")
"${AS_WL[@]}" env -u TMUX HOME="$T" TERM=xterm "${TM[@]}" -f /dev/null new-session -d -x 80 -y 24 'bash --norc --noprofile' 2>"$T/tmux.err" || fail "tmux: $(cat "$T/tmux.err")"
P=$("${TM[@]}" display -p '#{pid}'); put pid $P
# A loop of builtins only (no child, no fd opened per turn): the tree is the same
# at any moment but for the counter.
mkfifo "$T/fifo" && chown "$(stat -c %u:%g "$T")" "$T/fifo"
"${TM[@]}" send-keys "exec 9<>$T/fifo; i=0; while :; do echo tick \$i; i=\$((i+1)); read -t 0.05 -u 9; done" Enter
# ticks: the highest counter the pane shows.
ticks() { "${TM[@]}" capture-pane -p | awk '$1 == "tick" { n = $2 } END { print n + 0 }'; }
for i in $(seq 100); do [ "$(ticks)" -ge 5 ] && break; sleep 0.05; done
[ "$(ticks)" -ge 5 ] || fail "the loop in the pane does not run"
PIDS=$(tree_of $P | sort -n | tr '\n' ' ')
run dump_r crt dump -t $P -D "$T/ck-r" -R
need dump_r
snapshot before $P --no-pos
pidset before
run dump crt dump -t $P -D "$T/ck"
need dump
wait_until gone $PIDS || fail "the dumped processes are still there"
run restore crt restore -D "$T/ck" -d
need restore
pidset after
snapshot after $P --no-pos
N=$(ticks)
for i in $(seq 100); do [ "$(ticks)" -ge $((N + 10)) ] && put ticking yes && break; sleep 0.05; done
"${TM[@]}" send-keys C-c
sleep 0.3
M=$(ticks); sleep 0.5; [ "$(ticks)" = "$M" ] && put interrupted yes
"${TM[@]}" send-keys 'echo answer-$((6*7))' Enter
for i in $(seq 50); do "${TM[@]}" capture-pane -p | grep -q '^answer-42' && break; sleep 0.1; done
put answered "$("${TM[@]}" capture-pane -p | grep -c '^answer-42')"
"${TM[@]}" kill-server
"#,
    );
    s.ok("dump_r");
    s.ok("dump");
    s.ok("restore");
    s.ensure(s.var("ticking") == "yes", || "the loop in the pane did not go on after the restore".into());
    s.ensure(s.var("interrupted") == "yes", || "^C sent through tmux did not stop the loop".into());
    s.ensure(s.var("answered") == "1", || "a command typed into the restored pane did not run".into());
    let mut p = s.state_problems("before", "after");
    p.extend(s.pidset_problems("before", "after"));
    s.all_ok(p);
}
