#!/usr/bin/env python3
"""The `memfd` workload: memfds open and mapped, checked after a restore.

    memfd.py DIR

Makes memfd "crtool-data" (4 MiB, data at 0 and at 2 MiB, a hole between), open at
offset 123 and mapped shared read-write by the process and by a child forked after
(the child writes through its mapping on request); memfd "crtool-sealed" (sealed
against shrinking, growing, writing and new seals), mapped shared read-only; memfd
"crtool-mapped", mapped shared read-only with its fd closed;
and a private mapping of crtool-data with one page written (copy-on-write: the memfd
keeps its bytes). Writes DIR/ready, prints a counter every 0.05 s; on SIGUSR1 checks
names, sizes, data, holes, seals, offsets and sharing, writes PASS or FAIL: why to
DIR/result.
"""
import ctypes
import fcntl
import mmap
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wlcommon  # noqa: E402

d = sys.argv[1]
problems = []
MiB = 1 << 20
F_SEAL_FUTURE_WRITE = getattr(fcntl, "F_SEAL_FUTURE_WRITE", 0x10)


def chk(name, got, want):
    if got != want:
        problems.append("%s: got %r, want %r" % (name, got, want))


fd = os.memfd_create("crtool-data", os.MFD_ALLOW_SEALING)
os.ftruncate(fd, 4 * MiB)
os.pwrite(fd, b"head-data", 0)
os.pwrite(fd, b"middle-data", 2 * MiB)
os.lseek(fd, 123, os.SEEK_SET)
shared = mmap.mmap(fd, 4 * MiB, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
shared[4096:4100] = b"map!"
private = mmap.mmap(fd, 4 * MiB, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE)
private[0:4] = b"COW!"
sfd = os.memfd_create("crtool-sealed", os.MFD_ALLOW_SEALING)
os.write(sfd, b"sealed contents")
fcntl.fcntl(sfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
sealed_map = mmap.mmap(sfd, 15, mmap.MAP_SHARED, mmap.PROT_READ)
# Sealed against future writes while a writable shared mapping exists (which keeps
# writing); and a name that ends like the kernel's own suffix.
fw = os.memfd_create("crtool-future (deleted)", os.MFD_ALLOW_SEALING)
os.ftruncate(fw, 4096)
fw_map = mmap.mmap(fw, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
fcntl.fcntl(fw, fcntl.F_ADD_SEALS, F_SEAL_FUTURE_WRITE)
fw_map[0:6] = b"before"
mfd = os.memfd_create("crtool-mapped")
os.write(mfd, b"only mapped now")
only_map = mmap.mmap(mfd, 15, mmap.MAP_SHARED, mmap.PROT_READ)
os.close(mfd)
go_r, go_w = os.pipe()
done_r, done_w = os.pipe()
child = os.fork()
if child == 0:
    os.read(go_r, 1)
    shared[3 * MiB:3 * MiB + 11] = b"from-child!"
    os.write(done_w, b"k")
    signal.pause()
    os._exit(0)

wlcommon.ready_then_count(d)

try:
    chk("name", os.readlink("/proc/self/fd/%d" % fd), "/memfd:crtool-data (deleted)")
    chk("size", os.fstat(fd).st_size, 4 * MiB)
    chk("offset", os.lseek(fd, 0, os.SEEK_CUR), 123)
    chk("head", os.pread(fd, 9, 0), b"head-data")
    chk("middle", os.pread(fd, 11, 2 * MiB), b"middle-data")
    chk("written through the mapping", os.pread(fd, 4, 4096), b"map!")
    chk("hole", os.lseek(fd, 8192, os.SEEK_HOLE), 8192)
    chk("data after the hole", os.lseek(fd, 8192, os.SEEK_DATA), 2 * MiB)
    chk("private copy", private[0:4], b"COW!")
    chk("private: the rest from the file", private[2 * MiB:2 * MiB + 11], b"middle-data")
    chk("the memfd under the private copy", os.pread(fd, 4, 0), b"head")
    chk("sealed mapping", sealed_map[:], b"sealed contents")
    maps = open("/proc/self/maps").read()
    chk("mappings named", maps.count("/memfd:crtool-data (deleted)"), 2)
    chk("sealed mapping named", maps.count("/memfd:crtool-sealed (deleted)"), 1)
    chk("seals", fcntl.fcntl(sfd, fcntl.F_GET_SEALS), fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
    try:
        os.ftruncate(sfd, 100)
        problems.append("a sealed memfd grew")
    except PermissionError:
        pass
    chk("mapped only", only_map[:], b"only mapped now")
    chk("future-write seal", fcntl.fcntl(fw, fcntl.F_GET_SEALS), F_SEAL_FUTURE_WRITE)
    fw_map[6:11] = b"after"
    chk("writes through the older mapping", os.pread(fw, 11, 0), b"beforeafter")
    chk("name ending in (deleted)", os.readlink("/proc/self/fd/%d" % fw), "/memfd:crtool-future (deleted) (deleted)")
    chk("owner", (os.fstat(fd).st_uid, os.fstat(fd).st_gid), (os.getuid(), os.getgid()))
    chk("mapped only, named", maps.count("/memfd:crtool-mapped (deleted)"), 1)
    # Sharing: the child writes through its mapping; the parent sees it.
    os.write(go_w, b"g")
    os.read(done_r, 1)
    chk("child's write", shared[3 * MiB:3 * MiB + 11], b"from-child!")
    chk("child's write in the file", os.pread(fd, 11, 3 * MiB), b"from-child!")
except Exception as ex:  # noqa: BLE001 - every failure is a verdict
    problems.append(repr(ex))
os.kill(child, signal.SIGKILL)
os.waitpid(child, 0)
wlcommon.write_result(d, problems)
