# Helpers every e2e scenario script starts with (after the variables the harness
# sets: T, CRTOOL, MEMSTATE, LOOP_PY, EXAMPLES, PROCSTATE, and AS_WL: the command
# prefix that drops to the workloads' credentials, empty for root). Included by
# tests/common/mod.rs.
set -u
# Only stdin, stdout and stderr: workloads inherit our fds, and those of the test
# harness (pipes to cargo) are not theirs to keep.
for fd in $(ls /proc/$$/fd); do [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null; done
cd "$T"
# A devpts instance of the scenario's own (its mount namespace is private):
# pseudo-terminal indexes are handed out lowest first, and a restore needs the
# index the dump saw, which a scenario running beside this one could take.
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts /dev/pts && mount --bind /dev/pts/ptmx /dev/ptmx
PS4='+ [${SECONDS}s] '
set -x

# fail MSG: record why the scenario could not go on, and stop.
fail() { echo "$*" >"$T/var.fail"; echo "SCENARIO FAILED: $*" >&2; exit 1; }
# put KEY VALUE: a fact for the Rust side (var.KEY).
put() { printf '%s' "$2" >"$T/var.$1"; }
# run STEP CMD...: run CMD, keeping its stdout, stderr and exit code as STEP.out/.err/.rc.
run() { local n=$1; shift; "$@" >"$T/$n.out" 2>"$T/$n.err"; echo $? >"$T/$n.rc"; }
# crt ARGS...: crtool, killed if it hangs for 60 s (exit 124; its tracees die with it).
crt() ( { set +x; } 2>/dev/null; exec timeout 60 "$CRTOOL" "$@" )
# need STEP: stop the scenario unless `run STEP ...` succeeded.
need() {
    local rc; rc=$(cat "$T/$1.rc" 2>/dev/null)
    [ "$rc" = 124 ] && fail "$1 hung (killed after 60 s): $(cat "$T/$1.err" 2>/dev/null)"
    [ "$rc" = 0 ] || fail "$1 failed (exit $rc): $(cat "$T/$1.err" 2>/dev/null)"
}
# quietly CMD...: run CMD without tracing it.
quietly() { { local x=$-; set +x; } 2>/dev/null; "$@"; local rc=$?; [[ $x == *x* ]] && set -x; return $rc; }
# wait_until CMD...: poll CMD for up to 20 s.
wait_until() {
    { local x=$-; set +x; } 2>/dev/null
    local i
    for i in $(seq 1 400); do
        if "$@"; then [[ $x == *x* ]] && set -x; return 0; fi
        sleep 0.05
    done
    [[ $x == *x* ]] && set -x
    echo "timed out waiting for: $*" >&2
    return 1
}
# alive PID: the process exists and is not a zombie.
alive() { [ -e "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
dead() { ! alive "$1"; }
# state PID: the State letter (R, S, T, t, Z, ...), or "gone".
state() { awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo gone; }
tracer() { awk '/^TracerPid:/ {print $2}' "/proc/$1/status" 2>/dev/null; }
# lines FILE: number of complete lines in FILE.
lines() { if [ -e "$1" ]; then wc -l <"$1"; else echo 0; fi; }
# has_lines FILE N: FILE has at least N lines.
has_lines() { [ "$(lines "$1")" -ge "$2" ]; }
nonempty() { [ -s "$1" ]; }
# images DIR: the *.img files in DIR, space separated.
images() { (cd "$1" 2>/dev/null && ls | grep '\.img$' | tr '\n' ' '); }
# PY3: a python3 the workloads' user can run (root's may live under /root).
PY3=$("${AS_WL[@]}" bash -c 'command -v python3') || fail "no python3 for the workloads' user"
export PY3
# The workloads, each started as a session leader with files as stdio, with the
# workloads' credentials ("${AS_WL[@]}" execs, so $! is the workload).
start_memstate() { "${AS_WL[@]}" setsid "$MEMSTATE" "$T/ready" "$T/result" "$@" </dev/null >"$T/memstate.log" 2>&1 & }
start_loop() { "${AS_WL[@]}" setsid "$PY3" "$LOOP_PY" "$@" </dev/null >"$T/out.txt" 2>"$T/loop.err" & }
# free_port [N]: a TCP port P, with P..P+N-1 (N defaults to 1) in use by nothing
# and below the kernel's ephemeral range, so that no outgoing connection (of this
# scenario or another running beside it) takes one of them meanwhile.
free_port() {
    local n=${1:-1} lo p i busy
    read -r lo _ </proc/sys/net/ipv4/ip_local_port_range
    for _ in $(seq 200); do
        p=$(( 10000 + RANDOM % (lo - 10000 - n) ))
        busy=
        for i in $(seq 0 $((n - 1))); do ss -Htan "( sport = :$((p + i)) )" | grep -q . && busy=1; done
        [ -z "$busy" ] && { echo $p; return 0; }
    done
    return 1
}
# start_wl NAME ARGS...: a workload of tests/workloads (NAME DIR ARGS), log in NAME.log.
start_wl() { local n=$1; shift; "${AS_WL[@]}" setsid "$EXAMPLES/$n" "$T" "$@" </dev/null >"$T/$n.log" 2>&1 & }
# snapshot NAME PID [procstate options]: the visible state of the tree of PID
# (tests/workloads/procstate.py) into $T/state.NAME, its complaints into .err.
snapshot() {
    local n=$1 p=$2; shift 2
    python3 "$PROCSTATE" "$@" "$p" >"$T/state.$n" 2>"$T/state.$n.err" || fail "procstate.py $p failed: $(cat "$T/state.$n.err")"
}
# pidset NAME [PID...]: "PID COMM" of every process in our PID namespace but this
# bash (and the PIDs given) into $T/pids.NAME; builtins only, so that it sees no
# helper of its own.
pidset() {
    { local x=$-; set +x; } 2>/dev/null
    local n=$1 d p c skip; shift
    : >"$T/pids.$n"
    for d in /proc/[0-9]*; do
        p=${d#/proc/}
        [ "$p" = $$ ] && continue
        skip=
        for c in "$@"; do [ "$c" = "$p" ] && skip=1; done
        [ -n "$skip" ] && continue
        read -r c 2>/dev/null <"$d/comm" || continue
        echo "$p $c" >>"$T/pids.$n"
    done
    [[ $x == *x* ]] && set -x
    return 0
}
# down_start, down_end: the window from right before a dump to right after its
# restore, "START END" in microseconds of CLOCK_REALTIME, into $T/downtime (the
# workloads bound their timers with it).
down_start() { DOWN0=${EPOCHREALTIME/./}; }
down_end() { echo "$DOWN0 ${EPOCHREALTIME/./}" >"$T/downtime"; }
# tree_of PID: PID and all its descendants, one a line.
tree_of() { local p=$1 c; echo "$p"; for c in $(cat /proc/$p/task/*/children 2>/dev/null); do tree_of "$c"; done; }
# gone PID...: none of them exists any more, not even as a zombie.
gone() { local p; for p in "$@"; do [ -e "/proc/$p" ] && return 1; done; return 0; }
# snap PID...: "PID STATE PPID PGID SID ..." (/proc/PID/stat after the name) of each,
# or "PID gone", without forking.
snap() { local p s; for p in "$@"; do if read -r s 2>/dev/null <"/proc/$p/stat"; then echo "$p ${s##*) }"; else echo "$p gone"; fi; done; }
