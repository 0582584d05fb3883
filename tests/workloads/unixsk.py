#!/usr/bin/env python3
"""The `unixsk` workload: unix sockets with data in flight, checked after a restore.

    unixsk.py DIR WHAT

Sets up WHAT, writes DIR/ready, then prints an increasing counter to stdout, one
number a line, every 0.05 s. On SIGUSR1 it checks that every socket is as it set it
up (queued bytes, message boundaries, senders, passed files and credentials,
pending connections, shutdown states, options) and that new traffic flows, writes
"PASS" or "FAIL: why" to DIR/result and exits.

  pairs     one process: stream/dgram/seqpacket socketpairs with data both ways, a
            listener bound to DIR/lsock with an accepted connection (data both ways)
            and one waiting to be accepted, a bound datagram server with messages
            from a bound, an autobound and an unbound sender, a socket bound to a
            path that was then unlinked, a shut-down pair, a socket whose peer was
            closed with data left, options (SO_SNDBUF, SO_RCVBUF, SO_RCVTIMEO,
            SO_PASSCRED, SO_PEEK_OFF inside a partly peeked queue, O_NONBLOCK)
  tree      a parent and a child sharing sockets; queued for the child: a pipe's read
            end (bytes in the pipe), a file open at offset 5, and one end of a
            socketpair whose other end has a message queued (SCM_RIGHTS), messages
            with the credentials (SCM_CREDENTIALS) of the parent, of the child
            itself and of a process that has exited since
  external  a stream socket (with a message queued) whose peer is held by a
            process outside the tree (its pid in DIR/peer), which also serves a
            bound datagram socket that the process is connected to and that sent it
            a message; on SIGUSR1 the queued messages are read and a datagram goes
            out and its echo comes back
  ext-dgram the same without the stream socket (what --ext-unix-sk restores)
  ext-stream  a stream socket (inode in DIR/ino) whose peer a process outside the
            tree holds (DIR/peer); on SIGUSR1 it sends "to-new-peer" and must
            receive "from-new-peer" (from whoever the test connected it to)
  mp-manager  Python's multiprocessing Manager (a server process with a listener
            and threads) with a dict and a queue in use; on SIGUSR1 they must hold
            what they held, take new items and a new proxy (a new connection)
  refuse-relative       a listener bound to a name relative to a cwd it left since
  refuse-closed-client  a connection in an accept queue whose client sent data and
                        closed (on SIGUSR1 it is accepted and its data read)
  (UNIXSK_IDLE=1 in the environment: no counter, the process sleeps until SIGUSR1.)
  many N    N socketpairs (2N sockets), each with a message queued both ways
Python 3 standard library only.
"""
import array
import os
import signal
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wlcommon  # noqa: E402

d, what = sys.argv[1], sys.argv[2]
problems = []
S, D, Q = socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_SEQPACKET
U = socket.AF_UNIX
SO_PEEK_OFF = getattr(socket, "SO_PEEK_OFF", 42)


def chk(name, got, want):
    if got != want:
        problems.append("%s: got %r, want %r" % (name, got, want))


def recv_all(sk, n=65536):
    """recvmsg with room for files and credentials: (data, fds, creds)."""
    data, anc, flags, addr = sk.recvmsg(n, socket.CMSG_SPACE(16 * 4) + socket.CMSG_SPACE(12))
    fds, creds = [], None
    for level, ty, payload in anc:
        if level == socket.SOL_SOCKET and ty == socket.SCM_RIGHTS:
            a = array.array("i")
            a.frombytes(payload[: len(payload) - len(payload) % 4])
            fds.extend(a)
        elif level == socket.SOL_SOCKET and ty == socket.SCM_CREDENTIALS:
            creds = struct.unpack("iII", payload[:12])
    return data, fds, creds


checks = []  # functions run on SIGUSR1
# Abstract names are shared by the whole network namespace (tests run side by side
# in PID namespaces of their own, where PIDs repeat): named after DIR.
tag = "crtool-unixsk-%s-%d" % (os.path.basename(os.path.abspath(d)), os.getpid())

