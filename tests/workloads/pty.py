#!/usr/bin/env python3
"""The `pty` workload: pseudo-terminal pairs with unread data both ways, a session
with one as its controlling terminal and a foreground job, checked after a restore.

    pty.py DIR

The process (a session leader without a terminal) opens two pairs:
  A: canonical mode, echo off, VINTR moved to ^X, window 33x111. Unread by the
     slave's reader: the lines "hello\\n", "lit<DEL>x\\n" (DEL typed after VLNEXT),
     "eof-line" (ended by VEOF) and the unfinished line "part". Unread by the
     master's reader: "out-data\\n" written to the slave (ONLCR makes it \\r\\n).
     A child starts a session with A as its controlling terminal; its child is a
     process group of its own, the terminal's foreground group, and holds /dev/tty.
  B: raw (cfmakeraw), master in packet mode, window 5x7. Unread: bytes with NUL,
     ^C, ^Q and 0xff written to the master; "pkt-out" written to the slave.
Two more masters: C, whose slave was never opened (reading it gives EAGAIN), and D,
whose slave was opened and closed again (EIO); they must read so after a restore.
Writes DIR/ready (with the pair names and the session's pids in DIR/ptys), prints a
counter every 0.05 s; on SIGUSR1 checks: same /dev/pts names, termios, window sizes,
packet mode; each queue holds exactly what it held (complete lines read as lines,
the unfinished line still unfinished until "ial\\n" completes it); the session
leader, its controlling terminal and foreground group; the job's /dev/tty still
reaches the terminal. Writes PASS or FAIL: why to DIR/result.
"""
import errno
import fcntl
import os
import signal
import struct
import sys
import termios
import time
import tty

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wlcommon  # noqa: E402

d = sys.argv[1]
c = wlcommon.Checks()

ma, sa = os.openpty()
mb, sb = os.openpty()
name_a, name_b = os.ttyname(sa), os.ttyname(sb)

ta = termios.tcgetattr(sa)
ta[3] &= ~(termios.ECHO | termios.ECHOE | termios.ECHOK | termios.ECHONL | termios.ECHOCTL)
ta[6][termios.VINTR] = b"\x18"
termios.tcsetattr(sa, termios.TCSANOW, ta)
ta = termios.tcgetattr(sa)
fcntl.ioctl(sa, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 640, 480))
tty.setraw(sb)
tb = termios.tcgetattr(sb)
fcntl.ioctl(mb, termios.TIOCSWINSZ, struct.pack("HHHH", 5, 7, 0, 0))
fcntl.ioctl(mb, termios.TIOCPKT, struct.pack("i", 1))
for fd in (sa, sb, ma, mb):
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)

# The session: its leader takes A as controlling terminal, its job is in the
# foreground and holds /dev/tty.
r, w = os.pipe()
leader = os.fork()
if leader == 0:
    # The session holds only its terminal; the pairs stay this process's.
    for fd in (r, ma, mb, sa, sb):
        os.close(fd)
    os.setsid()
    ctty = os.open(name_a, os.O_RDWR)  # the first terminal a leader opens
    job = os.fork()
    if job == 0:
        os.setpgid(0, 0)
        devtty = os.open("/dev/tty", os.O_RDWR)
        signal.signal(signal.SIGUSR2, lambda *_: os.write(devtty, b"via-dev-tty\n"))
        os.write(w, b"j")
        os.close(w)
        while True:
            signal.pause()
    os.close(w)
    os.setpgid(job, job)
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    os.tcsetpgrp(ctty, job)
    while True:
        signal.pause()
os.close(w)
os.read(r, 1)
os.close(r)
job = 0
for _ in range(200):
    job = os.tcgetpgrp(ma)
    if job not in (0, leader):
        break
    time.sleep(0.01)

# C: a pair whose slave was never opened (its master reads EAGAIN); D: one whose
# slave was opened and closed again (its master reads EIO).
TIOCSPTLCK, TIOCGPTN = 0x40045431, 0x80045430


def new_master():
    m = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    fcntl.ioctl(m, TIOCSPTLCK, struct.pack("i", 0))
    return m, "/dev/pts/%d" % struct.unpack("i", fcntl.ioctl(m, TIOCGPTN, b"\0" * 4))[0]


