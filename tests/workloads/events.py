#!/usr/bin/env python3
"""The `events` workload: event files with state in them, checked after a restore.

    events.py DIR [closed-target]

Sets up: an eventfd in semaphore mode with count 5 (non-blocking), an eventfd with
a count above 2^32, a signalfd for SIGUSR2 (blocked, one pending), a one-shot
CLOCK_MONOTONIC timerfd that has expired once and not been read, a periodic
CLOCK_MONOTONIC timerfd (0.5 s) and a CLOCK_REALTIME timerfd armed with
TFD_TIMER_ABSTIME 100 s ahead, and an epoll instance watching a pipe with bytes in
it (EPOLLIN | EPOLLET, not yet reported), the second eventfd (EPOLLIN, data 0x1234),
a socket (EPOLLOUT) and another epoll (nested) that watches the signalfd. A forked
child shares the first eventfd; pidfds of that child, of itself (non-blocking) and
of a child that exited and was reaped (non-blocking). Writes DIR/ready, prints a counter every 0.05 s; on
SIGUSR1 checks it all, writes PASS or FAIL: why to DIR/result and exits.
With closed-target, the epoll also watches a dup of the pipe's read end that was
closed since (the watch stays while the file lives): crtool refuses that.
Python 3 standard library only (ctypes for the syscalls).
"""
import ctypes
import os
import select
import signal
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wlcommon  # noqa: E402

d = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
problems = []


def chk(name, got, want):
    if got != want:
        problems.append("%s: got %r, want %r" % (name, got, want))


class Timespec(ctypes.Structure):
    _fields_ = [("s", ctypes.c_long), ("ns", ctypes.c_long)]


class Itimerspec(ctypes.Structure):
    _fields_ = [("interval", Timespec), ("value", Timespec)]


def arm(fd, value, interval=0.0, flags=0):
    spec = Itimerspec(Timespec(int(interval), int(interval % 1 * 1e9)), Timespec(int(value), int(value % 1 * 1e9)))
    if libc.timerfd_settime(fd, flags, ctypes.byref(spec), None) != 0:
        sys.exit("timerfd_settime: errno %d" % ctypes.get_errno())


def gettime(fd):
    spec = Itimerspec()
    libc.timerfd_gettime(fd, ctypes.byref(spec))
    return spec.value.s + spec.value.ns / 1e9, spec.interval.s + spec.interval.ns / 1e9


EFD_SEMAPHORE, NONBLOCK = 1, os.O_NONBLOCK
sem = libc.eventfd(5, EFD_SEMAPHORE | NONBLOCK)
big = libc.eventfd(0, 0)
os.write(big, struct.pack("Q", (1 << 40) + 7))
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2])
mask = struct.pack("Q", 1 << (signal.SIGUSR2 - 1))
sfd = libc.signalfd(-1, mask, NONBLOCK)
os.kill(os.getpid(), signal.SIGUSR2)
oneshot = libc.timerfd_create(time.CLOCK_MONOTONIC, NONBLOCK)
arm(oneshot, 0.01)
periodic = libc.timerfd_create(time.CLOCK_MONOTONIC, NONBLOCK)
arm(periodic, 0.5, 0.5)
# Periodic, expired once and not read, next in 10 s.
slow = libc.timerfd_create(time.CLOCK_MONOTONIC, NONBLOCK)
arm(slow, 0.01, 10.0)
rt = libc.timerfd_create(time.CLOCK_REALTIME, NONBLOCK)
deadline = time.clock_gettime(time.CLOCK_REALTIME) + 100
arm(rt, deadline, 0, 1)  # TFD_TIMER_ABSTIME
for fd in (sem, big, sfd, oneshot, periodic, rt):
    if fd < 0:
        sys.exit("setup failed: errno %d" % ctypes.get_errno())
r, w = os.pipe()
os.write(w, b"pipe-data")
sa, sb = socket.socketpair()
ep = select.epoll()
ep.register(r, select.EPOLLIN | select.EPOLLET)
ep.register(sa.fileno(), select.EPOLLOUT)
inner = select.epoll()
inner.register(sfd, select.EPOLLIN)
ep.register(inner.fileno(), select.EPOLLIN)
# A watch with data of our own (Python's register stores the fd as data).
class EpollEvent(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("events", ctypes.c_uint32), ("data", ctypes.c_uint64)]


# An EPOLLONESHOT watch that has fired (disarmed) on a pipe with data.
fr, fw = os.pipe()
os.write(fw, b"x")
fired = select.epoll()
fired.register(fr, select.EPOLLIN | select.EPOLLONESHOT)
assert fired.poll(0) == [(fr, select.EPOLLIN)]
if libc.epoll_ctl(ep.fileno(), 1, big, ctypes.byref(EpollEvent(select.EPOLLIN, 0x1234))) != 0:
    sys.exit("epoll_ctl: errno %d" % ctypes.get_errno())
# inotify: watches on DIR and on DIR/watched (the one between them removed, its
# IN_IGNORED read), so descriptors 1 and 3.
ino = libc.inotify_init1(NONBLOCK)
os.makedirs(os.path.join(d, "watched-dir"), exist_ok=True)
open(os.path.join(d, "watched"), "w").close()
wd_dir = libc.inotify_add_watch(ino, os.path.join(d, "watched-dir").encode(), 0x100)  # IN_CREATE
wd_gone = libc.inotify_add_watch(ino, d.encode(), 0x200)  # IN_DELETE
wd_file = libc.inotify_add_watch(ino, os.path.join(d, "watched").encode(), 0x2 | 0x80000000)  # IN_MODIFY | IN_ONESHOT
libc.inotify_rm_watch(ino, wd_gone)
os.read(ino, 4096)  # its IN_IGNORED
closed_target = sys.argv[2:] == ["closed-target"]
if closed_target:
    # A watch whose fd was closed while a dup keeps the file: crtool refuses it.
    extra = os.dup(r)
    ep.register(extra, select.EPOLLIN)
    os.close(extra)
