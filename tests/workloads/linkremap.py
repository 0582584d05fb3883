#!/usr/bin/env python3
"""The `linkremap` workload: a deleted file that still has another name, open and
mapped (dump --link-remap), checked after a restore.

    linkremap.py DIR

DIR/linked.dat (8 KiB) gets a second name DIR/keep/other.dat; it is opened
read-write at offset 123, mapped shared, and DIR/linked.dat is deleted. Writes
DIR/ready, prints a counter every 0.05 s; on SIGUSR1 checks that the fd still shows
DIR/linked.dat (deleted) at offset 123, is the very file DIR/keep/other.dat names
(same inode, one name left, a write through either side seen by the other and by
the mapping), and that no link crtool made is left in DIR; writes PASS or FAIL: why
to DIR/result.
"""
import mmap
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wlcommon  # noqa: E402

d = sys.argv[1]
c = wlcommon.Checks()
path = os.path.join(d, "linked.dat")
other = os.path.join(d, "keep", "other.dat")
os.makedirs(os.path.dirname(other), exist_ok=True)
with open(path, "wb") as fh:
    fh.write(bytes(range(256)) * 32)
os.link(path, other)
fd = os.open(path, os.O_RDWR)
os.lseek(fd, 123, os.SEEK_SET)
m = mmap.mmap(fd, 8192, mmap.MAP_SHARED)
os.unlink(path)

wlcommon.ready_then_count(d)


def check_file():
    c.chk("fd target", os.readlink("/proc/self/fd/%d" % fd), path + " (deleted)")
    c.chk("offset", os.lseek(fd, 0, os.SEEK_CUR), 123)
    st, ost = os.fstat(fd), os.stat(other)
    c.chk("same inode as the other name", (st.st_dev, st.st_ino), (ost.st_dev, ost.st_ino))
    c.chk("names left", st.st_nlink, 1)
    os.pwrite(fd, b"via-fd", 1000)
    with open(other, "rb") as fh:
        fh.seek(1000)
        c.chk("write through the fd seen by name", fh.read(6), b"via-fd")
    with open(other, "r+b") as fh:
        fh.seek(2000)
        fh.write(b"via-name")
    c.chk("write by name seen in the mapping", m[2000:2008], b"via-name")
    c.chk("the mapping's data", m[0:4], bytes([0, 1, 2, 3]))
    c.chk("left in DIR", sorted(n for n in os.listdir(d) if n.startswith(".crtool")), [])


wlcommon.run_checks([check_file], c.problems)
wlcommon.write_result(d, c.problems)
