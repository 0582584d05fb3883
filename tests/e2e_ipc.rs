//! End-to-end tests of SysV IPC and the UTS namespace (tests/workloads/sysvipc.rs):
//! a tree with IPC and UTS namespaces of its own (segments attached at fixed
//! addresses, one removed but attached, one locked, one made by util-linux's
//! `ipcmk`; semaphore sets; queues with typed messages and a lowered limit) comes
//! back whole, ids included, in new namespaces; `--leave-running` leaves every
//! object as it was and two such dumps are byte-identical; a tree in crtool's IPC
//! namespace gets its segments re-attached or recreated, an id taken by another
//! segment is refused, and failed restores leave no segment they made behind;
//! SEM_UNDO records are refused with the tree left running. See tests/common/mod.rs
//! for how scenarios run.

mod common;

use common::*;

/// `start_ipc ARGS...`: the sysvipc workload (as the unprivileged user) in new IPC
/// and UTS namespaces named crtool-ipc / crtool.test, after `ipcmk` (root) made a
/// segment there whose id goes to $T/ipcmk.id.
const START_IPC: &str = r#"
start_ipc() {
    unshare -iu sh -c 'echo crtool-ipc >/proc/sys/kernel/hostname && echo crtool.test >/proc/sys/kernel/domainname &&
        ipcmk -M 8192 -p 0666 | awk "{print \$NF}" >"$0/ipcmk.id" && exec "$@"' "$T" \
        "${AS_WL[@]}" setsid "$EXAMPLES/sysvipc" "$T" "$@" </dev/null >"$T/sysvipc.log" 2>&1 &
}
# ipcs_of PID: the objects of PID's IPC namespace (util-linux ipcs), ids and keys.
ipcs_of() { nsenter -t "$1" -i ipcs | awk '$1 ~ /^0x/ {print $1, $2, $4, $5}' | sort; }
"#;

/// The whole namespace, through a failed restore (nothing left) and a real one:
/// every object with its id, contents and attachments, verified by the workload,
/// by procstate (ids, keys, modes, owners, nattch, the SysV mappings, the names)
/// and by `ipcs`; `show`, `decode --json` and `verify` know the new images.
#[test]
fn own_ipc_and_uts_namespace_roundtrip() {
    let s = Scenario::run(
        "ipc-own",
        &format!(
            r#"{START_IPC}
start_ipc own; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "sysvipc did not get ready: $(cat "$T/sysvipc.log")"
PIDS=$(tree_of $P | sort -n | tr '\n' ' ')
ipcs_of $P >"$T/ipcs.before"
snapshot before $P
pidset before
run dump crt dump -t $P -D "$T/ck"
need dump
wait_until gone $PIDS || fail "the dumped tree is still there"
CRTOOL_FAULT=104 run fault crt restore -D "$T/ck" -d
sleep 0.2
put left "$(for p in $PIDS; do [ -e /proc/$p ] && echo $p; done | tr '\n' ' ')"
run restore crt restore -D "$T/ck" -d
need restore
pidset after
snapshot after $P
ipcs_of $P >"$T/ipcs.after"
put hostname "$(nsenter -t $P -u cat /proc/sys/kernel/hostname)"
kill -USR1 $P
wait_until nonempty "$T/result" || fail "sysvipc wrote no result: $(cat "$T/sysvipc.log")"
run show crt show "$T/ck"
run json crt decode "$T/ck/ipc.img" --json
run verify crt verify "$T/ck"
"#
        ),
    );
    s.ok("dump");
    s.failed_saying("fault", &["CRTOOL_FAULT"]);
    s.ensure(s.var("left").trim().is_empty(), || format!("processes left by the failed restore: {}", s.var("left")));
    s.ok("restore");
    s.ensure(s.var("hostname") == "crtool-ipc", || format!("hostname after the restore: {:?}", s.var("hostname")));
    let (before, after) = (s.read("ipcs.before"), s.read("ipcs.after"));
    s.ensure(before.lines().count() == 8 && before == after, || format!("ipcs before the dump:\n{before}\nafter the restore:\n{after}"));
    s.roundtrip_ok("result");
    s.ok("show");
    let show = s.out("show");
    for want in ["its own IPC namespace", "key 0x000a11ce", "(removed, still attached)", "SHM_LOCKED", "values [0, 1, 7, 32767]", "4 messages (types [1, 5, 2, 5])", "hostname \"crtool-ipc\""] {
        s.ensure(show.contains(want), || format!("`crtool show` does not say {want:?}:\n{show}"));
    }
    s.ok("json");
    s.ensure(s.out("json").contains("\"qbytes\": 4000") || s.out("json").contains("\"qbytes\":4000"), || format!("decode --json of ipc.img:\n{}", s.out("json")));
    s.ok("verify");
}

