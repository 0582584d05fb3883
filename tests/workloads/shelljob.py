#!/usr/bin/env python3
"""The `shelljob` workload: a job started from an interactive shell's terminal.

    shelljob.py DIR

Notes the terminal its stdin, stdout and stderr are (DIR/tty.before), writes
DIR/ready, waits for SIGUSR1; then checks that all three are the terminal named in
DIR/newtty (the one `crtool restore --shell-job` ran on), that it is its controlling
terminal, writes a line to it and PASS or FAIL: why to DIR/result.
"""
import os
import signal
import sys
import time

d = sys.argv[1]
with open(os.path.join(d, "tty.before"), "w") as fh:
    fh.write(" ".join(os.ttyname(i) for i in (0, 1, 2)))
done = []
signal.signal(signal.SIGUSR1, lambda *a: done.append(1))
with open(os.path.join(d, "ready"), "w") as fh:
    fh.write(str(os.getpid()))
while not done:
    time.sleep(0.05)
problems = []
try:
    want = open(os.path.join(d, "newtty")).read().strip()
    before = open(os.path.join(d, "tty.before")).read().split()
    # Each fd is what it was (stdin /dev/tty, the others the terminal itself), on
    # the new terminal.
    got = [os.ttyname(i) for i in (0, 1, 2)]
    expect = [want if b.startswith("/dev/pts/") else b for b in before]
    if got != expect:
        problems.append("stdin/out/err are %r, want %r" % (got, expect))
    rdev = os.stat(want).st_rdev
    fields = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
    tty_nr = int(fields[4])
    if tty_nr != ((os.major(rdev) << 8) | (os.minor(rdev) & 0xFF) | ((os.minor(rdev) & ~0xFF) << 12)):
        problems.append("the controlling terminal (tty_nr %#x) is not %s" % (tty_nr, want))
    print("restored job writes to its new terminal", flush=True)
except Exception as ex:  # noqa: BLE001 - every failure is a verdict
    problems.append(repr(ex))
with open(os.path.join(d, "result"), "w") as fh:
    fh.write("PASS" if not problems else "FAIL: " + "; ".join(problems))
