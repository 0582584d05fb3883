//! End-to-end tests of dumps crtool must refuse while the tree runs (tests/workloads/
//! hold.py holding one resource each): what restore could not rebuild (an executable
//! that lost its x bit, a removed mapped file or working directory, files of /proc
//! and namespace files) and what crtool does not support (seccomp, namespaces of a
//! thread or process, a shared fd table, file locks, a message queue, a thread
//! keyring). Each time crtool must exit non-zero naming the pid and the reason, and
//! the tree must run on as before: every thread running and untraced, counting on,
//! its visible state unchanged by the refused dump, its own check passing, and no
//! complete checkpoint left behind. See tests/common/mod.rs for how scenarios run.

mod common;

use common::*;

/// `start_hold WHAT ARGS...`: tests/workloads/hold.py as a session leader with the
/// workloads' credentials (with `PYEXE` as the interpreter when set), counting into
/// $T/out.txt.
const START_HOLD: &str = r#"
HOLD="$(dirname "$LOOP_PY")/hold.py"
start_hold() { "${AS_WL[@]}" setsid "${PYEXE:-$PY3}" "$HOLD" "$T" "$@" </dev/null >"$T/out.txt" 2>"$T/hold.err" & }
"#;

/// Starts `hold.py WHAT` (after `setup`), runs `before_dump` once it counts, tries to
/// dump it and checks that the dump was refused with all of `needles` (besides "pid
/// P") in crtool's message and left the tree as it was. Returns the scenario (var.pid
/// is the holder, var.pids its tree) for more checks.
fn refused(name: &str, creds: Creds, setup: &str, what: &str, before_dump: &str, needles: &[&str]) -> Scenario {
    let s = Scenario::run_as(
        name,
        creds,
        &format!(
            r#"{START_HOLD}
{setup}
start_hold {what}; P=$!; put pid $P
wait_until nonempty "$T/ready" && wait_until has_lines "$T/out.txt" 3 || fail "hold.py {what} did not start: $(cat "$T/hold.err")"
{before_dump}
PIDS=$(tree_of $P | sort -n | tr '\n' ' '); put pids "$PIDS"
snapshot before $P --no-pos
pidset before
run dump crt dump -t $P -D "$T/ck"
pidset after
snapshot after $P --no-pos
put threads "$(for p in $PIDS; do for t in /proc/$p/task/*; do t=${{t##*/}}; echo "$t $(state $t) $(tracer $t)"; done; done)"
put inventory "$([ -e "$T/ck/inventory.img" ] && echo "$(images "$T/ck")")"
wait_until has_lines "$T/out.txt" $(( $(lines "$T/out.txt") + 10 )) && put counting yes
kill -USR1 $P
wait_until nonempty "$T/result" || fail "hold.py wrote no result after SIGUSR1: $(cat "$T/hold.err")"
"#
        ),
    );
    let p = s.pid();
    let mut want: Vec<String> = vec![format!("pid {p}")];
    want.extend(needles.iter().map(|n| n.to_string()));
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    s.failed_saying("dump", &want);
    s.ensure(s.rc("dump") != 124, || "crtool dump hung".into());
    let mut problems = Vec::new();
    for line in s.var("threads").lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if !(f.len() == 3 && (f[1] == "S" || f[1] == "R") && f[2] == "0") {
            problems.push(format!("after the refused dump a thread is not running untraced (tid state TracerPid): {line}"));
        }
    }
    if s.var("counting") != "yes" {
        problems.push("the process stopped counting after the refused dump".into());
    }
    // Loose on purpose: a refused dump must not leave a complete checkpoint (today it
    // removes its images; later an earlier checkpoint in the directory may stay).
    let inv = s.var("inventory");
    if !inv.is_empty() {
        problems.push(format!("a refused dump left a complete checkpoint (inventory.img) in an empty directory: {inv}"));
    }
    problems.extend(s.verdict("result").err());
    problems.extend(s.state_problems("before", "after"));
    problems.extend(s.pidset_problems("before", "after"));
    s.all_ok(problems);
    s.counter("out.txt");
    s
}

