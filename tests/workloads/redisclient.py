#!/usr/bin/env python3
"""A redis client for e2e_inet: connects to 127.0.0.1:PORT, sets k, starts a
transaction (MULTI, SET a 1, INCR a) and writes DIR/client.ready; once DIR/go
exists it sends EXEC on the same connection (while the server may be dumped and
its packets dropped: TCP retransmits) and writes the reply, or what went wrong,
to DIR/client.result.

    redisclient.py PORT DIR
"""
import os
import socket
import sys
import time

port, d = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port))
s.settimeout(60)


def cmd(*args, want):
    s.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
    got = b""
    while len(got) < len(want):
        b = s.recv(4096)
        if not b:
            break
        got += b
    if got != want:
        raise RuntimeError("%r: got %r, want %r" % (args, got, want))


try:
    cmd(b"SET", b"k", b"v" * 1000, want=b"+OK\r\n")
    cmd(b"MULTI", want=b"+OK\r\n")
    cmd(b"SET", b"a", b"1", want=b"+QUEUED\r\n")
    cmd(b"INCR", b"a", want=b"+QUEUED\r\n")
    with open(os.path.join(d, "client.ready"), "w") as fh:
        fh.write("ready\n")
    while not os.path.exists(os.path.join(d, "go")):
        time.sleep(0.01)
    cmd(b"EXEC", want=b"*2\r\n+OK\r\n:2\r\n")
    cmd(b"GET", b"a", want=b"$1\r\n2\r\n")
    result = "PASS"
except Exception as e:  # noqa: BLE001 - every failure is a verdict
    result = "FAIL: %r" % e
with open(os.path.join(d, "client.result"), "w") as fh:
    fh.write(result)
