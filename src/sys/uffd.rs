//! Dirty-page tracking without soft-dirty: a userfaultfd in asynchronous
//! write-protect mode (`UFFD_FEATURE_WP_ASYNC`, userfaultfd(2),
//! Documentation/admin-guide/mm/userfaultfd.rst) keeps a target's private
//! memory write-protected, the kernel resolving each first write itself; the
//! `PAGEMAP_SCAN` ioctl on /proc/PID/pagemap (Documentation/admin-guide/mm/
//! pagemap.rst) reports the pages written since and protects them again.
//! The tracking lasts while some process keeps the userfaultfd open.
//!
//! Background snapshots (`dump --leave-running`) use the synchronous mode: a
//! write to a protected page stops the writer until the holder of the
//! userfaultfd has read the page and lifts the protection (UFFDIO_WRITEPROTECT).
//!
//! Missing-page mode: a lazy restore (src/lazy) registers the memory it left
//! empty and a daemon fills each page on fault (UFFDIO_COPY, UFFDIO_ZEROPAGE),
//! following the process's forks, remaps and unmaps through its events; the
//! eager restore fills premapped memory with UFFDIO_COPY (src/mem/restore.rs).

use nix::errno::Errno;
use std::os::fd::{AsRawFd, BorrowedFd};

/// _IOWR(0xAA, 0x3F, struct uffdio_api).
const UFFDIO_API: libc::Ioctl = 0xC018_AA3F;
/// _IOWR(0xAA, 0x00, struct uffdio_register).
const UFFDIO_REGISTER: libc::Ioctl = 0xC020_AA00;
const UFFD_API: u64 = 0xAA;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
/// _IOWR('f', 16, struct pm_scan_arg).
const PAGEMAP_SCAN: libc::Ioctl = 0xC060_6610;
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
const PAGE_IS_WRITTEN: u64 = 1 << 1;

/// _IOWR(0xAA, 0x06, struct uffdio_writeprotect).
const UFFDIO_WRITEPROTECT: libc::Ioctl = 0xC018_AA06;
/// _IOR(0xAA, 0x02, struct uffdio_range).
const UFFDIO_WAKE: libc::Ioctl = 0x8010_AA02;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_EVENT_REMAP: u8 = 0x14;
const UFFD_EVENT_REMOVE: u8 = 0x15;
const UFFD_EVENT_UNMAP: u8 = 0x16;

/// userfaultfd(2) flags for a synchronous one a target makes: O_CLOEXEC |
/// O_NONBLOCK, faults from kernel mode included (a read(2) into a protected
/// page waits like a write from user space). Needs CAP_SYS_PTRACE in the
/// target or vm.unprivileged_userfaultfd = 1 (EPERM otherwise).
pub const NEW_FLAGS_SYNC: u64 = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;

/// userfaultfd(2) flags for the one a target makes: O_CLOEXEC | O_NONBLOCK |
/// UFFD_USER_MODE_ONLY (allowed without privilege; asynchronous write
/// protection resolves kernel-mode writes too).
pub const NEW_FLAGS: u64 = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64 | 1;

/// UFFDIO_API with asynchronous write protection.
pub fn api(uffd: BorrowedFd) -> Result<(), Errno> {
    api_with(uffd, UFFD_FEATURE_WP_ASYNC)
}

fn api_with(uffd: BorrowedFd, features: u64) -> Result<(), Errno> {
    let mut a = [UFFD_API, features, 0u64];
    // SAFETY: UFFDIO_API reads and writes a struct uffdio_api (three u64): `a`.
    Errno::result(unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API, a.as_mut_ptr()) }).map(drop)
}

const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;

/// UFFDIO_API for synchronous write protection (the default mode), with the
/// events of memory taken away or moved without a write: mremap (after the
/// move), madvise(MADV_DONTNEED/REMOVE) (before: the caller waits until the
/// event is read), munmap.
pub fn api_sync(uffd: BorrowedFd) -> Result<(), Errno> {
    api_with(uffd, UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP)
}

/// UFFDIO_WRITEPROTECT: protects [start, start + len) (`protect`), or lifts the
/// protection and wakes the threads waiting on it.
pub fn write_protect(uffd: BorrowedFd, start: u64, len: u64, protect: bool) -> Result<(), Errno> {
    let mut w = [start, len, if protect { UFFDIO_WRITEPROTECT_MODE_WP } else { 0 }];
    // SAFETY: UFFDIO_WRITEPROTECT reads a struct uffdio_writeprotect (range and
    // mode: three u64): `w`.
    Errno::result(unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_WRITEPROTECT, w.as_mut_ptr()) }).map(drop)
}

/// UFFDIO_WAKE: wakes the threads waiting on faults in [start, start + len).
pub fn wake(uffd: BorrowedFd, start: u64, len: u64) -> Result<(), Errno> {
    let mut r = [start, len];
    // SAFETY: UFFDIO_WAKE reads a struct uffdio_range (two u64): `r`.
    Errno::result(unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_WAKE, r.as_mut_ptr()) }).map(drop)
}