// ------------------------------------------------------------------ not restorable

/// Its executable (a copy of python3) lost its x bit: restore could not run it.
#[test]
fn dump_refuses_an_executable_without_x_bit() {
    refused(
        "exe-no-x",
        Creds::User,
        r#"mkdir "$T/bin"; cp "$(readlink -f "$PY3")" "$T/bin/python3"; chmod 755 "$T/bin/python3"; PYEXE="$T/bin/python3""#,
        "none",
        r#"chmod 644 "$T/bin/python3""#,
        &["bin/python3", "cannot be executed"],
    );
}

/// A file it maps was removed while it has another name (a hard link): CRIU's
/// --link-remap case, refused naming the file.
#[test]
fn dump_refuses_a_removed_mapped_file_with_another_name() {
    refused(
        "mapped-removed",
        Creds::User,
        r#"head -c 8192 /dev/urandom >"$T/mapped.dat"; chmod 644 "$T/mapped.dat"; ln "$T/mapped.dat" "$T/other-name.dat""#,
        r#"map "$T/mapped.dat""#,
        r#"rm "$T/mapped.dat""#,
        &["mapped.dat", "other name", "--link-remap"],
    );
}

/// Its working directory was removed, and the directory above it too (a removed
/// cwd alone is made again at restore).
#[test]
fn dump_refuses_a_removed_working_directory_without_its_parent() {
    refused(
        "cwd-removed",
        Creds::User,
        r#"mkdir -p "$T/gone/sub"; chown -R {uid} "$T/gone""#.replace("{uid}", &WL_UID.to_string()).as_str(),
        r#"cwd "$T/gone/sub""#,
        r#"rmdir "$T/gone/sub" "$T/gone""#,
        &["working directory", "gone/sub", "parent"],
    );
}

/// An fd on /proc/1/stat, a process outside the tree: named with the fd.
#[test]
fn dump_refuses_an_fd_on_proc_of_a_process_outside_the_tree() {
    let s = refused("proc-outside", Creds::User, "", "proc-outside", "", &["/proc/1/stat", "outside the dumped tree"]);
    let fd = s.read("fd").trim().to_string();
    s.ensure(s.err("dump").contains(&format!("fd {fd}")), || format!("the message does not name fd {fd}:\n{}", s.err("dump")));
}

/// An fd on /proc/self/ns/net: a namespace file, named with the fd.
#[test]
fn dump_refuses_an_fd_on_a_namespace_file() {
    let s = refused("ns-net-fd", Creds::User, "", "ns-net", "", &["net:["]);
    let fd = s.read("fd").trim().to_string();
    s.ensure(s.err("dump").contains(&format!("fd {fd}")), || format!("the message does not name fd {fd}:\n{}", s.err("dump")));
}

// ------------------------------------------------------------------ not supported

#[test]
fn dump_refuses_a_seccomp_filter() {
    refused("seccomp", Creds::User, "", "seccomp", "", &["seccomp"]);
}

/// One thread (not the main one) in a UTS namespace of its own: the thread is named.
#[test]
fn dump_refuses_a_thread_in_its_own_uts_namespace() {
    let s = refused("uts-thread", Creds::Root, "", "uts-thread", "", &["uts namespace"]);
    let tid = s.read("tid").trim().to_string();
    s.ensure(s.err("dump").contains(&format!("thread {tid}")), || format!("the message does not name thread {tid}:\n{}", s.err("dump")));
}

/// A thread in an IPC namespace of its own (the root's own namespace is supported, see
/// e2e_ipc).
#[test]
fn dump_refuses_a_thread_in_its_own_ipc_namespace() {
    refused("ipc-ns", Creds::Root, "", "ipc-ns", "", &["ipc namespace"]);
}

