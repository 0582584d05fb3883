//! `tree`: a process tree with process groups, a second session, zombies and orphans.
//!
//!     tree DIR [zombies] [leaderless] [bigmem]
//!
//! Start it as a session leader (setsid), or as PID 1 of a PID namespace. The root
//! becomes a child subreaper and forks a tree of depth 3 and width 3 (nodes named
//! r, r.0, r.0.1, ...: 40 processes), where
//! - r.0 is a process group leader but not a session leader (setpgid), so its
//!   subtree is in group r.0;
//! - r.2.1 leads a session of its own (setsid), with its subtree in it;
//! - with `zombies`, r.1 has two zombie children it does not reap before the
//!   restore: z42 exited with 42, zterm was killed by SIGTERM;
//! - orphans: r.2 forks p, p forks x, x makes its own process group, forks o1 and
//!   o2 into it, then p exits: x is orphaned and reparented to the root. With
//!   `leaderless` x exits instead (before p): o1 and o2 are reparented to the root
//!   and their process group x has no leader any more.
//!
//! With `bigmem`, r, r.0 and r.1 each fill 40 MiB of their own memory with a
//! pattern of their name (after forking their children) and check every word of
//! it on SIGUSR1 (enough for a restore to fill it on two processes).
//!
//! Every live process records "NAME PID PPID PGID SID" in DIR/tree/PID.rec (zombies
//! are recorded by their parent), the root runs `ps` and writes DIR/ready.
//!
//! On SIGUSR1 the root sends SIGUSR1 to every process; each checks getpid, getppid,
//! getpgrp and getsid against its record (r.1 also waitpid()s its zombies and checks
//! their status, the root that it is still a subreaper) and writes DIR/tree/PID.res,
//! waits for its children and exits. The root then compares `ps` with what it saw
//! before (in a PID namespace of its own: the whole of `ps -e`), collects every
//! verdict and writes DIR/result.

#[path = "common.rs"]
mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const DEPTH: usize = 3;
const WIDTH: usize = 3;

struct Ids {
    pid: i32,
    ppid: i32,
    pgid: i32,
    sid: i32,
}

fn ids() -> Ids {
    // SAFETY: plain getters.
    unsafe { Ids { pid: libc::getpid(), ppid: libc::getppid(), pgid: libc::getpgrp(), sid: libc::getsid(0) } }
}

fn rec_dir(dir: &Path) -> PathBuf {
    dir.join("tree")
}

fn record(dir: &Path, name: &str, i: &Ids) {
    write_file(&rec_dir(dir).join(format!("{}.rec", i.pid)), &format!("{name} {} {} {} {}\n", i.pid, i.ppid, i.pgid, i.sid));
}

/// Every record: pid → (name, pid, ppid, pgid, sid).
fn records(dir: &Path) -> BTreeMap<i32, (String, [i32; 4])> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(rec_dir(dir)).into_iter().flatten().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "rec") {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let f: Vec<&str> = text.split_whitespace().collect();
            if f.len() == 5 {
                let n: Vec<i32> = f[1..].iter().map(|v| v.parse().unwrap_or(-1)).collect();
                out.insert(n[0], (f[0].to_string(), [n[0], n[1], n[2], n[3]]));
            }
        }
    }
    out
}

/// Checks this process's ids against what it recorded, and writes its verdict.
fn verify(dir: &Path, name: &str, before: &Ids, extra: Report) {
    let now = ids();
    let mut r = Report::default();
    let who = format!("{name} (pid {})", before.pid);
    r.expect(now.pid == before.pid, || format!("{who}: getpid() is {}", now.pid));
    r.expect(now.ppid == before.ppid, || format!("{who}: getppid() is {}, expected {}", now.ppid, before.ppid));
    r.expect(now.pgid == before.pgid, || format!("{who}: getpgrp() is {}, expected {}", now.pgid, before.pgid));
    r.expect(now.sid == before.sid, || format!("{who}: getsid() is {}, expected {}", now.sid, before.sid));
    r.add(extra);
    write_file(&rec_dir(dir).join(format!("{}.res", before.pid)), &r.text());
}

/// Waits for every child (ECHILD), then exits.
fn reap_all_and_exit() -> ! {
    while waitpid(-1, 0).is_some() {}
    std::process::exit(0);
}

/// The life of every process but the root once set up: record, wait for SIGUSR1,
/// verify, reap, exit.
fn settle(dir: &Path, name: &str, extra: impl FnOnce() -> Report) -> ! {
    let me = ids();
    record(dir, name, &me);
    wait_usr1();
    verify(dir, name, &me, extra());
    reap_all_and_exit()
}

