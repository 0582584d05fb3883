#!/usr/bin/env python3
"""procstate: a normalised, diffable description of the visible state of a process
tree, for comparing a tree before a dump with the same tree after the restore.

    procstate.py [--no-pos] [--ignore-pending SIG,...] [--ignore-root-ppid] [--tracked] [--lazy] ROOTPID

Walks the tree rooted at ROOTPID (/proc/PID/task/*/children), processes ordered by
pid, threads by tid, and prints for each process: ppid, pgid, sid, tty, NSpid, comm,
state (running, stopped, traced, or zombie with its wait status), exit_signal,
scheduling (nice, policy, rt_priority), thread count; credentials, capabilities,
no_new_privs, seccomp, ignored/caught/shared-pending signals, umask and a few more
fields of /proc/PID/status; /proc/PID/limits verbatim; cwd, root and exe; personality,
timerslack_ns, oom_score_adj, coredump_filter; POSIX timers (/proc/PID/timers); the
memory mappings and the fds; per thread: comm, state, TracerPid, SigBlk, SigPnd,
Cpus_allowed_list, scheduling, and credentials where they differ from the process's.
Then the SysV IPC objects of the root's IPC namespace if it has its own (else the
segments the tree attaches) and the names of its own UTS namespace.

Mappings: start-end, protection, and for file mappings (those with a
/proc/PID/map_files link) the offset, the path (from the link, not the escaped maps
text), the mode of the link (the open mode of the mapped file) and, for files that
have no path any more (shared anonymous memory, deleted files), a name standing for
the inode; anonymous ones show their maps name ([heap], [stack], [vdso], [anon:x],
or nothing). The VmFlags of smaps follow in brackets. Adjacent entries that are alike
(same protection, same path or both anonymous with the same name, contiguous file
offsets, same link mode, same VmFlags) are merged into one line: how the kernel
happens to split or merge VMAs is not visible state. Device and inode numbers are
left out.

Fds: number, link target, fdinfo flags (octal, as the kernel prints them, including
O_CLOEXEC) and pos (left out with --no-pos, for files a running workload writes to),
and "ofd N": the open file description, numbered in order of first appearance across
the tree (kcmp(KCMP_FILE)), so that fds sharing a description (dup, fork, 2>&1) show
the same number. Inode numbers in links such as pipe:[12345] or socket:[678] are
replaced by names in order of first appearance across the whole tree: pipe:[A] in two
processes is one pipe.

--ignore-pending SIG,... leaves those signals out of SigPnd and ShdPnd (a timer's
signal is pending for an instant before each delivery). --ignore-root-ppid prints the
root's ppid as "-" (when the root is expected to get another parent). --lazy
leaves out the "um" VmFlag (registered with a lazy-pages daemon's userfaultfd).
--tracked
leaves the VmFlag "uw" out: the write protection of crtool's memory tracking
(pre-dump, --track-mem), which is crtool's, not the process's.

A zombie is reported as such, with its wait status, ids, exit_signal and uid/gid
(what its parent and others can still observe: waitid's si_uid, kill of its group);
the rest of what /proc shows of a dead task (its last signal masks, limits, ...) is
left out: nothing can see it any more, and it is no state to restore.

A process or thread that vanishes while it is read is reported as such in the output
(and on stderr), never a crash. Python 3 standard library only.
"""

import ctypes
import os
import re
import stat
import sys

HEADER_RE = re.compile(rb"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) (\S+) (\d+)(?: +(.*))?$")
LINK_ID_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*):\[(\d+)\]$")

# Fields of /proc/PID/status shown per process (when present), in this order.
PROCESS_STATUS = [
    "Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
    "NoNewPrivs", "Seccomp", "Seccomp_filters", "Speculation_Store_Bypass",
    "SpeculationIndirectBranch", "SigIgn", "SigCgt", "ShdPnd", "Umask", "THP_enabled",
    "untag_mask", "x86_Thread_features", "x86_Thread_features_locked",
]
# Fields that belong to each thread's credentials: shown for a thread only where
# they differ from its process's.
THREAD_CREDS = ["Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", "Seccomp_filters"]

POLICIES = {0: "SCHED_OTHER", 1: "SCHED_FIFO", 2: "SCHED_RR", 3: "SCHED_BATCH", 5: "SCHED_IDLE", 6: "SCHED_DEADLINE"}