if what == "pairs":
    a, b = socket.socketpair(U, S)
    a.send(b"to-b-1")
    a.send(b"to-b-2")
    b.send(b"to-a")
    c, e = socket.socketpair(U, D)
    for m in (b"d1", b"", b"d3"):
        c.send(m)
    f, g = socket.socketpair(U, Q)
    f.send(b"rec1")
    f.send(b"rec22")
    g.send(b"back")
    path = os.path.join(d, "lsock")
    lst = socket.socket(U, S)
    lst.bind(path)
    lst.listen(7)
    cl = socket.socket(U, S)
    cl.connect(path)
    sv, _ = lst.accept()
    cl.send(b"client-data")
    sv.send(b"server-data")
    # An accepted connection whose client sent data and closed.
    gone_client = socket.socket(U, S)
    gone_client.connect(path)
    sv_orphan, _ = lst.accept()
    gone_client.send(b"bye")
    gone_client.close()
    pend = socket.socket(U, S)
    pend.connect(path)
    srv_name = b"\0" + tag.encode() + b"-srv"
    srv = socket.socket(U, D)
    srv.bind(srv_name)
    cli = socket.socket(U, D)
    cli.bind(b"\0" + tag.encode() + b"-cli")
    cli.sendto(b"from-cli", srv_name)
    auto = socket.socket(U, D)
    auto.bind(b"")  # autobind: an abstract name the kernel picks
    auto_name = auto.getsockname()
    auto.sendto(b"from-auto", srv_name)
    anon = socket.socket(U, D)
    anon.sendto(b"from-anon", srv_name)
    cli.sendto(b"from-cli-2", srv_name)
    # Empty seqpacket records, first and between others; and after the peer shut
    # down (empty records followed by data).
    sq1, sq2 = socket.socketpair(U, Q)
    for m in (b"", b"a", b"", b"bb"):
        sq1.send(m)
    sq3, sq4 = socket.socketpair(U, Q)
    for m in (b"", b"x", b"", b"yy"):
        sq3.send(m)
    sq3.shutdown(socket.SHUT_WR)
    # Two named datagram sockets connected to each other with connect(2), a message
    # from a third one queued before, one each way after.
    dca = socket.socket(U, D)
    dca.bind(b"\0" + tag.encode() + b"-dca")
    dcb = socket.socket(U, D)
    dcb.bind(b"\0" + tag.encode() + b"-dcb")
    third = socket.socket(U, D)
    third.bind(b"\0" + tag.encode() + b"-third")
    third.sendto(b"before-connect", b"\0" + tag.encode() + b"-dca")
    dca.connect(b"\0" + tag.encode() + b"-dcb")
    dcb.connect(b"\0" + tag.encode() + b"-dca")
    dca.send(b"a-to-b")
    dcb.send(b"b-to-a")
    dc_cred = dca.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    # A datagram socket connected to itself, with a message to itself queued.
    me_sk = socket.socket(U, D)
    me_sk.bind(b"\0" + tag.encode() + b"-self")
    me_sk.connect(b"\0" + tag.encode() + b"-self")
    me_sk.send(b"to-myself")
    rel = socket.socket(U, S)  # bound to a name relative to the cwd (DIR)
    os.chdir(d)
    rel.bind("relsock")
    rel.listen(1)
    gone = socket.socket(U, D)
    gone.bind(os.path.join(d, "gone-sock"))
    os.unlink(os.path.join(d, "gone-sock"))
    h, i = socket.socketpair()
    h.send(b"before-shut")
    h.shutdown(socket.SHUT_WR)
    j, k = socket.socketpair()
    k.send(b"orphan-data")
    k.close()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    e.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 40000)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 3, 250000))
    sv.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    b.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
    chk("peek", b.recv(3, socket.MSG_PEEK), b"to-")  # the peek offset is now 3
    c.setblocking(False)
    rcvtimeo = b.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16)  # in jiffies: rounded
    # SO_PEERCRED: who made each pair, listened, or connected (pid, uid, gid).
    peer_socks = {"a": a, "b": b, "dgram pair": e, "seqpacket": g, "listener": lst, "client": cl, "accepted": sv, "waiting": pend, "shut": i, "orphan": j}
    peercreds = {k: struct.unpack("iII", v.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)) for k, v in peer_socks.items()}
    SO_PEERGROUPS = 59
    peergroups = {k: v.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 256) for k, v in peer_socks.items()}
    sndbuf, rcvbuf = a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF), e.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    def check_pairs():
        for k, v in peer_socks.items():
            chk("SO_PEERCRED of " + k, struct.unpack("iII", v.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)), peercreds[k])
            chk("SO_PEERGROUPS of " + k, v.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 256), peergroups[k])
        chk("sndbuf", a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF), sndbuf)
        chk("rcvbuf", e.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), rcvbuf)
        chk("rcvtimeo", b.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16), rcvtimeo)
        chk("passcred", sv.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED), 1)
        chk("nonblock", c.getblocking(), False)
        chk("peek_off", b.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF), 3)
        chk("peek-after", b.recv(3, socket.MSG_PEEK), b"b-1")
        b.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, -1)
        chk("b", b.recv(100), b"to-b-1to-b-2")
        chk("a", a.recv(100), b"to-a")
        for n, m in enumerate((b"d1", b"", b"d3")):
            chk("dgram pair %d" % n, e.recv(100), m)
        chk("seqpacket 1", g.recv(100), b"rec1")
        chk("seqpacket 2", g.recv(100), b"rec22")
        chk("seqpacket back", f.recv(100), b"back")
        chk("accepted", sv.recv(100), b"client-data")
        chk("client", cl.recv(100), b"server-data")
        chk("accepted name", sv.getsockname(), path)
        chk("accepted, client gone", (sv_orphan.recv(10), sv_orphan.recv(10), sv_orphan.getsockname()), (b"bye", b"", path))
        chk("client peer name", cl.getpeername(), path)
        chk("listener name", lst.getsockname(), path)
        p2, _ = lst.accept()
        p2.send(b"x")
        chk("pending", pend.recv(10), b"x")
        chk("srv 1", srv.recvfrom(100), (b"from-cli", b"\0" + tag.encode() + b"-cli"))
        chk("srv 2", srv.recvfrom(100), (b"from-auto", auto_name))
        chk("srv 3", srv.recvfrom(100)[0], b"from-anon")
        chk("srv 4", srv.recvfrom(100), (b"from-cli-2", b"\0" + tag.encode() + b"-cli"))
        chk("seqpacket records", [sq2.recv(10) for _ in range(4)], [b"", b"a", b"", b"bb"])
        chk("seqpacket records after shutdown", [sq4.recv(10) for _ in range(4)], [b"", b"x", b"", b"yy"])
        chk("connect()ed pair: SO_PEERCRED", dca.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12), dc_cred)
        chk("connect()ed pair: from the third", dca.recvfrom(20), (b"before-connect", b"\0" + tag.encode() + b"-third"))
        chk("connect()ed pair: b to a", dca.recvfrom(20), (b"b-to-a", b"\0" + tag.encode() + b"-dcb"))
        chk("connect()ed pair: a to b", dcb.recvfrom(20), (b"a-to-b", b"\0" + tag.encode() + b"-dca"))
        dca.send(b"again")
        chk("connect()ed pair: new traffic", dcb.recv(20), b"again")
        chk("connected to itself", me_sk.recv(20), b"to-myself")
        me_sk.send(b"again")
        chk("connected to itself, again", me_sk.recv(20), b"again")
        chk("relative name", rel.getsockname(), "relsock")
        c3 = socket.socket(U, S)
        c3.connect(os.path.join(d, "relsock"))
        s3, _ = rel.accept()
        s3.send(b"rel")
        chk("relative listener", c3.recv(5), b"rel")
        chk("gone name", gone.getsockname(), os.path.join(d, "gone-sock"))
        chk("gone file", os.path.exists(os.path.join(d, "gone-sock")), False)
        chk("shut", i.recv(100), b"before-shut")
        chk("shut eof", i.recv(100), b"")
        try:
            h.send(b"x")
            problems.append("send after SHUT_WR worked")
        except BrokenPipeError:
            pass
        chk("orphan", j.recv(100), b"orphan-data")
        chk("orphan eof", j.recv(100), b"")
        # New traffic on the old sockets and a new connection to the listener.
        a.send(b"new")
        chk("new", b.recv(10), b"new")
        cli.sendto(b"again", srv_name)
        chk("srv again", srv.recv(10), b"again")
        c2 = socket.socket(U, S)
        c2.connect(path)
        s2, _ = lst.accept()
        s2.send(b"y")
        chk("new connection", c2.recv(5), b"y")

    checks.append(check_pairs)

