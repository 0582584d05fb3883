//! End-to-end test of memfds (tests/workloads/memfd.py): open and mapped (shared
//! between a parent and a child, private with a copied page, mapped with its fd
//! closed), sparse, sealed. See tests/common/mod.rs for how scenarios run.

mod common;

use common::*;

/// After the restore every memfd has its name, size, data and holes, its seals,
/// the fd its offset, the shared mappings still share (a child's write reaches the
/// parent's mapping and the fd), the private copy keeps its own page; two dumps of
/// the idle tree are byte-identical.
#[test]
fn memfds_open_and_mapped_come_back() {
    let s = Scenario::run_as(
        "memfd",
        Creds::User,
        r#"
MEMFD="$(dirname "$LOOP_PY")/memfd.py"
"${AS_WL[@]}" setsid "$PY3" "$MEMFD" "$T" </dev/null >"$T/out.txt" 2>"$T/memfd.err" & P=$!; put pid $P
wait_until nonempty "$T/ready" && wait_until has_lines "$T/out.txt" 3 || fail "memfd.py did not start: $(cat "$T/memfd.err")"
PIDS=$(tree_of $P | sort -n | tr '\n' ' ')
# A dump that leaves the tree running must not move anything (offsets included).
run dump_r crt dump -t $P -D "$T/ck-r" -R
need dump_r
snapshot before $P --no-pos
pidset before
run dump crt dump -t $P -D "$T/ck"
need dump
wait_until gone $PIDS || fail "the dumped processes are still there"
run restore crt restore -D "$T/ck" -d
need restore
pidset after
snapshot after $P --no-pos
wait_until has_lines "$T/out.txt" $(( $(lines "$T/out.txt") + 10 )) && put counting yes
kill -USR1 $P
wait_until nonempty "$T/result" || fail "memfd.py wrote no result: $(cat "$T/memfd.err")"
"#,
    );
    s.ok("dump");
    s.ok("restore");
    s.ensure(s.var("counting") == "yes", || "the restored process does not count".into());
    s.roundtrip_ok("result");
    s.counter("out.txt");
    let data = std::fs::metadata(s.path("ck/memfdpages.img")).map(|m| m.len()).unwrap_or(0);
    s.ensure(data > 0 && data < 64 * 1024, || format!("memfdpages.img is {data} bytes: the 4 MiB memfd's holes must not be stored"));
}
