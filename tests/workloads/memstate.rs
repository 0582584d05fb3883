//! `memstate`: a workload that builds a lot of process state, waits to be dumped and
//! restored, and on SIGUSR1 checks that every piece of that state is still exactly as
//! it set it up.
//!
//!     memstate READY_FILE RESULT_FILE [idle] [no-shared-anon]
//!
//! It writes "ready" to READY_FILE once everything is set up, then sleeps in
//! rt_sigsuspend (inside one asm block that holds known patterns in ymm8..ymm15, and in
//! zmm16..zmm23 and k1..k7 where AVX-512 is enabled). On SIGUSR1 it verifies and
//! writes "PASS" or "FAIL: <what differs>" to RESULT_FILE and exits 0 or 1. Where the
//! CPU cannot run a part of the check (no AVX-512, no AVX) the verdict says so:
//! "PASS (skipped: avx512)", and the test reports it.
//!
//! The interval timers (unless `idle`) are checked against the time the task was down:
//! the directory of READY_FILE must then hold `downtime`, "START END" in microseconds
//! of CLOCK_REALTIME from right before the dump to right after the restore, written by
//! the test before SIGUSR1.
//!
//! `idle` leaves the interval timers off, so that nothing about the task changes while
//! it sleeps (two dumps of it must then be byte-identical). `no-shared-anon` leaves
//! out the MAP_SHARED|MAP_ANONYMOUS region (so that the rest can be tested on its own).
//!
//! State covered: heap (one big Vec and many small boxes), a big stack array, an
//! anonymous private mapping with untouched, zero-written and written pages, a private
//! file mapping with some pages modified (COW) and some not, a read-only region and a
//! PROT_NONE region that both hold data, a shared anonymous mapping, PID/SID/PGID,
//! cwd, umask, comm, rlimits, every signal's sigaction, the blocked mask, the
//! alternate signal stack, itimers, vector registers, and regular-file fds (O_APPEND,
//! plain read-write at an offset, O_CLOEXEC, a directory) at chosen numbers.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

const PAGE: usize = 4096;

static GOT_USR1: AtomicBool = AtomicBool::new(false);
static OTHER_SIGNALS: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_usr1(_: libc::c_int) {
    GOT_USR1.store(true, Ordering::SeqCst);
}

