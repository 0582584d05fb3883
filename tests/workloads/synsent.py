#!/usr/bin/env python3
"""The `synsent` workload: a client in the middle of connecting (SYN_SENT: the
test's nftables rule drops its SYNs), checked after a restore.

    synsent.py DIR PORT

A thread connects to 127.0.0.1:PORT with a blocking connect(); once the socket
is in SYN_SENT writes DIR/ready and prints a counter every 0.05 s. When the
connect returns (after the restore, the rule gone) sends "hello" and reads the
server's answer. On SIGUSR1 checks the connection completed from the same local
port and the answer was "hello back". Writes PASS or FAIL: why to DIR/result.
"""
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wlcommon  # noqa: E402

d, port = sys.argv[1], int(sys.argv[2])
c = wlcommon.Checks()
s = socket.socket()
s.bind(("127.0.0.1", 0))
local = s.getsockname()
got = {}
done = threading.Event()


def connect():
    try:
        s.connect(("127.0.0.1", port))
        got["local"] = s.getsockname()
        s.sendall(b"hello")
        got["answer"] = s.recv(100)
    except OSError as e:
        got["error"] = repr(e)
    done.wait()  # (the thread lives on until checked: the test compares thread counts)


threading.Thread(target=connect, daemon=True).start()
while s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] != 2:  # TCP_SYN_SENT
    time.sleep(0.01)
wlcommon.ready_then_count(d)


def check():
    deadline = time.time() + 10
    while "answer" not in got and "error" not in got and time.time() < deadline:
        time.sleep(0.01)
    c.chk("connect", got.get("error"), None)
    c.chk("local address", got.get("local"), local)
    c.chk("answer", got.get("answer"), b"hello back")
    done.set()


wlcommon.run_checks([check], c.problems)
wlcommon.write_result(d, c.problems)