elif what == "tree":
    up_p, up_c = socket.socketpair(U, S)  # parent <-> child
    dg_p, dg_c = socket.socketpair(U, D)
    r, w = os.pipe()
    os.write(w, b"pipe-bytes")
    fpath = os.path.join(d, "passed.txt")
    with open(fpath, "wb") as fh:
        fh.write(b"0123456789")
    fobj = open(fpath, "rb")
    fobj.seek(5)
    inner_a, inner_b = socket.socketpair(U, S)
    inner_a.send(b"inner-data")
    dg_c.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    up_c.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    go_r, go_w = os.pipe()
    turn_r, turn_w = os.pipe()
    ack_r, ack_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(go_w)
        # Its turn: a message of its own into its own queue (sent through the
        # parent's end, which it holds too), one for the parent.
        os.read(turn_r, 1)
        dg_p.send(b"from-child")
        dg_c.send(b"to-parent")
        os.write(ack_w, b"k")
        gc = int(os.read(turn_r, 16))
        # Then it waits for the parent's word and checks its queues.
        os.read(go_r, 1)
        data, fds, creds = recv_all(dg_c)
        chk("fds msg", data, b"files")
        if len(fds) == 3:
            chk("passed pipe", os.read(fds[0], 100), b"pipe-bytes")
            chk("passed file offset", os.lseek(fds[1], 0, os.SEEK_CUR), 5)
            chk("passed file", os.read(fds[1], 100), b"56789")
            sk = socket.socket(fileno=fds[2])
            chk("passed socket's queue", sk.recv(100), b"inner-data")
            sk.send(b"reply")
            chk("passed socket's peer", inner_a.recv(100), b"reply")
        else:
            problems.append("got %d files, want 3" % len(fds))
        data, fds, creds = recv_all(dg_c)
        chk("creds msg", data, b"from-parent")
        chk("parent's credentials", creds, (os.getppid(), os.getuid(), os.getgid()))
        data, fds, creds = recv_all(dg_c)
        chk("own creds msg", data, b"from-child")
        chk("own credentials", creds, (os.getpid(), os.getuid(), os.getgid()))
        data, fds, creds = recv_all(dg_c)
        chk("exited msg", data, b"from-exited")
        chk("exited credentials", creds, (gc, os.getuid(), os.getgid()))
        chk("SO_PEERCRED of the child's end", struct.unpack("iII", up_c.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)), (os.getppid(), os.getuid(), os.getgid()))
        data, fds, creds = recv_all(up_c)
        chk("stream from parent", data, b"stream-1")
        chk("stream creds", creds, (os.getppid(), os.getuid(), os.getgid()))
        up_c.send(b"child-alive")
        with open(os.path.join(d, "child_result"), "w") as fh:
            fh.write("PASS" if not problems else "FAIL: " + "; ".join(problems))
        os._exit(0)
    os.close(go_r)
    dg_p.sendmsg([b"files"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r, fobj.fileno(), inner_b.fileno()]))])
    os.close(r)
    fobj.close()
    inner_b.close()
    dg_p.send(b"from-parent")
    os.write(turn_w, b"t")
    os.read(ack_r, 1)
    gc = os.fork()
    if gc == 0:
        dg_p.send(b"from-exited")
        os._exit(0)
    os.waitpid(gc, 0)
    os.write(turn_w, str(gc).encode().ljust(16))
    up_p.send(b"stream-1")

    def check_tree():
        data = dg_p.recv(100)
        chk("parent's dgram", data, b"to-parent")
        os.write(go_w, b"g")
        chk("child reply", up_p.recv(100), b"child-alive")
        _, status = os.waitpid(child, 0)
        chk("child exit", status, 0)
        try:
            res = open(os.path.join(d, "child_result")).read()
        except OSError as ex:
            res = "no result: %s" % ex
        if res != "PASS":
            problems.append("child: " + res)

    checks.append(check_tree)

