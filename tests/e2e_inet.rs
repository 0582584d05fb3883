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
PORT=$(free_port 10) || fail "no free TCP port"
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

/// A server in a network namespace of its own (`unshare -n`; loopback up, a veth
/// to the host with IPv4 and IPv6 addresses and an MTU, a route, ip_forward), with
/// a client on the host connected over the veth, a veth pair inside, a macvlan
/// on one of its ends and one on a host bridge: dumped with --tcp-established
/// (the namespace and the host's end of the veth go with the tree), restored
/// with --veth-pair naming a new host end, which the test configures as before,
/// and --external macvlan[mv0]:BRIDGE naming the lower link:
/// the workload finds its links, addresses, routes and ip_forward as they were,
/// the client's next line on the same connection is answered, and new clients
/// connect (tests/workloads/netns.py).
#[test]
fn a_tree_in_its_own_network_namespace_comes_back_with_its_connection() {
    let s = Scenario::run_as(
        "netns",
        Creds::Root,
        r#"
# (Names and addresses apart from other runs on the host: this bash is pid 1.)
R=$(( RANDOM % 10000 )); X=$(( R % 200 + 20 )); VH=crv$R; VH2=crw$R
unshare -n setsid "$PY3" "$(dirname "$LOOP_PY")/netns.py" "$T" </dev/null >"$T/out.txt" 2>"$T/wl.err" & P=$!; put pid $P
for i in $(seq 100); do [ "$(readlink /proc/$P/ns/net)" != "$(readlink /proc/self/ns/net)" ] && break; sleep 0.02; done
ip link add $VH type veth peer name eth0 netns $P || fail "ip link add: veth"
# A macvlan whose lower link (a bridge: this kernel has no dummy driver) stays
# on the host.
LM=crm$R
ip link add $LM type bridge && ip link set $LM up || fail "ip link add: host bridge"
ip link add mv0 link $LM netns $P type macvlan mode private || fail "ip link add: macvlan"
nsenter -t $P -n sh -c "ip link set lo up && ip addr add 10.77.$X.2/24 dev eth0 && ip -6 addr add fd77::$X:2/64 dev eth0 nodad && ip link set eth0 mtu 1400 up && ip route add 10.99.0.0/16 via 10.77.$X.1 && sysctl -qw net.ipv4.ip_forward=1" || fail "configuring the namespace"
# A veth pair with both ends inside and a macvlan over one of them, and the macvlan on the host.
nsenter -t $P -n sh -c "ip link add va0 type veth peer name vb0 && ip link set va0 mtu 1300 txqueuelen 77 up && ip link set vb0 up && ip addr add 10.79.$X.1/24 dev va0 && ip link add mw0 link vb0 type macvlan mode bridge && ip link set mw0 up && ip link set mv0 up && ip addr add 10.80.$X.2/24 dev mv0" || fail "adding links in the namespace"
# Policy routing: a rule and a table of its own for each family, a default rule deleted.
nsenter -t $P -n sh -c "ip rule add from 10.79.$X.0/24 fwmark 0x7/0xf lookup 100 pref 1000 && ip route add default via 10.79.$X.2 dev va0 table 100 && ip route add 10.98.0.0/16 dev va0 table 100 && ip -6 rule add iif va0 lookup 1000 pref 2000 && ip -6 route add fd79::/64 dev va0 table 1000 && ip rule del pref 32767" || fail "adding rules and tables"
ip addr add 10.77.$X.1/24 dev $VH && ip link set $VH up
touch "$T/configured"
wait_until nonempty "$T/ready" || fail "netns.py did not start: $(cat "$T/wl.err")"
"$PY3" "$(dirname "$LOOP_PY")/pingclient.py" 10.77.$X.2 7777 "$T" 2>"$T/client.err" & C=$!
wait_until nonempty "$T/client.ready" || fail "the client did not connect: $(cat "$T/client.err")"
snapshot before $P --no-pos
pidset before
run dump crt dump -t $P -D "$T/ck" --tcp-established
need dump
wait_until gone $P || fail "the dumped process is still there"
for i in $(seq 100); do [ -e /sys/class/net/$VH ] || break; sleep 0.05; done
put host_end_gone "$([ -e /sys/class/net/$VH ] || echo yes)"
touch "$T/go"
run restore crt restore -D "$T/ck" -d --tcp-established --veth-pair eth0=$VH2 --external "macvlan[mv0]:$LM"
need restore
pidset after
snapshot after $P --no-pos
ip addr add 10.77.$X.1/24 dev $VH2 && ip link set $VH2 up
wait_until nonempty "$T/client.result" || fail "the client wrote no result: $(cat "$T/client.err")"
put client "$(cat "$T/client.result")"
put new_client "$("$PY3" -c "import socket,sys; s=socket.create_connection(('10.77.$X.2',7777),timeout=10); s.sendall(b'x\n'); print(s.makefile().readline().strip())")"
put counting "$(wait_until has_lines "$T/out.txt" $(( $(lines "$T/out.txt") + 10 )) && echo yes)"
kill -USR1 $P
wait_until nonempty "$T/result" || fail "netns.py wrote no result"
ip link del $VH2 2>/dev/null; ip link del $LM
wait $C
"#,
    );
    s.ok("dump");
    s.ensure(s.var("host_end_gone") == "yes", || "the host's end of the veth outlived the dumped namespace".into());
    s.ok("restore");
    s.ensure(s.var("client") == "PASS", || format!("the host's client: {}", s.var("client")));
    s.ensure(s.var("new_client") == "pong x", || format!("a new client got {:?}", s.var("new_client")));
    s.ensure(s.var("counting") == "yes", || "the restored process does not count".into());
    s.roundtrip_ok("result");
}

