//! End-to-end tests of single processes: memstate (memory, registers, signal
//! state, limits, files), restore without -d, loop.py, images that are deterministic,
//! and the image tools. See tests/common/mod.rs for how scenarios run.

mod common;

use common::*;

// ------------------------------------------------------------------ memstate

#[test]
fn memstate_survives_dump_and_restore() {
    let s = memstate_roundtrip("memstate-raw", "no-shared-anon", "");
    s.ensure(s.out("show").contains("raw pages"), || format!("show does not say raw pages:\n{}", s.out("show")));
}

#[test]
fn memstate_survives_dump_and_restore_compressed() {
    let s = memstate_roundtrip("memstate-zstd", "no-shared-anon", "--compress");
    s.ensure(s.out("show").contains("zstd pages"), || format!("show does not say zstd pages:\n{}", s.out("show")));
}

/// The same as above with a MAP_SHARED|MAP_ANONYMOUS region in the task as well.
#[test]
fn memstate_with_shared_anonymous_memory() {
    memstate_roundtrip("memstate-shared", "", "");
}

/// memstate as root: a task with every capability (the others run as an
/// unprivileged user with none) must get them all back.
#[test]
fn memstate_as_root_keeps_its_capabilities() {
    memstate_roundtrip_as("memstate-root", Creds::Root, "", "");
}

#[test]
fn restore_without_detach_exits_with_the_task_status() {
    let s = Scenario::run(
        "exit-status",
        r#"
# restore_up LOG PID: crtool (PID) logged that the task runs, or crtool is gone.
restore_up() { grep -q "restored and running" "$1" 2>/dev/null || dead "$2"; }
# idle: no interval timers, so the verdict depends on nothing but the restore.
start_memstate idle no-shared-anon; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "memstate did not get ready"
# Its parent is crtool after this restore: the root's ppid is left out of the
# snapshots and checked on its own, and crtool is no extra process.
snapshot before $P --ignore-root-ppid
pidset before
run dump "$CRTOOL" dump -t $P -D "$T/ck"
need dump
wait_until dead $P || fail "the dumped process is still alive"
# 1: SIGUSR1, the task verifies itself and exits 0 (PASS) or 1.
"$CRTOOL" restore -D "$T/ck" -o restore1.log >"$T/restore1.out" 2>"$T/restore1.err" & R=$!; put crtool1 $R
wait_until restore_up "$T/ck/restore1.log" $R
grep -q "restored and running" "$T/ck/restore1.log" || fail "restore 1 did not get the task running: $(cat "$T/restore1.err")"
alive $P && put alive1 yes
pidset after $R
snapshot after $P --ignore-root-ppid
put ppid1 "$(snap $P | cut -d' ' -f3)"
kill -USR1 $P
wait $R; echo $? >"$T/restore1.rc"
# 2: the same images again; this time the task is killed by SIGTERM: 128 + 15.
"$CRTOOL" restore -D "$T/ck" -o restore2.log >"$T/restore2.out" 2>"$T/restore2.err" & R=$!
wait_until restore_up "$T/ck/restore2.log" $R
grep -q "restored and running" "$T/ck/restore2.log" || fail "restore 2 did not get the task running: $(cat "$T/restore2.err")"
alive $P && put alive2 yes
kill -TERM $P
wait $R; echo $? >"$T/restore2.rc"
"#,
    );
    s.ensure(s.var("alive1") == "yes", || "the task was not running during restore 1".into());
    let (ppid, crtool) = (s.var("ppid1"), s.var("crtool1"));
    s.ensure(ppid == crtool, || format!("the task's parent during restore 1 is {ppid}, not crtool ({crtool})"));
    s.roundtrip_ok("result");
    let rc1 = s.rc("restore1");
    s.ensure(rc1 == 0, || format!("crtool restore exited {rc1}, the task exited 0 after PASS; stderr:\n{}", s.err("restore1")));
    s.ensure(s.var("alive2") == "yes", || "the task was not running during restore 2".into());
    let rc2 = s.rc("restore2");
    s.ensure(rc2 == 128 + libc::SIGTERM, || format!("crtool restore exited {rc2}, expected 143 (task killed by SIGTERM); stderr:\n{}", s.err("restore2")));
}

// ------------------------------------------------------------------ python loop

