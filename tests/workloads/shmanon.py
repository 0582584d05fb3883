#!/usr/bin/env python3
"""The `shmanon` workload: shared anonymous memory whose pages only a child wrote,
checked after a restore.

    shmanon.py DIR

The process maps 64 pages MAP_SHARED|MAP_ANONYMOUS and writes pages 0-4; a forked
child writes pages 10-19, which the parent never touches before the dump (they
are in the shared object, not in the parent's page tables). Writes DIR/ready,
prints a counter every 0.05 s; on SIGUSR1 checks every page (its own, the child's,
untouched ones zero), then writes page 40 and has the child copy it to page 41
(SIGUSR2): the memory is still shared both ways. Writes PASS or FAIL: why to
DIR/result.
"""
import mmap
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wlcommon  # noqa: E402

d = sys.argv[1]
c = wlcommon.Checks()
P = mmap.PAGESIZE
m = mmap.mmap(-1, 64 * P, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)


def page(n, who):
    return (b"%s page %d " % (who, n)) * 8


for n in range(5):
    m[n * P:n * P + len(page(n, b"parent"))] = page(n, b"parent")
r, w = os.pipe()
child = os.fork()
if child == 0:
    os.close(r)
    for n in range(10, 20):
        m[n * P:n * P + len(page(n, b"child"))] = page(n, b"child")

    def copy(*_):
        m[41 * P:42 * P] = m[40 * P:41 * P]

    signal.signal(signal.SIGUSR2, copy)
    os.write(w, b"x")
    os.close(w)
    while True:
        signal.pause()
os.close(w)
os.read(r, 1)
os.close(r)

wlcommon.ready_then_count(d)


def check_pages():
    for n in range(64):
        want = page(n, b"parent") if n < 5 else page(n, b"child") if 10 <= n < 20 else b""
        got = m[n * P:(n + 1) * P]
        if got != want + b"\0" * (P - len(want)):
            c.problems.append("page %d starts %r, want %r" % (n, got[:24], want[:24]))
    m[40 * P:40 * P + 12] = b"after-restore"[:12]
    os.kill(child, signal.SIGUSR2)
    for _ in range(100):
        if m[41 * P:41 * P + 12] == b"after-restore"[:12]:
            break
        time.sleep(0.01)
    c.chk("page 41 copied by the child", m[41 * P:41 * P + 12], b"after-restore"[:12])


wlcommon.run_checks([check_pages], c.problems)
os.kill(child, signal.SIGKILL)
wlcommon.write_result(d, c.problems)