class Vanished(Exception):
    """The process or thread went away while being read."""


PROBLEMS = []


def read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError) as e:
        raise Vanished(path) from e


def read_text(path):
    return read_bytes(path).decode("utf-8", "surrogateescape")


def readlink(path):
    try:
        return os.readlink(path.encode())
    except (FileNotFoundError, ProcessLookupError) as e:
        raise Vanished(path) from e


def esc(b):
    """Bytes (a path, a comm) as one printable line: \\n, \\\\ and non-printables escaped."""
    if isinstance(b, str):
        b = b.encode("utf-8", "surrogateescape")
    out = []
    for c in b:
        if c == 0x5C:
            out.append("\\\\")
        elif 0x20 <= c < 0x7F:
            out.append(chr(c))
        elif c == 0x0A:
            out.append("\\n")
        else:
            out.append("\\x%02x" % c)
    return "".join(out)


def letters(n):
    """0 → A, 25 → Z, 26 → AA, ..."""
    s = ""
    n += 1
    while n:
        n, r = divmod(n - 1, 26)
        s = chr(ord("A") + r) + s
    return s


class Names:
    """Stable names for kernel object ids, per kind, in order of first appearance."""

    def __init__(self):
        self.seen = {}

    def name(self, kind, ident):
        per = self.seen.setdefault(kind, {})
        if ident not in per:
            per[ident] = letters(len(per))
        return per[ident]


# ---------------------------------------------------------------- kcmp

KCMP_FILE = 0
SYS_KCMP = 312  # x86-64
_libc = None


def kcmp_file(pid1, fd1, pid2, fd2):
    """0 if the two fds share one open file description, nonzero if not, None if
    kcmp is not available (or a process vanished)."""
    global _libc
    if _libc is False:
        return None
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.syscall.restype = ctypes.c_long
        except OSError:
            _libc = False
            return None
    r = _libc.syscall(ctypes.c_long(SYS_KCMP), ctypes.c_long(pid1), ctypes.c_long(pid2), ctypes.c_long(KCMP_FILE),
                      ctypes.c_ulong(fd1), ctypes.c_ulong(fd2))
    if r < 0:
        return None
    return r


class Descriptions:
    """Numbers open file descriptions across the tree."""

    def __init__(self):
        self.reps = []  # (pid, fd, normalised target, number)
        self.broken = False

    def number(self, pid, fd, target):
        for (p, f, t, n) in self.reps:
            if t != target:
                continue
            r = kcmp_file(p, f, pid, fd)
            if r is None:
                self.broken = True
                return "?"
            if r == 0:
                return str(n)
        n = len(self.reps) + 1
        self.reps.append((pid, fd, target, n))
        return str(n)


# ---------------------------------------------------------------- tree walk

def children(pid):
    out = set()
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except (FileNotFoundError, ProcessLookupError):
        return out
    for tid in tids:
        try:
            out.update(int(c) for c in read_text("/proc/%d/task/%s/children" % (pid, tid)).split())
        except Vanished:
            pass
    return out


def tree(root):
    seen, todo = set(), [root]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        todo.extend(children(p))
    return sorted(seen)


# ---------------------------------------------------------------- pieces

def parse_stat(text):
    """(comm, fields after the comm: state is [0], ppid [1], ...)."""
    lp, rp = text.index("("), text.rindex(")")
    return text[lp + 1:rp], text[rp + 2:].split()


def describe_state(letter, exit_code):
    if letter == "Z":
        st = int(exit_code)
        if st & 0x7F == 0:
            how = "exited %d" % ((st >> 8) & 0xFF)
        else:
            how = "killed by signal %d%s" % (st & 0x7F, ", core dumped" if st & 0x80 else "")
        return "zombie (%s)" % how
    return {"T": "stopped", "t": "traced", "X": "dead"}.get(letter, "running")


def status_fields(text):
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        out[k] = " ".join(v.split())
    return out


def sig_filter(hexmask, ignore):
    v = int(hexmask, 16)
    for s in ignore:
        v &= ~(1 << (s - 1))
    return "%016x" % v


def sched(fields):
    nice, rtprio, policy = fields[16], fields[37], int(fields[38])
    return "nice %s policy %s rt_priority %s" % (nice, POLICIES.get(policy, str(policy)), rtprio)