/// A connection with urgent data pending: refused with --tcp-established, naming
/// it, and the process runs on with the connection as it was.
#[test]
fn a_connection_with_urgent_data_is_refused() {
    for (mode, needle) in [("urgent", "urgent")] {
        let s = Scenario::run(
            &format!("tcp-{mode}"),
            &format!(
                r#"
"${{AS_WL[@]}}" setsid "$PY3" "$(dirname "$LOOP_PY")/tcpodd.py" "$T" {mode} </dev/null >"$T/out.txt" 2>"$T/wl.err" & P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "tcpodd.py did not start: $(cat "$T/wl.err")"
run dump crt dump -t $P -D "$T/ck" --tcp-established
put tracer "$(tracer $P)"
wait_until has_lines "$T/out.txt" $(( $(lines "$T/out.txt") + 10 )) && put counting yes
kill -USR1 $P
wait_until nonempty "$T/result" || fail "tcpodd.py wrote no result"
"#
            ),
        );
        s.failed_saying("dump", &[needle]);
        s.ensure(s.var("tracer") == "0" && s.var("counting") == "yes", || "the process does not run on untraced".into());
        s.passed("result");
    }
}

/// A listener with a client in the middle of its handshake (the client's final
/// ACK dropped by an nftables rule of the test, so the request stays SYN_RECV):
/// the dump is refused naming it and --skip-in-flight; with --skip-in-flight (and
/// -R) it goes through and the listener runs on.
#[test]
fn a_half_open_connection_needs_skip_in_flight() {
    let s = Scenario::run(
        "syn-recv",
        r#"
PORT=$(free_port 10) || fail "no free TCP port"; TABLE=crtool-test-synrecv-$PORT
"${AS_WL[@]}" setsid "$PY3" -c "
import socket, time
s = socket.socket(); s.bind(('127.0.0.1', $PORT)); s.listen(5)
open('$T/ready', 'w').write('ready')
while True: time.sleep(1)
" </dev/null >/dev/null 2>"$T/wl.err" & P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "the listener did not start: $(cat "$T/wl.err")"
nft -f - <<NFT || fail "nft"
table inet $TABLE {
  chain input { type filter hook input priority -400; tcp dport $PORT tcp flags & (syn|ack) == ack drop; }
}
NFT
"$PY3" -c "
import socket, time
c = socket.socket(); c.setblocking(False)
try: c.connect(('127.0.0.1', $PORT))
except BlockingIOError: pass
time.sleep(20)
" & C=$!
for i in $(seq 100); do ss -Htn state syn-recv "sport = :$PORT" | grep -q . && break; sleep 0.02; done
put half_open "$(ss -Htn state syn-recv "sport = :$PORT" | wc -l)"
run refused crt dump -t $P -D "$T/ck0" -R --tcp-established
run skipped crt dump -t $P -D "$T/ck" -R --skip-in-flight
put tracer "$(tracer $P)"
nft delete table inet $TABLE
kill $C $P
"#,
    );
    s.ensure(s.var("half_open") == "1", || format!("setup: {} half-open connections", s.var("half_open")));
    s.failed_saying("refused", &["SYN_RECV", "--skip-in-flight"]);
    s.ok("skipped");
    s.ensure(s.var("tracer") == "0", || "the listener is still traced".into());
}