def master_reads(m):
    try:
        os.read(m, 16)
        return "data"
    except BlockingIOError:
        return "EAGAIN"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


mc, name_c = new_master()
md, name_d = new_master()
os.close(os.open(name_d, os.O_RDWR | os.O_NOCTTY))
reads_before = (master_reads(mc), master_reads(md))

# Data nobody reads yet.
os.write(ma, b"hello\nlit\x16\x7fx\neof-line\x04part")
os.write(sa, b"out-data\n")
raw_in = b"raw\x00\x03\x11\xffbytes"
os.write(mb, raw_in)
os.write(sb, b"pkt-out")
time.sleep(0.2)
with open(os.path.join(d, "ptys"), "w") as fh:
    fh.write("%s %s %d %d\n" % (name_a, name_b, leader, job))

wlcommon.ready_then_count(d)


def read_all(fd):
    out = []
    while True:
        try:
            b = os.read(fd, 4096)
        except BlockingIOError:
            return out
        out.append(b)
        if not b:
            return out


def check_names_and_modes():
    c.chk("pair A", os.ttyname(sa), name_a)
    c.chk("pair B", os.ttyname(sb), name_b)
    c.chk("termios A", termios.tcgetattr(sa), ta)
    c.chk("termios B", termios.tcgetattr(sb), tb)
    c.chk("window A", struct.unpack("HHHH", fcntl.ioctl(sa, termios.TIOCGWINSZ, b"\0" * 8)), (33, 111, 640, 480))
    c.chk("window B", struct.unpack("HHHH", fcntl.ioctl(sb, termios.TIOCGWINSZ, b"\0" * 8))[:2], (5, 7))
    TIOCGPKT = 0x80045438
    c.chk("packet mode B", struct.unpack("i", fcntl.ioctl(mb, TIOCGPKT, b"\0" * 4))[0], 1)


def check_unopened_and_closed_slaves():
    c.chk("reads before the dump (setup)", reads_before, ("EAGAIN", "EIO"))
    c.chk("master of a never-opened slave / of a closed slave", (master_reads(mc), master_reads(md)), reads_before)


def check_queues():
    # Complete lines one read each; the unfinished one stays unfinished.
    c.chk("A input lines", read_all(sa), [b"hello\n", b"lit\x7fx\n", b"eof-line"])
    c.chk("A output", read_all(ma), [b"out-data\r\n"])
    os.write(ma, b"ial\n")
    time.sleep(0.1)
    c.chk("A finished line", read_all(sa), [b"partial\n"])
    c.chk("B input", b"".join(read_all(sb)), raw_in)
    c.chk("B output", read_all(mb), [b"\x00pkt-out"])


def check_session():
    c.chk("leader's session", os.getsid(leader), leader)
    c.chk("job's group", os.getpgid(job), job)
    c.chk("job's session", os.getsid(job), leader)
    c.chk("foreground group", os.tcgetpgrp(ma), job)
    rdev = os.stat(name_a).st_rdev
    for p in (leader, job):
        with open("/proc/%d/stat" % p) as fh:
            tty_nr = int(fh.read().rsplit(")", 1)[1].split()[4])
        c.chk("controlling terminal of %d" % p, (os.major(tty_nr), os.minor(tty_nr)), (os.major(rdev), os.minor(rdev)))
    links = [os.readlink("/proc/%d/fd/%s" % (job, f)) for f in os.listdir("/proc/%d/fd" % job)]
    c.chk("the job holds /dev/tty", "/dev/tty" in links, True)
    os.kill(job, signal.SIGUSR2)
    time.sleep(0.1)
    c.chk("written through /dev/tty", read_all(ma), [b"via-dev-tty\r\n"])


wlcommon.run_checks([check_names_and_modes, check_queues, check_session, check_unopened_and_closed_slaves], c.problems)
for p in (job, leader):
    try:
        os.kill(p, signal.SIGKILL)
    except OSError as e:
        if e.errno != errno.ESRCH:
            raise
wlcommon.write_result(d, c.problems)