def mappings(pid, names):
    """Merged mapping lines."""
    text = read_bytes("/proc/%d/smaps" % pid)
    entries = []
    for line in text.split(b"\n"):
        m = HEADER_RE.match(line)
        if m:
            start, end = int(m.group(1), 16), int(m.group(2), 16)
            e = {"start": start, "end": end, "perms": m.group(3).decode(), "off": int(m.group(4), 16),
                 "dev": m.group(5).decode(), "ino": int(m.group(6)), "text": m.group(7) or b"", "flags": "", "pkey": ""}
            link = "/proc/%d/map_files/%x-%x" % (pid, start, end)
            try:
                e["path"] = os.readlink(link.encode())
                mode = os.lstat(link).st_mode
                e["fmode"] = ("r" if mode & stat.S_IRUSR else "-") + ("w" if mode & stat.S_IWUSR else "-")
            except (FileNotFoundError, ProcessLookupError):
                e["path"] = None
            entries.append(e)
        elif line.startswith(b"VmFlags:") and entries:
            entries[-1]["flags"] = " ".join(f for f in line.decode().split()[1:] if f not in IGNORED_FLAGS)
        elif line.startswith(b"ProtectionKey:") and entries:
            entries[-1]["pkey"] = line.decode().split()[1]
    if not entries:
        # smaps of a live process is never empty; make sure the process is still there.
        read_bytes("/proc/%d/stat" % pid)
    out = []
    for e in entries:
        if e["path"] is not None:
            path = e["path"]
            ident = ""
            if path.endswith(b" (deleted)") or path.startswith(b"/SYSV") or path.startswith(b"/memfd:"):
                ident = " inode:[%s]" % names.name("inode", (e["dev"], e["ino"]))
            e["what"] = "%s fmode=%s%s" % (esc(path), e["fmode"], ident)
        else:
            e["what"] = esc(e["text"]) if e["text"] else "anon"
        prev = out[-1] if out else None
        if (prev and prev["end"] == e["start"] and prev["perms"] == e["perms"] and prev["what"] == e["what"]
                and prev["flags"] == e["flags"] and prev["pkey"] == e["pkey"] and (prev["path"] is None) == (e["path"] is None)
                and (e["path"] is None or prev["off"] + (prev["end"] - prev["start"]) == e["off"])):
            prev["end"] = e["end"]
            continue
        out.append(dict(e))
    lines = []
    for e in out:
        off = " %08x" % e["off"] if e["path"] is not None else ""
        pkey = " pkey=%s" % e["pkey"] if e["pkey"] else ""
        lines.append("%x-%x %s%s %s [%s]%s" % (e["start"], e["end"], e["perms"], off, e["what"], e["flags"], pkey))
    return lines


def fds(pid, names, descs, with_pos):
    try:
        nums = sorted(int(f) for f in os.listdir("/proc/%d/fd" % pid))
    except (FileNotFoundError, ProcessLookupError) as e:
        raise Vanished("/proc/%d/fd" % pid) from e
    lines = []
    for fd in nums:
        try:
            target = esc(readlink("/proc/%d/fd/%d" % (pid, fd)))
            info = status_fields(read_text("/proc/%d/fdinfo/%d" % (pid, fd)))
        except Vanished:
            # The fd was closed in between (or the process is gone: checked by the caller).
            lines.append("%d closed while being read" % fd)
            continue
        m = LINK_ID_RE.match(target)
        if m:
            target = "%s:[%s]" % (m.group(1), names.name(m.group(1), m.group(2)))
        pos = " pos %s" % info.get("pos", "?") if with_pos else ""
        lines.append("%d %s flags %s%s ofd %s" % (fd, target, info.get("flags", "?"), pos, descs.number(pid, fd, target)))
    return lines


def timers(pid):
    try:
        text = read_text("/proc/%d/timers" % pid)
    except PermissionError as e:
        return ["<unreadable: %s>" % e.strerror]
    out, cur = [], []
    for line in text.splitlines():
        if line.startswith("ID:") and cur:
            out.append(" ".join(cur))
            cur = []
        cur.append(" ".join(line.split()))
    if cur:
        out.append(" ".join(cur))
    return sorted(out, key=lambda t: int(t.split()[1]) if t.split()[1].isdigit() else 0)