/// A UDP socket with a datagram queued from a socket outside the tree that is
/// still bound (restore could not send it again from there): the dump is refused
/// naming the sender, and the process runs on with the datagram still queued.
#[test]
fn a_datagram_from_a_live_outside_sender_is_refused() {
    let s = Scenario::run(
        "udp-outside-sender",
        r#"
"${AS_WL[@]}" setsid "$PY3" -c "
import socket, signal
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('127.0.0.1', 0))
open('$T/port', 'w').write(str(u.getsockname()[1]))
signal.signal(signal.SIGUSR1, lambda *_: None)
signal.pause()
u.settimeout(5)
open('$T/result', 'w').write('PASS' if u.recvfrom(100)[0] == b'hello' else 'FAIL')
" </dev/null >/dev/null 2>"$T/wl.err" & P=$!; put pid $P
wait_until nonempty "$T/port" || fail "the server did not start"
PORT=$(cat "$T/port")
"$PY3" -c "
import socket, time
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.bind(('127.0.0.1', 0))
c.sendto(b'hello', ('127.0.0.1', $PORT))
open('$T/sent', 'w').write(str(c.getsockname()[1]))
time.sleep(30)
" & C=$!
wait_until nonempty "$T/sent" || fail "the client did not send"
put sender "127.0.0.1:$(cat "$T/sent")"
run dump crt dump -t $P -D "$T/ck"
put tracer "$(tracer $P)"
kill -USR1 $P
wait_until nonempty "$T/result" || fail "the server wrote no result: $(cat "$T/wl.err")"
kill $C
"#,
    );
    s.failed_saying("dump", &[&s.var("sender"), "outside the tree"]);
    s.ensure(s.var("tracer") == "0", || "the server is still traced".into());
    s.passed("result");
}

/// A server whose client (outside the tree) sent a request and closed its side
/// (CLOSE_WAIT, the request unread): after a --leave-running dump and the real
/// dump and restore with --tcp-established the server is still in CLOSE_WAIT,
/// reads the request and the end of the stream, and its reply reaches the client
/// on the same connection (tests/workloads/halfclose.py).
#[test]
fn a_connection_whose_peer_closed_its_side_comes_back() {
    let s = Scenario::run(
        "closewait",
        r#"
PORT=$(free_port 10) || fail "no free TCP port"
"${AS_WL[@]}" setsid "$PY3" "$(dirname "$LOOP_PY")/halfclose.py" "$T" $PORT </dev/null >"$T/out.txt" 2>"$T/wl.err" & P=$!; put pid $P
wait_until nonempty "$T/listening" || fail "halfclose.py did not start: $(cat "$T/wl.err")"
"$PY3" -c "
import socket
c = socket.create_connection(('127.0.0.1', $PORT))
c.sendall(b'request'); c.shutdown(socket.SHUT_WR)
c.settimeout(60)
got = b''
while True:
    b = c.recv(100)
    if not b: break
    got += b
open('$T/client.result', 'w').write('PASS' if got == b'reply:request' else 'FAIL: %r' % got)
" 2>"$T/client.err" & C=$!
wait_until nonempty "$T/ready" || fail "the connection did not reach CLOSE_WAIT: $(cat "$T/wl.err")"
run dump_r crt dump -t $P -D "$T/ck-r" -R --tcp-established
need dump_r
snapshot before $P --no-pos
pidset before
run dump crt dump -t $P -D "$T/ck" --tcp-established
need dump
wait_until gone $P || fail "the dumped process is still there"
run restore crt restore -D "$T/ck" -d
need restore
pidset after
snapshot after $P --no-pos
wait_until has_lines "$T/out.txt" $(( $(lines "$T/out.txt") + 10 )) && put counting yes
kill -USR1 $P
wait_until nonempty "$T/result" || fail "halfclose.py wrote no result: $(cat "$T/wl.err")"
wait_until nonempty "$T/client.result" || fail "the client wrote no result: $(cat "$T/client.err")"
put client "$(cat "$T/client.result")"
"#,
    );
    s.ok("dump_r");
    s.ok("dump");
    s.ok("restore");
    s.ensure(s.var("counting") == "yes", || "the restored process does not count".into());
    s.ensure(s.var("client") == "PASS", || format!("the client: {}", s.var("client")));
    s.roundtrip_ok("result");
}

