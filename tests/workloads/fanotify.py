#!/usr/bin/env python3
"""The `fanotify` workload: a fanotify group with marks of every kind, checked
after a restore (root: fanotify_init needs CAP_SYS_ADMIN).

    fanotify.py DIR MNT

MNT is a tmpfs of the test's own (nothing else writes there). The group
(FAN_CLASS_NOTIF, FAN_NONBLOCK, FAN_UNLIMITED_QUEUE; event fds O_RDONLY) marks
MNT/watched.txt for FAN_CLOSE_WRITE, the mount MNT for FAN_OPEN, the filesystem for
FAN_MODIFY, and ignores FAN_OPEN on MNT/ignored.txt (surviving modification).
Writes DIR/ready (after saving the marks as fdinfo shows them), prints a counter
every 0.05 s; on SIGUSR1 checks that fdinfo shows the same group and marks, that
writing MNT/watched.txt reports exactly FAN_OPEN, FAN_MODIFY and FAN_CLOSE_WRITE
(merged or not) with an fd on that file and this pid, and that opening MNT/ignored.txt reports
nothing. Writes PASS or FAIL: why to DIR/result.
"""
import ctypes
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wlcommon  # noqa: E402

d, mnt = sys.argv[1], sys.argv[2]
c = wlcommon.Checks()
libc = ctypes.CDLL(None, use_errno=True)
libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
FAN_CLOEXEC, FAN_NONBLOCK, FAN_UNLIMITED_QUEUE = 0x1, 0x2, 0x10
FAN_MARK_ADD, FAN_MARK_MOUNT, FAN_MARK_FILESYSTEM = 0x1, 0x10, 0x100
FAN_MARK_IGNORED_MASK, FAN_MARK_IGNORED_SURV_MODIFY = 0x20, 0x40
FAN_MODIFY, FAN_CLOSE_WRITE, FAN_OPEN = 0x2, 0x8, 0x20
AT_FDCWD = -100

watched, ignored = os.path.join(mnt, "watched.txt"), os.path.join(mnt, "ignored.txt")
for p in (watched, ignored):
    with open(p, "w") as fh:
        fh.write("x")
fan = libc.fanotify_init(FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE, os.O_RDONLY)
if fan < 0:
    sys.exit("fanotify_init: errno %d" % ctypes.get_errno())


def mark(flags, mask, path):
    if libc.fanotify_mark(fan, FAN_MARK_ADD | flags, mask, AT_FDCWD, path.encode()) != 0:
        sys.exit("fanotify_mark %s: errno %d" % (path, ctypes.get_errno()))


mark(0, FAN_CLOSE_WRITE, watched)
mark(FAN_MARK_MOUNT, FAN_OPEN, mnt)
mark(FAN_MARK_FILESYSTEM, FAN_MODIFY, mnt)
mark(FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY, FAN_OPEN, ignored)


def fdinfo():
    with open("/proc/self/fdinfo/%d" % fan) as fh:
        return sorted(l for l in fh.read().splitlines() if l.startswith("fanotify ") and "mnt_id:" not in l) + [
            "mounts: %d" % sum(1 for l in open("/proc/self/fdinfo/%d" % fan) if "mnt_id:" in l)]


before = fdinfo()
wlcommon.ready_then_count(d)


def events():
    out = []
    try:
        buf = os.read(fan, 4096)
    except BlockingIOError:
        return out
    off = 0
    while off + 24 <= len(buf):
        ln, _, _, _, mask, fd, pid = struct.unpack_from("IBBHQii", buf, off)
        target = os.readlink("/proc/self/fd/%d" % fd) if fd >= 0 else None
        if fd >= 0:
            os.close(fd)
        out.append((mask, target, pid))
        off += ln
    return out


def check_group():
    c.chk("marks (fdinfo)", fdinfo(), before)
    c.chk("nothing queued", events(), [])
    with open(watched, "a") as fh:
        fh.write("more")
    # (The kernel merges events on one file into one event with their masks.)
    got = 0
    for mask, target, pid in events():
        got |= mask
        c.chk("event fd", target, watched)
        c.chk("event pid", pid, os.getpid())
    c.chk("events for the write", hex(got), hex(FAN_OPEN | FAN_MODIFY | FAN_CLOSE_WRITE))
    with open(ignored) as fh:
        fh.read()
    c.chk("events for the ignored file", events(), [])


wlcommon.run_checks([check_group], c.problems)
wlcommon.write_result(d, c.problems)
