#!/usr/bin/env python3
"""The `pyloop` workload: prints an increasing counter, one number a line, flushed,
every 0.05 s, forever.

    loop.py [--hold udplite|pipe|fifo:PATH|ptmx] [--alternate]

--hold keeps a resource open for the whole run (a bound UDP-Lite socket, a
pipe, a named FIFO opened read-write, or a pseudo-terminal master in EXTPROC mode);
the tests use the ones crtool cannot dump (UDP-Lite sockets, EXTPROC terminals) to check
that a refused dump
leaves the process
running. --alternate writes even numbers to stdout and odd ones to stderr
(started with 2>&1, both fds share one open file description and its offset).
"""
import os
import socket
import sys
import time

held = []
args = sys.argv[1:]
alternate = "--alternate" in args
if alternate:
    args.remove("--alternate")
if args[:1] == ["--hold"] and len(args) == 2:
    kind = args[1]
    if kind == "udplite":
        ul = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 136)  # IPPROTO_UDPLITE
        ul.bind(("127.0.0.1", 0))
        held.append(ul)
    elif kind == "pipe":
        held.extend(os.pipe())
    elif kind.startswith("fifo:"):
        held.append(os.open(kind[len("fifo:"):], os.O_RDWR | os.O_NONBLOCK))
    elif kind == "ptmx":
        # A pseudo-terminal master in external processing mode (EXTPROC), which
        # crtool refuses only once it has the master from the task.
        import termios
        m = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY)
        attrs = termios.tcgetattr(m)
        attrs[3] |= 0o200000  # EXTPROC
        termios.tcsetattr(m, termios.TCSANOW, attrs)
        held.append(m)
    else:
        sys.exit(f"loop.py: unknown --hold {kind!r}")
elif args:
    sys.exit(f"loop.py: unknown arguments {args!r}")

i = 0
while True:
    if alternate:
        os.write(1 if i % 2 == 0 else 2, b"%d\n" % i)
    else:
        print(i, flush=True)
    i += 1
    time.sleep(0.05)