/// Connections whose own FIN is not acknowledged yet (the test's nftables rules
/// drop the client's segments, or the server's on the third): FIN_WAIT1 with
/// data unacknowledged, LAST_ACK and CLOSING (tests/workloads/finwait.py). After
/// the dump and restore with --tcp-established (the rules gone) the client, outside
/// the tree, gets each byte and each end of stream exactly once, and its reply on
/// the first connection reaches the restored server.
#[test]
fn connections_with_their_fin_unacknowledged_come_back() {
    let s = Scenario::run(
        "finwait",
        r#"
PORT=$(free_port 10) || fail "no free TCP port"; TABLE=crtool-test-finwait-$PORT
"${AS_WL[@]}" setsid "$PY3" "$(dirname "$LOOP_PY")/finwait.py" "$T" $PORT </dev/null >"$T/out.txt" 2>"$T/wl.err" & P=$!; put pid $P
wait_until nonempty "$T/listening" || fail "finwait.py did not start: $(cat "$T/wl.err")"
"$PY3" -c "
import os, socket, time
d = '$T'
wait = lambda n: [time.sleep(0.01) for _ in iter(lambda: os.path.exists(os.path.join(d, n)), True)]
a, b, c = (socket.create_connection(('127.0.0.1', $PORT)) for _ in range(3))
open(d + '/ports', 'w').write(' '.join(str(s.getsockname()[1]) for s in (a, b, c)))
wait('rules1'); b.shutdown(socket.SHUT_WR)
wait('c-shut'); wait('rules2'); c.shutdown(socket.SHUT_WR)
def read_all(s):
    s.settimeout(60); got = b''
    while True:
        x = s.recv(100)
        if not x: return got
        got += x
r = (read_all(a), read_all(b), read_all(c))
a.sendall(b'replyA'); a.close()
open(d + '/client.result', 'w').write('PASS' if r == (b'dataA', b'dataB', b'') else 'FAIL: got %r' % (r,))
wait('done')  # (gone only once the test has listed the processes again)
" 2>"$T/client.err" & C=$!
wait_until nonempty "$T/accepted" || fail "the server did not accept: $(cat "$T/wl.err")"
wait_until nonempty "$T/ports" || fail "the client did not connect: $(cat "$T/client.err")"
read PA PB PC < "$T/ports"
nft -f - <<NFT || fail "nft"
table inet $TABLE {
  chain input { type filter hook input priority -400; tcp sport $PA tcp dport $PORT drop; tcp sport $PORT tcp dport $PC drop; }
}
NFT
touch "$T/rules1"
wait_until nonempty "$T/b-closewait" || fail "B did not reach CLOSE_WAIT: $(cat "$T/wl.err")"
nft add rule inet $TABLE input tcp sport $PB tcp dport $PORT drop || fail "nft add rule"
touch "$T/rules2"
wait_until nonempty "$T/ready" || fail "finwait.py did not get its states: $(cat "$T/wl.err")"
put states "$(cat "$T/states")"
snapshot before $P --no-pos
pidset before
run dump crt dump -t $P -D "$T/ck" --tcp-established
nft delete table inet $TABLE
need dump
wait_until gone $P || fail "the dumped process is still there"
run restore crt restore -D "$T/ck" -d
need restore
pidset after
snapshot after $P --no-pos
touch "$T/done"
wait_until has_lines "$T/out.txt" $(( $(lines "$T/out.txt") + 10 )) && put counting yes
wait_until nonempty "$T/client.result" || fail "the client wrote no result: $(cat "$T/client.err")"
put client "$(cat "$T/client.result")"
kill -USR1 $P
wait_until nonempty "$T/result" || fail "finwait.py wrote no result: $(cat "$T/wl.err")"
"#,
    );
    s.ensure(s.var("states") == "4 9 11", || format!("setup: states {} instead of FIN_WAIT1, LAST_ACK, CLOSING (4 9 11)", s.var("states")));
    s.ok("dump");
    s.ok("restore");
    s.ensure(s.var("counting") == "yes", || "the restored process does not count".into());
    s.ensure(s.var("client") == "PASS", || format!("the client: {}", s.var("client")));
    s.roundtrip_ok("result");
}

