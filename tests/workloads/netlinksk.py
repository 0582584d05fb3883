#!/usr/bin/env python3
"""The `netlinksk` workload: netlink sockets, checked after a restore.

    netlinksk.py DIR

Holds a NETLINK_ROUTE socket bound to its own port id with RTMGRP_IPV4_MROUTE,
group RTNLGRP_MPLS_ROUTE joined with NETLINK_ADD_MEMBERSHIP and NETLINK_EXT_ACK
set, a NETLINK_ROUTE socket never bound, and a NETLINK_KOBJECT_UEVENT socket bound
to its port id. (Groups nothing on a test machine sends to: a message queued at
dump time is refused, and other tests make links and addresses meanwhile.) Writes DIR/ready, prints a counter every 0.05 s; on SIGUSR1 checks port
ids, memberships and options, and that a RTM_GETLINK request on the bound socket
is answered there (from the kernel, to its port id). Writes PASS or FAIL: why to
DIR/result.
"""
import os
import socket
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wlcommon  # noqa: E402

d = sys.argv[1]
c = wlcommon.Checks()
SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NETLINK_EXT_ACK, NETLINK_LIST_MEMBERSHIPS = 270, 1, 11, 9
RTMGRP_IPV4_MROUTE, RTNLGRP_MPLS_ROUTE = 0x20, 27

rt = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
rt.bind((0, RTMGRP_IPV4_MROUTE))  # autobound port id
rt.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, RTNLGRP_MPLS_ROUTE)
rt.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
plain = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
ue = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 15)  # NETLINK_KOBJECT_UEVENT
ue.bind((0, 0))


def state():
    return [
        (s.getsockname(), s.getsockopt(SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, 16), s.getsockopt(SOL_NETLINK, NETLINK_EXT_ACK))
        for s in (rt, plain, ue)
    ]


before = state()
wlcommon.ready_then_count(d)


def check():
    c.chk("port ids, groups, options", state(), before)
    # RTM_GETLINK (18) dump request; the answer comes to our port id.
    req = struct.pack("=IHHII", 32, 18, 0x301, 7, 0) + struct.pack("=BBHiII", socket.AF_UNSPEC, 0, 0, 0, 0, 0)
    rt.send(req)
    rt.settimeout(5)
    # (Find our answer among whatever else may come.)
    for _ in range(100):
        msg = rt.recv(65536)
        _, ty, _, seq, pid = struct.unpack_from("=IHHII", msg)
        if seq == 7:
            c.chk("answer to our port id", pid, rt.getsockname()[0])
            c.chk("answer type", ty in (16, 3), True)  # RTM_NEWLINK or NLMSG_DONE
            break
    else:
        c.problems.append("no answer to RTM_GETLINK")


wlcommon.run_checks([check], c.problems)
wlcommon.write_result(d, c.problems)