/// A message of a userfaultfd (struct uffd_msg).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Msg {
    /// A write fault at this address.
    Fault(u64),
    /// Memory [start, end) was taken away or moved (mremap: its old place).
    Gone(u64, u64),
    /// Another event.
    Other,
}

/// The next message queued on `uffd` (non-blocking: None when there is none).
pub fn next_msg(uffd: BorrowedFd) -> Result<Option<Msg>, Errno> {
    // struct uffd_msg: event (u8) + padding to 8 bytes, then for a page fault:
    // flags, address, thread id; for remap: from, to, len; for remove and
    // unmap: start, end (u64 each): 32 bytes.
    let mut m = [0u64; 4];
    match nix::unistd::read(uffd, msg_bytes(&mut m)) {
        Ok(32) => Ok(Some(match m[0] as u8 {
            UFFD_EVENT_PAGEFAULT => Msg::Fault(m[2]),
            UFFD_EVENT_REMAP => Msg::Gone(m[1], m[1].saturating_add(m[3])),
            UFFD_EVENT_REMOVE | UFFD_EVENT_UNMAP => Msg::Gone(m[1], m[2]),
            _ => Msg::Other,
        })),
        Ok(_) => Err(Errno::EIO),
        Err(Errno::EAGAIN) => Ok(None),
        Err(e) => Err(e),
    }
}

fn msg_bytes(m: &mut [u64; 4]) -> &mut [u8] {
    // SAFETY: 32 bytes of plain integers, viewed as bytes for the read.
    unsafe { std::slice::from_raw_parts_mut(m.as_mut_ptr().cast::<u8>(), 32) }
}

/// UFFDIO_REGISTER of [start, end) for write protection.
pub fn register_wp(uffd: BorrowedFd, start: u64, end: u64) -> Result<(), Errno> {
    let mut r = [start, end - start, UFFDIO_REGISTER_MODE_WP, 0u64];
    // SAFETY: UFFDIO_REGISTER reads and writes a struct uffdio_register (range,
    // mode, ioctls: four u64): `r`.
    Errno::result(unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER, r.as_mut_ptr()) }).map(drop)
}

/// The page ranges of [start, end) written since they were last protected, as
/// (start, end) byte addresses, from `pagemap` (a /proc/PID/pagemap fd); with
/// `protect`, protects them again (PM_SCAN_WP_MATCHING: EPERM on a range that
/// is not registered for write protection).
pub fn written(pagemap: BorrowedFd, start: u64, end: u64, protect: bool) -> Result<Vec<(u64, u64)>, Errno> {
    scan(pagemap, start, end, if protect { PM_SCAN_WP_MATCHING } else { 0 }, 0, PAGE_IS_WRITTEN, 0)
}

/// PAGEMAP_SCAN categories (Documentation/admin-guide/mm/pagemap.rst).
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;
pub const PAGE_IS_GUARD: u64 = 1 << 8;

/// The page ranges of [start, end) whose categories, each XORed with
/// `inverted`, include all of `mask` and (unless 0) any of `anyof`: (start, end)
/// byte addresses, in order.
pub fn regions(pagemap: BorrowedFd, start: u64, end: u64, inverted: u64, mask: u64, anyof: u64) -> Result<Vec<(u64, u64)>, Errno> {
    scan(pagemap, start, end, 0, inverted, mask, anyof)
}

fn scan(pagemap: BorrowedFd, start: u64, end: u64, flags: u64, inverted: u64, mask: u64, anyof: u64) -> Result<Vec<(u64, u64)>, Errno> {
    const VEC: usize = 512;
    let mut out = Vec::new();
    let mut regions = [[0u64; 3]; VEC];
    let mut at = start;
    while at < end {
        // struct pm_scan_arg: size, flags, start, end, walk_end, vec, vec_len,
        // max_pages, category_inverted, category_mask, category_anyof_mask,
        // return_mask.
        let mut arg = [96, flags, at, end, 0, regions.as_mut_ptr() as u64, VEC as u64, 0, inverted, mask, anyof, mask | anyof];
        // SAFETY: PAGEMAP_SCAN reads a struct pm_scan_arg (`arg`, twelve u64) and
        // writes at most `vec_len` struct page_region (three u64) at `vec`, which
        // `regions` holds, and `walk_end` in `arg`.
        let n = Errno::result(unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN, arg.as_mut_ptr()) })? as usize;
        out.extend(regions[..n.min(VEC)].iter().map(|r| (r[0], r[1])));
        let walk_end = arg[4];
        if walk_end <= at {
            break;
        }
        at = walk_end;
    }
    Ok(out)
}

// ---- Lazy pages: missing-page faults served by a daemon (userfaultfd(2),
// ioctl_userfaultfd(2): UFFDIO_COPY, UFFDIO_ZEROPAGE; non-cooperative events).

/// _IOWR(0xAA, 0x03, struct uffdio_copy).
const UFFDIO_COPY: libc::Ioctl = 0xC028_AA03;
/// _IOWR(0xAA, 0x04, struct uffdio_zeropage).
const UFFDIO_ZEROPAGE: libc::Ioctl = 0xC020_AA04;
const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
const UFFD_EVENT_FORK: u8 = 0x13;