/// A client in the middle of connecting (SYN_SENT: the test's nftables rule drops
/// its SYNs) to a server outside the tree: dumped with --tcp-established, restored
/// once the rule is gone, its blocking connect() completes from the same port and
/// the server answers it (tests/workloads/synsent.py).
#[test]
fn a_connection_still_connecting_comes_back() {
    let s = Scenario::run(
        "synsent",
        r#"
PORT=$(free_port 10) || fail "no free TCP port"; TABLE=crtool-test-synsent-$PORT
"$PY3" -c "
import socket
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(('127.0.0.1', $PORT)); l.listen(5)
open('$T/server.ready', 'w').write('yes')
c, _ = l.accept(); c.settimeout(30)
if c.recv(100) == b'hello': c.sendall(b'hello back')
c.recv(100)
" 2>"$T/server.err" & S=$!
wait_until nonempty "$T/server.ready" || fail "the server did not start: $(cat "$T/server.err")"
nft -f - <<NFT || fail "nft"
table inet $TABLE {
  chain input { type filter hook input priority -400; tcp dport $PORT tcp flags & (syn|ack) == syn drop; }
}
NFT
"${AS_WL[@]}" setsid "$PY3" "$(dirname "$LOOP_PY")/synsent.py" "$T" $PORT </dev/null >"$T/out.txt" 2>"$T/wl.err" & P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "synsent.py did not reach SYN_SENT: $(cat "$T/wl.err")"
snapshot before $P --no-pos
pidset before
run dump crt dump -t $P -D "$T/ck" --tcp-established
nft delete table inet $TABLE
need dump
wait_until gone $P || fail "the dumped process is still there"
run restore crt restore -D "$T/ck" -d
need restore
pidset after
snapshot after $P --no-pos
wait_until has_lines "$T/out.txt" $(( $(lines "$T/out.txt") + 10 )) && put counting yes
kill -USR1 $P
wait_until nonempty "$T/result" || fail "synsent.py wrote no result: $(cat "$T/wl.err")"
kill $S 2>/dev/null
"#,
    );
    s.ok("dump");
    s.ok("restore");
    s.ensure(s.var("counting") == "yes", || "the restored process does not count".into());
    s.roundtrip_ok("result");
}

/// Both ends of a half-closed connection in the tree: the client shut its side
/// down after its request (FIN_WAIT2), the server has not read it (CLOSE_WAIT).
/// After a --leave-running dump and the real dump and restore with
/// --tcp-established both are in those states again, the server reads the
/// request and the end of the stream, the reply and the final end of stream
/// arrive (tests/workloads/tcpodd.py halfclosed).
#[test]
fn both_ends_of_a_half_closed_connection_come_back() {
    let before = r#"run dump_r crt dump -t $P -D "$T/ck-r" -R --tcp-established
need dump_r"#;
    let s = py_roundtrip("halfclosed", Creds::User, "tcpodd", "halfclosed", before, "--tcp-established", "", "");
    s.roundtrip_ok("result");
    s.counter("out.txt");
}

