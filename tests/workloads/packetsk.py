#!/usr/bin/env python3
"""The `packetsk` workload (root, in a network namespace of its own with the
loopback up): a packet socket, checked after a restore.

    packetsk.py DIR

Holds an AF_PACKET SOCK_DGRAM socket for ETH_P_IP bound to the loopback, with
PACKET_AUXDATA, a fanout group and a classic BPF filter that accepts everything.
Writes DIR/ready, prints a counter every 0.05 s; on SIGUSR1 checks its binding,
options, fanout and filter, then sends a UDP datagram on the loopback and finds
it among the packets the socket receives. Writes PASS or FAIL: why to DIR/result.
"""
import ctypes
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wlcommon  # noqa: E402

d = sys.argv[1]
c = wlcommon.Checks()
SOL_PACKET, PACKET_AUXDATA, PACKET_FANOUT = 263, 8, 18
SO_ATTACH_FILTER = SO_GET_FILTER = 26
ETH_P_IP = 0x0800
p = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
p.bind(("lo", ETH_P_IP))
p.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
ibuf = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0xFFFF))  # ret #65535
p.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HxxxxxxQ", 1, ctypes.addressof(ibuf)))
p.setsockopt(SOL_PACKET, PACKET_FANOUT, 0x4242)  # group 0x4242, PACKET_FANOUT_HASH


def state():
    return (p.getsockname()[:2], p.getsockopt(SOL_PACKET, PACKET_AUXDATA), p.getsockopt(SOL_PACKET, PACKET_FANOUT), p.getsockopt(socket.SOL_SOCKET, SO_GET_FILTER, 64))


before = state()
wlcommon.ready_then_count(d)


def check():
    c.chk("binding, options, fanout, filter", state(), before)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"through-the-packet-socket", ("127.0.0.1", 9))
    p.settimeout(5)
    deadline = time.time() + 5
    while time.time() < deadline:
        if b"through-the-packet-socket" in p.recv(2048):
            return
    c.problems.append("the datagram sent on the loopback did not reach the packet socket")


wlcommon.run_checks([check], c.problems)
wlcommon.write_result(d, c.problems)