time.sleep(0.05)  # the one-shot timer expires
child = os.fork()
if child == 0:
    signal.pause()  # shares the semaphore eventfd
    os._exit(0)

# pidfds of the child and of itself.
pfd_child = os.pidfd_open(child)
pfd_self = os.pidfd_open(os.getpid(), os.O_NONBLOCK)
# A pidfd of a child that has exited and was reaped.
gone = os.fork()
if gone == 0:
    signal.pause()
    os._exit(0)
pfd_gone = os.pidfd_open(gone, os.O_NONBLOCK)
os.kill(gone, signal.SIGKILL)
os.waitpid(gone, 0)

wlcommon.ready_then_count(d)


def check():
    class EV(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("events", ctypes.c_uint32), ("data", ctypes.c_uint64)]

    evs = (EV * 16)()
    got = libc.epoll_wait(ep.fileno(), evs, 16, 0)
    # Python's register() puts the fd in the low 32 bits of the data.
    seen = sorted((evs[i].data if evs[i].data == 0x1234 else evs[i].data & 0xFFFFFFFF, evs[i].events) for i in range(max(got, 0)))
    want = [(r, select.EPOLLIN), (sa.fileno(), select.EPOLLOUT), (inner.fileno(), select.EPOLLIN), (0x1234, select.EPOLLIN)]
    if closed_target:
        want.append((extra, select.EPOLLIN))
    chk("epoll_wait", seen, sorted(want))
    chk("edge reported once", libc.epoll_wait(ep.fileno(), evs, 16, 0), 3 + closed_target)
    chk("inner epoll", [e for e in inner.poll(0)], [(sfd, select.EPOLLIN)])
    for i in range(5):
        chk("semaphore read %d" % i, os.read(sem, 8), struct.pack("Q", 1))
    try:
        os.read(sem, 8)
        problems.append("semaphore eventfd: a sixth read worked")
    except BlockingIOError:
        pass
    chk("big eventfd", struct.unpack("Q", os.read(big, 8))[0], (1 << 40) + 7)
    info = os.read(sfd, 128)
    chk("signalfd signal", struct.unpack("I", info[:4])[0], signal.SIGUSR2)
    chk("one-shot expirations", struct.unpack("Q", os.read(oneshot, 8))[0], 1)
    chk("periodic expirations not read", struct.unpack("Q", os.read(slow, 8))[0], 1)
    chk("fired one-shot watch stays disarmed", fired.poll(0), [])
    chk("fired one-shot watch's mask", [l.split()[3] for l in open("/proc/self/fdinfo/%d" % fired.fileno()).read().splitlines() if l.startswith("tfd:")], ["40000000"])
    left, interval = gettime(periodic)
    chk("periodic interval", round(interval, 3), 0.5)
    if not 0 < left <= 0.5:
        problems.append("periodic timer: %.3f s left" % left)
    left, interval = gettime(rt)
    want = deadline - time.clock_gettime(time.CLOCK_REALTIME)
    if abs(left - want) > 0.5:
        problems.append("CLOCK_REALTIME deadline moved: %.3f s left, want %.3f" % (left, want))
    chk("inotify descriptors", (wd_dir, wd_file), (1, 3))
    marks = sorted(l.split()[1] + " " + l.split()[4] for l in open("/proc/self/fdinfo/%d" % ino).read().splitlines() if l.startswith("inotify"))
    chk("inotify marks", marks, ["wd:1 mask:100", "wd:3 mask:80000002"])
    try:
        os.read(ino, 4096)
        problems.append("inotify: events queued after the restore")
    except BlockingIOError:
        pass
    open(os.path.join(d, "watched-dir", "new"), "w").close()
    with open(os.path.join(d, "watched"), "w") as fh:
        fh.write("x")
    ev = os.read(ino, 4096)
    wds = []
    while ev:
        wd, mask, _, ln = struct.unpack("iIII", ev[:16])
        wds.append((wd, mask & 0xffff))
        ev = ev[16 + ln:]
    chk("inotify events", sorted(wds), [(1, 0x100), (3, 0x2), (3, 0x8000)])
    # The periodic timer keeps ticking.
    time.sleep(0.6)
    ticks = struct.unpack("Q", os.read(periodic, 8))[0]
    if ticks < 1:
        problems.append("periodic timer did not expire after the restore")
    pid_of = lambda fd: int([l for l in open("/proc/self/fdinfo/%d" % fd).read().splitlines() if l.startswith("Pid:")][0].split()[1])
    chk("pidfd of the child", pid_of(pfd_child), child)
    chk("pidfd of itself", (pid_of(pfd_self), os.get_blocking(pfd_self)), (os.getpid(), False))
    chk("pidfd of a reaped child", (pid_of(pfd_gone), os.get_blocking(pfd_gone), select.select([pfd_gone], [], [], 0)[0]), (-1, False, [pfd_gone]))
    try:
        signal.pidfd_send_signal(pfd_gone, 0)
        problems.append("signalling the reaped child's pidfd worked")
    except ProcessLookupError:
        pass
    chk("the child's pidfd before it dies", select.select([pfd_child], [], [], 0)[0], [])
    signal.pidfd_send_signal(pfd_child, signal.SIGKILL)
    chk("the child's pidfd once it died", select.select([pfd_child], [], [], 5)[0], [pfd_child])
    os.waitpid(child, 0)


wlcommon.run_checks([check], problems)
wlcommon.write_result(d, problems)
