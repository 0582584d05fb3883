#!/usr/bin/env python3
"""The `lazyfork` workload: memory a lazy restore still owes when the process
forks.

    lazyfork.py DIR

Holds 8 MiB of private anonymous memory, each page stamped with its number, and
4 MiB more marked MADV_WIPEONFORK (a child gets it empty), also stamped. Writes
DIR/ready, prints a counter every 0.05 s.

On SIGUSR2 forks a child that checks every page of its copy (stamped pages
intact, the wipe-on-fork ones all zeros) and writes PASS or FAIL: why to
DIR/child_result, then exits; the parent waits for it.

On SIGHUP forks a child that waits for DIR/go, then checks its copy the same
way and writes DIR/orphan_result; the parent writes the child's pid to
DIR/orphan and exits at once (the child is reparented).

On SIGUSR1 the parent checks its own pages and writes DIR/result.
"""
import mmap
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wlcommon  # noqa: E402

PAGE = 4096
d = sys.argv[1]
data = mmap.mmap(-1, 8 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
wiped = mmap.mmap(-1, 4 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for m in (data, wiped):
    for i in range(len(m) // PAGE):
        m[i * PAGE:i * PAGE + 8] = (i + 1).to_bytes(8, "little")
wiped.madvise(mmap.MADV_WIPEONFORK if hasattr(mmap, "MADV_WIPEONFORK") else 18)


def check(child):
    bad = [i for i in range(len(data) // PAGE) if data[i * PAGE:i * PAGE + 8] != (i + 1).to_bytes(8, "little")]
    if child:
        wbad = [i for i in range(len(wiped) // PAGE) if wiped[i * PAGE:(i + 1) * PAGE] != bytes(PAGE)]
    else:
        wbad = [i for i in range(len(wiped) // PAGE) if wiped[i * PAGE:i * PAGE + 8] != (i + 1).to_bytes(8, "little")]
    if not bad and not wbad:
        return "PASS"
    return "FAIL: %d stamped pages differ (first %s), %d wipe-on-fork pages wrong (first %s)" % (len(bad), bad[:3], len(wbad), wbad[:3])


def write(name, text):
    with open(os.path.join(d, name + ".tmp"), "w") as fh:
        fh.write(text + "\n")
    os.rename(os.path.join(d, name + ".tmp"), os.path.join(d, name))


def fork_and_check(*_):
    pid = os.fork()
    if pid == 0:
        write("child_result", check(True))
        os._exit(0)
    os.waitpid(pid, 0)


def orphan(*_):
    pid = os.fork()
    if pid == 0:
        while not os.path.exists(os.path.join(d, "go")):
            time.sleep(0.02)
        write("orphan_result", check(True))
        os._exit(0)
    write("orphan", str(pid))
    os._exit(0)


signal.signal(signal.SIGUSR2, fork_and_check)
signal.signal(signal.SIGHUP, orphan)
problems = []


def own_pages():
    r = check(False)
    if r != "PASS":
        problems.append(r)


wlcommon.ready_then_count(d)
wlcommon.run_checks([own_pages], problems)
wlcommon.write_result(d, problems)