extern "C" fn on_other(_: libc::c_int) {
    OTHER_SIGNALS.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn on_other_info(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    OTHER_SIGNALS.fetch_add(1, Ordering::SeqCst);
}

fn h_usr1() -> usize {
    on_usr1 as extern "C" fn(libc::c_int) as usize
}
fn h_other() -> usize {
    on_other as extern "C" fn(libc::c_int) as usize
}
fn h_info() -> usize {
    on_other_info as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize
}

/// splitmix64: a cheap, well-mixed pattern generator.
fn mix(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fill(buf: &mut [u8], seed: u64) {
    for (i, c) in buf.chunks_mut(8).enumerate() {
        let v = mix(seed, i as u64).to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
}

/// Index of the first byte that differs from the pattern, if any.
fn first_mismatch(buf: &[u8], seed: u64) -> Option<usize> {
    for (i, c) in buf.chunks(8).enumerate() {
        let v = mix(seed, i as u64).to_le_bytes();
        if c != &v[..c.len()] {
            let j = c.iter().zip(v.iter()).position(|(a, b)| a != b).unwrap_or(0);
            return Some(i * 8 + j);
        }
    }
    None
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn die(what: &str) -> ! {
    eprintln!("memstate: setup failed: {what}: {}", errno());
    std::process::exit(2);
}

fn check(ok: bool, what: &str) {
    if !ok {
        die(what);
    }
}

/// Collected differences, and the parts of the check this CPU cannot run.
struct Report(Vec<String>, Vec<&'static str>);

impl Report {
    fn expect(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }
}

// ---------------------------------------------------------------- memory regions

struct Mapping {
    addr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize, prot: i32, flags: i32, fd: i32, what: &str) -> Mapping {
        // SAFETY: a fresh mapping at an address the kernel chooses.
        let p = unsafe { libc::mmap(ptr::null_mut(), len, prot, flags, fd, 0) };
        if p == libc::MAP_FAILED {
            die(what);
        }
        Mapping { addr: p.cast(), len }
    }
    // The memory is the kernel's mapping, not owned by the struct; the workload is
    // single-threaded and never holds two views of one page at once.
    #[allow(clippy::mut_from_ref)]
    fn page(&self, i: usize) -> &mut [u8] {
        assert!((i + 1) * PAGE <= self.len);
        // SAFETY: inside the mapping, which lives until exit.
        unsafe { std::slice::from_raw_parts_mut(self.addr.add(i * PAGE), PAGE) }
    }
    #[allow(clippy::mut_from_ref)]
    fn all(&self) -> &mut [u8] {
        // SAFETY: the whole mapping, which lives until exit.
        unsafe { std::slice::from_raw_parts_mut(self.addr, self.len) }
    }
    fn pages(&self) -> usize {
        self.len / PAGE
    }
    fn range(&self) -> (usize, usize) {
        (self.addr as usize, self.addr as usize + self.len)
    }
}

/// Permissions ("rw-p", ...) of the /proc/self/maps line that covers `addr`.
fn perms_at(addr: usize) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    for l in maps.lines() {
        let mut f = l.split_whitespace();
        let (Some(r), Some(p)) = (f.next(), f.next()) else { continue };
        let Some((s, e)) = r.split_once('-') else { continue };
        let (s, e) = (usize::from_str_radix(s, 16).unwrap_or(0), usize::from_str_radix(e, 16).unwrap_or(0));
        if (s..e).contains(&addr) {
            return p.to_string();
        }
    }
    "unmapped".into()
}

const SEED_HEAP: u64 = 0x1111;
const SEED_BOX: u64 = 0x2222;
const SEED_STACK: u64 = 0x3333;
const SEED_ANON: u64 = 0x4444;
const SEED_FILE: u64 = 0x5555;
const SEED_COW: u64 = 0x6666;
const SEED_RO: u64 = 0x7777;
const SEED_NONE: u64 = 0x8888;
const SEED_SHARED: u64 = 0x9999;
const SEED_DATA: u64 = 0xAAAA;

const HEAP_BYTES: usize = 32 << 20;
const STACK_WORDS: usize = 64 * 1024; // 512 KiB on the main thread's stack
const ANON_PAGES: usize = 2048; // 8 MiB
const FILE_PAGES: usize = 64;
const PROT_PAGES: usize = 16;
const SHARED_PAGES: usize = 32;

fn anon_expect(i: usize) -> Option<u64> {
    // Every third page written with a pattern, every seventh written with zeros, the rest untouched.
    if i.is_multiple_of(3) { Some(SEED_ANON + i as u64) } else { None }
}

fn cow_page(i: usize) -> bool {
    i % 4 == 1
}

fn shared_untouched(i: usize) -> bool {
    i.is_multiple_of(5)
}

// ---------------------------------------------------------------- signals

fn sigset(sigs: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset on a local set.
    unsafe {
        let mut s: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut s);
        for &g in sigs {
            libc::sigaddset(&mut s, g);
        }
        s
    }
}

fn members(s: &libc::sigset_t) -> Vec<i32> {
    // SAFETY: sigismember on a valid set.
    (1..=64).filter(|&g| unsafe { libc::sigismember(s, g) } == 1).collect()
}

fn install(sig: i32, handler: usize, flags: i32, mask: &[i32]) {
    // SAFETY: installing a handler that only touches atomics.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler;
        sa.sa_flags = flags;
        sa.sa_mask = sigset(mask);
        check(libc::sigaction(sig, &sa, ptr::null_mut()) == 0, &format!("sigaction({sig})"));
    }
}

/// A sigaction as comparable values: handler, flags, restorer, mask.
type SigAct = (usize, i32, usize, Vec<i32>);

/// What the kernel holds for `sig` (None where glibc refuses to say).
fn query_sigaction(sig: i32) -> Option<SigAct> {
    // SAFETY: querying only.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(sig, ptr::null(), &mut old) != 0 {
            return None;
        }
        Some((old.sa_sigaction, old.sa_flags, old.sa_restorer.map(|f| f as usize).unwrap_or(0), members(&old.sa_mask)))
    }
}

fn blocked_now() -> Vec<i32> {
    // SAFETY: querying the mask only.
    unsafe {
        let mut cur: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_BLOCK, ptr::null(), &mut cur);
        members(&cur)
    }
}

fn pending_now() -> Vec<i32> {
    // SAFETY: sigpending into a local set.
    unsafe {
        let mut cur: libc::sigset_t = std::mem::zeroed();
        libc::sigpending(&mut cur);
        members(&cur)
    }
}

// ---------------------------------------------------------------- timers, limits

fn itimer(which: i32) -> libc::itimerval {
    // SAFETY: getitimer into a local struct.
    unsafe {
        let mut v: libc::itimerval = std::mem::zeroed();
        libc::getitimer(which as _, &mut v);
        v
    }
}

fn usec(t: libc::timeval) -> i64 {
    t.tv_sec * 1_000_000 + t.tv_usec
}

/// How far a timer's remaining time may be off beyond what the downtime explains.
const TIMER_SLACK_US: i64 = 300_000;

fn realtime_us() -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime into a local.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec * 1_000_000 + ts.tv_nsec / 1000
}

