#!/usr/bin/env python3
"""The `tcpodd` workload: a loopback TCP connection in a state crtool refuses.

    tcpodd.py DIR halfclosed|urgent

halfclosed: the client has sent "request" and shut its side down (it is in
FIN_WAIT2, the server in CLOSE_WAIT with the request unread); both ends are this
process's. urgent: the client has sent a byte of urgent data (MSG_OOB) the server
has not read. Writes DIR/ready and prints a counter every 0.05 s until SIGUSR1;
then checks the connection is as it was and still works (halfclosed: the server
reads the request and the end of the stream and replies, the client reads the
reply and, once the server closes, the end of the stream; urgent: the byte is
still there) and writes PASS or FAIL: why to DIR/result.
"""
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wlcommon  # noqa: E402

d, mode = sys.argv[1], sys.argv[2]
c = wlcommon.Checks()
lis = socket.socket()
lis.bind(("127.0.0.1", 0))
lis.listen(1)
cli = socket.create_connection(lis.getsockname())
srv, _ = lis.accept()
if mode == "halfclosed":
    cli.sendall(b"request")
    cli.shutdown(socket.SHUT_WR)
else:
    cli.send(b"!", socket.MSG_OOB)
time.sleep(0.1)
wlcommon.ready_then_count(d)
if mode == "halfclosed":
    state = lambda s: s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
    c.chk("states (FIN_WAIT2, CLOSE_WAIT)", (state(cli), state(srv)), (5, 8))
    srv.settimeout(5)
    cli.settimeout(5)
    c.chk("request and end of stream", (srv.recv(100), srv.recv(100)), (b"request", b""))
    srv.sendall(b"reply")
    c.chk("reply", cli.recv(100), b"reply")
    srv.close()
    c.chk("end of stream at the client", cli.recv(100), b"")
else:
    # (Not through Python's timeout: it waits for POLLIN, and urgent data is
    # POLLPRI.)
    srv.setblocking(False)
    c.chk("urgent byte", srv.recv(1, socket.MSG_OOB), b"!")
wlcommon.write_result(d, c.problems)
