#!/usr/bin/env python3
"""A line client for e2e_inet's netns test: connects to HOST:PORT, checks "ping 1"
is answered, writes DIR/client.ready; once DIR/go exists sends "ping 2" on the same
connection (the server may be gone and coming back: TCP retransmits) and writes
PASS or FAIL: why to DIR/client.result.

    pingclient.py HOST PORT DIR
"""
import os
import socket
import sys
import time

host, port, d = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    s = socket.create_connection((host, port), timeout=60)
    f = s.makefile("rb")
    s.sendall(b"ping 1\n")
    assert f.readline() == b"pong ping 1\n"
    with open(os.path.join(d, "client.ready"), "w") as fh:
        fh.write("ready\n")
    while not os.path.exists(os.path.join(d, "go")):
        time.sleep(0.01)
    s.sendall(b"ping 2\n")
    got = f.readline()
    result = "PASS" if got == b"pong ping 2\n" else "FAIL: got %r" % got
except Exception as e:  # noqa: BLE001 - every failure is a verdict
    result = "FAIL: %r" % e
with open(os.path.join(d, "client.result"), "w") as fh:
    fh.write(result)