#[test]
fn python_loop_continues_after_restore() {
    let s = Scenario::run(
        "pyloop",
        r#"
start_loop; P=$!; put pid $P
wait_until has_lines "$T/out.txt" 10 || fail "loop.py did not start counting"
snapshot before $P --no-pos
pidset before
run dump "$CRTOOL" dump -t $P -D "$T/ck"
need dump
wait_until dead $P || fail "the dumped process is still alive"
put n_dumped "$(lines "$T/out.txt")"
sleep 0.5
put n_dead "$(lines "$T/out.txt")"
run restore "$CRTOOL" restore -D "$T/ck" -d
pidset after
snapshot after $P --no-pos
wait_until has_lines "$T/out.txt" $(( $(lines "$T/out.txt") + 20 )) && put counting yes
put tracer "$(tracer $P)"
kill $P
wait_until dead $P
"#,
    );
    let p = s.pid();
    s.ok("dump");
    s.ok("restore");
    let (dumped, dead) = (s.var("n_dumped"), s.var("n_dead"));
    s.ensure(dumped == dead, || format!("lines were written while the process was dumped and dead ({dumped} → {dead})"));
    s.ensure(s.var("counting") == "yes", || format!("pid {p} did not keep counting after restore"));
    s.ensure(s.var("tracer") == "0", || format!("pid {p} is still traced after restore (TracerPid {})", s.var("tracer")));
    let n = s.counter("out.txt");
    let dumped: u64 = dumped.trim().parse().unwrap();
    s.ensure(n >= dumped + 20, || format!("only {n} lines, {dumped} at the dump"));
    let mut p = s.state_problems("before", "after");
    p.extend(s.pidset_problems("before", "after"));
    s.all_ok(p);
}

/// `>out.txt 2>&1`: fds 1 and 2 share one open file description (one offset). After
/// the restore they must still share it, or the two streams overwrite each other.
#[test]
fn fds_sharing_a_file_description_stay_shared() {
    let s = Scenario::run(
        "shared-description",
        r#"
"${AS_WL[@]}" setsid "$PY3" "$LOOP_PY" --alternate </dev/null >"$T/out.txt" 2>&1 & P=$!; put pid $P
wait_until has_lines "$T/out.txt" 10 || fail "loop.py did not start counting"
snapshot before $P --no-pos
pidset before
run dump "$CRTOOL" dump -t $P -D "$T/ck"
need dump
wait_until dead $P || fail "the dumped process is still alive"
run restore "$CRTOOL" restore -D "$T/ck" -d
need restore
pidset after
snapshot after $P --no-pos
sleep 1
kill $P
wait_until dead $P
put size "$(stat -c %s "$T/out.txt")"
"#,
    );
    let n = s.counter("out.txt");
    s.ensure(n >= 20, || format!("only {n} lines in out.txt (size {})", s.var("size")));
    let mut p = s.state_problems("before", "after");
    p.extend(s.pidset_problems("before", "after"));
    s.all_ok(p);
}

// ------------------------------------------------------------------ determinism

/// Two dumps (--leave-running) of an idle memstate must be byte-identical, on
/// whatever CPUs the task and crtool happen to run (it is not pinned: the CPU number
/// the kernel keeps in the task's rseq area must not leak into the images), and must
/// leave the task's visible state and the PID namespace as they were.
#[test]
fn two_dumps_of_an_idle_task_are_identical() {
    let s = Scenario::run(
        "double-dump",
        r#"
start_memstate idle no-shared-anon; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "memstate did not get ready"
snapshot before $P
pidset before
run dump1 "$CRTOOL" dump -t $P -D "$T/ck1" --leave-running
sleep 0.3
run dump2 "$CRTOOL" dump -t $P -D "$T/ck2" --leave-running
# Compressed on several threads, chunks stored in order all the same.
run dump1z "$CRTOOL" dump -t $P -D "$T/ck1z" --leave-running --compress
run dump2z "$CRTOOL" dump -t $P -D "$T/ck2z" --leave-running --compress
pidset after
snapshot after $P
kill -USR1 $P
wait_until nonempty "$T/result"
"#,
    );
    for d in ["dump1", "dump2", "dump1z", "dump2z"] {
        s.ok(d);
    }
    let mut p = dump_differences(&s, 8);
    p.extend(dump_differences_between(&s, "ck1z", "ck2z", 8));
    p.extend(s.verdict("result").err().map(|e| format!("after four dumps with --leave-running: {e}")));
    p.extend(s.state_problems("before", "after"));
    p.extend(s.pidset_problems("before", "after"));
    s.all_ok(p);
}

