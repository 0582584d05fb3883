//! End-to-end tests of file locks (tests/workloads/locks.py): refused without
//! --file-locks, taken again at restore with it. See tests/common/mod.rs.

mod common;

use common::*;

/// POSIX record locks (two ranges, a second fd of the file open), an flock on a
/// description shared with a child and an OFD lock: without --file-locks the dump
/// is refused saying so and the tree runs on; with it, after the restore another
/// process finds every lock held by its owner, and nothing more locked.
#[test]
fn posix_flock_and_ofd_locks_come_back_with_file_locks() {
    let locks = |f: &str| format!(r#"grep -v -- '->' /proc/locks | awk '{{print $2, $3, $4, $5, $7, $8}}' | sort >"$T/{f}""#);
    let before = format!(
        r#"{}
run refused crt dump -t $P -D "$T/ck0"
put tracer "$(tracer $P)""#,
        locks("locks.before")
    );
    let s = py_roundtrip("file-locks", Creds::User, "locks", "", &before, "--file-locks", "", &locks("locks.after"));
    s.failed_saying("refused", &["lock", "--file-locks"]);
    let (before, after) = (s.read("locks.before"), s.read("locks.after"));
    s.ensure(before.lines().count() >= 4, || format!("setup: /proc/locks shows {before}"));
    s.ensure(before == after, || format!("/proc/locks differs (kind, type, pid, range):\nbefore:\n{before}after:\n{after}"));
    s.roundtrip_ok("result");
    s.counter("out.txt");
}
