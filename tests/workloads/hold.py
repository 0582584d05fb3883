#!/usr/bin/env python3
"""The `hold` workload: holds one resource, counts, and checks itself on SIGUSR1.

    hold.py DIR WHAT [ARG]

Sets up WHAT, writes DIR/ready, then prints an increasing counter to stdout, one
number a line, every 0.05 s (the tests redirect it to a file and check that the
process keeps counting, with no gap or repeat). On SIGUSR1 it checks that WHAT is
still as it set it up, writes "PASS" or "FAIL: why" to DIR/result (in a chroot:
/result inside it) and exits.

  none             nothing (for tests about the executable itself)
Resources crtool refuses to dump (each in the process, or where said in a thread):
  seccomp          no_new_privs and an allow-everything seccomp filter
  uts-thread       a second thread in a UTS namespace of its own (root)
  ipc-ns           a thread in an IPC namespace of its own (root)
  clone-files      a child made with clone(CLONE_FILES): two processes, one fd table
  flock            an flock(LOCK_EX) lock on DIR/lockfile
  posix-lock       a POSIX record lock (fcntl F_SETLK) on DIR/lockfile
  mqueue           a POSIX message queue open (mq_open; unlinked on SIGUSR1)
  thread-keyring   a thread keyring (keyctl KEYCTL_GET_KEYRING_ID with create)
  proc-outside     an fd open on /proc/1/stat (a process outside the tree)
  aio              a Linux AIO context (io_setup) with nothing in flight
  io-uring         an idle io_uring instance (io_uring_setup)
  ns-net           an fd open on /proc/self/ns/net
  cwd DIR2         its working directory DIR2 (the test removes it)
  map FILE         FILE mapped MAP_PRIVATE read-only (the test may remove or change it)
Resources crtool must dump and restore:
  open-flags       DIR/flags.dat open O_RDWR|O_DIRECT|O_NOATIME|O_APPEND, and a file
                   of /dev/shm (tmpfs) open at offset 6
  proc-child-stat  fds on /proc/CHILD/stat of a child it forked, on its /proc/CHILD
                   directory, on /proc/self/status (read up to offset 10) and on
                   /proc/meminfo: on SIGUSR1 they still name and read the same
  map FILE         (as above) on SIGUSR1 writes what the mapping shows now to DIR/seen
  open FILE        FILE open read-only
  newline          a shared mapping of DIR/"data\\nfile.bin" holding "before"; on
                   SIGUSR1 it must still hold it, then "written-after-restore" is
                   written through the mapping
  deleted-name     DIR/"x (deleted)" (a file literally so named) open and mapped shared;
                   on SIGUSR1 the fd and the mapping must still be that file
  vmas N           N VMAs in all: one anonymous mapping whose pages alternate
                   between read-write and read-only, each tagged; on SIGUSR1 the VMA
                   count, every tag and the protections must be as they were
  chroot JAIL      (root) chroot into JAIL, cwd /sub, then uid/gid 1000; on SIGUSR1
                   /data.txt (relative to the new root) must read "jailed data" and
                   the cwd must be /sub; DIR/ready and the result are JAIL/ready and
                   JAIL/result
Python 3 standard library only (ctypes for raw system calls).
"""
import ctypes
import fcntl
import mmap
import os
import signal
import struct
import sys
import threading
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
# GIL held across the call (for clone: the child starts with it as the parent held it).
pylibc = ctypes.PyDLL(None, use_errno=True)
pylibc.syscall.restype = ctypes.c_long
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

SYS_SECCOMP, SYS_KEYCTL, SYS_CLONE = 317, 250, 56
CLONE_FILES, CLONE_NEWUTS, CLONE_NEWIPC = 0x400, 0x04000000, 0x08000000
PR_SET_NO_NEW_PRIVS = 38
KEYCTL_GET_KEYRING_ID, KEY_SPEC_THREAD_KEYRING = 0, -1
PAGE = 4096

dir_, what = sys.argv[1], sys.argv[2]
arg = sys.argv[3] if len(sys.argv) > 3 else None
out_dir = dir_
check = []  # functions returning None (fine) or what is wrong


def fail(msg):
    sys.exit("hold.py: setup failed: %s (errno %d)" % (msg, ctypes.get_errno()))