/// The same for a small idle tree: the `pipes` workload (two processes, a pipe and a
/// FIFO with data in them), not pinned either. It must still verify afterwards (the
/// dumps read the pipes' data without consuming it).
#[test]
fn two_dumps_of_an_idle_tree_are_identical() {
    let s = Scenario::run(
        "double-dump-tree",
        r#"
start_wl pipes; P=$!; put pid $P
wait_until nonempty "$T/ready" || fail "pipes did not get ready"
put pids "$(tree_of $P | tr '\n' ' ')"
snapshot before $P
pidset before
run dump1 "$CRTOOL" dump -t $P -D "$T/ck1" --leave-running
sleep 0.3
run dump2 "$CRTOOL" dump -t $P -D "$T/ck2" --leave-running
# Compressed on several threads, chunks stored in order all the same.
run dump1z "$CRTOOL" dump -t $P -D "$T/ck1z" --leave-running --compress
run dump2z "$CRTOOL" dump -t $P -D "$T/ck2z" --leave-running --compress
pidset after
snapshot after $P
kill -USR1 $P
wait_until nonempty "$T/result"
"#,
    );
    s.ensure(s.var("pids").split_whitespace().count() == 2, || format!("setup: the tree is {}", s.var("pids")));
    s.ok("dump1");
    s.ok("dump2");
    let mut p = dump_differences(&s, 13);
    if !image_files(&s.path("ck1")).contains_key("pipes.img") {
        p.push("no pipes.img in the dump".into());
    }
    p.extend(s.verdict("result").err());
    p.extend(s.state_problems("before", "after"));
    p.extend(s.pidset_problems("before", "after"));
    s.all_ok(p);
}

// ------------------------------------------------------------------ tools