/// DIR/downtime: (start, end) in microseconds of CLOCK_REALTIME.
fn downtime(dir: &Path) -> Option<(i64, i64)> {
    let text = std::fs::read_to_string(dir.join("downtime")).ok()?;
    let v: Vec<i64> = text.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    (v.len() == 2 && v[1] >= v[0]).then(|| (v[0], v[1]))
}

fn rlimit(res: u32) -> (u64, u64) {
    // SAFETY: getrlimit into a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(res as _, &mut r);
        (r.rlim_cur, r.rlim_max)
    }
}

fn set_rlimit(res: u32, cur: u64, max: u64) {
    let r = libc::rlimit { rlim_cur: cur, rlim_max: max };
    // SAFETY: setrlimit from a local struct.
    check(unsafe { libc::setrlimit(res as _, &r) } == 0, &format!("setrlimit({res})"));
}

// ---------------------------------------------------------------- files

#[derive(Debug, PartialEq, Clone)]
struct FdState {
    fd: i32,
    fl: i32,
    cloexec: bool,
    pos: i64,
    dev: u64,
    ino: u64,
}

fn fd_state(fd: i32) -> FdState {
    // SAFETY: fcntl/lseek/fstat on a number we own (or a closed one, giving -1).
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        let fdfl = libc::fcntl(fd, libc::F_GETFD);
        let pos = libc::lseek(fd, 0, libc::SEEK_CUR);
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st);
        FdState {
            fd,
            fl: fl & (libc::O_ACCMODE | libc::O_APPEND | libc::O_NONBLOCK | libc::O_DIRECTORY),
            cloexec: fdfl >= 0 && fdfl & libc::FD_CLOEXEC != 0,
            pos,
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }
}

/// Opens `path` and moves the fd to number `target`.
fn open_at(path: &Path, flags: i32, target: i32) -> i32 {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: open(2) of a C string; the fd is moved with dup3 and the original closed.
    unsafe {
        let fd = libc::open(c.as_ptr(), flags, 0o644);
        check(fd >= 0, &format!("open {}", path.display()));
        let cloexec = if flags & libc::O_CLOEXEC != 0 { libc::O_CLOEXEC } else { 0 };
        check(libc::dup3(fd, target, cloexec) == target, "dup3");
        libc::close(fd);
    }
    target
}

fn write_all(fd: i32, data: &[u8]) {
    // SAFETY: write(2) from a live slice.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    check(n == data.len() as isize, "write");
}

/// Open fd numbers of this process, from /proc/self/fd.
fn open_fds() -> Vec<i32> {
    let path = c"/proc/self/fd";
    let mut out = Vec::new();
    // SAFETY: opendir/readdir/closedir used as documented; the directory's own fd is
    // left out.
    unsafe {
        let d = libc::opendir(path.as_ptr());
        if d.is_null() {
            return out;
        }
        let own = libc::dirfd(d);
        loop {
            let e = libc::readdir(d);
            if e.is_null() {
                break;
            }
            let name = CStr::from_ptr((*e).d_name.as_ptr()).to_string_lossy();
            if let Ok(n) = name.parse::<i32>()
                && n != own
            {
                out.push(n);
            }
        }
        libc::closedir(d);
    }
    out.sort();
    out
}

// ---------------------------------------------------------------- vector registers

#[path = "memstate_regs.rs"]
mod regs;
use regs::{YMM_BYTES, ZMM_BYTES, bytes_pattern, diff_regs, wait_holding_ymm, wait_holding_zmm};

// ---------------------------------------------------------------- main

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: memstate READY_FILE RESULT_FILE [idle] [no-shared-anon]");
        std::process::exit(2);
    }
    let ready = PathBuf::from(&args[1]);
    let result = PathBuf::from(&args[2]);
    let mut opts = Opts::default();
    for a in &args[3..] {
        match a.as_str() {
            "idle" => opts.idle = true,
            "no-shared-anon" => opts.no_shared = true,
            other => {
                eprintln!("memstate: unknown option {other:?}");
                std::process::exit(2);
            }
        }
    }
    let report = run(&ready, &opts);
    let ok = report.0.is_empty();
    let skipped = if report.1.is_empty() { String::new() } else { format!(" (skipped: {})", report.1.join(", ")) };
    let text = if ok { format!("PASS{skipped}\n") } else { format!("FAIL: {}{skipped}\n", report.0.join("; ")) };
    if let Err(e) = std::fs::write(&result, text.as_bytes()) {
        eprintln!("memstate: cannot write {}: {e}", result.display());
        std::process::exit(2);
    }
    if !ok {
        eprint!("memstate: {text}");
    }
    std::process::exit(if ok { 0 } else { 1 });
}