/// A tree in a network namespace the caller keeps (`ip netns add`, entered with
/// nsenter): without --external net[...] the dump is refused (the namespace is
/// also held outside the tree); with it nothing of the namespace is saved and the
/// restore joins the one handed over with --inherit-fd: the server listens in it
/// again and answers there.
#[test]
fn an_external_network_namespace_is_joined_at_restore() {
    let s = Scenario::run_as(
        "netns-external",
        Creds::Root,
        r#"
NS=crtool-ext-$RANDOM
ip netns add $NS || fail "ip netns add"
nsenter --net=/run/netns/$NS ip link set lo up
INO=$(stat -L -c %i /run/netns/$NS)
nsenter --net=/run/netns/$NS setsid "$PY3" -c "
import socket, threading, time
s = socket.socket(); s.bind(('127.0.0.1', 7070)); s.listen(5)
open('$T/ready', 'w').write('x')
while True:
    c, _ = s.accept(); c.sendall(b'hello'); c.close()
" </dev/null >/dev/null 2>"$T/wl.err" & P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "the server did not start: $(cat "$T/wl.err")"
run refused crt dump -t $P -D "$T/ck0" -R
run dump crt dump -t $P -D "$T/ck" --external "net[$INO]:mynet"
need dump
wait_until gone $P || fail "the dumped process is still there"
exec 9</run/netns/$NS
run restore crt restore -D "$T/ck" -d --inherit-fd "fd[9]:mynet"
need restore
exec 9<&-
put same_ns "$([ "$(stat -L -c %i /proc/$P/ns/net)" = "$INO" ] && echo yes)"
put answer "$(nsenter --net=/run/netns/$NS "$PY3" -c "import socket; print(socket.create_connection(('127.0.0.1', 7070), timeout=5).recv(10).decode())")"
kill $P
ip netns del $NS
"#,
    );
    s.failed_saying("refused", &["network namespace", "outside the dumped tree"]);
    s.ok("dump");
    s.ok("restore");
    s.ensure(s.var("same_ns") == "yes", || "the restored tree is not in the namespace handed over".into());
    s.ensure(s.var("answer") == "hello", || format!("the server in the joined namespace answered {:?}", s.var("answer")));
}

/// Raw sockets (root): an ICMP one bound to 127.0.0.1 with an ICMP_FILTER and an
/// IPv6 one with IPV6_CHECKSUM: after a --leave-running dump and the real dump and
/// restore the address and options are as they were and a ping through the ICMP
/// socket gets the echo reply first (the filter works) (tests/workloads/rawsk.py).
#[test]
fn raw_sockets_come_back_with_their_filters() {
    let s = py_roundtrip("rawsk", Creds::Root, "rawsk", "", LEAVE_RUNNING_FIRST, "", "", "");
    s.roundtrip_ok("result");
    s.counter("out.txt");
}

/// A packet socket (root, in a network namespace of its own: no link there is
/// promiscuous) bound to the loopback with PACKET_AUXDATA, a fanout group and a
/// classic BPF filter: after the dump and restore its binding, options, fanout and
/// filter are as they were and it receives a datagram sent on the loopback
/// (tests/workloads/packetsk.py).
#[test]
fn a_packet_socket_comes_back_bound_with_its_options() {
    let s = Scenario::run_as(
        "packetsk",
        Creds::Root,
        r#"
unshare -n sh -c 'ip link set lo up && exec setsid "$0" "$@"' "$PY3" "$(dirname "$LOOP_PY")/packetsk.py" "$T" </dev/null >"$T/out.txt" 2>"$T/wl.err" & P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "packetsk.py did not start: $(cat "$T/wl.err")"
snapshot before $P --no-pos
pidset before
run dump crt dump -t $P -D "$T/ck"
need dump
wait_until gone $P || fail "the dumped process is still there"
run restore crt restore -D "$T/ck" -d
need restore
pidset after
snapshot after $P --no-pos
wait_until has_lines "$T/out.txt" $(( $(lines "$T/out.txt") + 10 )) && put counting yes
kill -USR1 $P
wait_until nonempty "$T/result" || fail "packetsk.py wrote no result: $(cat "$T/wl.err")"
"#,
    );
    s.ok("dump");
    s.ok("restore");
    s.ensure(s.var("counting") == "yes", || "the restored process does not count".into());
    s.roundtrip_ok("result");
}

