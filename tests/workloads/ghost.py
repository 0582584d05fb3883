#!/usr/bin/env python3
"""The `ghost` workload: deleted files open and mapped, checked after a restore.

    ghost.py DIR [big]

DIR/open.dat (700 KiB: data at 0 and at 512 KiB, a hole between; mode 0640,
mtime 2001-09-09) is open read-write at offset 77 and deleted; DIR/mapped.dat is
mapped shared (a write made through it) and private (a page copied), its fd closed,
and deleted; DIR/replaced.dat is open and deleted, and a new file took its name.
With `big`, DIR/big.dat (2 MiB of data, over the default ghost limit) is open and
deleted too. Writes DIR/ready, prints a counter every 0.05 s; on SIGUSR1 checks
data, holes, offsets, modes, times, names and that the files stay deleted (and that
the new file under the taken name is untouched), writes PASS or FAIL: why to
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
problems = []
KiB = 1024


def chk(name, got, want):
    if got != want:
        problems.append("%s: got %r, want %r" % (name, got, want))


def p(n):
    return os.path.join(d, n)


fa = os.open(p("open.dat"), os.O_RDWR | os.O_CREAT, 0o640)
os.pwrite(fa, b"ghost-head", 0)
os.pwrite(fa, b"ghost-middle", 512 * KiB)
os.ftruncate(fa, 700 * KiB)
os.fchmod(fa, 0o640)
os.utime(fa, ns=(1_000_000_000 * 10**9, 1_000_000_000 * 10**9))
os.lseek(fa, 77, os.SEEK_SET)
os.unlink(p("open.dat"))
fb = os.open(p("mapped.dat"), os.O_RDWR | os.O_CREAT, 0o600)
os.write(fb, b"m" * 8192)
shared = mmap.mmap(fb, 8192, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
private = mmap.mmap(fb, 8192, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
shared[0:6] = b"SHARED"
private[4096:4103] = b"PRIVATE"
os.close(fb)
os.unlink(p("mapped.dat"))
fc = os.open(p("replaced.dat"), os.O_RDWR | os.O_CREAT, 0o600)
os.write(fc, b"old contents")
os.unlink(p("replaced.dat"))
with open(p("replaced.dat"), "w") as fh:
    fh.write("new file")
# Its working directory removed (mode 0750).
os.mkdir(p("cwd-gone"), 0o750)
os.chdir(p("cwd-gone"))
os.rmdir(p("cwd-gone"))
big = None
if sys.argv[2:] == ["big"]:
    big = os.open(p("big.dat"), os.O_RDWR | os.O_CREAT, 0o600)
    os.write(big, b"b" * (2 * KiB * KiB))
    os.unlink(p("big.dat"))

wlcommon.ready_then_count(d)

try:
    st = os.fstat(fa)
    chk("open.dat name", os.readlink("/proc/self/fd/%d" % fa), p("open.dat") + " (deleted)")
    chk("open.dat links", st.st_nlink, 0)
    chk("open.dat size", st.st_size, 700 * KiB)
    chk("open.dat mode", st.st_mode & 0o7777, 0o640)
    chk("open.dat mtime", st.st_mtime_ns, 1_000_000_000 * 10**9)
    chk("open.dat offset", os.lseek(fa, 0, os.SEEK_CUR), 77)
    chk("open.dat head", os.pread(fa, 10, 0), b"ghost-head")
    chk("open.dat middle", os.pread(fa, 12, 512 * KiB), b"ghost-middle")
    chk("open.dat hole", os.lseek(fa, 8192, os.SEEK_DATA), 512 * KiB)
    chk("shared mapping", shared[0:8], b"SHAREDmm")
    chk("private mapping", private[4096:4104], b"PRIVATEm")
    chk("private mapping, first page", private[0:6], b"SHARED")
    maps = open("/proc/self/maps").read()
    chk("mappings named", maps.count(p("mapped.dat") + " (deleted)"), 2)
    chk("replaced.dat's old contents", os.pread(fc, 12, 0), b"old contents")
    chk("replaced.dat links", os.fstat(fc).st_nlink, 0)
    with open(p("replaced.dat")) as fh:
        chk("the new replaced.dat", fh.read(), "new file")
    chk("removed cwd", os.readlink("/proc/self/cwd"), p("cwd-gone") + " (deleted)")
    chk("removed cwd's mode", os.stat(".").st_mode & 0o7777, 0o750)
    left = sorted(x for x in os.listdir(d) if x.endswith(".dat") or x.startswith(".crtool-ghost") or x == "cwd-gone")
    chk("files in DIR", left, ["replaced.dat"])
    if big is not None:
        chk("big.dat", os.pread(big, 4, 2 * KiB * KiB - 4), b"bbbb")
    # Writes still reach the (deleted) file.
    os.pwrite(fa, b"after", 100)
    chk("write after", os.pread(fa, 5, 100), b"after")
except Exception as ex:  # noqa: BLE001 - every failure is a verdict
    problems.append(repr(ex))
wlcommon.write_result(d, problems)
