//! End-to-end tests of the files a task uses (tests/workloads/hold.py): names that
//! /proc escapes (a newline, a literal " (deleted)"), a task near vm.max_map_count, a
//! chrooted task; and restores that must refuse files that are not the ones dumped
//! (an executable replaced, a mapped file changed, an open file resized under
//! --file-validation filesize), leaving nothing running, and go ahead with
//! --file-validation none. See tests/common/mod.rs for how scenarios run.

mod common;

use common::*;

const START_HOLD: &str = r#"
HOLD="$(dirname "$LOOP_PY")/hold.py"
# start_hold WHAT ARGS...: hold.py as a session leader (PYEXE: another interpreter).
start_hold() { "${AS_WL[@]}" setsid "${PYEXE:-$PY3}" "$HOLD" "$T" "$@" </dev/null >"$T/out.txt" 2>"$T/hold.err" & }
"#;

/// `hold.py WHAT` (after `setup`; `ready` is where it writes ready) through a dump
/// and a restore, then SIGUSR1: the verdict (in `result`), the snapshots and the
/// processes before and after, and the counter must be right.
fn roundtrip(name: &str, creds: Creds, setup: &str, what: &str, ready: &str, result: &str, after: &str) -> Scenario {
    let s = Scenario::run_as(
        name,
        creds,
        &format!(
            r#"{START_HOLD}
{setup}
start_hold {what}; P=$!; put pid $P
wait_until nonempty "{ready}" && wait_until has_lines "$T/out.txt" 3 || fail "hold.py {what} did not start: $(cat "$T/hold.err")"
PIDS=$(tree_of $P | sort -n | tr '\n' ' ')
snapshot before $P --no-pos
pidset before
D0=${{EPOCHREALTIME/./}}
run dump crt dump -t $P -D "$T/ck"
D1=${{EPOCHREALTIME/./}}
need dump
wait_until gone $PIDS || fail "the dumped process is still there"
R0=${{EPOCHREALTIME/./}}
run restore crt restore -D "$T/ck" -d
R1=${{EPOCHREALTIME/./}}
need restore
put times "$(( (D1 - D0) / 1000 )) $(( (R1 - R0) / 1000 ))"
pidset after
snapshot after $P --no-pos
put tracer "$(tracer $P)"
{after}
wait_until has_lines "$T/out.txt" $(( $(lines "$T/out.txt") + 10 )) && put counting yes
kill -USR1 $P
wait_until nonempty "{result}" || fail "hold.py wrote no result after SIGUSR1: $(cat "$T/hold.err")"
"#
        ),
    );
    s.ok("dump");
    s.ok("restore");
    s.ensure(s.var("tracer") == "0", || format!("TracerPid after the restore: {}", s.var("tracer")));
    s.ensure(s.var("counting") == "yes", || "the restored process does not count".into());
    let rel = result.strip_prefix("$T/").unwrap_or(result);
    s.roundtrip_ok(rel);
    s.counter("out.txt");
    s
}

// ------------------------------------------------------------------ names and sizes

/// Open flags only open(2) sets (O_DIRECT, O_NOATIME, O_APPEND) and a file of
/// another filesystem (tmpfs, /dev/shm) at an offset come back as they were.
#[test]
fn open_flags_and_tmpfs_files_come_back() {
    roundtrip("open-flags", Creds::User, "", "open-flags", "$T/ready", "$T/result", "");
}

/// Files of /proc: a child's /proc/PID/stat and /proc/PID directory, /proc/self/
/// status at an offset, /proc/meminfo: reopened by the task once its child exists,
/// naming the same pids and files, at their offsets.
#[test]
fn files_of_proc_come_back() {
    roundtrip("proc-files", Creds::User, "", "proc-child-stat", "$T/ready", "$T/result", "");
}

/// A shared mapping of DIR/"data\nfile.bin" (the newline is "\012" in
/// /proc/PID/maps): it comes back with its content ("before"), and a write through it
/// after the restore reaches the file.
#[test]
fn mapped_file_with_a_newline_in_its_name() {
    let s = roundtrip("newline-name", Creds::User, "", "newline", "$T/ready", "$T/result", "");
    let data = std::fs::read(s.path("data\nfile.bin")).unwrap_or_default();
    s.ensure(data.starts_with(b"written-after-restore"), || format!("the file holds {:?} after a write through the restored mapping", String::from_utf8_lossy(&data[..data.len().min(24)])));
}

/// A file literally named "x (deleted)", open and mapped shared: it is not a deleted
/// file, and comes back as that file (fd and mapping; a write through the mapping
/// reaches it).
#[test]
fn file_literally_named_deleted_is_open_and_mapped_again() {
    roundtrip("deleted-name", Creds::User, "", "deleted-name", "$T/ready", "$T/result", "");
}

