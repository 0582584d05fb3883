//! The command line as a user meets it: restoring one checkpoint twice side by side
//! with `--pidns` (and `--pidfile`), handing a pipe to a process outside the tree
//! over with `--external` / `--inherit-fd`, and the refusals that must come before
//! anything is touched (PID 1, a zombie, a missing pid or directory, CRIU options
//! not supported yet). See tests/common/mod.rs for how scenarios run.

mod common;
use common::*;

/// loop.py dumped once, restored twice with `restore --pidns -d --pidfile`: two
/// processes run side by side, each the original PID inside a PID namespace of its
/// own under crtool's init, both counting on from where the dump froze the one.
#[test]
fn one_checkpoint_restores_twice_side_by_side_with_pidns() {
    let s = Scenario::run(
        "pidns-twice",
        r#"
start_loop; P=$!; put pid $P
wait_until has_lines "$T/out.txt" 5 || fail "loop.py did not start counting"
snapshot before $P --no-pos
run dump crt dump -t $P -D "$T/ck"
need dump
wait_until dead $P || fail "the dumped process is still alive"
n0=$(lines "$T/out.txt")
run r1 crt restore -D "$T/ck" -d --pidns --pidfile "$T/pid1"
run r2 crt restore -D "$T/ck" -d --pidns --pidfile "$T/pid2"
need r1; need r2
A=$(cat "$T/pid1"); B=$(cat "$T/pid2"); put a "$A"; put b "$B"
put nspid_a "$(awk '/^NSpid:/ {print $NF}' /proc/$A/status)"
put nspid_b "$(awk '/^NSpid:/ {print $NF}' /proc/$B/status)"
put init_a "$(cat /proc/$(awk '/^PPid:/ {print $2}' /proc/$A/status)/cmdline | tr '\0' ' ')"
put ns_differ "$([ "$(readlink /proc/$A/ns/pid)" != "$(readlink /proc/$B/ns/pid)" ] && echo yes)"
# Both count on: the file grows by two lines a tick.
wait_until has_lines "$T/out.txt" $(( n0 + 20 )) && put counting yes
put state_a "$(state $A) $(tracer $A)"; put state_b "$(state $B) $(tracer $B)"
kill $A $B
wait_until dead $A && wait_until dead $B && put gone yes
"#,
    );
    s.ok("r1");
    s.ok("r2");
    let (a, b) = (s.var("a"), s.var("b"));
    s.ensure(!a.is_empty() && a != b, || format!("--pidfile gave {a:?} and {b:?}"));
    s.ensure(s.var("nspid_a") == s.pid().to_string() && s.var("nspid_b") == s.pid().to_string(), || format!("inner pids {} and {}, expected {}", s.var("nspid_a"), s.var("nspid_b"), s.pid()));
    s.ensure(s.var("ns_differ") == "yes", || "both restores share one PID namespace".into());
    s.ensure(s.var("init_a").contains("__pidns-init"), || format!("the restored root's parent is {:?}, not crtool's init", s.var("init_a")));
    s.ensure(s.var("counting") == "yes", || "the two restored processes do not both count".into());
    for v in ["state_a", "state_b"] {
        s.ensure(s.var(v).starts_with('S') || s.var(v).starts_with('R'), || format!("{v}: {}", s.var(v)));
        s.ensure(s.var(v).ends_with(" 0"), || format!("{v}: still traced: {}", s.var(v)));
    }
    s.ensure(s.var("gone") == "yes", || "the restored processes did not end when killed".into());
}