def small(pid, name):
    try:
        return read_text("/proc/%d/%s" % (pid, name)).strip()
    except PermissionError:
        return "<EACCES>"


def link(pid, name):
    try:
        return esc(readlink("/proc/%d/%s" % (pid, name)))
    except PermissionError:
        return "<EACCES>"


# ---------------------------------------------------------------- one process

def describe(pid, root, names, descs, opts, out):
    """Appends the lines of process `pid` to `out`."""
    comm, st = parse_stat(read_text("/proc/%d/stat" % pid))
    # (a group leader that exited while other threads run is Z too, but is no zombie)
    zombie = st[0] == "Z" and int(st[17]) <= 1
    status = status_fields(read_text("/proc/%d/status" % pid))
    out.append("process %d [%s]" % (pid, esc(read_text("/proc/%d/comm" % pid).rstrip("\n"))))
    out.append("  state %s" % describe_state(st[0], st[49] if len(st) > 49 else "0"))
    ppid = "-" if (pid == root and opts["ignore_root_ppid"]) else st[1]
    out.append("  ppid %s pgid %s sid %s tty_nr %s tpgid %s" % (ppid, st[2], st[3], st[4], st[5]))
    out.append("  NSpid %s" % status.get("NSpid", "?"))
    out.append("  exit_signal %s" % st[35])
    if zombie:
        out.append("  Uid %s" % status.get("Uid", "?"))
        out.append("  Gid %s" % status.get("Gid", "?"))
        read_bytes("/proc/%d/stat" % pid)
        return
    out.append("  sched %s" % sched(st))
    out.append("  threads %s" % st[17])
    for k in PROCESS_STATUS:
        if k in status:
            v = status[k]
            if k == "ShdPnd":
                v = sig_filter(v, opts["ignore_pending"])
            out.append("  %s %s" % (k, v))
    out.append("  limits:")
    for line in read_text("/proc/%d/limits" % pid).splitlines():
        out.append("    " + line.rstrip())
    for k in ("personality", "timerslack_ns", "oom_score_adj", "coredump_filter"):
        out.append("  %s %s" % (k, small(pid, k)))
    for k in ("cwd", "root", "exe"):
        out.append("  %s %s" % (k, link(pid, k)))
    out.append("  posix timers:")
    out.extend("    " + t for t in timers(pid))
    out.append("  maps:")
    out.extend("    " + m for m in mappings(pid, names))
    out.append("  fds:")
    out.extend("    " + f for f in fds(pid, names, descs, opts["pos"]))
    try:
        tids = sorted(int(t) for t in os.listdir("/proc/%d/task" % pid))
    except (FileNotFoundError, ProcessLookupError) as e:
        raise Vanished("/proc/%d/task" % pid) from e
    for tid in tids:
        base = "/proc/%d/task/%d" % (pid, tid)
        try:
            tcomm, tst = parse_stat(read_text(base + "/stat"))
            ts = status_fields(read_text(base + "/status"))
            tname = esc(read_text(base + "/comm").rstrip("\n"))
        except Vanished:
            out.append("  thread %d VANISHED while being read" % tid)
            PROBLEMS.append("thread %d of %d vanished while being read" % (tid, pid))
            continue
        out.append("  thread %d [%s]" % (tid, tname))
        out.append("    state %s TracerPid %s" % (describe_state(tst[0], tst[49] if len(tst) > 49 else "0"), ts.get("TracerPid", "?")))
        out.append("    SigBlk %s" % ts.get("SigBlk", "?"))
        out.append("    SigPnd %s" % sig_filter(ts.get("SigPnd", "0"), opts["ignore_pending"]))
        out.append("    Cpus_allowed_list %s" % ts.get("Cpus_allowed_list", "?"))
        out.append("    sched %s" % sched(tst))
        for k in THREAD_CREDS:
            if ts.get(k) != status.get(k):
                out.append("    %s %s" % (k, ts.get(k)))
    # Whatever could not be read above because the process went away in the middle
    # (a missing map_files link, say) must not pass for state.
    read_bytes("/proc/%d/stat" % pid)


