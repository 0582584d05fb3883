"""What the Python workloads share: the protocol of tests/common/mod.rs (DIR/ready,
a counter on stdout every 0.05 s until SIGUSR1, the verdict in DIR/result)."""
import os
import signal
import time


class Checks:
    """Collects what differs from what it should be."""

    def __init__(self):
        self.problems = []

    def chk(self, name, got, want):
        if got != want:
            self.problems.append("%s: got %r, want %r" % (name, got, want))


def ready_then_count(d):
    """Writes DIR/ready, then prints a counter every 0.05 s until SIGUSR1 (with
    UNIXSK_IDLE=1 in the environment, sleeps instead: nothing changes)."""
    done = []
    signal.signal(signal.SIGUSR1, lambda *_: done.append(1))
    with open(os.path.join(d, "ready"), "w") as fh:
        fh.write("ready\n")
    n = 0
    while not done:
        if os.environ.get("UNIXSK_IDLE"):
            signal.pause()
            continue
        print(n, flush=True)
        n += 1
        time.sleep(0.05)


def run_checks(checks, problems):
    """Runs each check function; an exception is a failure too."""
    for check in checks:
        try:
            check()
        except Exception as ex:  # noqa: BLE001 - every failure is a verdict
            problems.append("%s: %r" % (check.__name__, ex))


def write_result(d, problems):
    with open(os.path.join(d, "result"), "w") as fh:
        fh.write("PASS" if not problems else "FAIL: " + "; ".join(problems))