/// `--leave-running` twice: both dumps byte-identical (ipc.img, shmdata.img, uts.img
/// included), and the tree verifies afterwards: messages still queued, values and
/// contents unchanged.
#[test]
fn leave_running_leaves_ipc_untouched_and_dumps_are_identical() {
    let s = Scenario::run(
        "ipc-double-dump",
        &format!(
            r#"{START_IPC}
start_ipc own; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "sysvipc did not get ready: $(cat "$T/sysvipc.log")"
ipcs_of $P >"$T/ipcs.before"
snapshot before $P
pidset before
run dump1 crt dump -t $P -D "$T/ck1" --leave-running
sleep 0.3
run dump2 crt dump -t $P -D "$T/ck2" --leave-running
pidset after
snapshot after $P
ipcs_of $P >"$T/ipcs.after"
kill -USR1 $P
wait_until nonempty "$T/result" || fail "sysvipc wrote no result: $(cat "$T/sysvipc.log")"
"#
        ),
    );
    s.ok("dump1");
    s.ok("dump2");
    let mut p = dump_differences(&s, 14);
    for f in ["ipc.img", "shmdata.img", "uts.img"] {
        if !image_files(&s.path("ck1")).contains_key(f) {
            p.push(format!("no {f} in the dump"));
        }
    }
    if s.read("ipcs.before") != s.read("ipcs.after") {
        p.push(format!("ipcs before:\n{}\nafter:\n{}", s.read("ipcs.before"), s.read("ipcs.after")));
    }
    p.extend(s.verdict("result").err().map(|e| format!("after two dumps with --leave-running: {e}")));
    p.extend(s.state_problems("before", "after"));
    p.extend(s.pidset_problems("before", "after"));
    s.all_ok(p);
}

/// A tree in crtool's IPC namespace attached to segment A (still there after the
/// dump) and B (removed, gone with the tree): a restore re-attaches A and
/// recreates B; a failed restore leaves A (not crtool's) and no B; an id that
/// another segment took is refused, naming it; with both gone, a failed restore
/// removes both again and a real one recreates both with their ids and contents.
#[test]
fn host_ipc_namespace_reattach_recreate_refuse() {
    let s = Scenario::run(
        "ipc-host",
        r#"
start_wl sysvipc host; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "sysvipc did not get ready: $(cat "$T/sysvipc.log")"
read A B _ <"$T/ids"; put ids "$A $B"
trap 'ipcrm -m $A 2>/dev/null; ipcrm -m $B 2>/dev/null' EXIT
exists() { awk -v id="$1" 'NR > 1 && $2 == id {f = 1} END {exit !f}' /proc/sysvipc/shm; }
# Segments go with the last task's address space, which the kernel may tear down a
# moment after the task is gone.
settle() { local i; for i in $(seq 40); do exists $B || break; sleep 0.05; done; }
PIDS=$(tree_of $P | sort -n | tr '\n' ' ')
snapshot before $P
pidset before
run dump1 crt dump -t $P -D "$T/ck"
need dump1
wait_until gone $PIDS || fail "the dumped tree is still there"
settle
put after_dump "$(exists $A && echo A) $(exists $B && echo B)"
run restore1 crt restore -D "$T/ck" -d
need restore1
snapshot after1 $P
run dump2 crt dump -t $P -D "$T/ck"
need dump2
wait_until gone $PIDS || fail "the dumped tree is still there"
settle
CRTOOL_FAULT=106 run fault1 crt restore -D "$T/ck" -d
settle
put after_fault1 "$(exists $A && echo A) $(exists $B && echo B)"
ipcrm -m $A
echo $A >/proc/sys/kernel/shm_next_id
ipcmk -M 4096 >"$T/imposter"
run taken crt restore -D "$T/ck" -d
put after_taken "$(for p in $PIDS; do [ -e /proc/$p ] && echo $p; done | tr '\n' ' ')"
ipcrm -m $A
CRTOOL_FAULT=104 run fault2 crt restore -D "$T/ck" -d
settle
put after_fault2 "$(exists $A && echo A) $(exists $B && echo B)"
run restore2 crt restore -D "$T/ck" -d
need restore2
pidset after
snapshot after $P
kill -USR1 $P
wait_until nonempty "$T/result" || fail "sysvipc wrote no result: $(cat "$T/sysvipc.log")"
"#,
    );
    let ids = s.var("ids");
    let a = ids.split_whitespace().next().unwrap_or("?").to_string();
    s.ok("dump1");
    s.ensure(s.var("after_dump").trim() == "A", || format!("after the dump (A stays, B goes with the tree): {:?}", s.var("after_dump")));
    s.ok("restore1");
    s.all_ok(s.state_problems("before", "after1"));
    s.ok("dump2");
    s.failed_saying("fault1", &["CRTOOL_FAULT"]);
    s.ensure(s.var("after_fault1").trim() == "A", || format!("after a failed restore (A is not crtool's, B was recreated): {:?}", s.var("after_fault1")));
    s.failed_saying("taken", &[&format!("segment {a}"), "belongs to another segment", &format!("ipcrm -m {a}")]);
    s.ensure(s.var("after_taken").trim().is_empty(), || format!("processes left by the refused restore: {}", s.var("after_taken")));
    s.failed_saying("fault2", &["CRTOOL_FAULT"]);
    s.ensure(s.var("after_fault2").trim().is_empty(), || format!("segments left by a failed restore that recreated them: {:?}", s.var("after_fault2")));
    s.ok("restore2");
    s.roundtrip_ok("result");
}

/// SEM_UNDO adjustments cannot be read from the kernel: refused, naming the
/// process, and the tree runs on untraced.
#[test]
fn sem_undo_is_refused_and_the_tree_runs_on() {
    let s = Scenario::run(
        "ipc-undo",
        &format!(
            r#"{START_IPC}
start_ipc own undo; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "sysvipc did not get ready: $(cat "$T/sysvipc.log")"
run dump crt dump -t $P -D "$T/ck"
put state "$(alive $P && echo alive) $(tracer $P)"
"#
        ),
    );
    let p = s.pid();
    s.failed_saying("dump", &[&format!("pid {p}"), "SEM_UNDO"]);
    s.ensure(s.var("state") == "alive 0", || format!("after the refused dump: {:?}", s.var("state")));
}
