#!/usr/bin/env python3
"""The `incmem` workload: memory that changes between incremental dumps
(pre-dump, --prev-images-dir, --track-mem), checked page by page after a
restore.

    incmem.py DIR

Holds a 64 MiB bytearray and a 1 MiB anonymous mmap, each page filled with one
byte value it keeps a record of. Writes DIR/ready, prints a counter every
0.05 s. On SIGUSR2 (round N) changes 1 MiB of the bytearray (a band of its
own per round; a dirty set is usually local, and transparent huge pages make
it 2 MiB wide) and the first 64 pages of the mmap, has the kernel write one
page (os.readv from a pipe: a write in kernel mode), and in round 2 replaces
the mmap by a new one (new VMA, other values); then writes DIR/roundN. The
record also goes to DIR/record (the round and a hash of every page), outside
the process's memory: memory and in-memory record could come back equally
stale. On SIGUSR1 checks every page against its record and the record against
DIR/record. Writes PASS or FAIL: why to DIR/result.

Rounds 3 to 5 change the memory layout rather than the values (for lazy
restore, whose daemon must follow them while pages are still owed): round 3
forks a child that checks every page of its copy and writes PASS or FAIL: why
to DIR/child_result; round 4 drops 16 pages of the bytearray's private
memory (MADV_DONTNEED: they read as zeros; the mmap is shared memory, which
keeps its data); round 5 grows the bytearray by 1 MiB (realloc: glibc moves or
grows the mapping with mremap).
"""
import hashlib
import mmap
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wlcommon  # noqa: E402

PAGE = 4096
d = sys.argv[1]
c = wlcommon.Checks()
buf = bytearray(64 << 20)
region = mmap.mmap(-1, 1 << 20)
want = {}  # (name, page) -> byte value
zeroed = []  # (offset, length) in buf: dropped by MADV_DONTNEED


def fill(name, mem, page, value):
    mem[page * PAGE:(page + 1) * PAGE] = bytes([value]) * PAGE
    want[(name, page)] = value


for i in range(len(buf) // PAGE):
    fill("buf", buf, i, i % 251)
for i in range(len(region) // PAGE):
    fill("region", region, i, (i * 3) % 251)
rounds = [0]


def digest():
    # What the memory should hold (check_pages compares it page by page), not
    # the memory itself: reading all of it would fault in every page of a lazy
    # restore at once.
    h = hashlib.sha256()
    h.update(repr((len(buf), len(region), sorted(want.items()), zeroed)).encode())
    return "%d %s" % (rounds[0], h.hexdigest())


def save_record():
    with open(os.path.join(d, "record.tmp"), "w") as fh:
        fh.write(digest())
    os.rename(os.path.join(d, "record.tmp"), os.path.join(d, "record"))


save_record()


def expected(name, page, value):
    exp = bytearray([value]) * PAGE
    for off, length in zeroed if name == "buf" else []:
        lo, hi = max(off, page * PAGE), min(off + length, (page + 1) * PAGE)
        if lo < hi:
            exp[lo - page * PAGE:hi - page * PAGE] = bytes(hi - lo)
    return exp


def check_pages():
    bad = []
    for (name, page), value in sorted(want.items()):
        mem = buf if name == "buf" else region
        if mem[page * PAGE:(page + 1) * PAGE] != expected(name, page, value):
            bad.append((name, page))
    return bad


def layout_round(n):
    global buf
    if n == 3:
        pid = os.fork()
        if pid == 0:
            bad = check_pages()
            with open(os.path.join(d, "child_result"), "w") as fh:
                fh.write("PASS\n" if not bad else "FAIL: pages differ in the child: %s (%d)\n" % (bad[:5], len(bad)))
            os._exit(0)
        os.waitpid(pid, 0)
    elif n == 4:
        import ctypes
        view = (ctypes.c_char * len(buf)).from_buffer(buf)
        addr = ctypes.addressof(view)
        start = (addr + 12000 * PAGE + PAGE - 1) // PAGE * PAGE
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        if libc.madvise(start, 16 * PAGE, 4) != 0:  # MADV_DONTNEED
            c.problems.append("madvise: errno %d" % ctypes.get_errno())
        zeroed.append((start - addr, 16 * PAGE))
        del view
    elif n == 5:
        old = len(buf) // PAGE
        buf.extend(bytes(256 * PAGE))
        for i in range(old, old + 256):
            want[("buf", i)] = 0


def change(*_):
    global region
    n = rounds[0] = rounds[0] + 1
    if n >= 3:
        layout_round(n)
        save_record()
        with open(os.path.join(d, "round%d" % n), "w") as fh:
            fh.write("done\n")
        return
    for i in range(n * 2048, n * 2048 + 256):
        fill("buf", buf, i, (i + 100 * n) % 251)
    if n == 2:
        region.close()
        region = mmap.mmap(-1, 1 << 20)
        for i in range(len(region) // PAGE):
            fill("region", region, i, (i * 5 + 1) % 251)
    else:
        for i in range(64):
            fill("region", region, i, (i + 50 * n) % 251)
    # The kernel writes page 7 + n of buf (copy_to_user into write-protected memory).
    r, w = os.pipe()
    os.write(w, bytes([200 + n]) * PAGE)
    mv = memoryview(buf)
    os.readv(r, [mv[(7 + n) * PAGE:(8 + n) * PAGE]])
    mv.release()
    os.close(r)
    os.close(w)
    want[("buf", 7 + n)] = 200 + n
    save_record()
    with open(os.path.join(d, "round%d" % n), "w") as fh:
        fh.write("done\n")


signal.signal(signal.SIGUSR2, change)
wlcommon.ready_then_count(d)


def check():
    bad = check_pages()
    c.chk("pages that differ from their record (first 5, count)", (bad[:5], len(bad)), ([], 0))
    with open(os.path.join(d, "record")) as fh:
        c.chk("round and hash of the memory against DIR/record", digest(), fh.read())


wlcommon.run_checks([check], c.problems)
wlcommon.write_result(d, c.problems)
