#!/usr/bin/env python3
"""The `inetsk` workload: TCP and UDP sockets of every supported kind, with data in
flight on an established loopback connection, checked after a restore (dump and
restore with --tcp-established).

    inetsk.py DIR

Holds: a TCP listener on 127.0.0.1 (SO_REUSEADDR, TCP_DEFER_ACCEPT, backlog 7), an
IPv6 TCP listener on ::1 (IPV6_V6ONLY), a bound TCP socket that does not listen,
an unbound TCP socket with TCP_NODELAY, SO_KEEPALIVE and TCP_KEEPIDLE 77, a bound
UDP socket and a UDP socket connected to it (IP_TOS 0x10), and an established
connection through the first listener (and one through the IPv6 one): the client has sent 5000 bytes the server
has not read, the server has sent 300000 bytes the client has not read (queued in
both sockets, part of it not sent yet). Writes DIR/ready, prints a counter every
0.05 s; on SIGUSR1 checks names and options, that both listeners accept new
connections, that a datagram goes from the connected UDP socket to the bound one
with its source address, and that the established connection delivers every byte
in order both ways and then more. Writes PASS or FAIL: why to DIR/result.
"""
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wlcommon  # noqa: E402

d = sys.argv[1]
c = wlcommon.Checks()
TCP_DEFER_ACCEPT, TCP_KEEPIDLE = 9, 4

lis = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
lis.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lis.setsockopt(socket.IPPROTO_TCP, TCP_DEFER_ACCEPT, 3)
lis.bind(("127.0.0.1", 0))
lis.listen(7)
lis6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
lis6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
lis6.bind(("::1", 0))
lis6.listen(3)
bound = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
bound.bind(("127.0.0.1", 0))
loose = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
loose.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
loose.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
loose.setsockopt(socket.IPPROTO_TCP, TCP_KEEPIDLE, 77)
u1 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u1.bind(("127.0.0.1", 0))
# Multicast memberships on the loopback: a group, and a group with a source
# filter (include 10.9.9.9).
IP_MSFILTER, IP_ADD_SOURCE_MEMBERSHIP = 41, 39
lo = socket.inet_aton("127.0.0.1")
u1.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton("239.1.2.3") + lo)
u1.setsockopt(socket.IPPROTO_IP, IP_ADD_SOURCE_MEMBERSHIP, socket.inet_aton("239.1.2.4") + lo + socket.inet_aton("10.9.9.9"))


