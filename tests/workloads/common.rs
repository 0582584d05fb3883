//! Helpers shared by the e2e workloads (included with `#[path] mod common;`).
//!
//! Every workload follows the same protocol: it takes the scenario directory DIR,
//! sets itself up, writes DIR/ready, waits for SIGUSR1 (blocked, taken in
//! rt_sigsuspend), checks that its state is what it recorded and writes "PASS" or
//! "FAIL: <what differs>" to DIR/result.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Setup failed: not a verdict about crtool, the workload cannot run.
pub fn die(what: &str) -> ! {
    eprintln!("{}: setup failed: {what}: {}", name(), errno());
    std::process::exit(2);
}

pub fn check(ok: bool, what: &str) {
    if !ok {
        die(what);
    }
}

fn name() -> String {
    std::env::args().next().and_then(|a| a.rsplit('/').next().map(str::to_string)).unwrap_or_default()
}

/// The scenario directory (first argument) and the other arguments.
pub fn args() -> (PathBuf, Vec<String>) {
    let mut a = std::env::args().skip(1);
    let dir = a.next().unwrap_or_else(|| {
        eprintln!("usage: {} DIR [options]", name());
        std::process::exit(2)
    });
    let dir = std::fs::canonicalize(&dir).unwrap_or_else(|_| die(&format!("no directory {dir}")));
    (dir, a.collect())
}

/// Collected differences between the state before the dump and after the restore.
#[derive(Default)]
pub struct Report(pub Vec<String>);

impl Report {
    pub fn expect(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }
    pub fn add(&mut self, other: Report) {
        self.0.extend(other.0);
    }
    pub fn text(&self) -> String {
        if self.0.is_empty() { "PASS\n".into() } else { format!("FAIL: {}\n", self.0.join("; ")) }
    }
    /// Waits for `child` (a workload process that wrote its own verdict to `result`)
    /// and adds what it found, or how it failed to say.
    pub fn child_verdict(&mut self, child: i32, result: &Path) {
        match waitpid(child, 0) {
            Some((_, st)) if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) <= 1 => {}
            Some((_, st)) => self.0.push(format!("child {}", describe_status(st))),
            None => self.0.push(format!("waitpid(child {child}): {}", errno())),
        }
        match std::fs::read_to_string(result) {
            Ok(t) if t.trim() == "PASS" => {}
            Ok(t) => self.0.push(t.trim().trim_start_matches("FAIL: ").to_string()),
            Err(_) => self.0.push("the child wrote no result".into()),
        }
    }

    /// Writes the verdict to `path` (via a temporary file, so that a reader never sees
    /// half of it) and returns the exit code.
    pub fn write(&self, path: &Path) -> i32 {
        write_file(path, &self.text());
        if !self.0.is_empty() {
            eprint!("{}: {}", name(), self.text());
        }
        if self.0.is_empty() { 0 } else { 1 }
    }
}

pub fn write_file(path: &Path, text: &str) {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    check(std::fs::write(&tmp, text).is_ok() && std::fs::rename(&tmp, path).is_ok(), &format!("writing {}", path.display()));
}

// ---------------------------------------------------------------- signals

pub fn sigset(sigs: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise a local set.
    unsafe {
        let mut s: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut s);
        for &sig in sigs {
            libc::sigaddset(&mut s, sig);
        }
        s
    }
}

/// Signals 1..=64 that are members of `s`.
pub fn members(s: &libc::sigset_t) -> Vec<i32> {
    // SAFETY: sigismember on an initialised set.
    (1..=64).filter(|&sig| unsafe { libc::sigismember(s, sig) } == 1).collect()
}

/// Blocks `sigs` in the calling thread.
pub fn block(sigs: &[i32]) {
    let s = sigset(sigs);
    // SAFETY: pthread_sigmask with a local set.
    check(unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &s, std::ptr::null_mut()) } == 0, "pthread_sigmask");
}

