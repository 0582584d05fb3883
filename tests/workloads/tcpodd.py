#!/usr/bin/env python3
"""The `tcpodd` workload: a loopback TCP connection in a state crtool refuses.

    tcpodd.py DIR closewait|urgent

closewait: the client side has closed (the server's socket is in CLOSE_WAIT);
urgent: the client has sent a byte of urgent data (MSG_OOB) the server has not
read. Writes DIR/ready and prints a counter every 0.05 s until SIGUSR1; then
checks the connection is as it was (EOF / the urgent byte still there) and
writes PASS or FAIL: why to DIR/result.
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
if mode == "closewait":
    cli.close()
else:
    cli.send(b"!", socket.MSG_OOB)
time.sleep(0.1)
wlcommon.ready_then_count(d)
if mode == "closewait":
    srv.settimeout(5)
    c.chk("end of stream", srv.recv(10), b"")
else:
    # (Not through Python's timeout: it waits for POLLIN, and urgent data is
    # POLLPRI.)
    srv.setblocking(False)
    c.chk("urgent byte", srv.recv(1, socket.MSG_OOB), b"!")
wlcommon.write_result(d, c.problems)
