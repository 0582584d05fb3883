//! End-to-end tests of inet sockets (tests/workloads/inetsk.py) and of redis, a
//! real TCP server, with a client outside the tree. See tests/common/mod.rs.

mod common;

use common::*;

/// TCP listeners (IPv4 and IPv6), bound and unbound TCP sockets, UDP sockets, and
/// an established loopback connection with data queued both ways: with
/// --tcp-established a --leave-running dump changes nothing the workload sees and
/// leaves no network lock; after the real dump and restore every name and option
/// is as it was, the listeners accept, UDP delivers, and the connection delivers
/// every byte in order both ways. Without the flag the dump is refused naming it.
#[test]
fn tcp_and_udp_sockets_and_an_established_connection_come_back() {
    let before = r#"run refused crt dump -t $P -D "$T/ck0" -R
run dump_r crt dump -t $P -D "$T/ck-r" -R --tcp-established
need dump_r
# (Other tests may hold locks of their own meanwhile: this dump's by name.)
LOCK=$(crt decode --json "$T/ck-r/inetsk.img" | awk -F'"' '/"lock_table"/ { print $4; exit }')
put lock_name "$LOCK"
put lock_after_r "$(nft list tables | grep -c "$LOCK")""#;
    let after = r#"LOCK=$(crt decode --json "$T/ck/inetsk.img" | awk -F'"' '/"lock_table"/ { print $4; exit }')
put lock_after_restore "$(nft list tables | grep -c "$LOCK")""#;
    let s = py_roundtrip("inetsk", Creds::User, "inetsk", "", before, "--tcp-established", "--tcp-established", after);
    s.failed_saying("refused", &["established TCP connection", "--tcp-established"]);
    s.ensure(s.var("lock_name").starts_with("crtool-lock-"), || format!("the images name no network lock: {:?}", s.var("lock_name")));
    s.ensure(s.var("lock_after_r") == "0", || "a --leave-running dump left its network lock".into());
    s.ensure(s.var("lock_after_restore") == "0", || "the network lock is still there after the restore".into());
    s.roundtrip_ok("result");
    s.counter("out.txt");
}

/// redis-server (Debian's) with a client outside the tree connected over TCP in
/// the middle of a transaction (MULTI and two queued commands): dumped with
/// --tcp-established (after a --leave-running dump); while it is gone the client
/// sends EXEC on the same connection, whose packets the network lock drops (no
/// RST); after the restore the retransmitted EXEC runs the transaction and the
/// client reads its reply and more on that connection; new clients connect; the
/// lock is gone.
#[test]
fn redis_keeps_a_client_connection_through_a_dump_and_restore() {
    let s = Scenario::run(
        "redis",
        r#"
command -v redis-server >/dev/null || fail "redis-server is not installed (.ci/run installs it)"
PORT=$((20000 + $$ % 20000 + RANDOM % 1000))
"${AS_WL[@]}" setsid redis-server --port $PORT --bind 127.0.0.1 --save '' --appendonly no --dir "$T" </dev/null >"$T/redis.log" 2>&1 & P=$!; put pid $P
for i in $(seq 200); do [ "$(redis-cli -p $PORT ping 2>/dev/null)" = PONG ] && break; sleep 0.05; done
[ "$(redis-cli -p $PORT ping)" = PONG ] || fail "redis did not start: $(tail -5 "$T/redis.log")"
"${AS_WL[@]}" "$PY3" "$(dirname "$LOOP_PY")/redisclient.py" $PORT "$T" 2>"$T/client.err" & C=$!
wait_until nonempty "$T/client.ready" || fail "the client did not start: $(cat "$T/client.err")"
sleep 0.3
PIDS=$(tree_of $P | sort -n | tr '\n' ' ')
run dump_r crt dump -t $P -D "$T/ck-r" -R --tcp-established
need dump_r
snapshot before $P --no-pos
pidset before
run dump crt dump -t $P -D "$T/ck" --tcp-established
need dump
wait_until gone $PIDS || fail "the dumped redis is still there"
LOCK=$(crt decode --json "$T/ck/inetsk.img" | awk -F'"' '/"lock_table"/ { print $4; exit }')
[ -n "$LOCK" ] || fail "the images name no network lock"
put locked "$(nft list tables | grep -c "$LOCK")"
touch "$T/go"
sleep 1
run restore crt restore -D "$T/ck" -d --tcp-established
need restore
pidset after
snapshot after $P --no-pos
wait_until nonempty "$T/client.result" || fail "the client wrote no result: $(cat "$T/client.err")"
put client "$(cat "$T/client.result")"
put ping "$(redis-cli -p $PORT ping)"
put k "$(redis-cli -p $PORT strlen k)"
put lock_left "$(nft list tables | grep -c "$LOCK")"
redis-cli -p $PORT shutdown nosave >/dev/null 2>&1
wait $C
"#,
    );
    s.ok("dump_r");
    s.ok("dump");
    s.ensure(s.var("locked") == "1", || format!("{} network locks while redis was gone, want 1", s.var("locked")));
    s.ok("restore");
    s.ensure(s.var("client") == "PASS", || format!("the client: {}", s.var("client")));
    s.ensure(s.var("ping") == "PONG" && s.var("k") == "1000", || format!("a new client after the restore: ping {:?}, strlen k {:?}", s.var("ping"), s.var("k")));
    s.ensure(s.var("lock_left") == "0", || "the network lock is still there after the restore".into());
    let mut p = s.state_problems("before", "after");
    p.extend(s.pidset_problems("before", "after"));
    s.all_ok(p);
}

/// Netlink sockets (NETLINK_ROUTE bound with groups and an option, one never
/// bound, a uevent socket): after a --leave-running dump and the real dump and
/// restore each has its port id, memberships and options, and a request on the
/// bound one is answered to its port id (tests/workloads/netlinksk.py).
#[test]
fn netlink_sockets_come_back_with_port_ids_and_groups() {
    let s = py_roundtrip("netlinksk", Creds::User, "netlinksk", "", LEAVE_RUNNING_FIRST, "", "", "");
    s.roundtrip_ok("result");
    s.counter("out.txt");
}