/// ICMP ping sockets (root, in a network namespace of its own whose
/// ping_group_range admits only gid 100, so crtool must make them with that
/// group): an IPv4 one bound with its ident, connected and with IP_TTL, and an
/// IPv6 one: after the dump and restore the names and options are as they were
/// and each gets its echo reply with its own ident (tests/workloads/pingsk.py).
#[test]
fn ping_sockets_come_back_with_their_idents() {
    let s = Scenario::run_as(
        "pingsk",
        Creds::Root,
        r#"
unshare -n sh -c 'ip link set lo up && sysctl -qw net.ipv4.ping_group_range="100 100" && exec setsid "$0" "$@"' "$PY3" "$(dirname "$LOOP_PY")/pingsk.py" "$T" </dev/null >"$T/out.txt" 2>"$T/wl.err" & P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "pingsk.py did not start: $(cat "$T/wl.err")"
snapshot before $P --no-pos
pidset before
run dump crt dump -t $P -D "$T/ck"
need dump
wait_until gone $P || fail "the dumped process is still there"
run restore crt restore -D "$T/ck" -d
need restore
pidset after
snapshot after $P --no-pos
wait_until has_lines "$T/out.txt" $(( $(lines "$T/out.txt") + 10 )) && put counting yes
kill -USR1 $P
wait_until nonempty "$T/result" || fail "pingsk.py wrote no result: $(cat "$T/wl.err")"
"#,
    );
    s.ok("dump");
    s.ok("restore");
    s.ensure(s.var("counting") == "yes", || "the restored process does not count".into());
    s.roundtrip_ok("result");
}

/// A listener with a client connected but not accepted yet (in its accept queue):
/// the dump is refused naming it and --skip-in-flight, and the listener runs on;
/// with --skip-in-flight it is dumped and restored without that connection: the
/// restored listener's next accept() returns a new client (answered), not the
/// left-out one, whose connection is reset.
#[test]
fn a_connection_waiting_to_be_accepted_needs_skip_in_flight() {
    let s = Scenario::run(
        "accept-queue",
        r#"
PORT=$(free_port 10) || fail "no free TCP port"
"${AS_WL[@]}" setsid "$PY3" -c "
import signal, socket, time
s = socket.socket(); s.bind(('127.0.0.1', $PORT)); s.listen(5)
def serve(*_):
    c, a = s.accept(); c.sendall(b'hi'); open('$T/accepted', 'w').write(str(a[1]))
signal.signal(signal.SIGUSR1, serve)
open('$T/ready', 'w').write('ready')
while True: time.sleep(1)
" </dev/null >/dev/null 2>"$T/wl.err" & P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "the listener did not start: $(cat "$T/wl.err")"
"$PY3" -c "
import socket, time
c = socket.create_connection(('127.0.0.1', $PORT)); open('$T/old.port', 'w').write(str(c.getsockname()[1]))
c.settimeout(30)
try: r = c.recv(10); open('$T/old.result', 'w').write('got %r' % r)
except OSError as e: open('$T/old.result', 'w').write('reset' if isinstance(e, ConnectionResetError) else repr(e))
" 2>"$T/old.err" & C=$!
wait_until nonempty "$T/old.port" || fail "the first client did not connect"
run refused crt dump -t $P -D "$T/ck0"
put tracer "$(tracer $P)"
run dump crt dump -t $P -D "$T/ck" --skip-in-flight
need dump
wait_until gone $P || fail "the dumped process is still there"
run restore crt restore -D "$T/ck" -d
need restore
"$PY3" -c "
import socket
c = socket.create_connection(('127.0.0.1', $PORT), timeout=10); open('$T/new.port', 'w').write(str(c.getsockname()[1]))
open('$T/new.result', 'w').write(repr(c.recv(10)))
" 2>"$T/new.err" & N=$!
wait_until nonempty "$T/new.port" || fail "the new client did not connect: $(cat "$T/new.err")"
kill -USR1 $P
wait_until nonempty "$T/accepted" || fail "the restored listener accepted nothing"
wait $N
put accepted "$(cat "$T/accepted")"; put new_port "$(cat "$T/new.port")"; put new "$(cat "$T/new.result")"
wait $C; put old "$(cat "$T/old.result" 2>/dev/null)"
kill $P
"#,
    );
    s.failed_saying("refused", &["waiting to be accepted", "--skip-in-flight"]);
    s.ensure(s.var("tracer") == "0", || "the listener is still traced after the refused dump".into());
    s.ok("dump");
    s.ok("restore");
    s.ensure(s.var("accepted") == s.var("new_port"), || format!("the restored listener accepted port {} instead of the new client's {}", s.var("accepted"), s.var("new_port")));
    s.ensure(s.var("new") == "b'hi'", || format!("the new client got {}", s.var("new")));
    s.ensure(s.var("old") == "reset", || format!("the left-out client's connection: {}", s.var("old")));
}