elif what == "ext-stream":
    # A stream socket whose peer a process outside the tree holds (DIR/peer); the
    # test hands a new connection over at restore (--inherit-fd) and talks on it.
    x, y = socket.socketpair(U, S)
    rd, wr = os.pipe()
    if os.fork() == 0:
        if os.fork() == 0:
            os.close(rd)
            x.close()
            os.setsid()
            os.write(wr, str(os.getpid()).encode())
            os.close(wr)
            signal.pause()
            os._exit(0)
        os._exit(0)
    os.wait()
    os.close(wr)
    with open(os.path.join(d, "peer"), "w") as fh:
        fh.write(os.read(rd, 16).decode())
    os.close(rd)
    y.close()
    with open(os.path.join(d, "ino"), "w") as fh:
        fh.write(str(os.fstat(x.fileno()).st_ino))

    def check_ext_stream():
        x.send(b"to-new-peer")
        chk("from the new peer", x.recv(100), b"from-new-peer")

    checks.append(check_ext_stream)

elif what in ("external", "ext-dgram"):
    # A peer outside the tree: a grandchild whose parent exits (it is re-parented
    # to the scenario's init). Its pid goes to DIR/peer.
    x, y = socket.socketpair(U, S)
    srv_name = b"\0" + tag.encode() + b"-outside"
    own_name = b"\0" + tag.encode() + b"-inside"
    gone_name = b"\0" + tag.encode() + b"-gone"
    mine = socket.socket(U, D)
    mine.bind(own_name)
    rd, wr = os.pipe()
    if os.fork() == 0:
        if os.fork() == 0:
            os.close(rd)
            x.close()
            mine.close()
            os.setsid()
            srv = socket.socket(U, D)
            srv.bind(srv_name)
            y.send(b"from-outside")
            # From a socket that is gone by the dump: its name comes back with it.
            tmp = socket.socket(U, D)
            tmp.bind(gone_name)
            tmp.sendto(b"queued-from-gone", own_name)
            tmp.close()
            os.write(wr, str(os.getpid()).encode())
            os.close(wr)
            # Echoes datagrams back to the process's bound socket, forever.
            while True:
                m = srv.recv(100)
                srv.sendto(b"echo:" + m, own_name)
        os._exit(0)
    os.wait()
    os.close(wr)
    peer = int(os.read(rd, 16))
    os.close(rd)
    y.close()
    with open(os.path.join(d, "peer"), "w") as fh:
        fh.write(str(peer))
    to_outside = socket.socket(U, D)
    to_outside.connect(srv_name)
    if what == "ext-dgram":
        x.close()  # only the datagram sockets: --ext-unix-sk restores them

    def check_external():
        if what == "external":
            chk("queued from outside", x.recv(100), b"from-outside")
        chk("queued datagram from a gone sender", mine.recvfrom(100), (b"queued-from-gone", gone_name))
        to_outside.send(b"ping")
        chk("outside peer's echo", mine.recv(100), b"echo:ping")
        chk("still connected to", to_outside.getpeername(), srv_name)

    checks.append(check_external)

