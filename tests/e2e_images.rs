//! Damaged image directories: every image file of a real dump, truncated (at every
//! entry boundary, by half), with a byte flipped (in the header
//! and in the middle), removed, or replaced by the same file of another dump of the
//! same process; and a file that does not belong. `crtool verify` and `crtool
//! restore` must each refuse every one, naming the file, without a panic or a hang,
//! and the restore must leave no process behind. The intact images then restore, and
//! the process's state is as it was.

mod common;
use common::*;

const MUTATIONS: &[&str] = &["header-only", "last-entry", "half", "flip-header", "flip-middle", "removed", "foreign"];

#[test]
fn every_damaged_image_is_refused_by_verify_and_restore() {
    let s = Scenario::run(
        "images",
        &format!(
            r#"
# mutate KIND FILE: damage FILE as KIND says.
mutate() {{ python3 - "$1" "$2" "$T/ck_other/$(basename "$2")" <<'PY'
import os, shutil, struct, sys
kind, p, other = sys.argv[1:]
data = open(p, "rb").read()
pages = os.path.basename(p).startswith("pages-")
head = 4096 if pages else 8
def entries():
    off, ends = head, []
    while off + 8 <= len(data):
        n = struct.unpack_from("<I", data, off)[0]
        off += 8 + n
        ends.append(off)
    return ends
def cut(n):
    open(p, "r+b").truncate(n)
def flip(off):
    with open(p, "r+b") as f:
        f.seek(off); b = f.read(1); f.seek(off); f.write(bytes([b[0] ^ 0x5a]))
if kind == "header-only": cut(head)
elif kind == "last-entry":
    if pages: cut(max(head, len(data) - 4096))
    else:
        ends = entries()
        cut(ends[-2] if len(ends) > 1 else head)
elif kind == "half": cut(len(data) // 2)
elif kind == "flip-header": flip(5)
elif kind == "flip-middle": flip(max(head, len(data) // 2))
elif kind == "removed": os.remove(p)
elif kind == "foreign": shutil.copyfile(other, p)
PY
}}
start_loop; P=$!; put pid $P
wait_until has_lines "$T/out.txt" 5 || fail "loop.py did not start counting"
# Another dump of the same process, a moment earlier, for the "foreign" files.
run other crt dump -t $P -D "$T/ck_other" -R
need other
wait_until has_lines "$T/out.txt" $(( $(lines "$T/out.txt") + 3 ))
snapshot before $P --no-pos
pidset before
run dump crt dump -t $P -D "$T/ck"
need dump
wait_until dead $P || fail "the dumped process is still alive"
pidset dumped
: >"$T/results"
# try_bad N: verify and restore $T/bad, recording both exit codes and the pid's state.
try_bad() {{
    run "v.$1" crt verify "$T/bad"
    run "r.$1" crt restore -D "$T/bad" -d
    sleep 0.05
    echo "$1 $(cat "$T/v.$1.rc") $(cat "$T/r.$1.rc") $(state $P)" >>"$T/results"
}}
for f in $(cd "$T/ck" && ls *.img); do
  for m in {mutations}; do
    # (The same file of both dumps may be identical: nothing to swap then.)
    [ $m = foreign ] && cmp -s "$T/ck/$f" "$T/ck_other/$f" && continue
    n="$m.$f"
    rm -rf "$T/bad"; cp -a "$T/ck" "$T/bad"
    mutate $m "$T/bad/$f"
    # (An empty file has no entry to cut nor middle to flip.)
    [ -e "$T/bad/$f" ] && cmp -s "$T/ck/$f" "$T/bad/$f" && continue
    try_bad "$n"
  done
done
# Every entry boundary of every framed file (a cut there leaves whole entries).
for f in $(cd "$T/ck" && ls *.img | grep -v '^pages-'); do
  for cut in $(python3 -c 'import struct, sys
d = open(sys.argv[1], "rb").read(); off = 8
while off < len(d):
    print(off); off += 8 + struct.unpack_from("<I", d, off)[0]' "$T/ck/$f"); do
    n="cut$cut.$f"
    rm -rf "$T/bad"; cp -a "$T/ck" "$T/bad"; truncate -s $cut "$T/bad/$f"
    try_bad "$n"
  done
done
# A file that is not part of the dump.
rm -rf "$T/bad"; cp -a "$T/ck" "$T/bad"; cp "$T/ck/core-$P.img" "$T/bad/core-99999.img"
try_bad extra.core-99999.img
pidset failed
run restore crt restore -D "$T/ck" -d
need restore
pidset after
snapshot after $P --no-pos
wait_until has_lines "$T/out.txt" $(( $(lines "$T/out.txt") + 10 )) && put counting yes
kill $P
"#,
            mutations = MUTATIONS.join(" ")
        ),
    );
    let mut p = Vec::new();
    let results = s.read("results");
    let mut seen = 0;
    for line in results.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [n, vrc, rrc, state] = f[..] else {
            p.push(format!("bad result line {line:?}"));
            continue;
        };
        seen += 1;
        let file = n.split_once('.').map(|(_, f)| f).unwrap_or(n);
        for (step, rc) in [("v", vrc), ("r", rrc)] {
            let err = s.err(&format!("{step}.{n}"));
            let what = if step == "v" { "verify" } else { "restore" };
            if rc == "0" || rc == "124" || rc.parse::<i32>().map_or(true, |c| c > 128) {
                p.push(format!("{what} of {n}: exit {rc} (want a refusal): {}", tail(&err, 3)));
            } else if !err.contains(file) || err.contains("panicked") {
                p.push(format!("{what} of {n} does not name {file}: {}", tail(&err, 3)));
            }
        }
        if state != "gone" {
            p.push(format!("after the refused restore of {n}, pid {} is {state}", s.pid()));
        }
    }
    s.ensure(seen >= 8 * (MUTATIONS.len() - 1), || format!("only {seen} damaged directories were tried:\n{results}"));
    p.extend(s.pidset_problems("dumped", "failed"));
    s.ok("restore");
    s.ensure(s.var("counting") == "yes", || "the intact images did not restore a counting process".into());
    s.counter("out.txt");
    p.extend(s.state_problems("before", "after"));
    p.extend(s.pidset_problems("before", "after"));
    s.all_ok(p);
}

/// A process large enough for the restore to fill its memory with a helper
/// process (see mem::restore::Copier), its page image damaged in the half the
/// helper reads (a byte flipped, then the file cut short): the restore fails
/// naming the file (flipped: the offset, as the helper found it), and leaves no
/// process behind (nor the helper); the intact images then restore.
#[test]
fn damage_in_the_half_a_helper_fills_is_refused_too() {
    let s = Scenario::run(
        "images-helper",
        r#"
"${AS_WL[@]}" setsid "$EXAMPLES/bench_mem" 48 "$T/bm_ready" </dev/null >"$T/bench_mem.log" 2>&1 & P=$!; put pid $P
wait_until nonempty "$T/bm_ready" || fail "bench_mem did not get ready: $(cat "$T/bench_mem.log")"
snapshot before $P --no-pos
run dump crt dump -t $P -D "$T/ck"
need dump
wait_until gone $P || fail "the dumped process is still there"
F="pages-$P.img"; put file "$F"
size=$(stat -c %s "$T/ck/$F")
rm -rf "$T/bad"; cp -a "$T/ck" "$T/bad"
python3 -c 'import sys
p, off = sys.argv[1], int(sys.argv[2])
with open(p, "r+b") as f:
    f.seek(off); b = f.read(1); f.seek(off); f.write(bytes([b[0] ^ 0x5a]))' "$T/bad/$F" $(( size * 3 / 4 ))
run flipped crt restore -D "$T/bad" -d
sleep 0.1
put left_flipped "$(pgrep -c -x bench_mem)"
rm -rf "$T/bad"; cp -a "$T/ck" "$T/bad"; truncate -s $(( size * 7 / 8 )) "$T/bad/$F"
run cut crt restore -D "$T/bad" -d
sleep 0.1
put left_cut "$(pgrep -c -x bench_mem)"
run restore crt restore -D "$T/ck" -d
need restore
snapshot after $P --no-pos
kill -9 $P
"#,
    );
    let file = s.var("file");
    for (step, left) in [("flipped", "left_flipped"), ("cut", "left_cut")] {
        let err = s.err(step);
        s.ensure(s.rc(step) != 0 && s.rc(step) < 128, || format!("restore of the {step} image: exit {} ({})", s.rc(step), tail(&err, 3)));
        // (A cut file is refused before any process is forked: its size is
        // not the one the inventory lists.)
        let named = err.contains(&file) && (step == "cut" || (err.contains("offset") && err.contains("helper")));
        s.ensure(named, || format!("restore of the {step} image does not name {file} (and, flipped, the helper finding it damaged at an offset): {}", tail(&err, 3)));
        s.ensure(s.var(left) == "0", || format!("{} bench_mem processes left after the refused restore of the {step} image", s.var(left)));
    }
    s.ok("restore");
    s.all_ok(s.state_problems("before", "after"));
}
