#!/usr/bin/env python3
"""The `rawsk` workload (root): raw sockets, checked after a restore.

    rawsk.py DIR

Holds a raw ICMP socket bound and connected to 127.0.0.1 whose ICMP_FILTER lets only echo
replies through, and a raw IPv6 socket of protocol 253 with IPV6_CHECKSUM 2.
Writes DIR/ready, prints a counter every 0.05 s; on SIGUSR1 checks the bound
address and options, then pings 127.0.0.1 through the ICMP socket: the first
packet it receives must be the echo reply (its own echo request, also seen by raw
ICMP sockets, is filtered out). Writes PASS or FAIL: why to DIR/result.
"""
import os
import socket
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wlcommon  # noqa: E402

d = sys.argv[1]
c = wlcommon.Checks()
SOL_RAW, ICMP_FILTER, IPV6_CHECKSUM = 255, 1, 7
icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
icmp.bind(("127.0.0.1", 0))
icmp.connect(("127.0.0.1", 0))  # getpeername cannot show it: port 0
icmp.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("I", 0xFFFFFFFF & ~1))  # pass type 0 only
r6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, 253)
r6.setsockopt(socket.IPPROTO_IPV6, IPV6_CHECKSUM, 2)


def state():
    return (icmp.getsockname(), icmp.getsockopt(SOL_RAW, ICMP_FILTER, 4), r6.getsockopt(socket.IPPROTO_IPV6, IPV6_CHECKSUM))


before = state()
wlcommon.ready_then_count(d)


def checksum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF


def check():
    c.chk("address and options", state(), before)
    pkt = struct.pack("!BBHHH", 8, 0, 0, 0x4242, 1) + b"crtool"
    pkt = pkt[:2] + struct.pack("!H", checksum(pkt)) + pkt[4:]
    icmp.send(pkt)  # fails unless still connected
    icmp.settimeout(5)
    data = icmp.recv(200)
    ihl = (data[0] & 15) * 4
    c.chk("first packet received (type, id)", (data[ihl], struct.unpack("!H", data[ihl + 4:ihl + 6])[0]), (0, 0x4242))


wlcommon.run_checks([check], c.problems)
wlcommon.write_result(d, c.problems)
