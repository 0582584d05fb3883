//! `sharedfd`: fds that share one open file description, within a process (dup) and
//! between processes (fork), next to one that does not.
//!
//!     sharedfd DIR
//!
//! The parent P opens DIR/shared.dat read-write as fd 100 at offset 1000, dups it to
//! 101 and (close-on-exec) to 200, and opens the file again read-only as fd 150 at
//! offset 77 (its own description). The child C inherits all four and opens the file
//! once more, O_APPEND, as fd 120.
//!
//! After SIGUSR1 (to P): both check fd numbers, F_GETFL, FD_CLOEXEC and offsets. P
//! seeks fd 100 to 4321 (101 and 200 must follow, 150 not) and sets O_NONBLOCK via
//! fd 101 (200 must show it, 150 not), then signals C. C must see offset 4321 and
//! O_NONBLOCK through its copies, writes 10 bytes through fd 200 and exits; P must
//! then see offset 4331 through fd 100 and the bytes in the file. C writes
//! DIR/result.child, P DIR/result.

#[path = "common.rs"]
mod common;

use common::*;

const SIZE: usize = 10_000;

/// (fd, F_GETFL, FD_CLOEXEC, offset) of every open fd.
fn fd_table() -> Vec<(i32, i32, bool, i64)> {
    open_fds()
        .into_iter()
        .map(|fd| {
            let (fl, ce) = fd_flags(fd).unwrap_or((-1, false));
            (fd, fl, ce, lseek(fd, 0, libc::SEEK_CUR))
        })
        .collect()
}

fn check_table(r: &mut Report, who: &str, before: &[(i32, i32, bool, i64)]) {
    let now = fd_table();
    r.expect(now == before, || format!("{who}: fds (number, F_GETFL, cloexec, offset) are {now:?}, expected {before:?}"));
}

fn pos(fd: i32) -> i64 {
    lseek(fd, 0, libc::SEEK_CUR)
}

fn nonblock(fd: i32) -> bool {
    fd_flags(fd).is_some_and(|(fl, _)| fl & libc::O_NONBLOCK != 0)
}

fn open_at(path: &std::ffi::CStr, flags: i32, at: i32) -> i32 {
    // SAFETY: open/dup2/close of our own fds.
    unsafe {
        let fd = libc::open(path.as_ptr(), flags);
        check(fd >= 0 && libc::dup2(fd, at) == at, "open");
        libc::close(fd);
    }
    at
}

fn main() {
    let (dir, _) = args();
    block_usr1();
    let file = dir.join("shared.dat");
    check(std::fs::write(&file, pattern(SIZE, 9)).is_ok(), "writing shared.dat");
    let path = std::ffi::CString::new(file.to_str().unwrap()).unwrap();
    let fd = open_at(&path, libc::O_RDWR, 100);
    check(lseek(fd, 1000, libc::SEEK_SET) == 1000, "lseek");
    // SAFETY: dup2/dup3 onto free numbers.
    unsafe {
        check(libc::dup2(100, 101) == 101, "dup2");
        check(libc::dup3(100, 200, libc::O_CLOEXEC) == 200, "dup3");
    }
    open_at(&path, libc::O_RDONLY, 150);
    check(lseek(150, 77, libc::SEEK_SET) == 77, "lseek");

    let child = fork();
    if child == 0 {
        open_at(&path, libc::O_WRONLY | libc::O_APPEND, 120);
        let before = fd_table();
        wait_usr1();
        let mut r = Report::default();
        // The parent moved the shared offset and set O_NONBLOCK before signalling us.
        let want: Vec<(i32, i32, bool, i64)> = before
            .iter()
            .map(|&(fd, fl, ce, off)| if [100, 101, 200].contains(&fd) { (fd, fl | libc::O_NONBLOCK, ce, 4321) } else { (fd, fl, ce, off) })
            .collect();
        check_table(&mut r, "child (after the parent's seek and F_SETFL)", &want);
        write_all(200, b"from child");
        std::process::exit(r.write(&dir.join("result.child")));
    }

    let before = fd_table();
    write_file(&dir.join("ready"), &format!("{child}\n"));
    wait_usr1();
    let mut r = Report::default();
    check_table(&mut r, "parent", &before);
    let want_fds = [0, 1, 2, 100, 101, 150, 200];
    let fds: Vec<i32> = before.iter().map(|e| e.0).collect();
    r.expect(fds == want_fds, || format!("setup: fds {fds:?}"));
    r.expect(before.iter().all(|&(fd, _, ce, _)| ce == (fd == 200)), || format!("setup: cloexec flags {before:?}"));

    lseek(100, 4321, libc::SEEK_SET);
    let (p101, p200, p150) = (pos(101), pos(200), pos(150));
    r.expect(p101 == 4321 && p200 == 4321, || format!("after seeking fd 100 to 4321, fds 101 and 200 are at {p101} and {p200} (dups share the offset)"));
    r.expect(p150 == 77, || format!("after seeking fd 100, fd 150 (its own open) is at {p150}, expected 77"));
    let fl = fd_flags(101).map(|f| f.0).unwrap_or(0);
    // SAFETY: F_SETFL on our fd.
    unsafe { libc::fcntl(101, libc::F_SETFL, fl | libc::O_NONBLOCK) };
    r.expect(nonblock(200) && nonblock(100), || "O_NONBLOCK set through fd 101 does not show through fds 100 and 200".into());
    r.expect(!nonblock(150), || "O_NONBLOCK set through fd 101 shows through fd 150 (a separate open)".into());

    // SAFETY: kill(2) of our child.
    unsafe { libc::kill(child, libc::SIGUSR1) };
    r.child_verdict(child, &dir.join("result.child"));
    let p100 = pos(100);
    r.expect(p100 == 4331, || format!("after the child wrote 10 bytes through its fd 200, fd 100 is at {p100}, expected 4331"));
    let data = std::fs::read(&file).unwrap_or_default();
    r.expect(data.get(4321..4331) == Some(&b"from child"[..]), || "the child's write did not land at offset 4321".into());
    r.expect(data.len() == SIZE, || format!("shared.dat has {} bytes, expected {SIZE}", data.len()));
    std::process::exit(r.write(&dir.join("result")));
}