#[test]
fn show_decode_verify_and_check() {
    let s = Scenario::run(
        "tools",
        r#"
start_loop; P=$!; put pid $P
wait_until has_lines "$T/out.txt" 5 || fail "loop.py did not start counting"
run dump "$CRTOOL" dump -t $P -D "$T/ck" --leave-running
run dumpz "$CRTOOL" dump -t $P -D "$T/ckz" --leave-running --compress
kill $P
run show "$CRTOOL" show "$T/ck"
run showz "$CRTOOL" show "$T/ckz"
run verify "$CRTOOL" verify "$T/ck"
run verifyz "$CRTOOL" verify "$T/ckz"
for d in ck ckz; do
    for f in "$T/$d"/*.img; do run "decode-$d-$(basename "$f")" "$CRTOOL" decode "$f" --json; done
done
run check "$CRTOOL" check
"#,
    );
    let p = s.pid();
    s.ok("dump");
    s.ok("dumpz");
    for (step, kind) in [("show", "raw pages"), ("showz", "zstd pages")] {
        s.ok(step);
        let out = s.out(step);
        for needle in [&format!("{p} "), "python", "files:", "out.txt", kind] {
            s.ensure(out.contains(needle), || format!("`crtool {step}` does not mention {needle:?}:\n{out}"));
        }
    }
    let kinds = ["inventory.img", "pstree.img", "files.img", &format!("core-{p}.img"), &format!("mm-{p}.img"), &format!("pagemap-{p}.img"), &format!("fdinfo-{p}.img"), &format!("pages-{p}.img")];
    for d in ["ck", "ckz"] {
        let step = if d == "ck" { "verify" } else { "verifyz" };
        s.ok(step);
        let present = image_files(&s.path(d));
        for k in kinds {
            s.ensure(present.contains_key(k), || format!("{d}/{k} is missing; images: {:?}", present.keys().collect::<Vec<_>>()));
            s.ensure(s.out(step).contains(k), || format!("`crtool verify {d}` does not list {k}:\n{}", s.out(step)));
            let step = format!("decode-{d}-{k}");
            s.ok(&step);
            let json: serde_json::Value = serde_json::from_str(&s.out(&step))
                .unwrap_or_else(|e| s.fail(&format!("`crtool decode {d}/{k} --json` is not JSON ({e}):\n{}", tail(&s.out(&step), 20))));
            s.ensure(!json.is_null(), || format!("{d}/{k} decodes to null"));
        }
        let core = s.out(&format!("decode-{d}-core-{p}.img"));
        s.ensure(core.contains(&p.to_string()) && core.contains("python"), || format!("{d}/core-{p}.img decodes without its pid or comm:\n{}", tail(&core, 30)));
    }
    s.ok("check");
    s.ensure(s.out("check").contains("Looks good."), || format!("`crtool check`:\n{}", s.out("check")));
}

/// Incremental dumps: a pre-dump, a second pre-dump on top of it
/// (--prev-images-dir), then the final dump on top of that (--prev-images-dir
/// --track-mem --auto-dedup), the workload changing pages between them (also
/// with a write by the kernel, and a mapping replaced: tests/workloads/incmem.py).
/// The final dump stores under a quarter of the pages (the rest are unchanged,
/// read from the chain) and removes from the pre-dumps the chunks it no longer
/// reads (their page files take less disk; every directory still verifies; a
/// second `crtool dedup` finds nothing); a restore with the first pre-dump moved
/// away fails naming it and leaves no process behind; the restore of the whole
/// chain brings every page back as the workload recorded it, and the first
/// pre-dump alone no longer restores, saying why. One tracker runs between the
/// dumps, none after the final one.
#[test]
fn incremental_dumps_store_only_changed_pages_and_restore_from_the_chain() {
    let s = Scenario::run(
        "incmem",
        r#"
"${AS_WL[@]}" setsid "$PY3" "$(dirname "$LOOP_PY")/incmem.py" "$T" </dev/null >"$T/out.txt" 2>"$T/wl.err" & P=$!; put pid $P
wait_until nonempty "$T/ready" && wait_until has_lines "$T/out.txt" 3 || fail "incmem.py did not start: $(cat "$T/wl.err")"
run pre1 crt pre-dump -t $P -D "$T/ck1"
need pre1
kill -USR2 $P; wait_until nonempty "$T/round1" || fail "round 1 not done: $(cat "$T/wl.err")"
run pre2 crt pre-dump -t $P -D "$T/ck2" --prev-images-dir ../ck1
need pre2
put trackers "$(pgrep -xc crtool-track)"
kill -USR2 $P; wait_until nonempty "$T/round2" || fail "round 2 not done: $(cat "$T/wl.err")"
snapshot before $P --no-pos --tracked
pidset before $(pgrep -x crtool-track)
put blocks_before "$(stat -c %b "$T"/ck1/pages-*.img "$T"/ck2/pages-*.img | awk "{s += \$1} END {print s}")"
run dump crt dump -t $P -D "$T/ck" --prev-images-dir ../ck2 --track-mem --auto-dedup
need dump
put blocks_after "$(stat -c %b "$T"/ck1/pages-*.img "$T"/ck2/pages-*.img | awk "{s += \$1} END {print s}")"
for d in ck1 ck2 ck; do run verify_$d crt verify "$T/$d"; done
run dedup2 crt dedup -D "$T/ck"
wait_until gone $P || fail "the dumped process is still there"
put pages "$(sed -n 's/.*; \([0-9]*\) pages (\([0-9]*\) unchanged.*/\1 \2/p' "$T/dump.err")"
mv "$T/ck1" "$T/ck1.away"
run broken crt restore -D "$T/ck" -d
put left_after_broken "$([ -e /proc/$P ] && echo yes || echo no)"
for i in $(seq 100); do pgrep -x crtool-track >/dev/null || break; sleep 0.05; done
put trackers_after "$(pgrep -xc crtool-track)"
mv "$T/ck1.away" "$T/ck1"
run restore crt restore -D "$T/ck" -d
need restore
pidset after
snapshot after $P --no-pos
wait_until has_lines "$T/out.txt" $(( $(lines "$T/out.txt") + 10 )) && put counting yes
kill -USR1 $P
wait_until nonempty "$T/result" || fail "incmem.py wrote no result: $(cat "$T/wl.err")"
run alone crt restore -D "$T/ck1" -d --pidns
"#,
    );
    s.ok("pre1");
    let (before, after) = (s.num("blocks_before"), s.num("blocks_after"));
    s.ensure(after < before, || format!("--auto-dedup freed nothing in the pre-dumps' page files ({before} blocks before, {after} after): {}", s.err("dump")));
    for d in ["ck1", "ck2", "ck"] {
        s.ok(&format!("verify_{d}"));
    }
    s.ensure(s.err("dedup2").contains("dedup: 0 chunks"), || format!("a second dedup: {}", s.err("dedup2")));
    s.failed_saying("alone", &["dedup"]);
    s.ok("pre2");
    s.ensure(s.var("trackers") == "1", || format!("{} memory trackers between the pre-dumps", s.var("trackers")));
    s.ok("dump");
    let nums: Vec<u64> = s.var("pages").split_whitespace().filter_map(|w| w.parse().ok()).collect();
    s.ensure(nums.len() == 2 && nums[1] > 3 * nums[0], || format!("the final dump stored too much (stored, unchanged): {:?}", s.var("pages")));
    s.failed_saying("broken", &["ck1", "missing"]);
    s.ensure(s.var("left_after_broken") == "no", || "the failed restore left its process behind".into());
    s.ensure(s.var("trackers_after") == "0", || format!("{} memory trackers left after the final dump", s.var("trackers_after")));
    s.ok("restore");
    s.ensure(s.var("counting") == "yes", || "the restored process does not count".into());
    s.roundtrip_ok("result");
}