pub fn unblock(sigs: &[i32]) {
    let s = sigset(sigs);
    // SAFETY: as above.
    check(unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &s, std::ptr::null_mut()) } == 0, "pthread_sigmask");
}

/// The calling thread's blocked signals.
pub fn blocked() -> Vec<i32> {
    let mut s = sigset(&[]);
    // SAFETY: querying only.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut s) };
    members(&s)
}

/// Waits for one of `sigs` (which must be blocked) and returns its siginfo.
pub fn wait_signal(sigs: &[i32]) -> libc::siginfo_t {
    let s = sigset(sigs);
    loop {
        // SAFETY: siginfo_t is plain data; all zeros is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: sigwaitinfo into a local siginfo.
        if unsafe { libc::sigwaitinfo(&s, &mut info) } > 0 {
            return info;
        }
        check(errno().raw_os_error() == Some(libc::EINTR), "sigwaitinfo");
    }
}

/// Blocks SIGUSR1 (in the calling thread; threads created later inherit it).
pub fn block_usr1() {
    block(&[libc::SIGUSR1]);
}

static GOT_USR1: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_usr1(_: libc::c_int) {
    GOT_USR1.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Waits for SIGUSR1 (blocked by the caller) in rt_sigsuspend, which the kernel
/// restarts after a dump's interruption (sigwaitinfo would return EINTR and leave the
/// task somewhere else after every dump).
pub fn wait_usr1() {
    // SAFETY: installing a handler that only sets an atomic flag; sigsuspend with a
    // local mask (the current one without SIGUSR1).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr1 as extern "C" fn(libc::c_int) as usize;
        check(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()) == 0, "sigaction");
        let mut mask = sigset(&[]);
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask);
        libc::sigdelset(&mut mask, libc::SIGUSR1);
        while !GOT_USR1.swap(false, std::sync::atomic::Ordering::SeqCst) {
            libc::sigsuspend(&mask);
        }
    }
}

/// The raw fields of a siginfo: (si_code, word at 16 (pid or timer id), word at 20
/// (uid or overrun), si_value at 24).
pub fn siginfo_fields(info: &libc::siginfo_t) -> (i32, i32, i32, u64) {
    let p = info as *const libc::siginfo_t as *const u8;
    // SAFETY: siginfo_t is 128 bytes; these offsets are inside it (x86-64 layout).
    unsafe {
        let i32_at = |o: usize| i32::from_ne_bytes(*(p.add(o) as *const [u8; 4]));
        (i32_at(8), i32_at(16), i32_at(20), u64::from_ne_bytes(*(p.add(24) as *const [u8; 8])))
    }
}

pub fn altstack() -> (usize, usize, i32) {
    // SAFETY: stack_t is plain data; querying only.
    let mut st: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::sigaltstack(std::ptr::null(), &mut st) };
    (st.ss_sp as usize, st.ss_size, st.ss_flags)
}

/// Gives the calling thread an alternate signal stack of `pages` fresh pages.
pub fn set_altstack(pages: usize) -> (usize, usize, i32) {
    let len = pages * 4096;
    let p = map_anon(len, libc::MAP_PRIVATE);
    let st = libc::stack_t { ss_sp: p.cast(), ss_flags: 0, ss_size: len };
    // SAFETY: the stack is a live mapping of that size, never unmapped.
    check(unsafe { libc::sigaltstack(&st, std::ptr::null_mut()) } == 0, "sigaltstack");
    altstack()
}

// ---------------------------------------------------------------- misc

pub fn gettid() -> i32 {
    // SAFETY: gettid cannot fail.
    unsafe { libc::gettid() }
}

pub fn now_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime into a local.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

pub fn mono_ms() -> i64 {
    now_ns(libc::CLOCK_MONOTONIC) / 1_000_000
}

pub fn sleep_ms(ms: u64) {
    std::thread::sleep(std::time::Duration::from_millis(ms));
}

