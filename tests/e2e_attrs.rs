//! End-to-end tests of task attributes (the `attrs` workload): each must come back
//! with its exact value, as the task itself reads it after the restore, and must
//! still work (SIGIO delivery, exit signals, no parent-death signal). See
//! tests/common/mod.rs for how scenarios run.

mod common;

use common::*;

/// Runs `attrs MODE` (as `creds`; with `caps` the task starts as root and becomes uid
/// 1000 itself, so the scenario directory is given to that user), dumps and restores
/// its tree (the process and its two clone() children) and returns the scenario after
/// the workload's verdict. The visible state and processes must be as before.
fn attrs(name: &str, creds: Creds, mode: &str) -> Scenario {
    let s = Scenario::run_as(
        name,
        creds,
        &format!(
            r#"
[ "{mode}" = caps ] && chown {WL_UID}:{WL_GID} "$T"
start_wl attrs {mode}; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "attrs did not get ready: $(cat "$T/attrs.log")"
PIDS=$(tree_of $P | sort -n | tr '\n' ' '); put pids "$PIDS"
snapshot before $P
pidset before
run dump crt dump -t $P -D "$T/ck"
need dump
wait_until gone $PIDS || fail "the dumped tree is still there"
# Straight from the shell, as a user runs it (no `timeout` in between): with -d,
# the restored root becomes a child of crtool's parent, which lives on.
run restore "$CRTOOL" restore -D "$T/ck" -d
need restore
pidset after
snapshot after $P
put tracers "$(for p in $PIDS; do for t in /proc/$p/task/*; do tracer ${{t#/proc/}}; done; done | sort -u | tr '\n' ' ')"
kill -USR1 $P
wait_until nonempty "$T/result" || fail "attrs wrote no result after SIGUSR1"
wait_until nonempty "$T/result.sigio"
"#
        ),
    );
    s.ok("dump");
    s.ok("restore");
    s.ensure(s.var("pids").split_whitespace().count() == 3, || format!("setup: the tree is {}", s.var("pids")));
    s.ensure(s.var("tracers").trim() == "0", || format!("TracerPids after the restore: {}", s.var("tracers")));
    s
}

/// Every line of `want` must be a line of attrs.after (whitespace normalised), and
/// child A's and B's own attributes as given; reported together with the verdict
/// (DIR/result: values unchanged, exit signals; parent-death signals and SIGIO are
/// checked by tests of their own) and the snapshot comparison.
fn expect_attrs(s: &Scenario, want: &[String], child_a: &str, child_b: &str) {
    let norm = |t: &str| t.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect::<Vec<_>>();
    let after = norm(&s.read("attrs.after"));
    let mut p = Vec::new();
    if after.is_empty() {
        p.push(format!("no attrs.after (attrs.before:\n{})", s.read("attrs.before")));
    } else {
        for w in want {
            if !after.contains(w) {
                // The line with the same first two words (or, failing that, the first).
                let key: Vec<&str> = w.split_whitespace().take(2).collect();
                let got = after
                    .iter()
                    .find(|l| l.split_whitespace().take(key.len()).eq(key.iter().copied()))
                    .or_else(|| after.iter().find(|l| l.split_whitespace().next() == key.first().copied()))
                    .cloned()
                    .unwrap_or_else(|| "(missing)".into());
                p.push(format!("after the restore: {got:?}, expected {w:?}"));
            }
        }
    }
    for (f, w) in [("child.A.after", child_a), ("child.B.after", child_b)] {
        let got = s.read(f);
        if got.trim() != w {
            p.push(format!("{f}: {:?}, expected {w:?}", got.trim()));
        }
    }
    p.extend(s.verdict("result").err());
    p.extend(s.state_problems("before", "after"));
    p.extend(s.pidset_problems("before", "after"));
    s.all_ok(p);
}

/// What every mode sets the same way (`nice` of the main thread differs for root).
fn common_lines(s: &Scenario, main_nice: i32) -> Vec<String> {
    let p = s.pid();
    let mut v: Vec<String> = [
        "no_new_privs 1",
        "dumpable 0",
        "thp_disable 1",
        // REGISTER_GLOBAL_EXPEDITED | PRIVATE_EXPEDITED | ..._SYNC_CORE | ..._RSEQ
        "membarrier 0x154",
        // ADDR_NO_RANDOMIZE | READ_IMPLIES_EXEC
        "personality 0x440000",
        "oom_score_adj 500",
        "coredump_filter 0000005b",
        "rlimit NOFILE 200 400",
        "rlimit CORE 0 1048576",
        "rlimit MEMLOCK 32768 65536",
        "rlimit RTTIME 100000 200000",
        "rlimit MSGQUEUE 4096 8192",
        "map before-personality r--p",
        "map after-personality r-xp",
        "child A exit_signal 12",
        "child B exit_signal 0",
    ]
    .iter()
    .map(|l| l.to_string())
    .collect();
    // F_SETOWN the process, F_SETSIG SIGRTMIN+2 (36), O_ASYNC.
    v.push(format!("sigio owner {p} sig 36 async 1"));
    // nice, ioprio (class << 13 | level), timer slack, pdeath signal (SIGRTMIN+3/+4),
    // PR_MCE_KILL_GET (1 early, 0 late, 2 default).
    v.push(format!("thread main nice {main_nice} ioprio 0x4007 timerslack 123456 pdeathsig 37 mce 1 policy 0x0 rtprio 0"));
    v
}