def msfilter(sock, group):
    """(filter mode, sources) of `sock`'s membership of `group` on the loopback
    (getsockopt IP_MSFILTER takes the group in its buffer: through ctypes)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(struct.pack("4s4sII", socket.inet_aton(group), lo, 0, 8) + b"\0" * 32)
    ln = ctypes.c_uint32(len(buf))
    if libc.getsockopt(sock.fileno(), socket.IPPROTO_IP, IP_MSFILTER, buf, ctypes.byref(ln)) != 0:
        return "not a member (%s)" % os.strerror(ctypes.get_errno())
    r = buf.raw
    _, _, mode, n = struct.unpack_from("4s4sII", r)
    return (mode, [socket.inet_ntoa(r[16 + 4 * i:20 + 4 * i]) for i in range(n)])


groups_before = [msfilter(u1, g) for g in ("239.1.2.3", "239.1.2.4", "239.1.2.5")]
# A UDP socket with a classic BPF filter that drops everything ("ret #0").
SO_ATTACH_FILTER, SO_GET_FILTER = 26, 26
u3 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u3.bind(("127.0.0.1", 0))
insn = struct.pack("HBBI", 0x06, 0, 0, 0)  # BPF_RET | BPF_K, k = 0
import ctypes  # noqa: E402
ibuf = ctypes.create_string_buffer(insn)
fprog = struct.pack("HxxxxxxQ", 1, ctypes.addressof(ibuf))
u3.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
filter_before = u3.getsockopt(socket.SOL_SOCKET, SO_GET_FILTER, 64)
u2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u2.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x10)
u2.connect(u1.getsockname())
# Datagrams u1 has not read: from u2, and from a socket closed since.
u2.send(b"queued from u2")
gone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
gone.bind(("127.0.0.1", 0))
gone_addr = gone.getsockname()
gone.sendto(b"queued from a closed socket", u1.getsockname())
gone.close()

cli = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
cli.connect(lis.getsockname())
cli.sendall(b"x")  # (TCP_DEFER_ACCEPT: the server sees the connection with data)
srv, _ = lis.accept()
assert srv.recv(1) == b"x"
# An IPv6 connection too, with a little unread each way.
cli6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
cli6.connect(lis6.getsockname())
srv6, _ = lis6.accept()
cli6.sendall(b"six-up")
srv6.sendall(b"six-down")
up = bytes((i * 7) % 251 for i in range(5000))
down = bytes((i * 13) % 253 for i in range(300000))
cli.sendall(up)
srv.setblocking(False)
sent = 0
while sent < len(down):
    try:
        sent += srv.send(down[sent:])
    except BlockingIOError:
        break
time.sleep(0.2)

opts = [
    (lis, socket.SOL_SOCKET, socket.SO_REUSEADDR), (lis, socket.IPPROTO_TCP, TCP_DEFER_ACCEPT),
    (lis6, socket.IPPROTO_IPV6, socket.IPV6_V6ONLY), (loose, socket.IPPROTO_TCP, socket.TCP_NODELAY),
    (loose, socket.SOL_SOCKET, socket.SO_KEEPALIVE), (loose, socket.IPPROTO_TCP, TCP_KEEPIDLE),
    (u2, socket.IPPROTO_IP, socket.IP_TOS), (srv, socket.IPPROTO_TCP, socket.TCP_NODELAY),
    # (Inherited from the listener; TCP_REPAIR clears it when it is left.)
    (srv, socket.SOL_SOCKET, socket.SO_REUSEADDR),
]
before = [s.getsockopt(lvl, o) for s, lvl, o in opts]
names = [(s.getsockname(), s.getpeername() if s in (u2, cli, srv, cli6, srv6) else None) for s in (lis, lis6, bound, loose, u1, u2, cli, srv, cli6, srv6)]

wlcommon.ready_then_count(d)


def check_names_and_options():
    now = [(s.getsockname(), s.getpeername() if s in (u2, cli, srv, cli6, srv6) else None) for s in (lis, lis6, bound, loose, u1, u2, cli, srv, cli6, srv6)]
    c.chk("addresses", now, names)
    c.chk("options", [s.getsockopt(lvl, o) for s, lvl, o in opts], before)


def check_listeners():
    for l, fam in ((lis, socket.AF_INET), (lis6, socket.AF_INET6)):
        x = socket.socket(fam, socket.SOCK_STREAM)
        x.connect(l.getsockname())
        x.sendall(b"new")
        a, _ = l.accept()
        c.chk("a new connection's first bytes", a.recv(3), b"new")
        a.close()
        x.close()


def check_multicast():
    c.chk("setup: memberships", groups_before, [(0, []), (1, ["10.9.9.9"]), "not a member (Cannot assign requested address)"])
    c.chk("memberships", [msfilter(u1, g) for g in ("239.1.2.3", "239.1.2.4", "239.1.2.5")], groups_before)


def check_filter():
    c.chk("socket filter", u3.getsockopt(socket.SOL_SOCKET, SO_GET_FILTER, 64), filter_before)
    u2.sendto(b"dropped", u3.getsockname())
    time.sleep(0.1)
    u3.setblocking(False)
    try:
        got = u3.recv(100)
    except BlockingIOError:
        got = None
    c.chk("datagram through the drop-all filter", got, None)


def check_udp():
    u1.settimeout(5)
    c.chk("queued datagrams", [u1.recvfrom(100) for _ in range(2)], [(b"queued from u2", u2.getsockname()), (b"queued from a closed socket", gone_addr)])
    u2.send(b"datagram")
    u1.settimeout(5)
    data, src = u1.recvfrom(100)
    c.chk("datagram", (data, src), (b"datagram", u2.getsockname()))


def check_connection6():
    srv6.settimeout(10)
    cli6.settimeout(10)
    c.chk("IPv6 connection", (srv6.recv(6), cli6.recv(8)), (b"six-up", b"six-down"))
    cli6.sendall(b"more")
    c.chk("IPv6 connection after", srv6.recv(4), b"more")


def check_connection():
    srv.setblocking(True)
    srv.settimeout(10)
    cli.settimeout(10)
    got = b""
    while len(got) < len(up):
        got += srv.recv(len(up) - len(got))
    c.chk("bytes the client had sent", got == up, True)
    rest = down[sent:]
    srv.sendall(rest)
    got = b""
    while len(got) < len(down):
        b = cli.recv(65536)
        if not b:
            break
        got += b
    c.chk("bytes the server had sent (%d of %d before the dump)" % (sent, len(down)), (len(got), got == down), (len(down), True))
    cli.sendall(b"ping")
    c.chk("more after", srv.recv(4), b"ping")
    srv.shutdown(socket.SHUT_WR)
    c.chk("end of stream", cli.recv(10), b"")


wlcommon.run_checks([check_names_and_options, check_listeners, check_multicast, check_filter, check_udp, check_connection, check_connection6], c.problems)
wlcommon.write_result(d, c.problems)
