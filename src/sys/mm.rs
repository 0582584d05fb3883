//! Raw memory-management calls the restore path makes in its own address space, the
//! pagemap reader, and the one-way jump into the restorer blob.

use nix::errno::Errno;
use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::FileExt;

pub const PAGE: u64 = 4096;

/// mmap(2) at exactly `addr`. `replace` decides between MAP_FIXED and
/// MAP_FIXED_NOREPLACE.
pub fn map_at(addr: u64, len: u64, prot: i32, flags: i32, fd: Option<BorrowedFd>, off: u64, replace: bool) -> Result<(), Errno> {
    let fixed = if replace { libc::MAP_FIXED } else { libc::MAP_FIXED_NOREPLACE };
    let raw_fd = fd.map(|f| f.as_raw_fd()).unwrap_or(-1);
    // SAFETY: mapping at a fixed address only affects ranges crtool chose inside its
    // own premap area (replace) or free ranges (noreplace); no Rust object lives there.
    let r = unsafe { libc::mmap(addr as *mut _, len as usize, prot, flags | fixed, raw_fd, off as i64) };
    if r == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    if r as u64 != addr {
        // SAFETY: an old kernel ignoring NOREPLACE gave us another range; undo it.
        unsafe { libc::munmap(r, len as usize) };
        return Err(Errno::EEXIST);
    }
    Ok(())
}

pub fn protect(addr: u64, len: u64, prot: i32) -> Result<(), Errno> {
    // SAFETY: changes protection of a premap-area range crtool owns.
    Errno::result(unsafe { libc::mprotect(addr as *mut _, len as usize, prot) }).map(drop)
}

pub fn unmap(addr: u64, len: u64) -> Result<(), Errno> {
    // SAFETY: unmaps a premap-area range crtool owns and no longer references.
    Errno::result(unsafe { libc::munmap(addr as *mut _, len as usize) }).map(drop)
}

/// A mutable view of `len` bytes at `addr` in this process.
///
/// # Safety
/// `[addr, addr+len)` must be mapped writable and not aliased by any Rust reference
/// for the lifetime of the slice.
pub unsafe fn slice_at<'a>(addr: u64, len: usize) -> &'a mut [u8] {
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len) }
}

/// Pagemap bits (Documentation/admin-guide/mm/pagemap.rst).
pub const PM_PRESENT: u64 = 1 << 63;
pub const PM_SWAP: u64 = 1 << 62;
pub const PM_FILE: u64 = 1 << 61;
pub const PM_PFN_MASK: u64 = (1 << 55) - 1;

/// Reads the pagemap entries for `[start, end)` of the process whose pagemap is open.
pub fn read_pagemap(pagemap: &File, start: u64, end: u64, out: &mut Vec<u64>) -> std::io::Result<()> {
    let n = ((end - start) / PAGE) as usize;
    out.clear();
    out.resize(n, 0);
    // SAFETY: u64 has no invalid bit patterns; we view the Vec's storage as bytes.
    let bytes = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, n * 8) };
    pagemap.read_exact_at(bytes, start / PAGE * 8)
}

/// The PFN of the shared zero page, learned from a read-faulted private page of ours.
pub fn zero_pfn() -> Option<u64> {
    // SAFETY: a fresh private anonymous page, read once (maps the zero page), unmapped.
    unsafe {
        let p = libc::mmap(std::ptr::null_mut(), PAGE as usize, libc::PROT_READ, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
        if p == libc::MAP_FAILED {
            return None;
        }
        std::ptr::read_volatile(p as *const u8);
        let f = File::open("/proc/self/pagemap").ok();
        let mut v = Vec::new();
        let ok = f.map(|f| read_pagemap(&f, p as u64, p as u64 + PAGE, &mut v).is_ok()).unwrap_or(false);
        libc::munmap(p, PAGE as usize);
        if ok && v[0] & PM_PRESENT != 0 { Some(v[0] & PM_PFN_MASK) } else { None }
    }
}

/// Blocks every signal in the calling thread.
pub fn block_all_signals() {
    // SAFETY: sigfillset/sigprocmask on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Jumps to `entry` with `rdi = arg` on the stack whose top is `stack_top`. Never
/// returns: the restorer owns the process from here on.
///
/// # Safety
/// `entry` must be the restorer blob's entry in memory that stays mapped, `arg` its
/// prepared arguments, and the caller must have nothing left to clean up.
pub unsafe fn jump_to_restorer(entry: u64, arg: u64, stack_top: u64) -> ! {
    // SAFETY: guaranteed by the caller; we abandon the Rust stack for good.
    unsafe {
        std::arch::asm!("mov rsp, {st}", "jmp {e}", st = in(reg) stack_top, e = in(reg) entry,
                        in("rdi") arg, options(noreturn));
    }
}

/// Offset of a `syscall` instruction (0f 05) inside this process's vdso, and the
/// vdso's size. Every process on this kernel has the same vdso image, so the same
/// offset in a tracee's vdso is a syscall instruction crtool can point rip at.
pub fn vdso_syscall_offset() -> Option<u64> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let line = maps.lines().find(|l| l.ends_with("[vdso]"))?;
    let range = line.split_whitespace().next()?;
    let (s, e) = range.split_once('-')?;
    let (s, e) = (u64::from_str_radix(s, 16).ok()?, u64::from_str_radix(e, 16).ok()?);
    // SAFETY: the vdso is mapped readable for the life of the process.
    let code = unsafe { std::slice::from_raw_parts(s as *const u8, (e - s) as usize) };
    code.windows(2).position(|w| w == [0x0f, 0x05]).map(|p| p as u64)
}

/// mmap(2) anywhere; returns the address.
pub fn map_anywhere(len: u64, prot: i32, flags: i32) -> Result<u64, Errno> {
    // SAFETY: a fresh mapping at a kernel-chosen address touches nothing existing.
    let r = unsafe { libc::mmap(std::ptr::null_mut(), len as usize, prot, flags, -1, 0) };
    if r == libc::MAP_FAILED { Err(Errno::last()) } else { Ok(r as u64) }
}

/// Pre-faults `[addr, addr+len)` writable in one call (MADV_POPULATE_WRITE), which is
/// much cheaper than taking one page fault per page while filling it. Best effort.
pub fn populate_write(addr: u64, len: u64) {
    // SAFETY: madvise only faults in pages of a mapping crtool created; no data moves.
    unsafe { libc::madvise(addr as *mut _, len as usize, 23 /* MADV_POPULATE_WRITE */) };
}

/// madvise(2) with `advice` on a range crtool premapped.
pub fn advise(addr: u64, len: u64, advice: i32) -> Result<(), Errno> {
    // SAFETY: advice flags on a mapping crtool created; no memory is touched.
    Errno::result(unsafe { libc::madvise(addr as *mut _, len as usize, advice) }).map(drop)
}