/// Two processes sharing one fd table (clone(CLONE_FILES)): the message names both.
#[test]
fn dump_refuses_processes_sharing_an_fd_table() {
    let s = Scenario::run(
        "clone-files",
        &format!(
            r#"{START_HOLD}
start_hold clone-files; P=$!; put pid $P
wait_until nonempty "$T/ready" && wait_until has_lines "$T/out.txt" 3 || fail "hold.py did not start: $(cat "$T/hold.err")"
put child "$(cat "$T/child")"
snapshot before $P --no-pos
pidset before
run dump crt dump -t $P -D "$T/ck"
pidset after
snapshot after $P --no-pos
put threads "$(for p in $(tree_of $P); do echo "$p $(state $p) $(tracer $p)"; done)"
put inventory "$([ -e "$T/ck/inventory.img" ] && echo "$(images "$T/ck")")"
wait_until has_lines "$T/out.txt" $(( $(lines "$T/out.txt") + 10 )) && put counting yes
kill -USR1 $P
wait_until nonempty "$T/result"
"#
        ),
    );
    let (p, c) = (s.pid(), s.var("child").trim().to_string());
    s.failed_saying("dump", &["fd table", "CLONE_FILES"]);
    let msg = s.err("dump");
    s.ensure(msg.contains(&format!("pid {p}")) && msg.contains(&c) || msg.contains(&format!("pid {c}")) && msg.contains(&p.to_string()), || format!("the message does not name both {p} and {c}:\n{msg}"));
    s.ensure(s.var("threads").lines().count() == 2 && s.var("threads").lines().all(|l| l.ends_with(" 0") && (l.contains(" S ") || l.contains(" R "))), || format!("after the refused dump (pid state tracer):\n{}", s.var("threads")));
    s.ensure(s.var("counting") == "yes", || "the process stopped counting".into());
    s.ensure(s.var("inventory").is_empty(), || format!("a refused dump left a complete checkpoint: {}", s.var("inventory")));
    let mut pr: Vec<String> = s.verdict("result").err().into_iter().collect();
    pr.extend(s.state_problems("before", "after"));
    pr.extend(s.pidset_problems("before", "after"));
    s.all_ok(pr);
}

#[test]
fn dump_refuses_an_flock_lock() {
    refused("flock", Creds::User, "", "flock", "", &["lock", "FLOCK"]);
}

#[test]
fn dump_refuses_a_posix_record_lock() {
    refused("posix-lock", Creds::User, "", "posix-lock", "", &["lock", "POSIX"]);
}

#[test]
fn dump_refuses_a_posix_message_queue() {
    let s = refused("mqueue", Creds::User, "", "mqueue", "", &["message queue"]);
    let fd = s.read("fd").trim().to_string();
    s.ensure(s.err("dump").contains(&format!("fd {fd}")), || format!("the message does not name fd {fd}:\n{}", s.err("dump")));
}

/// A thread keyring (found only by asking the thread itself, after infection: the
/// parasite must leave without a trace).
#[test]
fn dump_refuses_a_thread_keyring() {
    let s = refused("thread-keyring", Creds::User, "", "thread-keyring", "", &["thread keyring"]);
    let id = s.read("keyring").trim().to_string();
    s.ensure(s.err("dump").contains(&id), || format!("the message does not name keyring {id}:\n{}", s.err("dump")));
}

/// A Linux AIO context (its ring mapping): refused naming it, with io_destroy as
/// the way out.
#[test]
fn dump_refuses_an_aio_context() {
    refused("aio", Creds::User, "", "aio", "", &["AIO context", "io_setup"]);
}

/// An io_uring instance: refused naming the fd.
#[test]
fn dump_refuses_an_io_uring_instance() {
    let s = refused("io-uring", Creds::User, "", "io-uring", "", &["io_uring"]);
    let fd = s.read("fd").trim().to_string();
    s.ensure(s.err("dump").contains(&format!("fd {fd}")), || format!("the message does not name fd {fd}:\n{}", s.err("dump")));
}