/// 65520 VMAs in all (vm.max_map_count is 65530 by default), more than the old
/// limit of vm.max_map_count minus crtool's own mappings: dumped and restored with
/// every VMA, protection and page tag, in a bounded time.
#[test]
fn process_with_65520_vmas_near_max_map_count() {
    let s = roundtrip("many-vmas", Creds::User, "", "vmas 65520", "$T/ready", "$T/result", "");
    let n = s.read("vmas").trim().parse::<usize>().unwrap_or(0);
    let max: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(65530);
    s.ensure(n >= 65500 && n <= max, || format!("setup: the process had {n} VMAs (vm.max_map_count {max})"));
    let t: Vec<u64> = s.var("times").split_whitespace().filter_map(|v| v.parse().ok()).collect();
    s.note(&format!("{n} VMAs: dump {} ms, restore {} ms", t.first().unwrap_or(&0), t.get(1).unwrap_or(&0)));
    s.ensure(t.len() == 2 && t[0] < 15000 && t[1] < 15000, || format!("dump and restore of {n} VMAs took {:?} ms (more than 15 s)", t));
}

/// A task chrooted into $T/jail with its cwd at /sub (then uid 1000): /proc/PID/root
/// and cwd come back identical and the task still opens /data.txt relative to its
/// root.
#[test]
fn chrooted_process_keeps_its_root_and_cwd() {
    let s = roundtrip(
        "chroot",
        Creds::Root,
        &format!(r#"mkdir -p "$T/jail/sub"; echo "jailed data" >"$T/jail/data.txt"; chown {WL_UID} "$T/jail""#),
        r#"chroot "$T/jail""#,
        "$T/jail/ready",
        "$T/jail/result",
        r#"put links "$(readlink /proc/$P/root) $(readlink /proc/$P/cwd)""#,
    );
    let dir = s.path("jail");
    let want = format!("{} {}/sub", dir.display(), dir.display());
    s.ensure(s.var("links") == want, || format!("root and cwd after the restore: {:?}, expected {want:?}", s.var("links")));
}

// ------------------------------------------------------------------ changed files

/// A file changed between dump and restore.
struct Change<'a> {
    /// bash before the workload starts, and hold.py's WHAT.
    setup: &'a str,
    what: &'a str,
    /// bash that alters a file after the dump.
    change: &'a str,
    /// Options of the restore that must fail, and what its message must name.
    restore_opts: &'a str,
    needles: &'a [&'a str],
    /// bash after the failed restore, and the options of the restore that must work.
    fix: &'a str,
    retry_opts: &'a str,
}

/// The process (`hold.py WHAT`, after `setup`) is dumped; `change` alters a file;
/// the restore (with `restore_opts`) must fail with `needles` and the pid in its
/// message and leave nothing running; then a restore after `fix` (with `retry_opts`)
/// must bring the process back, its state as before the dump, and its verdict PASS.
fn changed_file(name: &str, c: Change) -> Scenario {
    let Change { setup, what, change, restore_opts, needles, fix, retry_opts } = c;
    let s = Scenario::run(
        name,
        &format!(
            r#"{START_HOLD}
{setup}
start_hold {what}; P=$!; put pid $P
wait_until nonempty "$T/ready" && wait_until has_lines "$T/out.txt" 3 || fail "hold.py {what} did not start: $(cat "$T/hold.err")"
snapshot before $P --no-pos
pidset before
run dump crt dump -t $P -D "$T/ck"
need dump
wait_until gone $P || fail "the dumped process is still there"
pidset dumped
{change}
run restore crt restore -D "$T/ck" -d {restore_opts}
sleep 0.3
pidset failed
put left "$([ -e /proc/$P ] && echo "$P $(state $P)")"
put n "$(lines "$T/out.txt")"
{fix}
run retry crt restore -D "$T/ck" -d {retry_opts}
need retry
pidset after
snapshot after $P --no-pos
wait_until has_lines "$T/out.txt" $(( $(lines "$T/out.txt") + 10 )) && put counting yes
kill -USR1 $P
wait_until nonempty "$T/result" || fail "hold.py wrote no result after SIGUSR1: $(cat "$T/hold.err")"
"#
        ),
    );
    s.ok("dump");
    s.failed_saying("restore", needles);
    s.failed_saying("restore", &[&format!("pid {}", s.pid())]);
    s.ensure(s.var("left").is_empty(), || format!("a process is left after the refused restore: {}", s.var("left")));
    s.ensure(s.var("counting") == "yes", || "the process restored afterwards does not count".into());
    let mut p = s.pidset_problems("dumped", "failed");
    p.extend(s.verdict("result").err());
    p.extend(s.state_problems("before", "after"));
    p.extend(s.pidset_problems("before", "after"));
    s.all_ok(p);
    s.counter("out.txt");
    s
}