/// `python3 loop.py | cat`: python3's stdout is a pipe to cat, outside the dumped
/// tree. Dumped alone it is refused, naming cat; an `--external` naming a pipe it
/// does not hold is refused. With `--external pipe:[ID]` it is dumped, and restored
/// with `--inherit-fd fd[7]:pipe:[ID]`, fd 7 a new write end of cat's pipe, it goes
/// on writing to cat: the counter continues in cat's output without a gap. The
/// wrong fd for `--inherit-fd` (not a pipe, or a pipe the images do not know) is
/// refused before anything is created.
#[test]
fn a_pipe_to_a_process_outside_is_handed_over_with_inherit_fd() {
    let s = Scenario::run(
        "external-pipe",
        r#"
export T LOOP_PY
"${AS_WL[@]}" setsid bash -c '"$PY3" "$LOOP_PY" | cat >"$T/out.txt"' </dev/null >/dev/null 2>"$T/loop.err" &
wait_until has_lines "$T/out.txt" 5 || fail "the pipeline did not start"
S=$!
P=$(pgrep -f -n "$LOOP_PY"); C=$(pgrep -x -n cat); put pid $P; put cat $C
ID=$(readlink /proc/$P/fd/1 | tr -dc 0-9); put id $ID
# The caller's own write end into cat's pipe (as a container runtime keeps one):
# cat sees no end of file while python3 is away, and restore gets it as fd 7.
exec 7>/proc/$C/fd/0
run plain crt dump -t $P -D "$T/ck" -j
run wrong crt dump -t $P -D "$T/ck" -j --external "pipe:[999999]"
put alive "$(state $P) $(tracer $P)"
run dump crt dump -t $P -D "$T/ck" -j --external "pipe:[$ID]"
need dump
wait_until dead $P || fail "the dumped process is still alive"
pidset dumped
run notpipe crt restore -D "$T/ck" -d -j --inherit-fd "fd[7]:pipe:[$ID]" 7>/dev/null
run unknown crt restore -D "$T/ck" -d -j --inherit-fd "fd[7]:pipe:[12345]"
run missing crt restore -D "$T/ck" -d -j
pidset refused
n=$(lines "$T/out.txt")
run restore crt restore -D "$T/ck" -d -j --inherit-fd "fd[7]:pipe:[$ID]"
exec 7>&-
need restore
wait_until has_lines "$T/out.txt" $(( n + 10 )) && put counting yes
kill $P $C 2>/dev/null
"#,
    );
    let (p, cat, id) = (s.pid(), s.var("cat"), s.var("id"));
    s.failed_saying("plain", &[&format!("pid {p}"), "outside the dumped tree", "--external"]);
    let _ = cat;
    s.failed_saying("wrong", &["pipe:[999999]"]);
    s.ensure(s.var("alive").starts_with('S') || s.var("alive").starts_with('R'), || format!("after the refused dumps pid {p} is {}", s.var("alive")));
    s.ok("dump");
    s.failed_saying("notpipe", &["fd[7]", "not a pipe"]);
    s.failed_saying("unknown", &["pipe:[12345]", &format!("pipe:[{id}]")]);
    s.failed_saying("missing", &["--inherit-fd", &format!("pipe:[{id}]")]);
    let mut problems = s.pidset_problems("dumped", "refused");
    s.ok("restore");
    s.ensure(s.var("counting") == "yes", || "the restored process does not write to cat".into());
    s.counter("out.txt");
    s.all_ok(std::mem::take(&mut problems));
}

/// Refused before anything is touched, each with its reason and a non-zero exit:
/// dumping PID 1 (the init of crtool's namespace), a zombie, a pid that does not
/// exist; restoring from a directory that does not exist (which is not created);
/// CRIU options and commands crtool does not implement yet. The process named in
/// those commands runs on untraced.
#[test]
fn refusals_come_first_and_say_why() {
    let s = Scenario::run(
        "refusals-cli",
        r#"
start_loop; P=$!; put pid $P
wait_until has_lines "$T/out.txt" 5 || fail "loop.py did not start counting"
# A zombie: the child of a process that never reaps (bash forks it, then becomes
# sleep; the child ends only after that, so bash cannot reap it first).
bash -c '(sleep 0.3; exit 3) & exec sleep 60' & Z=$!
has_child() { [ -n "$(cat /proc/$1/task/*/children 2>/dev/null)" ]; }
wait_until has_child $Z || fail "no zombie: $(ps -ef --forest | tr '\n' ';')"
ZC=$(cat /proc/$Z/task/*/children | tr -d ' '); wait_until grep -q '^State:.*Z' /proc/$ZC/status || fail "$ZC is not a zombie"; put zombie $ZC
run init crt dump -t 1 -D "$T/ck1"
run zombie crt dump -t $ZC -D "$T/ck2"
run nopid crt dump -t 999999 -D "$T/ck3"
run nodir crt restore -D "$T/no/such/dir" -d
put nodir_made "$([ -e "$T/no" ] && echo yes)"
run trackmem crt dump -t $P -D "$T/ck4" --freeze-cgroup /sys/fs/cgroup/x
run predump crt lazy-pages -D "$T/ck5"
run lazy crt restore -D "$T/ck4" --lazy-pages
put images "$(ls "$T"/ck1 "$T"/ck2 "$T"/ck3 "$T"/ck4 "$T"/ck5 2>/dev/null | grep -c '\.img$')"
put alive "$(state $P) $(tracer $P)"
kill $P $Z
"#,
    );
    s.failed_saying("init", &["pid 1", "init"]);
    s.failed_saying("zombie", &[&format!("pid {}", s.var("zombie")), "zombie"]);
    s.failed_saying("nopid", &["999999"]);
    s.failed_saying("nodir", &["no/such/dir"]);
    s.ensure(s.var("nodir_made").is_empty(), || "restore created the missing image directory".into());
    s.failed_saying("trackmem", &["--freeze-cgroup", "not supported yet"]);
    // (Lazy restore exists: with no dump there, both say which directory.)
    s.failed_saying("predump", &["ck5"]);
    s.failed_saying("lazy", &["ck4"]);
    s.ensure(s.var("images").trim() == "0", || format!("refused commands left {} image files", s.var("images")));
    let alive = s.var("alive");
    s.ensure((alive.starts_with('S') || alive.starts_with('R')) && alive.ends_with(" 0"), || format!("loop.py after the refusals: {alive}"));
}