/// Polls `f` every 10 ms for up to `ms` milliseconds.
pub fn wait_for(ms: i64, mut f: impl FnMut() -> bool) -> bool {
    let end = mono_ms() + ms;
    loop {
        if f() {
            return true;
        }
        if mono_ms() > end {
            return false;
        }
        sleep_ms(10);
    }
}

pub fn map_anon(len: usize, flags: i32) -> *mut u8 {
    // SAFETY: a fresh anonymous mapping at an address the kernel chooses.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, flags | libc::MAP_ANONYMOUS, -1, 0) };
    check(p != libc::MAP_FAILED, "mmap");
    p.cast()
}

/// fork(2); returns the child's pid in the parent and 0 in the child.
pub fn fork() -> i32 {
    // SAFETY: the workloads fork before they start threads (or only use
    // async-signal-safe calls and fresh state in the child).
    let pid = unsafe { libc::fork() };
    check(pid >= 0, "fork");
    pid
}

/// waitpid(pid) → raw status, or None (with errno) on failure.
pub fn waitpid(pid: i32, flags: i32) -> Option<(i32, i32)> {
    let mut st = 0;
    // SAFETY: waitpid into a local.
    let r = unsafe { libc::waitpid(pid, &mut st, flags) };
    (r >= 0).then_some((r, st))
}

pub fn describe_status(st: i32) -> String {
    if libc::WIFEXITED(st) {
        format!("exited with {}", libc::WEXITSTATUS(st))
    } else if libc::WIFSIGNALED(st) {
        format!("killed by signal {}", libc::WTERMSIG(st))
    } else {
        format!("status {st:#x}")
    }
}

/// splitmix64: a cheap, well-mixed pattern generator.
pub fn mix(seed: u64, i: u64) -> u64 {
    let mut z = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub fn fill(buf: &mut [u8], seed: u64) {
    for (i, c) in buf.chunks_mut(8).enumerate() {
        let v = mix(seed, i as u64).to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
}

pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0; len];
    fill(&mut v, seed);
    v
}

/// Index of the first byte where `buf` differs from the pattern.
pub fn first_mismatch(buf: &[u8], seed: u64) -> Option<usize> {
    let want = pattern(buf.len(), seed);
    buf.iter().zip(want.iter()).position(|(a, b)| a != b)
}

pub fn write_all(fd: i32, data: &[u8]) {
    let mut off = 0;
    while off < data.len() {
        // SAFETY: write(2) from a live slice.
        let n = unsafe { libc::write(fd, data[off..].as_ptr().cast(), data.len() - off) };
        if n < 0 && errno().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        check(n > 0, "write");
        off += n as usize;
    }
}

/// Reads until EOF (or an error other than EINTR/EAGAIN, or `limit` bytes).
pub fn read_to_end(fd: i32, limit: usize) -> (Vec<u8>, Option<std::io::Error>) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    while out.len() < limit {
        // SAFETY: read(2) into a local buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            return (out, None);
        }
        if n < 0 {
            let e = errno();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => {
                    sleep_ms(5);
                    continue;
                }
                _ => return (out, Some(e)),
            }
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    (out, None)
}

/// F_GETFL and FD_CLOEXEC of `fd`, or None if it is not open.
pub fn fd_flags(fd: i32) -> Option<(i32, bool)> {
    // SAFETY: fcntl queries.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    let fdf = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    (fl >= 0 && fdf >= 0).then_some((fl, fdf & libc::FD_CLOEXEC != 0))
}

pub fn lseek(fd: i32, off: i64, whence: i32) -> i64 {
    // SAFETY: lseek(2) on an fd number.
    unsafe { libc::lseek(fd, off, whence) }
}

/// Open fd numbers of this process, from /proc/self/fd (without the directory's own).
pub fn open_fds() -> Vec<i32> {
    let before: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_string_lossy().parse().ok()).collect())
        .unwrap_or_default();
    // The read_dir fd is closed by now: keep only the fds that are still open.
    let mut v: Vec<i32> = before.into_iter().filter(|&fd| fd_flags(fd).is_some()).collect();
    v.sort();
    v
}
