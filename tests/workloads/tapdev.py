#!/usr/bin/env python3
"""The `tapdev` workload (root, in a network namespace of its own): tun/tap
devices, checked after a restore.

    tapdev.py DIR [offload]

Opens /dev/net/tun as tap0 (IFF_TAP | IFF_NO_PI, send buffer 65536), gives it a
MAC address and 10.66.0.1/24 (IPv6 off: nothing is sent unasked), sets it up;
makes a persistent tun device tun1 owned by uid 1000 and closes its file;
keeps a file attached to tun2, a tun with packet information (no IFF_NO_PI).
Writes DIR/ready, prints a counter every 0.05 s; on SIGUSR1 checks both devices
(kind, type, flags, owner, index, MAC, MTU, state) and tap0's send buffer, then
sends a UDP datagram to 10.66.0.2: reads the kernel's ARP request for it from
tap0, writes an ARP reply, and reads the datagram itself. Writes PASS or
FAIL: why to DIR/result. With `offload`, tap0 also gets TUNSETOFFLOAD
(checksum offload), which crtool must refuse.
"""
import fcntl
import json
import os
import select
import socket
import struct
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wlcommon  # noqa: E402

TUNSETIFF, TUNSETPERSIST, TUNSETOWNER, TUNGETSNDBUF, TUNSETSNDBUF = 0x400454CA, 0x400454CB, 0x400454CC, 0x800454D3, 0x400454D4
IFF_TUN, IFF_TAP, IFF_NO_PI = 0x1, 0x2, 0x1000
MAC = bytes.fromhex("021122334455")
PEER_MAC = bytes.fromhex("02aabbccddee")

d = sys.argv[1]
c = wlcommon.Checks()
run = lambda *a: subprocess.run(a, check=True, capture_output=True)

tap = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(tap, TUNSETIFF, struct.pack("16sH22x", b"tap0", IFF_TAP | IFF_NO_PI))
fcntl.ioctl(tap, TUNSETSNDBUF, struct.pack("i", 65536))
if sys.argv[2:] == ["offload"]:
    fcntl.ioctl(tap, 0x400454D0, 1)  # TUNSETOFFLOAD, TUN_F_CSUM
t1 = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(t1, TUNSETIFF, struct.pack("16sH22x", b"tun1", IFF_TUN))
fcntl.ioctl(t1, TUNSETOWNER, 1000)
fcntl.ioctl(t1, TUNSETPERSIST, 1)
os.close(t1)
# A tun with packet information (no IFF_NO_PI), attached.
t2 = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(t2, TUNSETIFF, struct.pack("16sH22x", b"tun2", IFF_TUN))
run("sysctl", "-qw", "net.ipv6.conf.tap0.disable_ipv6=1")
run("ip", "link", "set", "lo", "up")
run("ip", "link", "set", "tap0", "address", "02:11:22:33:44:55", "mtu", "1400", "up")
run("ip", "addr", "add", "10.66.0.1/24", "dev", "tap0")


def view():
    out = []
    for l in json.loads(run("ip", "-j", "-d", "link", "show").stdout):
        out.append((l["ifname"], l["ifindex"], l.get("linkinfo", {}).get("info_kind"), l.get("linkinfo", {}).get("info_data"), l.get("address"), l.get("mtu"), l.get("flags"), l.get("txqlen")))
    sndbuf = struct.unpack("i", fcntl.ioctl(tap, TUNGETSNDBUF, b"\0" * 4))[0]
    return out, sndbuf


before = view()
wlcommon.ready_then_count(d)


def read_frame(want, what):
    """The next frame from tap0 for which want(frame) holds (5 s)."""
    while True:
        r, _, _ = select.select([tap], [], [], 5)
        if not r:
            raise AssertionError("no %s read from tap0" % what)
        f = os.read(tap, 2048)
        if want(f):
            return f


def check():
    c.chk("devices and send buffer", view(), before)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"through-the-tap", ("10.66.0.2", 9999))
    arp = read_frame(lambda f: f[12:14] == b"\x08\x06" and f[38:42] == socket.inet_aton("10.66.0.2"), "ARP request")
    c.chk("ARP request sender MAC", arp[6:12], MAC)
    reply = MAC + PEER_MAC + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + PEER_MAC + socket.inet_aton("10.66.0.2") + MAC + socket.inet_aton("10.66.0.1")
    os.write(tap, reply)
    ip = read_frame(lambda f: f[12:14] == b"\x08\x00", "IPv4 frame")
    c.chk("IPv4 frame to the peer", (ip[0:6], ip[-15:]), (PEER_MAC, b"through-the-tap"))


wlcommon.run_checks([check], c.problems)
wlcommon.write_result(d, c.problems)
