#!/usr/bin/env python3
"""The `netns` workload: a process in a network namespace of its own (started by
`unshare -n`), configured from outside (loopback up, a veth with addresses, an
MTU, a route, ip_forward), serving TCP; checked after a restore.

    netns.py DIR

Waits for DIR/configured, records what `ip -j` shows of its links, addresses and
routes and its ip_forward, listens on 0.0.0.0:7777 (each connection answers each
line with "pong LINE"), writes DIR/ready and prints a counter every 0.05 s; on
SIGUSR1 checks that links (name, index, kind, mode, MTU, MAC, state, queue
length, peer or lower link), addresses, routes of every table, policy rules and
ip_forward are as recorded. Writes PASS or FAIL: why to DIR/result.
"""
import json
import os
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wlcommon  # noqa: E402

d = sys.argv[1]
c = wlcommon.Checks()
while not os.path.exists(os.path.join(d, "configured")):
    time.sleep(0.01)


def view():
    ip = lambda *a: json.loads(subprocess.run(["ip", "-j", *a], capture_output=True, check=True).stdout or b"[]")
    # (Kind and mode from `ip -d`; "link" names a veth peer or lower link in the
    # namespace; netns ids and outside indexes may change.)
    links = [
        (l["ifname"], l["ifindex"], l.get("link_type"), l.get("linkinfo", {}).get("info_kind"), l.get("linkinfo", {}).get("info_data", {}).get("mode"), l.get("mtu"), l.get("address"), "UP" in l.get("flags", []), l.get("txqlen"), l.get("link"))
        for l in ip("-d", "link", "show")
    ]
    addrs = sorted((a["ifname"], i["local"], i["prefixlen"]) for a in ip("addr", "show") for i in a.get("addr_info", []))
    routes = sorted(json.dumps(r, sort_keys=True) for fam in ("-4", "-6") for r in ip(fam, "route", "show", "table", "all"))
    rules = [json.dumps(r, sort_keys=True) for fam in ("-4", "-6") for r in ip(fam, "rule", "show")]
    with open("/proc/sys/net/ipv4/ip_forward") as fh:
        fwd = fh.read().strip()
    return links, addrs, routes, rules, fwd


before = view()
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 7777))
srv.listen(5)


def serve(conn):
    f = conn.makefile("rb")
    for line in f:
        conn.sendall(b"pong " + line)


def accept():
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


threading.Thread(target=accept, daemon=True).start()
wlcommon.ready_then_count(d)


def check():
    now = view()
    for name, a, b in zip(("links", "addresses", "routes", "rules", "ip_forward"), now, before):
        c.chk(name, a, b)


wlcommon.run_checks([check], c.problems)
wlcommon.write_result(d, c.problems)