/// Python copied to $T/bin/python3 runs the workload.
const OWN_PYTHON: &str = r#"mkdir "$T/bin"; cp "$(readlink -f "$PY3")" "$T/bin/python3"; chmod 755 "$T/bin/python3"; PYEXE="$T/bin/python3""#;

/// The executable replaced by a rebuild (the same program with another ELF build-id,
/// of the same size) moved over it: refused, naming the file and its build-id; with
/// --file-validation none the same images restore (the code is the same) and run.
#[test]
fn restore_refuses_an_executable_replaced_by_a_rebuild() {
    changed_file(
        "exe-rebuilt-mv",
        Change {
            setup: OWN_PYTHON,
            what: "none",
            change: r#"cp "$T/bin/python3" "$T/bin/python3.new"
python3 - "$T/bin/python3.new" <<'EOF'
import sys
p = sys.argv[1]; b = bytearray(open(p, "rb").read())
i = b.find(b"\x03\x00\x00\x00GNU\x00")
assert i >= 8 and b[i - 8:i - 4] == b"\x04\x00\x00\x00", "no GNU build-id note"
n = int.from_bytes(b[i - 4:i], "little")
b[i + 8:i + 8 + n] = bytes(x ^ 0xFF for x in b[i + 8:i + 8 + n])
open(p, "wb").write(b)
EOF
mv "$T/bin/python3.new" "$T/bin/python3""#,
            restore_opts: "",
            needles: &["bin/python3", "build-id"],
            fix: "",
            retry_opts: "--file-validation none",
        },
    );
}

/// The executable overwritten in place (same inode) by another program: refused,
/// naming the file and what changed; with the original copied back, the images
/// restore.
#[test]
fn restore_refuses_an_executable_overwritten_in_place() {
    let s = changed_file(
        "exe-overwritten-cp",
        Change {
            setup: OWN_PYTHON,
            what: "none",
            change: r#"cp "$T/bin/python3" "$T/python3.orig"; put ino_before "$(stat -c %i "$T/bin/python3")"
cp "$(command -v env)" "$T/bin/python3"; put ino_after "$(stat -c %i "$T/bin/python3")""#,
            restore_opts: "",
            needles: &["bin/python3", "size"],
            fix: r#"cp "$T/python3.orig" "$T/bin/python3""#,
            retry_opts: "",
        },
    );
    s.ensure(s.var("ino_before") == s.var("ino_after"), || "setup: cp did not overwrite the file in place".into());
}

/// A mapped data file (MAP_PRIVATE, not ELF) rewritten with other bytes of the same
/// size: refused, naming the file and the mapped bytes; --file-validation none
/// restores it, and the mapping then shows the file as it is now.
#[test]
fn restore_refuses_a_mapped_file_changed_at_the_same_size() {
    let s = changed_file(
        "mapped-changed",
        Change {
            setup: r#"{ echo "original content"; head -c 8000 /dev/zero; } >"$T/data.bin"; chmod 644 "$T/data.bin""#,
            what: r#"map "$T/data.bin""#,
            change: r#"S=$(stat -c %s "$T/data.bin"); { echo "changed content!"; head -c 8000 /dev/zero; } | head -c $S >"$T/data.bin.new"; cat "$T/data.bin.new" >"$T/data.bin"; put sizes "$S $(stat -c %s "$T/data.bin")""#,
            restore_opts: "",
            needles: &["data.bin", "differ"],
            fix: "",
            retry_opts: "--file-validation none",
        },
    );
    let sizes: Vec<u64> = s.var("sizes").split_whitespace().filter_map(|v| v.parse().ok()).collect();
    s.ensure(sizes.len() == 2 && sizes[0] == sizes[1], || format!("setup: the file's size before and after the change: {:?}", s.var("sizes")));
    let seen = s.read("seen");
    s.ensure(seen.starts_with("changed content!"), || format!("with --file-validation none the mapping shows {seen:?}, expected the file's new content"));
}

/// An open (not mapped) regular file that grew: --file-validation filesize refuses
/// it, naming the file and the sizes; the default validation (mapped files only)
/// restores the same images.
#[test]
fn restore_with_filesize_validation_refuses_an_open_file_that_grew() {
    changed_file(
        "open-file-grew",
        Change {
            setup: r#"echo "some text" >"$T/data.txt"; chmod 644 "$T/data.txt""#,
            what: r#"open "$T/data.txt""#,
            change: r#"echo "more" >>"$T/data.txt""#,
            restore_opts: "--file-validation filesize",
            needles: &["data.txt", "size is 15 bytes", "10 bytes"],
            fix: "",
            retry_opts: "",
        },
    );
}
