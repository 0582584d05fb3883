#!/usr/bin/env python3
"""The `bgsnap` workload: memory written without pause while a background
snapshot (`dump --leave-running`) copies it; checks after restore that the
memory is that of one instant.

    bgsnap.py DIR [churn]

Holds a private anonymous mmap of 64 MiB (page 0 a header, pages 1.. data),
written in a loop: step g writes g into the first 8 bytes of data page
1 + g % (N - 1), every 16th step from the kernel (os.readv from a pipe: a
write in kernel mode), then g into the header. At every instant each data
page holds the last step that wrote it, so that after a restore page i must
hold the largest g' <= header with 1 + g' % (N - 1) == i (or header + 1 for
the page of the step under way): a page copied later than the others would
hold a newer step. With `churn`, a second 1 MiB mapping (made before the big
one, so higher up: copied last) is replaced every 64 steps by pages moved over
it (mremap), its page 0 holding the number of times: memory that changes in a
way no write fault reports.

Writes DIR/ready once filled, prints a counter every 0.05 s (another thread),
and on SIGUSR1 checks the invariant (first thing: before the loop writes
again) and writes PASS or FAIL: why to DIR/result; the steps made go to
DIR/steps.
"""
import ctypes
import mmap
import os
import signal
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wlcommon  # noqa: E402

PAGE = 4096
N = 64 << 20 >> 12
d = sys.argv[1]
churn = len(sys.argv) > 2 and sys.argv[2] == "churn"
c = wlcommon.Checks()
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mremap.restype = ctypes.c_void_p
libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
SIDE = 1 << 20
MAP_FIXED = 0x10


def map_fixed(at):
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_FIXED
    a = libc.mmap(at, SIDE, mmap.PROT_READ | mmap.PROT_WRITE, flags, -1, 0)
    if a != at:
        raise OSError(ctypes.get_errno(), "mmap")
    return a


side = spare = None
if churn:
    # [none][side][none][spare][none]: PROT_NONE fences, so that neither is
    # ever merged with a neighbour.
    fence = libc.mmap(None, 5 * SIDE, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    if fence in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
    side, spare = map_fixed(fence + SIDE), map_fixed(fence + 3 * SIDE)


def replace_side(n):
    # The new page is written in `spare`, then moved over `side` in one step
    # (mremap MREMAP_FIXED | MREMAP_DONTUNMAP: `spare` stays mapped, empty):
    # at every instant side's page 0 is there and holds the count, and the
    # process's mappings look the same.
    ctypes.memmove(spare, struct.pack("<Q", n), 8)
    if libc.mremap(spare, SIDE, SIDE, 1 | 2 | 4, side) != side:
        raise OSError(ctypes.get_errno(), "mremap")


mem = mmap.mmap(-1, N * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for i in range(N):
    mem[i * PAGE:i * PAGE + 8] = struct.pack("<Q", 0)
    mem[i * PAGE + 8:i * PAGE + 16] = struct.pack("<Q", i)
remaps = [0]
if churn:
    replace_side(0)
check_now = threading.Event()
r, w = os.pipe()


def expected(i, h):
    # The largest g' <= h with 1 + g' % (N - 1) == i, 0 if none.
    k = i - 1
    if h < k or h == 0:
        return 0
    g = h - ((h - k) % (N - 1))
    return g if g >= 1 else 0


def check():
    h = struct.unpack("<Q", mem[0:8])[0]
    bad = []
    for i in range(1, N):
        v, ident = struct.unpack("<QQ", mem[i * PAGE:i * PAGE + 16])
        if ident != i:
            bad.append((i, "ident", ident))
        elif v != expected(i, h) and not (v == h + 1 and i == 1 + (h + 1) % (N - 1)):
            bad.append((i, v, expected(i, h)))
    c.chk("data pages not of the header's instant %d (first 5, count)" % h, (bad[:5], len(bad)), ([], 0))
    if churn:
        c.chk("the remapped page", struct.unpack("<Q", ctypes.string_at(side, 8))[0], remaps[0])
    with open(os.path.join(d, "steps"), "w") as fh:
        fh.write("%d\n" % h)


def counter():
    n = 0
    while not check_now.is_set():
        print(n, flush=True)
        n += 1
        time.sleep(0.05)


signal.signal(signal.SIGUSR1, lambda *_: check_now.set())
threading.Thread(target=counter, daemon=True).start()
with open(os.path.join(d, "ready"), "w") as fh:
    fh.write("ready\n")
g = 0
mv = memoryview(mem)
while not check_now.is_set():
    g += 1
    i = 1 + g % (N - 1)
    if g % 16 == 0:
        os.write(w, struct.pack("<Q", g))
        os.readv(r, [mv[i * PAGE:i * PAGE + 8]])
    else:
        mem[i * PAGE:i * PAGE + 8] = struct.pack("<Q", g)
    mem[0:8] = struct.pack("<Q", g)
    if churn and g % 64 == 0:
        replace_side(remaps[0] + 1)
        remaps[0] += 1
wlcommon.run_checks([check], c.problems)
wlcommon.write_result(d, c.problems)