/// In a fresh child: runs `f` and never returns. In the parent: the child's pid.
fn spawn(f: impl FnOnce()) -> i32 {
    let pid = fork();
    if pid == 0 {
        f();
        std::process::exit(0);
    }
    pid
}

#[derive(Clone, Copy)]
struct Opts {
    zombies: bool,
    leaderless: bool,
    bigmem: bool,
}

/// `bigmem`'s memory: 40 MiB of words from a xorshift seeded by the name.
struct Big {
    name: String,
    words: Vec<u64>,
}

impl Big {
    const WORDS: usize = 40 << 17;

    fn pattern(name: &str) -> impl Iterator<Item = u64> {
        let mut x = name.bytes().fold(0x9E37_79B9_7F4A_7C15u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01B3));
        (0..Self::WORDS).map(move |_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        })
    }

    fn new(name: &str) -> Big {
        Big { name: name.to_string(), words: std::hint::black_box(Self::pattern(name).collect()) }
    }

    fn check(&self) -> Report {
        let mut r = Report::default();
        let bad = self.words.iter().zip(Self::pattern(&self.name)).position(|(a, b)| *a != b);
        r.expect(bad.is_none() && self.words.len() == Self::WORDS, || format!("{}: its 40 MiB differ from what it wrote, first at word {bad:?}", self.name));
        r
    }
}

fn node(dir: &Path, name: &str, depth: usize, opts: Opts) -> ! {
    if name == "r.0" {
        // SAFETY: setpgid/setsid on ourselves.
        check(unsafe { libc::setpgid(0, 0) } == 0, "setpgid");
    }
    if name == "r.2.1" {
        // SAFETY: as above.
        check(unsafe { libc::setsid() } > 0, "setsid");
    }
    if depth < DEPTH {
        for k in 0..WIDTH {
            let child = format!("{name}.{k}");
            spawn(|| node(dir, &child, depth + 1, opts));
        }
    }
    let mut zombies = Vec::new();
    if name == "r.1" && opts.zombies {
        let z42 = spawn(|| std::process::exit(42));
        let zterm = spawn(|| {
            // SAFETY: raise(3) with the default action: this child dies of SIGTERM.
            unsafe { libc::raise(libc::SIGTERM) };
        });
        for (zname, z) in [("z42", z42), ("zterm", zterm)] {
            // Wait until it is a zombie, without reaping it.
            check(wait_for(5000, || proc_state(z) == Some('Z')), "zombie");
            let me = ids();
            record(dir, zname, &Ids { pid: z, ppid: me.pid, pgid: me.pgid, sid: me.sid });
            zombies.push((zname, z));
        }
    }
    if name == "r.2" {
        let p = spawn(|| orphans(dir, opts.leaderless));
        check(waitpid(p, 0).is_some(), "waitpid p");
    }
    let big = (opts.bigmem && (name == "r.0" || name == "r.1")).then(|| Big::new(name));
    settle(dir, name, || {
        let mut r = big.map(|b| b.check()).unwrap_or_default();
        for (zname, z) in zombies {
            let got = waitpid(z, libc::WNOHANG);
            let want = if zname == "z42" { "exited with 42" } else { "killed by signal 15" };
            match got {
                Some((pid, st)) if pid == z => r.expect(describe_status(st) == want, || format!("{name}: zombie {zname} (pid {z}) {}, expected {want}", describe_status(st))),
                Some(_) => r.0.push(format!("{name}: zombie {zname} (pid {z}) is not a zombie (waitpid WNOHANG gave 0)")),
                None => r.0.push(format!("{name}: waitpid for zombie {zname} (pid {z}): {}", errno())),
            }
        }
        r
    })
}

/// Process p: forks x, which makes its own group with o1 and o2 in it; p exits once
/// x is set up (or, with `leaderless`, once x has exited).
fn orphans(dir: &Path, leaderless: bool) {
    let mut fds = [0i32; 2];
    // SAFETY: pipe(2) into a local array.
    check(unsafe { libc::pipe(fds.as_mut_ptr()) } == 0, "pipe");
    let p = ids().pid;
    let x = spawn(|| {
        // SAFETY: setpgid on ourselves; closing our copy of the read end.
        unsafe {
            check(libc::setpgid(0, 0) == 0, "setpgid x");
            libc::close(fds[0]);
        }
        let x = ids().pid;
        for o in ["o1", "o2"] {
            spawn(|| {
                // SAFETY: closing an inherited pipe end.
                unsafe { libc::close(fds[1]) };
                if leaderless {
                    check(wait_for(5000, || ids().ppid != x), "o reparenting");
                }
                settle(dir, o, Report::default)
            });
        }
        write_all(fds[1], b"x");
        // SAFETY: closing our pipe end.
        unsafe { libc::close(fds[1]) };
        if leaderless {
            std::process::exit(0);
        }
        check(wait_for(5000, || ids().ppid != p), "x reparenting");
        settle(dir, "x", Report::default)
    });
    // SAFETY: closing our copy of the write end; read(2) into a local byte.
    unsafe {
        libc::close(fds[1]);
        let mut b = 0u8;
        check(libc::read(fds[0], (&mut b as *mut u8).cast(), 1) == 1, "read x ready");
        libc::close(fds[0]);
    }
    if leaderless {
        check(waitpid(x, 0).is_some(), "waitpid x");
    }
}

