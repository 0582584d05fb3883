#!/usr/bin/env python3
"""The `halfclose` workload: a server whose client has sent a request and closed
its side (shutdown SHUT_WR, as HTTP/1.0 clients and `nc -N` do), so that the
server's socket is in CLOSE_WAIT with the request unread.

    halfclose.py DIR PORT

Listens on 127.0.0.1:PORT, accepts one connection, reads nothing until it has
seen the state CLOSE_WAIT; writes DIR/ready, prints a counter every 0.05 s; on
SIGUSR1 checks it is still CLOSE_WAIT, reads the request and the end of the
stream, answers "reply:REQUEST" and closes. Writes PASS or FAIL: why to
DIR/result.
"""
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wlcommon  # noqa: E402

d, port = sys.argv[1], int(sys.argv[2])
c = wlcommon.Checks()
lis = socket.socket()
lis.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lis.bind(("127.0.0.1", port))
lis.listen(1)
open(os.path.join(d, "listening"), "w").write("yes")
srv, _ = lis.accept()
state = lambda: srv.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
while state() != 8:  # TCP_CLOSE_WAIT
    time.sleep(0.01)
wlcommon.ready_then_count(d)
c.chk("state after the restore", state(), 8)
srv.settimeout(10)
req = b""
while True:
    b = srv.recv(100)
    if not b:
        break
    req += b
c.chk("request", req, b"request")
srv.sendall(b"reply:" + req)
srv.close()
wlcommon.write_result(d, c.problems)