/// The page server: `crtool page-server` takes the page images of a
/// `dump --page-server` over TCP (the other images stay in the dump's
/// directory: none of the pages there); with the rest copied next to them the
/// tree restores from the server's directory, every page as the workload
/// recorded it (tests/workloads/incmem.py). A server that goes away makes the
/// dump fail with the tree left running, untraced; a dump that goes away
/// leaves nothing in the server's directory and the server fails.
#[test]
fn pages_go_to_a_page_server_and_restore_from_there() {
    let s = Scenario::run(
        "pageserver",
        r#"
PORT=$(free_port 10) || fail "no free TCP port"
"$CRTOOL" page-server -D "$T/remote" --address 127.0.0.1 --port $PORT >"$T/server.out" 2>&1 & S=$!
"${AS_WL[@]}" setsid "$PY3" "$(dirname "$LOOP_PY")/incmem.py" "$T" </dev/null >"$T/out.txt" 2>"$T/wl.err" & P=$!; put pid $P
wait_until nonempty "$T/ready" && wait_until has_lines "$T/out.txt" 3 || fail "incmem.py did not start: $(cat "$T/wl.err")"
snapshot before $P --no-pos
pidset before $S
run dump crt dump -t $P -D "$T/ck" --page-server --address 127.0.0.1 --port $PORT
need dump
wait $S; put server_rc $?
put local_pages "$(ls "$T/ck" | grep -c '^pages-')"
put remote_pages "$(ls "$T/remote" | grep -c '^pages-')"
run verify crt verify "$T/ck"
wait_until gone $P || fail "the dumped process is still there"
cp -n "$T/ck"/*.img "$T/remote/"
run restore crt restore -D "$T/remote" -d
need restore
pidset after
snapshot after $P --no-pos
wait_until has_lines "$T/out.txt" $(( $(lines "$T/out.txt") + 10 )) && put counting yes
# A server that takes the connection and goes away.
"$PY3" -c "
import socket; l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(('127.0.0.1', $PORT + 1)); l.listen(1)
open('$T/fake.ready', 'w').write('x'); c, _ = l.accept(); c.close()
" & wait_until nonempty "$T/fake.ready"
run gone crt dump -t $P -D "$T/ck2" --page-server --address 127.0.0.1 --port $(( PORT + 1 ))
put after_gone "$(state $P) $(tracer $P)"
# A dump that goes away in the middle of a file.
"$CRTOOL" page-server -D "$T/remote2" --address 127.0.0.1 --port $(( PORT + 2 )) >"$T/server2.out" 2>&1 & S2=$!
"$PY3" -c "
import socket, struct, time, zlib
for i in range(100):
    try: s = socket.create_connection(('127.0.0.1', $PORT + 2)); break
    except OSError: time.sleep(0.05)
def frame(kind, p): return struct.pack('<IBII', int.from_bytes(b'CRPS', 'little'), kind, len(p), zlib.crc32(p)) + p
s.sendall(frame(1, b'pages-42.img') + frame(2, b'x' * 4096)); time.sleep(0.2); s.close()
"
wait $S2; put server2_rc $?
put remote2_files "$(ls -A "$T/remote2" | grep -v page-server.log | wc -l)"
kill -USR1 $P
wait_until nonempty "$T/result" || fail "incmem.py wrote no result: $(cat "$T/wl.err")"
"#,
    );
    s.ok("dump");
    s.ensure(s.var("server_rc") == "0", || format!("the page server exited {}: {}", s.var("server_rc"), s.read("server.out")));
    s.ensure(s.var("local_pages") == "0" && s.var("remote_pages") == "1", || format!("page images: {} in the dump's directory, {} at the server", s.var("local_pages"), s.var("remote_pages")));
    s.ok("verify");
    s.ok("restore");
    s.ensure(s.var("counting") == "yes", || "the restored process does not count".into());
    s.failed_saying("gone", &["page server"]);
    let after = s.var("after_gone");
    s.ensure((after.starts_with('S') || after.starts_with('R')) && after.ends_with(" 0"), || format!("the tree after the failed dump: {after}"));
    s.ensure(s.var("server2_rc") != "0", || "the page server whose dump went away exited 0".into());
    s.ensure(s.var("remote2_files") == "0", || format!("{} files left by the dump that went away", s.var("remote2_files")));
    s.roundtrip_ok("result");
}
