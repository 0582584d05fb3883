#!/usr/bin/env python3
"""The `finwait` workload: a server with three connections whose own FIN is not
acknowledged yet (the test's nftables rules drop the client's segments), in the
three states that gives: FIN_WAIT1 (it sent data and shut down), LAST_ACK (the
client shut down first, then it sent data and shut down) and CLOSING (both shut
down at once: its FIN dropped on the way, the client's arriving).

    finwait.py DIR PORT

Listens on 127.0.0.1:PORT and accepts connections A, B, C; on DIR/rules1 sends
"dataA" on A and shuts A and C down; waits for B's CLOSE_WAIT, writes DIR/c-shut
and DIR/b-closewait; on DIR/rules2 sends "dataB" on B and shuts it down; once
A, B, C are in FIN_WAIT1, LAST_ACK, CLOSING writes DIR/ready and prints a
counter every 0.05 s. On SIGUSR1 reads A ("replyA" and the end of the stream:
the client got its data and FIN), B and C (the end of the stream). Writes PASS
or FAIL: why to DIR/result.
"""
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wlcommon  # noqa: E402

FIN_WAIT1, CLOSE_WAIT, LAST_ACK, CLOSING = 4, 8, 9, 11
d, port = sys.argv[1], int(sys.argv[2])
c = wlcommon.Checks()
lis = socket.socket()
lis.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lis.bind(("127.0.0.1", port))
lis.listen(3)
open(os.path.join(d, "listening"), "w").write("yes")
a, b, cc = (lis.accept()[0] for _ in range(3))
state = lambda s: s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
wait_file = lambda n: [time.sleep(0.01) for _ in iter(lambda: os.path.exists(os.path.join(d, n)), True)]
put = lambda n: open(os.path.join(d, n), "w").write("yes")
put("accepted")
wait_file("rules1")
a.sendall(b"dataA")
a.shutdown(socket.SHUT_WR)
cc.shutdown(socket.SHUT_WR)
put("c-shut")
while state(b) != CLOSE_WAIT:
    time.sleep(0.01)
put("b-closewait")
wait_file("rules2")
b.sendall(b"dataB")
b.shutdown(socket.SHUT_WR)
deadline = time.time() + 20
while (state(a), state(b), state(cc)) != (FIN_WAIT1, LAST_ACK, CLOSING) and time.time() < deadline:
    time.sleep(0.01)
open(os.path.join(d, "states"), "w").write("%d %d %d" % (state(a), state(b), state(cc)))
wlcommon.ready_then_count(d)


def read_all(s):
    s.settimeout(20)
    got = b""
    while True:
        x = s.recv(100)
        if not x:
            return got
        got += x


def check():
    c.chk("A: the client's reply, then the end", read_all(a), b"replyA")
    c.chk("B: the end of the stream", read_all(b), b"")
    c.chk("C: the end of the stream", read_all(cc), b"")


wlcommon.run_checks([check], c.problems)
wlcommon.write_result(d, c.problems)