/// tun/tap devices (root, in a network namespace of its own): a tap attached to
/// the workload's /dev/net/tun file with an address, MAC, MTU and send buffer,
/// and a persistent tun owned by uid 1000 with no file: after the dump and
/// restore both are there as they were (kind, flags, owner, index, ...) and the
/// tap carries frames both ways (the kernel's ARP request read, a reply written,
/// the datagram read) (tests/workloads/tapdev.py).
#[test]
fn tun_and_tap_devices_come_back_attached() {
    let s = Scenario::run_as(
        "tapdev",
        Creds::Root,
        r#"
unshare -n setsid "$PY3" "$(dirname "$LOOP_PY")/tapdev.py" "$T" </dev/null >"$T/out.txt" 2>"$T/wl.err" & P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "tapdev.py did not start: $(cat "$T/wl.err")"
snapshot before $P --no-pos
pidset before
run dump crt dump -t $P -D "$T/ck"
need dump
wait_until gone $P || fail "the dumped process is still there"
run restore crt restore -D "$T/ck" -d
need restore
pidset after
snapshot after $P --no-pos
wait_until has_lines "$T/out.txt" $(( $(lines "$T/out.txt") + 10 )) && put counting yes
kill -USR1 $P
wait_until nonempty "$T/result" || fail "tapdev.py wrote no result: $(cat "$T/wl.err")"
put leaked "$(ip -o link show | grep -c crtun)"
"#,
    );
    s.ok("dump");
    s.ok("restore");
    s.ensure(s.var("counting") == "yes", || "the restored process does not count".into());
    s.ensure(s.var("leaked") == "0", || "a temporary tun device was left in crtool's namespace".into());
    s.roundtrip_ok("result");
}

/// A tap with offloads turned on (TUNSETOFFLOAD, which nothing reads back): the
/// dump is refused naming it, and the workload runs on.
#[test]
fn a_tap_with_offloads_is_refused() {
    let s = Scenario::run_as(
        "tapoffload",
        Creds::Root,
        r#"
unshare -n setsid "$PY3" "$(dirname "$LOOP_PY")/tapdev.py" "$T" offload </dev/null >"$T/out.txt" 2>"$T/wl.err" & P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "tapdev.py did not start: $(cat "$T/wl.err")"
run dump crt dump -t $P -D "$T/ck"
put tracer "$(tracer $P)"
wait_until has_lines "$T/out.txt" $(( $(lines "$T/out.txt") + 10 )) && put counting yes
kill $P
"#,
    );
    s.failed_saying("dump", &["tap0", "TUNSETOFFLOAD"]);
    s.ensure(s.var("tracer") == "0", || "the workload is still traced".into());
    s.ensure(s.var("counting") == "yes", || "the workload stopped counting after the refused dump".into());
}
