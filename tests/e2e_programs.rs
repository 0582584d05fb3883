//! End-to-end tests with real programs no one here wrote, installed from Debian
//! packages by .ci/run: nginx (tmux is in e2e_pty). See tests/common/mod.rs.

mod common;

use common::*;

/// nginx (master as root, two workers as nobody: epoll, eventfd, socketpair
/// channels, a listening unix socket) serving HTTP on a unix socket: after a
/// --leave-running dump and a real dump, the restored server answers every
/// request, reloads its configuration on `nginx -s reload` (new workers forked by
/// the restored master) and quits cleanly on `nginx -s quit`. Requests are made
/// between dumps: a connection open at dump time has its client outside the tree
/// (refused, see e2e_unix).
#[test]
fn nginx_on_a_unix_socket_keeps_serving() {
    let s = Scenario::run_as(
        "nginx",
        Creds::Root,
        r#"
command -v nginx >/dev/null || fail "nginx is not installed (.ci/run installs it)"
chmod 755 "$T"; mkdir -p "$T/ng/tmp"
cat >"$T/ng/nginx.conf" <<EOF
worker_processes 2;
pid $T/ng/nginx.pid;
error_log $T/ng/error.log;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path $T/ng/tmp/body;
  proxy_temp_path $T/ng/tmp/proxy;
  fastcgi_temp_path $T/ng/tmp/fastcgi;
  uwsgi_temp_path $T/ng/tmp/uwsgi;
  scgi_temp_path $T/ng/tmp/scgi;
  server {
    listen unix:$T/ng/nginx.sock;
    location / { return 200 "hello \$request_uri from \$pid\n"; }
  }
}
EOF
NG=(nginx -c "$T/ng/nginx.conf" -p "$T/ng")
"${NG[@]}" 2>"$T/nginx.err" || fail "nginx did not start: $(cat "$T/nginx.err")"
wait_until nonempty "$T/ng/nginx.pid" || fail "nginx wrote no pid file"
P=$(cat "$T/ng/nginx.pid"); put pid $P
# ask NAME: one request for /NAME; "ok" if nginx answered it.
ask() { "$PY3" - "$T/ng/nginx.sock" "$1" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
s.sendall(b"GET /%s HTTP/1.0\r\nHost: x\r\n\r\n" % sys.argv[2].encode())
data = b""
while True:
    b = s.recv(4096)
    if not b:
        break
    data += b
body = data.split(b"\r\n\r\n", 1)[-1]
print("ok" if data.startswith(b"HTTP/1.1 200") and body.startswith(b"hello /" + sys.argv[2].encode() + b" from ") else "bad %r" % data)
PY
}
for i in $(seq 5); do [ "$(ask warm$i)" = ok ] || fail "nginx does not answer before the dump"; done
PIDS=$(tree_of $P | sort -n | tr '\n' ' ')
[ "$(echo $PIDS | wc -w)" = 3 ] || fail "setup: nginx's tree is $PIDS"
run dump_r crt dump -t $P -D "$T/ck-r" -R
need dump_r
[ "$(ask between)" = ok ] && put served_between yes
snapshot before $P --no-pos
pidset before
run dump crt dump -t $P -D "$T/ck"
need dump
wait_until gone $PIDS || fail "the dumped processes are still there"
[ -S "$T/ng/nginx.sock" ] && put sock_kept yes
run restore crt restore -D "$T/ck" -d
need restore
pidset after
snapshot after $P --no-pos
n=0; for i in $(seq 20); do [ "$(ask after$i)" = ok ] && n=$((n + 1)); done; put answered $n
"${NG[@]}" -s reload 2>>"$T/nginx.err"
for i in $(seq 100); do W=$(cat /proc/$P/task/$P/children); [ -n "$W" ] && ! echo " $PIDS " | grep -q " ${W%% *} " && break; sleep 0.05; done
put new_workers "$(cat /proc/$P/task/$P/children | wc -w)"
put old_workers "$(for p in $PIDS; do [ $p != $P ] && [ -e /proc/$p ] && [ "$(state $p)" != Z ] && echo $p; done)"
[ "$(ask reloaded)" = ok ] && put served_reloaded yes
"${NG[@]}" -s quit 2>>"$T/nginx.err"
wait_until gone $P && put quit yes
[ -e "$T/ng/nginx.pid" ] || put pidfile_removed yes
"#,
    );
    s.ok("dump_r");
    s.ensure(s.var("served_between") == "yes", || "nginx did not answer after the --leave-running dump".into());
    s.ok("dump");
    s.ensure(s.var("sock_kept") == "yes", || "the listening socket's file went with the dump".into());
    s.ok("restore");
    s.ensure(s.var("answered") == "20", || format!("the restored nginx answered {} of 20 requests", s.var("answered")));
    s.ensure(s.var("new_workers") == "2" && s.var("old_workers").trim().is_empty(), || format!("after reload: {} workers, old ones left: {:?}", s.var("new_workers"), s.var("old_workers")));
    s.ensure(s.var("served_reloaded") == "yes", || "the reloaded nginx did not answer".into());
    s.ensure(s.var("quit") == "yes" && s.var("pidfile_removed") == "yes", || "nginx did not quit cleanly".into());
    let mut p = s.state_problems("before", "after");
    p.extend(s.pidset_problems("before", "after"));
    s.all_ok(p);
}

