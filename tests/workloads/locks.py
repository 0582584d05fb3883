#!/usr/bin/env python3
"""The `locks` workload: file locks of every supported kind, checked after a restore.

    locks.py DIR

The process locks DIR/posix.dat with POSIX record locks (write on bytes 5-14, read
from 50 to the end, through one fd while a second fd of the file is open), takes an
flock(LOCK_EX) on DIR/flock.dat through a description it shares with a forked
child, and an OFD write lock on DIR/ofd.dat (bytes 0-99). Writes DIR/ready, prints
a counter every 0.05 s; on SIGUSR1 a fresh child checks from outside that each lock
is held by its owner (F_GETLK names the process, flock and F_OFD_SETLK fail), and
that a lock not taken before is free; writes PASS or FAIL: why to DIR/result.
"""
import fcntl
import os
import signal
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wlcommon  # noqa: E402

d = sys.argv[1]
problems = []
F_OFD_GETLK, F_OFD_SETLK = 36, 37


def path(n):
    return os.path.join(d, n)


for n in ("posix.dat", "flock.dat", "ofd.dat"):
    with open(path(n), "wb") as fh:
        fh.write(b"x" * 200)
p1 = os.open(path("posix.dat"), os.O_RDWR)
p2 = os.open(path("posix.dat"), os.O_RDWR)  # closing it would drop the locks
fcntl.lockf(p1, fcntl.LOCK_EX, 10, 5)
fcntl.lockf(p1, fcntl.LOCK_SH, 0, 50)
fcntl.lockf(p2, fcntl.LOCK_EX, 5, 150)  # through this second description
fl = os.open(path("flock.dat"), os.O_RDWR)
fcntl.flock(fl, fcntl.LOCK_EX)
ofd = os.open(path("ofd.dat"), os.O_RDWR)
fcntl.fcntl(ofd, F_OFD_SETLK, struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 100, 0))
child = os.fork()
if child == 0:
    signal.pause()  # shares the flock'd description
    os._exit(0)

wlcommon.ready_then_count(d)

me = os.getpid()
r, w = os.pipe()
checker = os.fork()
if checker == 0:
    out = []

    def getlk(fd, cmd, ltype, start, length):
        res = fcntl.fcntl(fd, cmd, struct.pack("hhqqi", ltype, 0, start, length, 0))
        t, _, s, ln, pid = struct.unpack("hhqqi", res)
        return t, s, ln, pid

    f = os.open(path("posix.dat"), os.O_RDWR)
    got = getlk(f, fcntl.F_GETLK, fcntl.F_WRLCK, 0, 20)
    if got != (fcntl.F_WRLCK, 5, 10, me):
        out.append("POSIX write lock 5-14: F_GETLK says %r" % (got,))
    got = getlk(f, fcntl.F_GETLK, fcntl.F_WRLCK, 60, 1)
    if got != (fcntl.F_RDLCK, 50, 100, me):
        out.append("POSIX read lock 50-149: F_GETLK says %r" % (got,))
    got = getlk(f, fcntl.F_GETLK, fcntl.F_RDLCK, 60, 1)
    if got[0] != fcntl.F_UNLCK:
        out.append("a read lock at 60 conflicts: %r" % (got,))
    got = getlk(f, fcntl.F_GETLK, fcntl.F_RDLCK, 152, 1)
    if got != (fcntl.F_WRLCK, 150, 5, me):
        out.append("POSIX write lock 150-154 (through the second fd): F_GETLK says %r" % (got,))
    got = getlk(f, fcntl.F_GETLK, fcntl.F_WRLCK, 20, 10)
    if got[0] != fcntl.F_UNLCK:
        out.append("bytes 20-29 are locked: %r" % (got,))
    g = os.open(path("flock.dat"), os.O_RDWR)
    try:
        fcntl.flock(g, fcntl.LOCK_SH | fcntl.LOCK_NB)
        out.append("flock.dat is not flock'd")
    except BlockingIOError:
        pass
    h = os.open(path("ofd.dat"), os.O_RDWR)
    got = getlk(h, F_OFD_GETLK, fcntl.F_RDLCK, 0, 10)
    if got[:3] != (fcntl.F_WRLCK, 0, 100):
        out.append("OFD lock 0-99: F_OFD_GETLK says %r" % (got,))
    os.write(w, ("; ".join(out)).encode() or b"-")
    os._exit(0)
os.waitpid(checker, 0)
res = os.read(r, 4096).decode()
if res != "-":
    problems.append(res)
os.kill(child, signal.SIGKILL)
os.waitpid(child, 0)
wlcommon.write_result(d, problems)