# Columns of /proc/sysvipc/* compared (not the pids of the last operations, the
# times, nor rss/swap: no state to restore).
SYSVIPC_COLUMNS = {
    "shm": ["key", "shmid", "perms", "size", "nattch", "uid", "gid", "cuid", "cgid"],
    "sem": ["key", "semid", "perms", "nsems", "uid", "gid", "cuid", "cgid"],
    "msg": ["key", "msqid", "perms", "cbytes", "qnum", "uid", "gid", "cuid", "cgid"],
}


def sysvipc(root, pids):
    """The SysV objects of the root's IPC namespace when it has its own (every one),
    else the segments the tree attaches; and the names of its own UTS namespace."""
    import subprocess

    def ns(kind, pid):
        return readlink("/proc/%d/ns/%s" % (pid, kind))

    def inside(kind, path):
        r = subprocess.run(["nsenter", "--%s=/proc/%d/ns/%s" % (kind, root, kind), "cat", path],
                           capture_output=True, text=True)
        return r.stdout

    out = []
    own = ns("ipc", root) != ns("ipc", os.getpid())
    attached = set()
    for pid in pids:
        for line in (read_text("/proc/%d/maps" % pid) or "").splitlines():
            f = line.split()
            if len(f) >= 6 and f[5].startswith("/SYSV"):
                attached.add(f[4])
    for kind, cols in SYSVIPC_COLUMNS.items():
        text = inside("ipc", "/proc/sysvipc/" + kind) if own else read_text("/proc/sysvipc/" + kind) or ""
        lines = text.splitlines()
        if not lines:
            continue
        head = lines[0].split()
        rows = []
        for l in lines[1:]:
            f = dict(zip(head, l.split()))
            if own or (kind == "shm" and f.get("shmid") in attached):
                rows.append(" ".join("%s=%s" % (c, f.get(c, "?")) for c in cols))
        for r in sorted(rows, key=lambda r: int(r.split()[1].split("=")[1])):
            out.append("sysvipc %s %s" % (kind, r))
    if ns("uts", root) != ns("uts", os.getpid()):
        for n in ("hostname", "domainname"):
            out.append("uts %s %s" % (n, inside("uts", "/proc/sys/kernel/" + n).strip()))
    return out


# VmFlags left out (--tracked).
IGNORED_FLAGS = set()


def main(argv):
    opts = {"pos": True, "ignore_pending": [], "ignore_root_ppid": False}
    args = list(argv)
    root = None
    while args:
        a = args.pop(0)
        if a == "--no-pos":
            opts["pos"] = False
        elif a == "--ignore-root-ppid":
            opts["ignore_root_ppid"] = True
        elif a == "--tracked":
            IGNORED_FLAGS.add("uw")
        elif a == "--lazy":
            IGNORED_FLAGS.add("um")
        elif a == "--ignore-pending" and args:
            opts["ignore_pending"] = [int(s) for s in args.pop(0).split(",") if s]
        elif a.isdigit() and root is None:
            root = int(a)
        else:
            sys.exit("usage: procstate.py [--no-pos] [--ignore-pending SIG,...] [--ignore-root-ppid] [--tracked] [--lazy] ROOTPID")
    if root is None:
        sys.exit("usage: procstate.py [--no-pos] [--ignore-pending SIG,...] [--ignore-root-ppid] [--tracked] [--lazy] ROOTPID")
    names, descs = Names(), Descriptions()
    out = []
    if os.path.exists("/proc/%d" % root):
        pids = tree(root)
    else:
        pids = []
        out.append("process %d does not exist" % root)
        PROBLEMS.append("process %d does not exist" % root)
    for pid in pids:
        lines = []
        try:
            describe(pid, root, names, descs, opts, lines)
        except Vanished as e:
            lines.append("process %d VANISHED while reading %s" % (pid, e))
            PROBLEMS.append("process %d vanished while reading %s" % (pid, e))
        out.extend(lines)
    if descs.broken:
        out.append("(kcmp is not available: open file descriptions not compared)")
    if pids:
        try:
            out.extend(sysvipc(root, pids))
        except Vanished as e:
            out.append("SysV IPC: VANISHED while reading %s" % e)
            PROBLEMS.append("vanished while reading %s" % e)
    sys.stdout.write("\n".join(out) + "\n")
    for p in PROBLEMS:
        print("procstate: " + p, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