def write_file(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


def ns_of(what_ns, tid=None):
    return os.readlink("/proc/self/task/%d/ns/%s" % (tid, what_ns) if tid else "/proc/self/ns/%s" % what_ns)


def status(key, tid=None):
    path = "/proc/self/task/%d/status" % tid if tid else "/proc/self/status"
    for line in open(path):
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    return None


if what == "none":
    pass
elif what == "seccomp":
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        fail("PR_SET_NO_NEW_PRIVS")
    allow = struct.pack("<HBBI", 0x06, 0, 0, 0x7FFF0000)  # BPF_RET|BPF_K SECCOMP_RET_ALLOW
    filt = ctypes.create_string_buffer(allow)
    prog = struct.pack("<HxxxxxxQ", 1, ctypes.addressof(filt))
    progbuf = ctypes.create_string_buffer(prog)
    if libc.syscall(SYS_SECCOMP, 1, 0, progbuf) != 0:  # SECCOMP_SET_MODE_FILTER
        fail("seccomp")
    check.append(lambda: None if status("Seccomp") == "2" else "Seccomp is %s" % status("Seccomp"))
elif what == "uts-thread":
    got = {}
    def uts():
        if libc.unshare(CLONE_NEWUTS) != 0:
            got["err"] = ctypes.get_errno()
        got["tid"] = threading.get_native_id()
        got["ns"] = ns_of("uts", got["tid"])
        while True:
            time.sleep(1)
    threading.Thread(target=uts, daemon=True).start()
    while "ns" not in got and "err" not in got:
        time.sleep(0.01)
    if "err" in got or got["ns"] == ns_of("uts"):
        fail("unshare(CLONE_NEWUTS) in a thread")
    write_file(os.path.join(dir_, "tid"), "%d\n" % got["tid"])
    check.append(lambda: None if ns_of("uts", got["tid"]) == got["ns"] else "the thread's uts namespace changed")
elif what == "ipc-ns":
    # A thread in an IPC namespace of its own (the root's own is supported).
    got = {}
    def ipc():
        if libc.unshare(CLONE_NEWIPC) != 0:
            got["err"] = ctypes.get_errno()
        got["tid"] = threading.get_native_id()
        got["ns"] = ns_of("ipc", got["tid"])
        while True:
            time.sleep(1)
    threading.Thread(target=ipc, daemon=True).start()
    while "ns" not in got and "err" not in got:
        time.sleep(0.01)
    if "err" in got or got["ns"] == ns_of("ipc"):
        fail("unshare(CLONE_NEWIPC) in a thread")
    check.append(lambda: None if ns_of("ipc", got["tid"]) == got["ns"] else "the thread's ipc namespace changed")
elif what == "clone-files":
    pid = pylibc.syscall(SYS_CLONE, CLONE_FILES | signal.SIGCHLD, 0, 0, 0, 0)
    if pid < 0:
        fail("clone(CLONE_FILES)")
    if pid == 0:
        while True:
            time.sleep(1)
    write_file(os.path.join(dir_, "child"), "%d\n" % pid)
    check.append(lambda: None if os.waitpid(pid, os.WNOHANG) == (0, 0) else "the CLONE_FILES child is gone")
elif what in ("flock", "posix-lock"):
    fd = os.open(os.path.join(dir_, "lockfile"), os.O_RDWR | os.O_CREAT, 0o644)
    if what == "flock":
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    write_file(os.path.join(dir_, "fd"), "%d\n" % fd)
    def locked():
        kind = "FLOCK" if what == "flock" else "POSIX"
        mine = [l for l in open("/proc/locks") if l.split()[1] == kind and l.split()[4] == str(os.getpid())]
        return None if mine else "the %s lock is gone" % kind
    check.append(locked)
elif what == "mqueue":
    libc.mq_open.restype = ctypes.c_int
    name = ("/crtool-hold-%s" % os.path.basename(os.path.abspath(dir_))).encode()
    mq = libc.mq_open(name, os.O_RDWR | os.O_CREAT, 0o600, None)
    if mq < 0:
        fail("mq_open")
    write_file(os.path.join(dir_, "fd"), "%d\n" % mq)
    def mq_check():
        ok = os.readlink("/proc/self/fd/%d" % mq) == name.decode()
        libc.mq_unlink(name)  # (the queue has a name while it is dumped; none is left behind)
        return None if ok else "the queue fd changed: %s" % os.readlink("/proc/self/fd/%d" % mq)
    check.append(mq_check)
elif what == "thread-keyring":
    kid = libc.syscall(SYS_KEYCTL, KEYCTL_GET_KEYRING_ID, KEY_SPEC_THREAD_KEYRING, 1)
    if kid <= 0:
        fail("keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_THREAD_KEYRING, create)")
    write_file(os.path.join(dir_, "keyring"), "%d\n" % kid)
    check.append(lambda: None if libc.syscall(SYS_KEYCTL, KEYCTL_GET_KEYRING_ID, KEY_SPEC_THREAD_KEYRING, 0) == kid else "the thread keyring changed")
elif what == "proc-child-stat":
    pid = os.fork()
    if pid == 0:
        while True:
            time.sleep(1)
    fd = os.open("/proc/%d/stat" % pid, os.O_RDONLY)
    dfd = os.open("/proc/%d" % pid, os.O_RDONLY | os.O_DIRECTORY)
    sfd = os.open("/proc/self/status", os.O_RDONLY)
    os.read(sfd, 10)
    mfd = os.open("/proc/meminfo", os.O_RDONLY)
    write_file(os.path.join(dir_, "fd"), "%d\n" % fd)
    links = {f: os.readlink("/proc/self/fd/%d" % f) for f in (fd, dfd, sfd, mfd)}
    def proc_check():
        if not os.pread(fd, 64, 0).startswith(b"%d " % pid):
            return "the fd no longer reads the child's stat"
        now = {f: os.readlink("/proc/self/fd/%d" % f) for f in links}
        if now != links:
            return "the /proc fds changed: %r, were %r" % (now, links)
        if "stat" not in os.listdir(dfd):
            return "the /proc/CHILD directory fd lists no stat"
        if os.lseek(sfd, 0, os.SEEK_CUR) != 10 or os.read(sfd, 4) != open("/proc/self/status", "rb").read()[10:14]:
            return "/proc/self/status is not at offset 10"
        if not os.read(mfd, 9).startswith(b"MemTotal:"):
            return "/proc/meminfo reads something else"
        return None
    check.append(proc_check)
elif what == "open-flags":
    path = os.path.join(dir_, "flags.dat")
    with open(path, "wb") as fh:
        fh.write(b"\0" * 8192)
    want = os.O_DIRECT | os.O_NOATIME | os.O_APPEND
    ffd = os.open(path, os.O_RDWR | want)
    shm = "/dev/shm/crtool-hold-%d" % os.getpid()
    with open(shm, "wb") as fh:
        fh.write(b"tmpfs data")
    sfd = os.open(shm, os.O_RDONLY)
    os.lseek(sfd, 6, os.SEEK_SET)
    def flags_check():
        got = fcntl.fcntl(ffd, fcntl.F_GETFL) & want
        os.unlink(shm)
        if got != want:
            return "O_DIRECT|O_NOATIME|O_APPEND: got %o, want %o" % (got, want)
        if os.read(sfd, 4) != b"data":
            return "the /dev/shm file is not at offset 6"
        return None
    check.append(flags_check)
elif what == "aio":
    ctx = ctypes.c_ulong(0)
    if libc.syscall(206, 8, ctypes.byref(ctx)) != 0:  # io_setup
        fail("io_setup")
elif what == "io-uring":
    params = (ctypes.c_char * 120)()
    ring = libc.syscall(425, 4, params)  # io_uring_setup
    if ring < 0:
        fail("io_uring_setup")
    write_file(os.path.join(dir_, "fd"), "%d\n" % ring)
elif what == "proc-outside":
    fd = os.open("/proc/1/stat", os.O_RDONLY)
    write_file(os.path.join(dir_, "fd"), "%d\n" % fd)
elif what == "ns-net":
    fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    write_file(os.path.join(dir_, "fd"), "%d\n" % fd)
    check.append(lambda: None if os.readlink("/proc/self/fd/%d" % fd) == ns_of("net") else "the fd no longer names our net namespace")
elif what == "cwd":
    os.chdir(arg)
elif what in ("map", "open"):
    f = open(arg, "rb")
    if what == "map":
        m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
        f.close()
        first = m[:64]
        def seen():
            write_file(os.path.join(dir_, "seen"), m[:64].rstrip(b"\0").decode("utf-8", "replace"))
        check.append(seen)
    else:
        fd = f.fileno()
        st = os.fstat(fd)
        check.append(lambda: None if os.path.samestat(os.fstat(fd), os.stat(arg)) else "the fd is not %s any more" % arg)
elif what == "newline":
    path = os.path.join(dir_, "data\nfile.bin")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.ftruncate(fd, PAGE)
    m = mmap.mmap(fd, PAGE, flags=mmap.MAP_SHARED)
    os.close(fd)
    m[:6] = b"before"
    def newline_check():
        if m[:6] != b"before":
            return "the mapping of %r holds %r" % (path, m[:16])
        m[:21] = b"written-after-restore"
        m.flush()
        return None
    check.append(newline_check)
elif what == "deleted-name":
    path = os.path.join(dir_, "x (deleted)")
    with open(path, "wb") as f:
        f.write(b"literally named".ljust(PAGE, b"\0"))
    fd = os.open(path, os.O_RDWR)
    m = mmap.mmap(fd, PAGE, flags=mmap.MAP_SHARED)
    st = os.fstat(fd)
    def deleted_check():
        if not os.path.samestat(os.fstat(fd), os.stat(path)):
            return "fd %d is not %r any more (link: %r)" % (fd, path, os.readlink("/proc/self/fd/%d" % fd))
        if m[:15] != b"literally named":
            return "the mapping holds %r" % m[:16]
        m[15:20] = b" and!"
        m.flush()
        with open(path, "rb") as g:
            if g.read(20) != b"literally named and!":
                return "a write through the mapping does not reach %r" % path
        return None
    check.append(deleted_check)
elif what == "vmas":
    target = int(arg)
    base = sum(1 for _ in open("/proc/self/maps"))
    pages = target - base
    addr = libc.mmap(None, pages * PAGE, 3, 0x22, -1, 0)  # PROT_READ|WRITE, MAP_PRIVATE|ANONYMOUS
    if addr in (None, ctypes.c_void_p(-1).value):
        fail("mmap")
    tags = (ctypes.c_long * 1)
    for i in range(pages):
        tags.from_address(addr + i * PAGE)[0] = i * 31 + 7
    for i in range(1, pages, 2):
        if libc.mprotect(addr + i * PAGE, PAGE, 1) != 0:
            fail("mprotect")
    nvmas = sum(1 for _ in open("/proc/self/maps"))
    if nvmas < target - 2:
        fail("only %d VMAs" % nvmas)
    write_file(os.path.join(dir_, "vmas"), "%d\n" % nvmas)
    def vmas_check():
        n = sum(1 for _ in open("/proc/self/maps"))
        if n != nvmas:
            return "%d VMAs, %d before" % (n, nvmas)
        bad = [i for i in range(pages) if tags.from_address(addr + i * PAGE)[0] != i * 31 + 7]
        if bad:
            return "%d pages lost their tags (first: page %d)" % (len(bad), bad[0])
        for i in range(0, pages, 2):
            tags.from_address(addr + i * PAGE + 8)[0] = 1  # read-write pages still are
        for line in open("/proc/self/maps"):
            s, e = (int(x, 16) for x in line.split()[0].split("-"))
            if addr <= s < addr + pages * PAGE:
                want = "rw-p" if ((s - addr) // PAGE) % 2 == 0 else "r--p"
                if line.split()[1] != want or e - s != PAGE:
                    return "mapping %s, expected one page %s" % (line.split()[0] + " " + line.split()[1], want)
        return None
    check.append(vmas_check)
elif what == "chroot":
    jail = arg
    os.chroot(jail)
    os.chdir("/sub")
    os.setgroups([1000, 1001, 1002])
    os.setresgid(1000, 1000, 1000)
    os.setresuid(1000, 1000, 1000)
    out_dir = "/"
    def jailed():
        try:
            data = open("/data.txt").read().strip()
        except OSError as e:
            return "open(/data.txt) in the chroot: %s" % e
        if data != "jailed data":
            return "/data.txt reads %r" % data
        if os.getcwd() != "/sub":
            return "cwd is %r" % os.getcwd()
        return None
    check.append(jailed)
else:
    sys.exit("hold.py: unknown WHAT %r" % what)

got_usr1 = []
signal.signal(signal.SIGUSR1, lambda *_: got_usr1.append(1))
write_file(os.path.join(out_dir, "ready"), "ready\n")
i = 0
while not got_usr1:
    print(i, flush=True)
    i += 1
    time.sleep(0.05)
problems = [p for p in (c() for c in check) if p]
write_file(os.path.join(out_dir, "result"), "FAIL: %s\n" % "; ".join(problems) if problems else "PASS\n")