/// Fields of /proc/PID/stat after the command name (state, ppid, ...).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(s.rsplit_once(')')?.1.split_whitespace().map(str::to_string).collect())
}

fn proc_state(pid: i32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

/// `ps -e` as "PID PPID PGID SID COMM" lines, without ps itself.
fn ps() -> Vec<String> {
    let out = std::process::Command::new("ps").args(["-e", "-o", "pid=,ppid=,pgid=,sid=,comm="]).output();
    let out = out.unwrap_or_else(|_| die("running ps"));
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.ends_with(" ps"))
        .collect();
    v.sort();
    v
}

fn main() {
    let (dir, opts) = args();
    let opts = Opts { zombies: opts.iter().any(|o| o == "zombies"), leaderless: opts.iter().any(|o| o == "leaderless"), bigmem: opts.iter().any(|o| o == "bigmem") };
    let root = ids();
    check(root.sid == root.pid, "the root must be a session leader (start it with setsid)");
    let own_ns = root.pid == 1;
    check(std::fs::create_dir_all(rec_dir(&dir)).is_ok(), "mkdir tree");
    block_usr1();
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) on ourselves.
    check(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) } == 0, "PR_SET_CHILD_SUBREAPER");

    for k in 0..WIDTH {
        let child = format!("r.{k}");
        spawn(|| node(&dir, &child, 1, opts));
    }
    let big = opts.bigmem.then(|| Big::new("r"));
    record(&dir, "r", &root);
    let regular: usize = (0..=DEPTH).map(|d| WIDTH.pow(d as u32)).sum();
    let expected = regular + if opts.zombies { 2 } else { 0 } + if opts.leaderless { 2 } else { 3 };
    check(wait_for(20_000, || records(&dir).len() == expected), "the tree did not come up");
    let recs = records(&dir);
    let mine = |l: &String| l.split(' ').next().and_then(|p| p.parse().ok()).is_some_and(|p: i32| recs.contains_key(&p));
    let ps_before: Vec<String> = ps().into_iter().filter(|l| own_ns || mine(l)).collect();
    write_file(&dir.join("ps.before"), &ps_before.join("\n"));
    write_file(&dir.join("ready"), "ready\n");

    wait_usr1();
    let ps_after: Vec<String> = ps().into_iter().filter(|l| own_ns || mine(l)).collect();
    write_file(&dir.join("ps.after"), &ps_after.join("\n"));
    let live: Vec<i32> = recs.iter().filter(|(_, (n, _))| !n.starts_with('z')).map(|(&p, _)| p).collect();
    for &p in &live {
        if p != root.pid {
            // SAFETY: kill(2).
            unsafe { libc::kill(p, libc::SIGUSR1) };
        }
    }
    let mut extra = big.map(|b| b.check()).unwrap_or_default();
    let mut sub = 0i32;
    // SAFETY: prctl(PR_GET_CHILD_SUBREAPER) into a local.
    unsafe { libc::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut sub as *mut i32) };
    extra.expect(sub == 1 || own_ns, || "r: is no longer a child subreaper".into());
    let gone: Vec<&String> = ps_before.iter().filter(|l| !ps_after.contains(l)).collect();
    let new: Vec<&String> = ps_after.iter().filter(|l| !ps_before.contains(l)).collect();
    extra.expect(gone.is_empty() && new.is_empty(), || format!("`ps` (pid ppid pgid sid comm) lists {new:?} after the restore instead of {gone:?}"));
    verify(&dir, "r", &root, extra);
    while waitpid(-1, 0).is_some() {}

    let mut r = Report::default();
    for &p in &live {
        let name = &recs[&p].0;
        match std::fs::read_to_string(rec_dir(&dir).join(format!("{p}.res"))) {
            Ok(t) if t.trim() == "PASS" => {}
            Ok(t) => r.0.push(t.trim().trim_start_matches("FAIL: ").to_string()),
            Err(_) => r.0.push(format!("{name} (pid {p}) wrote no verdict")),
        }
    }
    std::process::exit(r.write(&dir.join("result")));
}