#[derive(Default)]
struct Opts {
    /// No interval timers, so nothing changes while the task sleeps.
    idle: bool,
    /// Leave out the MAP_SHARED|MAP_ANONYMOUS region.
    no_shared: bool,
}

fn run(ready: &Path, opts: &Opts) -> Report {
    let idle = opts.idle;
    let base = ready.parent().unwrap_or(Path::new(".")).to_path_buf();
    let base = std::fs::canonicalize(&base).unwrap_or(base);

    // ---- identity and simple task state
    // SAFETY: plain getters.
    let (pid, sid, pgid) = unsafe { (libc::getpid(), libc::getsid(0), libc::getpgid(0)) };
    let workdir = base.join("memstate-cwd");
    check(std::fs::create_dir_all(&workdir).is_ok(), "mkdir workdir");
    check(std::env::set_current_dir(&workdir).is_ok(), "chdir workdir");
    let cwd = std::env::current_dir().unwrap();
    // SAFETY: umask(2) cannot fail.
    unsafe { libc::umask(0o027) };
    let comm = c"memstate-comm";
    // SAFETY: PR_SET_NAME reads a NUL-terminated string.
    unsafe { libc::prctl(libc::PR_SET_NAME, comm.as_ptr()) };
    let comm_before = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();

    let (_, nofile_max) = rlimit(libc::RLIMIT_NOFILE);
    set_rlimit(libc::RLIMIT_NOFILE, 777.min(nofile_max), nofile_max);
    set_rlimit(libc::RLIMIT_CORE, 12 * PAGE as u64, 345 * PAGE as u64);
    set_rlimit(libc::RLIMIT_MSGQUEUE, 4321, 654_321);
    let limits_before: Vec<(u32, (u64, u64))> = (0..16u32).map(|r| (r, rlimit(r))).collect();

    // ---- memory
    let mut heap: Vec<u8> = vec![0; HEAP_BYTES];
    fill(&mut heap, SEED_HEAP);
    let boxes: Vec<Box<[u8; 100]>> = (0..2000)
        .map(|i| {
            let mut b = Box::new([0u8; 100]);
            fill(&mut b[..], SEED_BOX + i);
            b
        })
        .collect();

    let mut stack_arr = [0u64; STACK_WORDS];
    for (i, w) in stack_arr.iter_mut().enumerate() {
        *w = mix(SEED_STACK, i as u64);
    }
    std::hint::black_box(&mut stack_arr);

    let anon = Mapping::new(ANON_PAGES * PAGE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, "mmap anon");
    for i in 0..anon.pages() {
        if let Some(seed) = anon_expect(i) {
            fill(anon.page(i), seed);
        } else if i % 7 == 0 {
            anon.page(i).fill(0); // touched, but zero
        }
    }

    let file_path = workdir.join("mapped.dat");
    let mut file_data = vec![0u8; FILE_PAGES * PAGE];
    fill(&mut file_data, SEED_FILE);
    check(std::fs::write(&file_path, &file_data).is_ok(), "write mapped.dat");
    let mf = std::fs::File::open(&file_path).unwrap_or_else(|_| die("open mapped.dat"));
    use std::os::fd::AsRawFd;
    let fmap = Mapping::new(FILE_PAGES * PAGE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE, mf.as_raw_fd(), "mmap file");
    drop(mf);
    for i in 0..FILE_PAGES {
        if cow_page(i) {
            fill(fmap.page(i), SEED_COW + i as u64);
        } else if i % 4 == 2 {
            std::hint::black_box(fmap.page(i)[100]); // read-faulted, still the file's page
        }
    }

    let ro = Mapping::new(PROT_PAGES * PAGE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, "mmap ro");
    fill(ro.all(), SEED_RO);
    // SAFETY: changing protection of our own mapping.
    check(unsafe { libc::mprotect(ro.addr.cast(), ro.len, libc::PROT_READ) } == 0, "mprotect ro");
    let none = Mapping::new(PROT_PAGES * PAGE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, "mmap none");
    fill(none.all(), SEED_NONE);
    // SAFETY: as above; nothing touches it until it is made readable again.
    check(unsafe { libc::mprotect(none.addr.cast(), none.len, libc::PROT_NONE) } == 0, "mprotect none");

    let shared = (!opts.no_shared).then(|| {
        let m = Mapping::new(SHARED_PAGES * PAGE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, "mmap shared");
        for i in 0..SHARED_PAGES {
            if !shared_untouched(i) {
                fill(m.page(i), SEED_SHARED + i as u64);
            }
        }
        m
    });
    let mut regions: Vec<(&str, &Mapping)> = vec![("anon", &anon), ("file", &fmap), ("ro", &ro), ("none", &none)];
    if let Some(m) = &shared {
        regions.push(("shared", m));
    }
    let perms_before: Vec<(&str, &Mapping, String)> = regions.iter().map(|&(n, m)| (n, m, perms_at(m.addr as usize))).collect();

    // ---- files
    let append_path = workdir.join("append.log");
    let data_path = workdir.join("data.bin");
    let fd_append = open_at(&append_path, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND, 10);
    for _ in 0..100 {
        write_all(fd_append, b"hello\n");
    }
    let fd_data = open_at(&data_path, libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC, 11);
    let mut data = vec![0u8; 10000];
    fill(&mut data, SEED_DATA);
    write_all(fd_data, &data);
    // SAFETY: lseek on our fd.
    check(unsafe { libc::lseek(fd_data, 1234, libc::SEEK_SET) } == 1234, "lseek data");
    let fd_cloexec = open_at(&data_path, libc::O_RDONLY | libc::O_CLOEXEC, 12);
    // SAFETY: lseek on our fd.
    check(unsafe { libc::lseek(fd_cloexec, 77, libc::SEEK_SET) } == 77, "lseek cloexec");
    let fd_dir = open_at(&workdir, libc::O_RDONLY | libc::O_DIRECTORY, 13);
    let fd_numbers = [fd_append, fd_data, fd_cloexec, fd_dir];
    let fds_before: Vec<FdState> = fd_numbers.iter().map(|&f| fd_state(f)).collect();
    let stdio_before: Vec<FdState> = (0..3).map(fd_state).collect();

    // ---- signals
    install(libc::SIGUSR1, h_usr1(), libc::SA_RESTART, &[]);
    install(libc::SIGUSR2, h_info(), libc::SA_SIGINFO | libc::SA_RESTART, &[libc::SIGINT, libc::SIGQUIT, libc::SIGRTMIN() + 5]);
    install(libc::SIGHUP, h_other(), libc::SA_NODEFER | libc::SA_RESETHAND, &[libc::SIGTERM]);
    install(libc::SIGPIPE, libc::SIG_IGN, 0, &[]);
    install(libc::SIGALRM, h_other(), libc::SA_RESTART, &[libc::SIGVTALRM]);
    install(libc::SIGVTALRM, h_other(), libc::SA_RESTART, &[]);
    install(libc::SIGRTMIN() + 3, h_info(), libc::SA_SIGINFO | libc::SA_ONSTACK, &[libc::SIGUSR1]);
    install(libc::SIGWINCH, libc::SIG_IGN, 0, &[]);

    let altstack = Mapping::new(16 * PAGE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, "mmap altstack");
    let ss = libc::stack_t { ss_sp: altstack.addr.cast(), ss_flags: 0, ss_size: altstack.len };
    // SAFETY: the alternate stack is a live mapping of that size.
    check(unsafe { libc::sigaltstack(&ss, ptr::null_mut()) } == 0, "sigaltstack");

    let blocked = sigset(&[libc::SIGUSR1, libc::SIGUSR2, libc::SIGRTMIN() + 3]);
    // SAFETY: sigprocmask with a local set.
    check(unsafe { libc::sigprocmask(libc::SIG_BLOCK, &blocked, ptr::null_mut()) } == 0, "sigprocmask");
    // The mask while waiting: the same, except SIGUSR1 (kernel sigset layout: bit n-1).
    let mut wait_mask: u64 = 0;
    for s in [libc::SIGUSR2, libc::SIGRTMIN() + 3] {
        wait_mask |= 1 << (s - 1);
    }

    // ---- timers: ITIMER_REAL due in 600 s then every 1000 s, ITIMER_VIRTUAL (CPU
    // time, which an idle task hardly uses) due in 700 s then every 500 s: a timer
    // re-armed with its interval instead of what it had left is off by minutes.
    if !idle {
        let real = libc::itimerval { it_interval: libc::timeval { tv_sec: 1000, tv_usec: 0 }, it_value: libc::timeval { tv_sec: 600, tv_usec: 250_000 } };
        let virt = libc::itimerval { it_interval: libc::timeval { tv_sec: 500, tv_usec: 0 }, it_value: libc::timeval { tv_sec: 700, tv_usec: 0 } };
        // SAFETY: setitimer from local structs.
        unsafe {
            check(libc::setitimer(libc::ITIMER_REAL, &real, ptr::null_mut()) == 0, "setitimer real");
            check(libc::setitimer(libc::ITIMER_VIRTUAL, &virt, ptr::null_mut()) == 0, "setitimer virtual");
        }
    }

    // ---- snapshots right before waiting
    let sigactions_before: Vec<(i32, Option<SigAct>)> = (1..=64).map(|s| (s, query_sigaction(s))).collect();
    let blocked_before = blocked_now();
    let pending_before = pending_now();
    // SAFETY: stack_t is plain data; all zeros is a valid value.
    let mut altstack_before: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: querying only.
    unsafe { libc::sigaltstack(ptr::null(), &mut altstack_before) };
    let timers_before: Vec<libc::itimerval> = [libc::ITIMER_REAL, libc::ITIMER_VIRTUAL, libc::ITIMER_PROF].iter().map(|&w| itimer(w)).collect();
    let timers_read = realtime_us();

    let ymm_pattern: [u8; YMM_BYTES] = bytes_pattern(0xC0FFEE);
    let zmm_pattern: [u8; ZMM_BYTES] = bytes_pattern(0xBADC0DE);
    let k_pattern: [u16; 7] = [0x1234, 0x8001, 0xFFFF, 0x0F0F, 0xA5A5, 0x0001, 0x7E7E];
    let mut ymm_out = [0u8; YMM_BYTES];
    let mut zmm_out = [0u8; ZMM_BYTES];
    let mut k_out = [0u16; 7];
    let has_avx = std::arch::is_x86_feature_detected!("avx");
    let has_avx512 = std::arch::is_x86_feature_detected!("avx512f");

    check(std::fs::write(ready, b"ready\n").is_ok(), "write ready file");

    // ---- wait for SIGUSR1 (the dump and restore happen in here)
    if has_avx512 {
        // SAFETY: AVX-512F is available; wait_mask is a kernel sigset.
        unsafe { wait_holding_zmm(&ymm_pattern, &mut ymm_out, &zmm_pattern, &mut zmm_out, &k_pattern, &mut k_out, &wait_mask) };
    } else if has_avx {
        // SAFETY: AVX is available; wait_mask is a kernel sigset.
        unsafe { wait_holding_ymm(&ymm_pattern, &mut ymm_out, &wait_mask) };
    } else {
        while !GOT_USR1.load(Ordering::SeqCst) {
            // SAFETY: rt_sigsuspend with a kernel sigset.
            unsafe { libc::syscall(libc::SYS_rt_sigsuspend, &wait_mask as *const u64, 8) };
        }
    }
    let timers_after: Vec<libc::itimerval> = [libc::ITIMER_REAL, libc::ITIMER_VIRTUAL, libc::ITIMER_PROF].iter().map(|&w| itimer(w)).collect();
    let timers_reread = realtime_us();

    // ---- verify
    let mut r = Report(Vec::new(), Vec::new());
    if has_avx {
        diff_regs(&mut r, "ymm", 32, &ymm_pattern, &ymm_out, 8);
    } else {
        r.1.push("avx");
    }
    if has_avx512 {
        diff_regs(&mut r, "zmm", 64, &zmm_pattern, &zmm_out, 16);
        r.expect(k_out == k_pattern, || format!("opmask k1..k7 {k_out:x?}, expected {k_pattern:x?}"));
    } else {
        r.1.push("avx512");
    }

    // SAFETY: plain getters.
    let (pid2, rawpid, tid, sid2, pgid2) = unsafe {
        (libc::getpid(), libc::syscall(libc::SYS_getpid) as i32, libc::syscall(libc::SYS_gettid) as i32, libc::getsid(0), libc::getpgid(0))
    };
    r.expect(pid2 == pid && rawpid == pid && tid == pid, || format!("pid {pid2} (raw {rawpid}, tid {tid}), expected {pid}"));
    r.expect(sid2 == sid && sid == pid, || format!("sid {sid2}, expected {sid} (= pid {pid})"));
    r.expect(pgid2 == pgid && pgid == pid, || format!("pgid {pgid2}, expected {pgid}"));
    let cwd2 = std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_else(|e| format!("error {e}"));
    r.expect(cwd2 == cwd.display().to_string(), || format!("cwd {cwd2}, expected {}", cwd.display()));
    // SAFETY: umask(2) cannot fail; put the value back right away.
    let um = unsafe { libc::umask(0o022) };
    // SAFETY: as above.
    unsafe { libc::umask(um) };
    r.expect(um == 0o027, || format!("umask {um:o}, expected 27"));
    let comm_after = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
    r.expect(comm_after == comm_before, || format!("comm {comm_after:?}, expected {comm_before:?}"));
    for &(res, before) in &limits_before {
        let after = rlimit(res);
        r.expect(after == before, || format!("rlimit {res} is {after:?}, expected {before:?}"));
    }

    if let Some(at) = first_mismatch(&heap, SEED_HEAP) {
        r.0.push(format!("heap Vec differs at byte {at} of {HEAP_BYTES}"));
    }
    for (i, b) in boxes.iter().enumerate() {
        if let Some(at) = first_mismatch(&b[..], SEED_BOX + i as u64) {
            r.0.push(format!("small heap box {i} differs at byte {at}"));
            break;
        }
    }
    std::hint::black_box(&mut stack_arr);
    if let Some(i) = stack_arr.iter().enumerate().position(|(i, &w)| w != mix(SEED_STACK, i as u64)) {
        r.0.push(format!("stack array differs at word {i} of {STACK_WORDS}"));
    }
    let mut bad_anon = Vec::new();
    for i in 0..anon.pages() {
        let page = anon.page(i);
        let ok = match anon_expect(i) {
            Some(seed) => first_mismatch(page, seed).is_none(),
            None => page.iter().all(|&b| b == 0),
        };
        if !ok {
            bad_anon.push(i);
        }
    }
    r.expect(bad_anon.is_empty(), || format!("anon mmap pages differ: {:?} (of {ANON_PAGES})", &bad_anon[..bad_anon.len().min(10)]));

    let mut bad_file = Vec::new();
    for i in 0..FILE_PAGES {
        let page = fmap.page(i);
        let ok = if cow_page(i) { first_mismatch(page, SEED_COW + i as u64).is_none() } else { page[..] == file_data[i * PAGE..(i + 1) * PAGE] };
        if !ok {
            bad_file.push((i, cow_page(i)));
        }
    }
    r.expect(bad_file.is_empty(), || format!("MAP_PRIVATE file pages differ (page, modified): {bad_file:?}"));
    let on_disk = std::fs::read(&file_path).unwrap_or_default();
    r.expect(on_disk == file_data, || "mapped.dat changed on disk (private COW pages leaked into the file?)".into());

    for (name, m, before) in &perms_before {
        let (s, e) = m.range();
        let (p1, p2) = (perms_at(s), perms_at(e - 1));
        r.expect(&p1 == before && &p2 == before, || format!("{name} region {s:#x}-{e:#x} has protection {p1}/{p2}, expected {before}"));
    }
    let want_perms = ["rw-p", "rw-p", "r--p", "---p", "rw-s"];
    for (i, (name, _, p)) in perms_before.iter().enumerate() {
        r.expect(p == want_perms[i], || format!("setup: {name} region has protection {p}, expected {}", want_perms[i]));
    }
    if let Some(at) = first_mismatch(ro.all(), SEED_RO) {
        r.0.push(format!("PROT_READ region differs at byte {at}"));
    }
    // SAFETY: making our own PROT_NONE region readable to check it.
    if unsafe { libc::mprotect(none.addr.cast(), none.len, libc::PROT_READ) } != 0 {
        r.0.push(format!("mprotect of the PROT_NONE region failed: {}", errno()));
    } else if let Some(at) = first_mismatch(none.all(), SEED_NONE) {
        r.0.push(format!("PROT_NONE region differs at byte {at}"));
    }
    if let Some(shared) = &shared {
        let mut bad_shared = Vec::new();
        for i in 0..SHARED_PAGES {
            let page = shared.page(i);
            let ok = if shared_untouched(i) { page.iter().all(|&b| b == 0) } else { first_mismatch(page, SEED_SHARED + i as u64).is_none() };
            if !ok {
                bad_shared.push(i);
            }
        }
        r.expect(bad_shared.is_empty(), || format!("MAP_SHARED|MAP_ANONYMOUS pages differ: {bad_shared:?}"));
    }

    // Signals. The handler of SIGUSR1 ran, and sigreturn put back the mask from
    // before rt_sigsuspend.
    let blocked_after = blocked_now();
    r.expect(blocked_after == blocked_before, || format!("blocked signals {blocked_after:?}, expected {blocked_before:?}"));
    let want_blocked = vec![libc::SIGUSR1, libc::SIGUSR2, libc::SIGRTMIN() + 3];
    r.expect(blocked_before == want_blocked, || format!("setup: blocked {blocked_before:?}"));
    let pending_after = pending_now();
    r.expect(pending_after == pending_before, || format!("pending signals {pending_after:?}, expected {pending_before:?}"));
    for (sig, before) in &sigactions_before {
        let after = query_sigaction(*sig);
        r.expect(&after == before, || format!("sigaction of signal {sig} is {after:x?}, expected {before:x?}"));
    }
    r.expect(sigactions_before[libc::SIGUSR2 as usize - 1].1.as_ref().is_some_and(|a| a.0 == h_info()), || "setup: SIGUSR2 handler not installed".into());
    r.expect(sigactions_before[libc::SIGPIPE as usize - 1].1.as_ref().is_some_and(|a| a.0 == libc::SIG_IGN), || "setup: SIGPIPE not ignored".into());
    let others = OTHER_SIGNALS.load(Ordering::SeqCst);
    r.expect(others == 0, || format!("{others} unexpected signals (SIGALRM/SIGVTALRM/SIGHUP/...) were delivered"));
    // SAFETY: stack_t is plain data; all zeros is a valid value.
    let mut altstack_after: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: querying only.
    unsafe { libc::sigaltstack(ptr::null(), &mut altstack_after) };
    r.expect(
        altstack_after.ss_sp == altstack_before.ss_sp && altstack_after.ss_size == altstack_before.ss_size && altstack_after.ss_flags == altstack_before.ss_flags,
        || format!("sigaltstack {:?}/{}/{}, expected {:?}/{}/{}", altstack_after.ss_sp, altstack_after.ss_size, altstack_after.ss_flags,
            altstack_before.ss_sp, altstack_before.ss_size, altstack_before.ss_flags),
    );
    r.expect(altstack_before.ss_sp == altstack.addr.cast(), || "setup: sigaltstack not set".into());

    // Timers. ITIMER_REAL counts down all the time but from when crtool read it to
    // when the restore re-armed it (within the downtime); ITIMER_VIRTUAL and
    // ITIMER_PROF only while the task runs, which it hardly does.
    let down = downtime(&base);
    if !idle {
        r.expect(down.is_some(), || format!("no valid {} (written by the test before SIGUSR1)", base.join("downtime").display()));
    }
    let down_us = down.map(|(a, b)| b - a).unwrap_or(0);
    let elapsed = timers_reread - timers_read;
    for (i, name) in ["ITIMER_REAL", "ITIMER_VIRTUAL", "ITIMER_PROF"].iter().enumerate() {
        let (b, a) = (&timers_before[i], &timers_after[i]);
        let (bi, ai, bv, av) = (usec(b.it_interval), usec(a.it_interval), usec(b.it_value), usec(a.it_value));
        r.expect(ai == bi, || format!("{name} interval {ai} us, expected {bi} us"));
        let (lo, hi) = if i == 0 { (bv - elapsed - TIMER_SLACK_US, bv - elapsed + down_us + TIMER_SLACK_US) } else { (bv - TIMER_SLACK_US, bv) };
        if bv == 0 {
            r.expect(av == 0, || format!("{name} was off but now has {av} us left"));
        } else {
            r.expect(av > 0 && av >= lo && av <= hi, || {
                format!("{name} has {av} us left, expected [{lo}, {hi}] us ({bv} us left {elapsed} us earlier, down {down_us} us)")
            });
        }
    }
    if !idle {
        r.expect(usec(timers_before[0].it_interval) == 1_000_000_000 && usec(timers_before[0].it_value) > 590_000_000, || "setup: ITIMER_REAL not armed".into());
        r.expect(usec(timers_before[1].it_interval) == 500_000_000 && usec(timers_before[1].it_value) > 600_000_000, || "setup: ITIMER_VIRTUAL not armed".into());
    }

    // Files.
    let fds_now = open_fds();
    let mut want_fds = vec![0, 1, 2];
    want_fds.extend(fd_numbers);
    r.expect(fds_now == want_fds, || format!("open fds {fds_now:?}, expected {want_fds:?}"));
    for before in fds_before.iter().chain(stdio_before.iter()) {
        let after = fd_state(before.fd);
        r.expect(&after == before, || format!("fd {} is {after:?}, expected {before:?}", before.fd));
    }
    r.expect(fds_before[0].fl & libc::O_APPEND != 0 && fds_before[0].pos == 600, || format!("setup: append fd {:?}", fds_before[0]));
    r.expect(fds_before[1].pos == 1234 && fds_before[1].fl & libc::O_ACCMODE == libc::O_RDWR && !fds_before[1].cloexec, || format!("setup: data fd {:?}", fds_before[1]));
    r.expect(fds_before[2].pos == 77 && fds_before[2].cloexec, || format!("setup: cloexec fd {:?}", fds_before[2]));
    // The fds still work: appending goes to the end, the read-write fd reads and
    // writes at its offset.
    write_all(fd_append, b"after\n");
    // SAFETY: lseek on our fd.
    let end = unsafe { libc::lseek(fd_append, 0, libc::SEEK_CUR) };
    r.expect(end == 606, || format!("O_APPEND fd is at {end} after one more line, expected 606"));
    let mut buf = [0u8; 16];
    // SAFETY: read(2) into a local buffer.
    let n = unsafe { libc::read(fd_data, buf.as_mut_ptr().cast(), buf.len()) };
    r.expect(n == 16 && buf[..] == data[1234..1250], || format!("reading the data fd at 1234 gave {n} bytes {buf:?}"));
    // SAFETY: as above.
    let n = unsafe { libc::read(fd_cloexec, buf.as_mut_ptr().cast(), buf.len()) };
    r.expect(n == 16 && buf[..] == data[77..93], || format!("reading the cloexec fd at 77 gave {n} bytes {buf:?}"));
    r
}