/// Child A: parent-death signal SIGRTMIN+6, THP disabled except where advised (3);
/// child B: nothing set.
const CHILD_A: &str = "pdeathsig 40 thp 3";
const CHILD_B: &str = "pdeathsig 0 thp 0";

/// As the unprivileged user (uid 1000, no capabilities): per-thread nice, ioprio,
/// timer slack, pdeathsig and MCE policy; no_new_privs, dumpable 0, THP disable 1 and
/// 3 (child A), membarrier registrations, personality with r-- mappings kept r--,
/// oom_score_adj, coredump_filter, rlimits, SIGIO owner/signal/O_ASYNC, the exit
/// signals of clone() children (SIGUSR2 and 0) reaped with __WCLONE.
#[test]
fn task_attributes_of_an_unprivileged_task_come_back_exactly() {
    let s = attrs("attrs", Creds::User, "");
    let mut want = common_lines(&s, 3);
    want.extend(
        [
            "securebits 0x0",
            "Uid 1000 1000 1000 1000",
            "Gid 1000 1000 1000 1000",
            "Groups 1000 1001 1002",
            "CapInh 0000000000000000",
            "CapPrm 0000000000000000",
            "CapEff 0000000000000000",
            "CapAmb 0000000000000000",
            "thread B nice 7 ioprio 0x6000 timerslack 654321 pdeathsig 38 mce 0 policy 0x0 rtprio 0",
            "thread C nice 12 ioprio 0x4003 timerslack 50000 pdeathsig 0 mce 2 policy 0x0 rtprio 0",
        ]
        .iter()
        .map(|l| l.to_string()),
    );
    expect_attrs(&s, &want, CHILD_A, CHILD_B);
}

/// The bounding set of this test process (the workloads inherit it).
fn own_capbnd() -> u64 {
    let st = std::fs::read_to_string("/proc/self/status").unwrap();
    st.lines().find_map(|l| l.strip_prefix("CapBnd:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok()).unwrap()
}

/// A uid-1000 task that kept capabilities: securebits KEEP_CAPS|NOROOT|NOROOT_LOCKED
/// (0x13), CapInh NET_BIND_SERVICE|NET_RAW, CapPrm CHOWN|NET_BIND_SERVICE|NET_RAW,
/// CapEff and CapAmb NET_BIND_SERVICE, CapBnd without SYS_MODULE, SYS_BOOT and MKNOD;
/// and everything of the unprivileged case.
#[test]
fn capabilities_and_securebits_of_a_non_root_task_come_back_exactly() {
    let s = attrs("attrs-caps", Creds::Root, "caps");
    let bnd = own_capbnd() & !(1 << 16 | 1 << 22 | 1 << 27);
    let mut want = common_lines(&s, 3);
    want.extend(
        [
            "securebits 0x13".to_string(),
            "Uid 1000 1000 1000 1000".into(),
            "Gid 1000 1000 1000 1000".into(),
            "Groups 1000 1001 1002".into(),
            "CapInh 0000000000002400".into(),
            "CapPrm 0000000000002401".into(),
            "CapEff 0000000000000400".into(),
            format!("CapBnd {bnd:016x}"),
            "CapAmb 0000000000000400".into(),
            "thread B nice 7 ioprio 0x6000 timerslack 654321 pdeathsig 38 mce 0 policy 0x0 rtprio 0".into(),
            "thread C nice 12 ioprio 0x4003 timerslack 50000 pdeathsig 0 mce 2 policy 0x0 rtprio 0".into(),
        ],
    );
    expect_attrs(&s, &want, CHILD_A, CHILD_B);
}

/// As root: thread B SCHED_FIFO priority 10 with SCHED_RESET_ON_FORK (policy
/// 0x40000001), thread C SCHED_RR priority 20 (both with timer slack 0, as the kernel
/// keeps it for real-time threads), the main thread at nice -5; and the rest.
#[test]
fn realtime_scheduling_and_negative_nice_come_back_exactly() {
    let s = attrs("attrs-rt", Creds::Root, "rt");
    let mut want = common_lines(&s, -5);
    want.extend(
        [
            "securebits 0x0",
            "Uid 0 0 0 0",
            "thread B nice 7 ioprio 0x6000 timerslack 0 pdeathsig 38 mce 0 policy 0x40000001 rtprio 10",
            "thread C nice 12 ioprio 0x4003 timerslack 0 pdeathsig 0 mce 2 policy 0x2 rtprio 20",
        ]
        .iter()
        .map(|l| l.to_string()),
    );
    expect_attrs(&s, &want, CHILD_A, CHILD_B);
}

/// No parent-death signal may reach a restored task whose parent did not die: the
/// root's two threads (SIGRTMIN+3, SIGRTMIN+4; its parent, the scenario's shell, lives
/// on) and child A (SIGRTMIN+6; its parent is restored with it). crtool, the parent of
/// the restored root during the restore, exits afterwards.
#[test]
fn no_parent_death_signal_after_restore() {
    let s = attrs("attrs-pdeath", Creds::User, "");
    s.passed("result.pdeath");
}

/// SIGIO after the restore: a write into the pipe whose read end (fd 3) has O_ASYNC,
/// F_SETOWN the process and F_SETSIG SIGRTMIN+2 delivers SIGRTMIN+2 with si_code
/// POLL_IN and si_fd 3, the task's own fd number (the kernel records the fd number
/// when O_ASYNC is set).
#[test]
fn sigio_after_restore_names_the_tasks_own_fd() {
    let s = attrs("attrs-sigio", Creds::User, "");
    s.passed("result.sigio");
}
