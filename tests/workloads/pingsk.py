#!/usr/bin/env python3
"""The `pingsk` workload (root, in a network namespace of its own with the
loopback up and net.ipv4.ping_group_range "100 100"): ICMP ping sockets (the
unprivileged kind, SOCK_DGRAM + IPPROTO_ICMP/ICMPV6), checked after a restore.

    pingsk.py DIR

Makes, with effective gid 100 for the moment (root's gid 0 is outside the
range), an IPv4 ping socket bound to 127.0.0.1 with ident 0x4321 and connected
to 127.0.0.1 with IP_TTL 7, and an IPv6 one bound to ::1 with ident 0x1234.
Writes DIR/ready, prints a counter every 0.05 s; on SIGUSR1 checks the names and
options, then pings through both: each gets its echo reply with its own ident.
Writes PASS or FAIL: why to DIR/result.
"""
import os
import socket
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wlcommon  # noqa: E402

d = sys.argv[1]
c = wlcommon.Checks()
os.setegid(100)
p4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
p6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6)
os.setegid(0)
p4.bind(("127.0.0.1", 0x4321))
p4.connect(("127.0.0.1", 0))
p4.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 7)
p6.bind(("::1", 0x1234))


def state():
    return (p4.getsockname(), p4.getsockopt(socket.IPPROTO_IP, socket.IP_TTL), p6.getsockname()[:2])


before = state()
wlcommon.ready_then_count(d)


def check():
    c.chk("names and options", state(), before)
    # Echo request (type 8 / 128), id and checksum filled in by the kernel.
    p4.send(struct.pack("!BBHHH", 8, 0, 0, 0, 1) + b"crtool4")
    p4.settimeout(5)
    r = p4.recv(200)
    c.chk("IPv4 reply (type, id, payload)", (r[0], struct.unpack("!H", r[4:6])[0], r[8:]), (0, 0x4321, b"crtool4"))
    p6.sendto(struct.pack("!BBHHH", 128, 0, 0, 0, 1) + b"crtool6", ("::1", 0))
    p6.settimeout(5)
    r = p6.recv(200)
    c.chk("IPv6 reply (type, id, payload)", (r[0], struct.unpack("!H", r[4:6])[0], r[8:]), (129, 0x1234, b"crtool6"))


wlcommon.run_checks([check], c.problems)
wlcommon.write_result(d, c.problems)
