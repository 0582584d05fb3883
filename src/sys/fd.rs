//! File-descriptor operations by raw number, which the restore path needs because it
//! lays out a task's fd table number by number.

use nix::errno::Errno;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// open(2) with `flags` (O_CLOEXEC added), positioned at `pos`.
pub fn open_at_pos(path: &str, flags: i32, pos: u64) -> io::Result<OwnedFd> {
    let c = CString::new(path).map_err(io::Error::other)?;
    // SAFETY: open(2) with a valid NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: lseek on the fd we own.
    if pos != 0 && unsafe { libc::lseek(fd.as_raw_fd(), pos as i64, libc::SEEK_SET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Duplicates `fd` onto the lowest free number >= `min`, close-on-exec; the copy
/// is handed out as a raw number (it is inherited by forks and closed explicitly).
pub fn dup_above(fd: RawFd, min: RawFd) -> io::Result<RawFd> {
    // SAFETY: F_DUPFD_CLOEXEC creates a new fd and touches no memory.
    let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// Makes fd number `target` refer to the description of `src` (dup3).
pub fn dup_to(src: RawFd, target: RawFd, cloexec: bool) -> io::Result<()> {
    // SAFETY: dup3 replaces whatever `target` was; callers only pass numbers that
    // belong to the task being built, never fds crtool code still uses.
    let r = unsafe { libc::dup3(src, target, if cloexec { libc::O_CLOEXEC } else { 0 }) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Sets or clears FD_CLOEXEC on a raw fd.
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: F_SETFD takes an integer and touches no memory.
    let r = unsafe { libc::fcntl(fd, libc::F_SETFD, if on { libc::FD_CLOEXEC } else { 0 }) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Closes a raw fd number that no Rust object owns.
pub fn close_raw(fd: RawFd) {
    // SAFETY: callers pass numbers they own by convention (parked or inherited fds).
    unsafe { libc::close(fd) };
}

/// Closes every fd except `keep` (in a forked restore task, dropping crtool's fds),
/// with close_range(2): no /proc needed, nothing left behind.
pub fn close_all_except(keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep.iter().filter(|&&f| f >= 0).map(|&f| f as u32).collect();
    keep.sort_unstable();
    keep.dedup();
    let mut from = 0u32;
    for k in keep.into_iter().chain(std::iter::once(u32::MAX)) {
        if k > from {
            // SAFETY: closes fd numbers no Rust object in this (forked) process uses
            // any more; the kept ones are outside the range.
            unsafe { libc::syscall(libc::SYS_close_range, from, k - 1, 0) };
        }
        from = k.saturating_add(1);
    }
}

/// write(2) of the whole buffer to a raw fd, best effort (error reporting paths).
pub fn write_raw(fd: RawFd, data: &[u8]) {
    // SAFETY: write(2) from a live slice.
    unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
}

/// read(2) into `buf` from a raw fd.
pub fn read_raw(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: read(2) into a live, writable slice.
    let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
}

/// tee(2): duplicates up to `len` bytes buffered in pipe `from` into pipe `to`
/// without consuming them.
pub fn tee(from: &OwnedFd, to: &OwnedFd, len: usize) -> Result<usize, Errno> {
    // SAFETY: tee between two pipe fds we own; no user memory involved.
    let n = unsafe { libc::tee(from.as_raw_fd(), to.as_raw_fd(), len, libc::SPLICE_F_NONBLOCK) };
    Errno::result(n).map(|n| n as usize)
}

/// fstatfs(2) f_type: which filesystem `fd` lives on (PROC_SUPER_MAGIC, ...).
pub fn fs_magic(fd: &OwnedFd) -> io::Result<i64> {
    // SAFETY: fstatfs writes one struct statfs into our zeroed local.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above, with an fd we own.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

// fcntl commands libc does not define (include/uapi/asm-generic/fcntl.h).
const F_SETSIG: i32 = 10;
const F_GETSIG: i32 = 11;
const F_SETOWN_EX: i32 = 15;
const F_GETOWN_EX: i32 = 16;

#[repr(C)]
struct FOwnerEx {
    ty: i32,
    pid: i32,
}

/// fcntl(F_GETOWN_EX): (F_OWNER_TID/PID/PGRP, id; 0 = no owner).
pub fn get_owner(fd: &OwnedFd) -> Result<(i32, i32), Errno> {
    let mut o = FOwnerEx { ty: 0, pid: 0 };
    // SAFETY: F_GETOWN_EX writes one struct f_owner_ex into our local.
    Errno::result(unsafe { libc::fcntl(fd.as_raw_fd(), F_GETOWN_EX, &mut o as *mut FOwnerEx) })?;
    Ok((o.ty, o.pid))
}

/// fcntl(F_SETOWN_EX) on a raw (parked) fd.
pub fn set_owner(fd: RawFd, ty: i32, pid: i32) -> Result<(), Errno> {
    let o = FOwnerEx { ty, pid };
    // SAFETY: F_SETOWN_EX reads one struct f_owner_ex from our local.
    Errno::result(unsafe { libc::fcntl(fd, F_SETOWN_EX, &o as *const FOwnerEx) }).map(drop)
}

/// fcntl(F_GETSIG).
pub fn get_sig(fd: &OwnedFd) -> Result<i32, Errno> {
    // SAFETY: F_GETSIG takes no argument.
    Errno::result(unsafe { libc::fcntl(fd.as_raw_fd(), F_GETSIG) })
}

/// Adds O_ASYNC (F_SETFL) and sets F_SETSIG on a description.
pub fn set_async(fd: &OwnedFd, on: bool, sig: i32) -> Result<(), Errno> {
    // SAFETY: fcntl commands taking integers, on an fd we own.
    unsafe {
        if sig != 0 {
            Errno::result(libc::fcntl(fd.as_raw_fd(), F_SETSIG, sig))?;
        }
        if on {
            let fl = Errno::result(libc::fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
            Errno::result(libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_ASYNC))?;
        }
    }
    Ok(())
}

/// Adds O_ASYNC to the status flags of a raw fd (F_SETFL from this fd number: the
/// kernel records it for SIGIO's si_fd).
pub fn set_async_raw(fd: RawFd) -> Result<(), Errno> {
    // SAFETY: fcntl commands taking integers.
    unsafe {
        let fl = Errno::result(libc::fcntl(fd, libc::F_GETFL))?;
        Errno::result(libc::fcntl(fd, libc::F_SETFL, fl | libc::O_ASYNC))?;
    }
    Ok(())
}

/// Sets the status flags open(2) cannot give a file after the fact (O_NONBLOCK,
/// O_APPEND, O_DIRECT, O_NOATIME) as in `flags`; O_ASYNC is left to the task.
pub fn set_status_flags(fd: &OwnedFd, flags: u32) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let keep = libc::O_NONBLOCK | libc::O_APPEND | libc::O_DIRECT | libc::O_NOATIME;
    let f = OFlag::from_bits_truncate(flags as i32 & keep);
    fcntl(fd, FcntlArg::F_SETFL(f)).map(drop).map_err(io::Error::from)
}

/// A new fd (the lowest free number) for the open file behind `fd`, owned.
pub fn dup_owned(fd: RawFd) -> io::Result<OwnedFd> {
    let n = dup_above(fd, 0)?;
    // SAFETY: F_DUPFD just made `n`; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Takes ownership of fds the kernel has just installed in this process for the
/// caller (received with SCM_RIGHTS, returned by accept4): nothing else owns them.
pub fn take_received(fds: Vec<RawFd>) -> Vec<OwnedFd> {
    // SAFETY: per the contract above, each fd is open and owned by no one else.
    fds.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }).collect()
}

/// flock(fd, LOCK_EX or LOCK_SH | LOCK_NB).
pub fn flock(fd: RawFd, write: bool) -> Result<(), Errno> {
    // SAFETY: plain syscall with integer arguments.
    Errno::result(unsafe { libc::flock(fd, if write { libc::LOCK_EX } else { libc::LOCK_SH } | libc::LOCK_NB) }).map(drop)
}

/// fcntl(fd, F_SETLK or F_OFD_SETLK) of a read or write lock on `len` bytes from
/// `start` (0: to the end of the file, however long).
pub fn record_lock(fd: RawFd, ofd: bool, write: bool, start: u64, len: u64) -> Result<(), Errno> {
    let fl = libc::flock {
        l_type: if write { libc::F_WRLCK } else { libc::F_RDLCK } as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: start as i64,
        l_len: len as i64,
        l_pid: 0,
    };
    let cmd = if ofd { libc::F_OFD_SETLK } else { libc::F_SETLK };
    // SAFETY: `fl` is a valid struct flock for the call.
    Errno::result(unsafe { libc::fcntl(fd, cmd, &fl) }).map(drop)
}

/// fcntl(F_GET_SEALS).
pub fn get_seals(fd: std::os::fd::BorrowedFd) -> Result<u32, Errno> {
    // SAFETY: plain fcntl with no pointer.
    Errno::result(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) }).map(|v| v as u32)
}

/// fcntl(F_ADD_SEALS, seals).
pub fn add_seals(fd: std::os::fd::BorrowedFd, seals: u32) -> Result<(), Errno> {
    // SAFETY: plain fcntl with an integer argument.
    Errno::result(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals as libc::c_int) }).map(drop)
}

/// lseek(SEEK_DATA) from `at`: the next data offset, or None past the last data.
pub fn seek_data(fd: std::os::fd::BorrowedFd, at: u64) -> Result<Option<u64>, Errno> {
    // SAFETY: plain lseek.
    match Errno::result(unsafe { libc::lseek(fd.as_raw_fd(), at as i64, libc::SEEK_DATA) }) {
        Ok(v) => Ok(Some(v as u64)),
        Err(Errno::ENXIO) => Ok(None),
        Err(e) => Err(e),
    }
}

/// lseek(SEEK_HOLE) from `at`: where the data run starting at `at` ends.
pub fn seek_hole(fd: std::os::fd::BorrowedFd, at: u64) -> Result<u64, Errno> {
    // SAFETY: plain lseek.
    Errno::result(unsafe { libc::lseek(fd.as_raw_fd(), at as i64, libc::SEEK_HOLE) }).map(|v| v as u64)
}

/// memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING).
pub fn memfd_create(name: &str) -> Result<OwnedFd, Errno> {
    let c = CString::new(name).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `c` is a valid C string for the call.
    let fd = Errno::result(unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) })?;
    // SAFETY: a new fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether `path` has the extended attribute `name` (lgetxattr).
pub fn has_xattr(path: &std::path::Path, name: &str) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let (Ok(p), Ok(n)) = (CString::new(path.as_os_str().as_bytes()), CString::new(name)) else { return false };
    // SAFETY: valid C strings; a zero-size query reads nothing into memory.
    unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

/// Sets the extended attribute `name` (empty value) on an open file.
pub fn set_xattr(f: &std::fs::File, name: &str) -> io::Result<()> {
    let n = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: a valid C string and an empty value.
    if unsafe { libc::fsetxattr(f.as_raw_fd(), n.as_ptr(), std::ptr::null(), 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Removes the extended attribute `name` of `path`, if it is there.
pub fn remove_xattr(path: &std::path::Path, name: &str) {
    use std::os::unix::ffi::OsStrExt;
    let (Ok(p), Ok(n)) = (CString::new(path.as_os_str().as_bytes()), CString::new(name)) else { return };
    // SAFETY: valid C strings.
    unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) };
}

/// Borrows a raw fd number that no Rust object owns (a parked or inherited fd that
/// stays open for the whole life of the process using it).
pub fn borrow<'a>(fd: RawFd) -> std::os::fd::BorrowedFd<'a> {
    // SAFETY: by the contract above the fd stays open while the borrow is used;
    // BorrowedFd only requires that it is open (not -1).
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}