elif what == "mp-manager":
    # Python's multiprocessing manager: a server process (threads, a listener in
    # /tmp/pymp-*) and this client's connections to it, mid-use.
    import multiprocessing

    multiprocessing.set_start_method("fork")
    mgr = multiprocessing.Manager()
    shared = mgr.dict()
    queue = mgr.Queue()
    for i in range(5):
        shared[i] = i * i
        queue.put("item%d" % i)

    def check_manager():
        chk("dict", dict(shared), {i: i * i for i in range(5)})
        chk("queue", [queue.get(timeout=5) for _ in range(5)], ["item%d" % i for i in range(5)])
        shared["after"] = "restore"
        chk("write after", shared["after"], "restore")
        second = mgr.list([1, 2])  # a new connection to the server
        chk("new proxy", list(second), [1, 2])
        mgr.shutdown()

    checks.append(check_manager)

elif what == "refuse-relative":
    # Bound to a relative name, then the cwd changed: refused.
    os.makedirs(os.path.join(d, "sub"), exist_ok=True)
    os.chdir(os.path.join(d, "sub"))
    rs = socket.socket(U, S)
    rs.bind("rel.sock")
    rs.listen(1)
    os.chdir(d)

    def check_relative():
        chk("still bound", rs.getsockname(), "rel.sock")

    checks.append(check_relative)

elif what == "refuse-closed-client":
    # A connection waiting in an accept queue whose client closed: refused.
    ln = socket.socket(U, S)
    ln.bind(b"\0" + tag.encode() + b"-kq")
    ln.listen(3)
    kc = socket.socket(U, S)
    kc.connect(b"\0" + tag.encode() + b"-kq")
    kc.send(b"last words")
    kc.close()

    def check_closed_client():
        c, _ = ln.accept()
        chk("last words", c.recv(20), b"last words")

    checks.append(check_closed_client)

elif what == "many":
    n = int(sys.argv[3])
    pairs = [socket.socketpair(U, S if i % 2 else D) for i in range(n)]
    for i, (p, q) in enumerate(pairs):
        p.send(b"p%d" % i)
        q.send(b"q%d" % i)

    def check_many():
        for i, (p, q) in enumerate(pairs):
            chk("pair %d q" % i, q.recv(20), b"p%d" % i)
            chk("pair %d p" % i, p.recv(20), b"q%d" % i)
            if problems:
                break

    checks.append(check_many)
else:
    sys.exit("unknown WHAT %r" % what)

wlcommon.ready_then_count(d)
wlcommon.run_checks(checks, problems)
wlcommon.write_result(d, problems)
