//! `pipes`: pipes and a named FIFO with unread data in them.
//!
//!     pipes DIR
//!
//! The parent P writes, its child C reads, but not before the restore:
//! - pipe A, capacity raised to 256 KiB (F_SETPIPE_SZ): P writes 100000 bytes;
//! - the FIFO DIR/fifo, read end O_NONBLOCK in C: P writes 3000 bytes;
//! - a self-pipe in P, both ends O_NONBLOCK, with 10 bytes in it.
//!
//! After SIGUSR1 (to P, which passes it on) both check their fds (numbers, F_GETFL,
//! F_GETPIPE_SZ); P reads the self-pipe (exactly its 10 bytes, then EAGAIN), writes
//! 5000 more bytes into A and 1000 into the FIFO and closes both; C must read exactly
//! the old bytes then the new ones from each, then EOF. C writes DIR/result.child, P
//! DIR/result.

#[path = "common.rs"]
mod common;

use common::*;

const CAPACITY: i32 = 256 * 1024;
const A_OLD: usize = 100_000;
const A_NEW: usize = 5000;
const F_OLD: usize = 3000;
const F_NEW: usize = 1000;
const SELF: &[u8] = b"selfpipe!\n";

/// fd number → (F_GETFL, FD_CLOEXEC, F_GETPIPE_SZ) for every open fd.
fn fd_table() -> Vec<(i32, i32, bool, i32)> {
    open_fds()
        .into_iter()
        .map(|fd| {
            let (fl, ce) = fd_flags(fd).unwrap_or((-1, false));
            // SAFETY: fcntl query (fails harmlessly on non-pipes).
            (fd, fl, ce, unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) })
        })
        .collect()
}

fn check_table(r: &mut Report, who: &str, before: &[(i32, i32, bool, i32)]) {
    let now = fd_table();
    r.expect(now == before, || format!("{who}: fds (number, F_GETFL, cloexec, F_GETPIPE_SZ) are {now:?}, expected {before:?}"));
}

/// Moves `fd` to number `to`.
fn move_fd(fd: i32, to: i32) -> i32 {
    // SAFETY: dup2/close on our own fds.
    unsafe {
        check(libc::dup2(fd, to) == to, "dup2");
        libc::close(fd);
    }
    to
}

fn expect_stream(r: &mut Report, what: &str, got: &[u8], err: Option<std::io::Error>, old: &[u8], new: &[u8]) {
    let want = [old, new].concat();
    r.expect(err.is_none(), || format!("reading {what}: {}", err.as_ref().unwrap()));
    let at = got.iter().zip(want.iter()).position(|(a, b)| a != b);
    r.expect(got == want, || format!("{what}: read {} bytes (first difference at {at:?}), expected {} old then {} new", got.len(), old.len(), new.len()));
}

fn main() {
    let (dir, _) = args();
    block_usr1();
    let fifo = dir.join("fifo");
    let cpath = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a C string.
    check(unsafe { libc::mkfifo(cpath.as_ptr(), 0o600) } == 0, "mkfifo");
    let mut a = [0i32; 2];
    // SAFETY: pipe(2) into a local array.
    check(unsafe { libc::pipe(a.as_mut_ptr()) } == 0, "pipe");
    // SAFETY: F_SETPIPE_SZ on our pipe.
    check(unsafe { libc::fcntl(a[1], libc::F_SETPIPE_SZ, CAPACITY) } == CAPACITY, "F_SETPIPE_SZ");
    let (a_old, a_new) = (pattern(A_OLD, 1), pattern(A_NEW, 2));
    let (f_old, f_new) = (pattern(F_OLD, 3), pattern(F_NEW, 4));

    let child = fork();
    if child == 0 {
        // SAFETY: closing the write end.
        unsafe { libc::close(a[1]) };
        let a_r = move_fd(a[0], 10);
        // SAFETY: opening the FIFO's (non-blocking) read end.
        let f_r = move_fd(unsafe { libc::open(cpath.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK) }, 12);
        let before = fd_table();
        wait_usr1();
        let mut r = Report::default();
        check_table(&mut r, "child", &before);
        r.expect(before.iter().any(|e| e.0 == f_r && e.1 & libc::O_NONBLOCK != 0), || "setup: the FIFO read end is not O_NONBLOCK".into());
        r.expect(before.iter().any(|e| e.0 == a_r && e.3 == CAPACITY), || "setup: pipe A has not the raised capacity".into());
        let (got, err) = read_to_end(a_r, A_OLD + A_NEW + 1);
        expect_stream(&mut r, "pipe A", &got, err, &a_old, &a_new);
        let (got, err) = read_to_end(f_r, F_OLD + F_NEW + 1);
        expect_stream(&mut r, "the FIFO", &got, err, &f_old, &f_new);
        std::process::exit(r.write(&dir.join("result.child")));
    }

    // SAFETY: closing the read end.
    unsafe { libc::close(a[0]) };
    let a_w = move_fd(a[1], 11);
    // SAFETY: opening the FIFO's write end (blocks until the child opened its read end).
    let f_w = move_fd(unsafe { libc::open(cpath.as_ptr(), libc::O_WRONLY) }, 13);
    let mut s = [0i32; 2];
    // SAFETY: pipe2(2) into a local array.
    check(unsafe { libc::pipe2(s.as_mut_ptr(), libc::O_NONBLOCK) } == 0, "pipe2");
    let (s_r, s_w) = (move_fd(s[0], 14), move_fd(s[1], 15));
    write_all(a_w, &a_old);
    write_all(f_w, &f_old);
    write_all(s_w, SELF);
    let before = fd_table();
    write_file(&dir.join("ready"), &format!("{child}\n"));

    wait_usr1();
    let mut r = Report::default();
    check_table(&mut r, "parent", &before);
    let (got, err) = read_to_end(s_r, SELF.len());
    let mut b = [0u8; 1];
    // SAFETY: read(2) into a local byte.
    let more = unsafe { libc::read(s_r, b.as_mut_ptr().cast(), 1) };
    let again = errno().raw_os_error() == Some(libc::EAGAIN);
    r.expect(err.is_none() && got == SELF && more == -1 && again, || format!("self-pipe: read {:?} then {more} ({}), expected {:?} then EAGAIN", String::from_utf8_lossy(&got), errno(), String::from_utf8_lossy(SELF)));
    // SAFETY: kill(2) of our child.
    unsafe { libc::kill(child, libc::SIGUSR1) };
    write_all(a_w, &a_new);
    write_all(f_w, &f_new);
    // SAFETY: closing our write ends: the child then reads EOF.
    unsafe {
        libc::close(a_w);
        libc::close(f_w);
    }
    r.child_verdict(child, &dir.join("result.child"));
    std::process::exit(r.write(&dir.join("result")));
}