/// PostgreSQL (Debian's, unmodified; postmaster and its background processes as
/// an unprivileged user: a large shared anonymous buffer pool written by every
/// process, POSIX shared memory in /dev/shm, a SysV segment, latches, pipes, a
/// listening unix socket): a table is filled, the server dumped (-R, then for
/// real) while idle between connections and restored; the same rows read back,
/// new rows go in, CHECKPOINT writes the shared buffers out, and a fast shutdown
/// and a fresh start find every row on disk.
#[test]
fn postgresql_keeps_its_data_and_shuts_down_cleanly() {
    let s = Scenario::run(
        "postgresql",
        r#"
PGB=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$PGB/postgres" ] || fail "PostgreSQL is not installed (.ci/run installs it)"
"${AS_WL[@]}" "$PGB/initdb" -D "$T/data" -A trust -U postgres >"$T/initdb.log" 2>&1 || fail "initdb: $(tail -5 "$T/initdb.log")"
start_pg() { "${AS_WL[@]}" setsid "$PGB/postgres" -D "$T/data" -k "$T" -c listen_addresses= -c huge_pages=off -c max_connections=10 -c shared_buffers=16MB </dev/null >>"$T/pg.log" 2>&1 & }
sql() { "${AS_WL[@]}" "$PGB/psql" -h "$T" -U postgres -d postgres -qAtX -c "$1" 2>>"$T/psql.err"; }
start_pg
for i in $(seq 200); do [ "$(sql 'select 1')" = 1 ] && break; sleep 0.05; done
[ "$(sql 'select 1')" = 1 ] || fail "postgres did not start: $(tail -5 "$T/pg.log")"
P=$(head -1 "$T/data/postmaster.pid"); put pid $P
sql "create table t (x int, s text); insert into t select g, md5(g::text) from generate_series(1, 20000) g;"
SUM=$(sql "select count(*), sum(x), md5(string_agg(s, ',' order by x)) from t"); put sum_before "$SUM"
# Wait for the connection's backend to go: its socket's peer would be outside.
for i in $(seq 100); do [ "$(cat /proc/$P/task/$P/children | wc -w)" -le 6 ] && break; sleep 0.05; done
sleep 0.3
PIDS=$(tree_of $P | sort -n | tr '\n' ' '); put pids "$PIDS"
run dump_r crt dump -t $P -D "$T/ck-r" -R
need dump_r
put sum_between "$(sql "select count(*), sum(x), md5(string_agg(s, ',' order by x)) from t")"
sleep 0.3
snapshot before $P --no-pos
pidset before
run dump crt dump -t $P -D "$T/ck"
need dump
wait_until gone $PIDS || fail "the dumped processes are still there"
run restore crt restore -D "$T/ck" -d
need restore
pidset after
snapshot after $P --no-pos
put sum_after "$(sql "select count(*), sum(x), md5(string_agg(s, ',' order by x)) from t")"
sql "insert into t select g, md5(g::text) from generate_series(20001, 30000) g; checkpoint;"
put sum_more "$(sql "select count(*), sum(x) from t")"
"${AS_WL[@]}" "$PGB/pg_ctl" -D "$T/data" -m fast -w -t 30 stop >"$T/stop.log" 2>&1 && put stopped yes
wait_until gone $P || fail "postgres did not exit after pg_ctl stop"
start_pg
for i in $(seq 200); do [ "$(sql 'select 1')" = 1 ] && break; sleep 0.05; done
put sum_restarted "$(sql "select count(*), sum(x) from t")"
# (Connections tried while it starts or stops are told so with a FATAL: not a fault.)
grep -E "PANIC|FATAL|corrupt|invalid page" "$T/pg.log" | grep -vE "the database system is (starting up|shutting down)" | head -5 >"$T/pg.problems"
"${AS_WL[@]}" "$PGB/pg_ctl" -D "$T/data" -m fast -w -t 30 stop >>"$T/stop.log" 2>&1
"#,
    );
    s.ok("dump_r");
    s.ok("dump");
    s.ok("restore");
    let before = s.var("sum_before");
    s.ensure(before.starts_with("20000|200010000|"), || format!("setup: the table reads {before:?}"));
    s.ensure(s.var("sum_between") == before, || format!("after the --leave-running dump the table reads {:?}, was {before:?}", s.var("sum_between")));
    s.ensure(s.var("sum_after") == before, || format!("after the restore the table reads {:?}, was {before:?}", s.var("sum_after")));
    s.ensure(s.var("sum_more") == "30000|450015000", || format!("after inserting more rows: {:?}", s.var("sum_more")));
    s.ensure(s.var("stopped") == "yes", || format!("pg_ctl stop failed: {}", s.read("stop.log")));
    s.ensure(s.var("sum_restarted") == "30000|450015000", || format!("after a restart the table reads {:?}", s.var("sum_restarted")));
    s.ensure(s.read("pg.problems").trim().is_empty(), || format!("postgres logged: {}", s.read("pg.problems")));
    let mut p = s.state_problems("before", "after");
    p.extend(s.pidset_problems("before", "after"));
    s.all_ok(p);
}