/// A userfaultfd of the calling process's memory (O_CLOEXEC | O_NONBLOCK; faults
/// from kernel mode included, which needs CAP_SYS_PTRACE or
/// vm.unprivileged_userfaultfd = 1).
pub fn new_own() -> Result<std::os::fd::OwnedFd, Errno> {
    // SAFETY: userfaultfd(2) takes flags and returns a new fd, owned here.
    let fd = Errno::result(unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: a fresh fd nothing else owns.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

/// UFFDIO_API for lazy pages: missing-page faults plus the events that change
/// which pages a daemon must still supply: fork (a new userfaultfd for the
/// child's copy), mremap, madvise(MADV_DONTNEED/REMOVE), munmap.
pub fn api_lazy(uffd: BorrowedFd) -> Result<(), Errno> {
    api_with(uffd, UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP)
}

/// UFFDIO_API with no feature: missing-page faults only (a userfaultfd used
/// only to fill memory with UFFDIO_COPY).
pub fn api_plain(uffd: BorrowedFd) -> Result<(), Errno> {
    api_with(uffd, 0)
}

/// UFFDIO_REGISTER of [start, end) for missing-page faults.
pub fn register_missing(uffd: BorrowedFd, start: u64, end: u64) -> Result<(), Errno> {
    let mut r = [start, end - start, 1u64 /* UFFDIO_REGISTER_MODE_MISSING */, 0u64];
    // SAFETY: UFFDIO_REGISTER reads and writes a struct uffdio_register (range,
    // mode, ioctls: four u64): `r`.
    Errno::result(unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER, r.as_mut_ptr()) }).map(drop)
}

/// A message of a lazy-pages userfaultfd.
#[derive(Debug)]
pub enum Event {
    /// A missing-page fault at this address.
    Fault(u64),
    /// The process forked: the child's userfaultfd (now an fd of the reader).
    Fork(std::os::fd::OwnedFd),
    /// [from, from + len) moved to [to, to + len) (mremap).
    Remap { from: u64, to: u64, len: u64 },
    /// [start, end) is gone (munmap) or emptied (madvise): it reads as zeros.
    Gone(u64, u64),
    /// Another event.
    Other,
}

/// The next message of a lazy-pages userfaultfd (None: none queued). One at a
/// time on purpose: a madvise waits only until its event is read, so a fault
/// read together with it must not be served after it.
pub fn next_event(uffd: BorrowedFd) -> Result<Option<Event>, Errno> {
    let mut m = [0u64; 4];
    match nix::unistd::read(uffd, msg_bytes(&mut m)) {
        Ok(32) => Ok(Some(match m[0] as u8 {
            UFFD_EVENT_PAGEFAULT => Event::Fault(m[2]),
            UFFD_EVENT_FORK => {
                // SAFETY: the kernel installed this fd in our table for this read.
                Event::Fork(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(m[1] as u32 as i32) })
            }
            UFFD_EVENT_REMAP => Event::Remap { from: m[1], to: m[2], len: m[3] },
            UFFD_EVENT_REMOVE | UFFD_EVENT_UNMAP => Event::Gone(m[1], m[2]),
            _ => Event::Other,
        })),
        Ok(_) => Err(Errno::EIO),
        Err(Errno::EAGAIN) => Ok(None),
        Err(e) => Err(e),
    }
}

/// UFFDIO_COPY of `src` to `dst` (page-aligned, in the userfaultfd's process),
/// waking threads waiting there. Returns the bytes copied; an error after a
/// partial copy comes with what was copied: EEXIST (a page is already there),
/// EAGAIN (the memory layout is changing: read the events first), ENOENT (no
/// such mapping any more), ESRCH (the process is gone).
pub fn copy(uffd: BorrowedFd, dst: u64, src: &[u8]) -> Result<u64, (Errno, u64)> {
    // struct uffdio_copy: dst, src, len, mode, copy (out, bytes or -errno).
    let mut c = [dst, src.as_ptr() as u64, src.len() as u64, 0u64, 0u64];
    // SAFETY: UFFDIO_COPY reads `len` bytes at `src` (the slice) and writes the
    // `copy` field of `c`.
    let r = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_COPY, c.as_mut_ptr()) };
    let done = if (c[4] as i64) > 0 { c[4] } else { 0 };
    if r < 0 { Err((Errno::last(), done)) } else { Ok(done) }
}

/// UFFDIO_ZEROPAGE of [start, start + len), waking threads waiting there.
/// Errors as `copy`.
pub fn zeropage(uffd: BorrowedFd, start: u64, len: u64) -> Result<u64, (Errno, u64)> {
    // struct uffdio_zeropage: range (start, len), mode, zeropage (out).
    let mut z = [start, len, 0u64, 0u64];
    // SAFETY: UFFDIO_ZEROPAGE reads the range and mode and writes the result field of `z`.
    let r = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_ZEROPAGE, z.as_mut_ptr()) };
    let done = if (z[3] as i64) > 0 { z[3] } else { 0 };
    if r < 0 { Err((Errno::last(), done)) } else { Ok(done) }
}
