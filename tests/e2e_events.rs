//! End-to-end tests of event files (tests/workloads/events.py): eventfd, signalfd,
//! timerfd and epoll come back with their counts, masks, schedules and watches; a
//! watch crtool cannot restore is refused. See tests/common/mod.rs for how
//! scenarios run.

mod common;

use common::*;

const START_EVENTS: &str = r#"
EVENTS="$(dirname "$LOOP_PY")/events.py"
start_events() { "${AS_WL[@]}" setsid "$PY3" "$EVENTS" "$T" "$@" </dev/null >"$T/out.txt" 2>"$T/events.err" & }
"#;

/// An eventfd in semaphore mode (shared with a child) and one above 2^32, a
/// signalfd with its signal pending, timerfds (expired and unread, periodic,
/// CLOCK_REALTIME with an absolute deadline), an epoll watching a pipe
/// (edge-triggered, not reported yet), an eventfd with data of its own, a socket
/// and a nested epoll: after the restore every read, gettime and epoll_wait gives
/// what it would have, and the periodic timer keeps firing.
#[test]
fn eventfd_signalfd_timerfd_and_epoll_come_back() {
    let s = py_roundtrip("events", Creds::User, "events", "", "", "", "", "");
    s.roundtrip_ok("result");
    s.counter("out.txt");
}

/// An epoll watch whose fd was closed (a dup keeps the file alive) is refused,
/// naming pid, fd and the watched fd, and the tree runs on.
#[test]
fn an_epoll_watch_on_a_closed_fd_is_refused() {
    let s = Scenario::run(
        "events-closed-target",
        &format!(
            r#"{START_EVENTS}
start_events closed-target; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "events.py did not start: $(cat "$T/events.err")"
run dump crt dump -t $P -D "$T/ck"
put tracer "$(tracer $P)"
kill -USR1 $P
wait_until nonempty "$T/result" || fail "no result after the refused dump"
"#
        ),
    );
    s.failed_saying("dump", &[&format!("pid {}", s.pid()), "epoll watches fd", "closed"]);
    s.ensure(s.var("tracer") == "0", || "still traced after the refused dump".into());
    s.passed("result");
}

/// A fanotify group with an inode mark, a mount mark, a filesystem mark and an
/// ignored mask, on a tmpfs of the test's own (the workload's second argument
/// mounts it before the workload starts): after a --leave-running dump and the
/// real dump and restore, fdinfo shows the same group and marks and a write
/// reports exactly the events it did before (tests/workloads/fanotify.py).
#[test]
fn fanotify_group_and_marks_come_back() {
    let mnt = r#""$(mkdir -p "$T/mnt" && mount -t tmpfs crtool-fan "$T/mnt" && echo "$T/mnt")""#;
    let s = py_roundtrip("fanotify", Creds::Root, "fanotify", mnt, LEAVE_RUNNING_FIRST, "", "", "");
    s.roundtrip_ok("result");
    s.counter("out.txt");
}
