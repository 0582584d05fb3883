//! Raw memory-management calls the restore path makes in its own address space, the
//! pagemap reader, and the one-way jump into the restorer blob.

use nix::errno::Errno;
use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::FileExt;

pub const PAGE: u64 = 4096;

/// mmap(2) at exactly `addr`; `replace` decides between MAP_FIXED and
/// MAP_FIXED_NOREPLACE.
///
/// # Safety
/// With `replace`, `[addr, addr+len)` must hold nothing any Rust code refers to.
unsafe fn map_fixed(addr: u64, len: u64, prot: i32, flags: i32, fd: Option<BorrowedFd>, off: u64, replace: bool) -> Result<(), Errno> {
    let fixed = if replace { libc::MAP_FIXED } else { libc::MAP_FIXED_NOREPLACE };
    let raw_fd = fd.map(|f| f.as_raw_fd()).unwrap_or(-1);
    // SAFETY: NOREPLACE never touches existing mappings; with replace the caller
    // vouches that the range is unused.
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

/// An address range reserved (PROT_NONE) in crtool's own address space, at a place
/// free in both crtool's and the task's layouts, and carved front to back into
/// mappings for the task being restored. Carved ranges never overlap, so each
/// `Mapping` is the only handle to its memory.
pub struct Area {
    start: u64,
    len: u64,
    next: u64,
}

impl Area {
    pub fn reserve(start: u64, len: u64) -> Result<Area, Errno> {
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        // SAFETY: MAP_FIXED_NOREPLACE fails instead of replacing anything.
        unsafe { map_fixed(start, len, libc::PROT_NONE, flags, None, 0, false)? };
        Ok(Area { start, len, next: start })
    }

    pub fn start(&self) -> u64 {
        self.start
    }

    /// The whole reservation's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Maps the next `len` bytes of the area.
    pub fn map_next(&mut self, len: u64, prot: i32, flags: i32, fd: Option<BorrowedFd>, off: u64) -> Result<Mapping, Errno> {
        let at = self.next;
        if at + len > self.start + self.len {
            return Err(Errno::ENOMEM);
        }
        // SAFETY: [at, at+len) lies in our own reservation past every range handed out
        // before, so nothing refers to it.
        unsafe { map_fixed(at, len, prot, flags, fd, off, true)? };
        self.next += len;
        Ok(Mapping { addr: at, len, writable: prot & libc::PROT_WRITE != 0 })
    }

    /// Moves `len` bytes of an existing private mapping of this process at `from`
    /// (inherited copy-on-write from the parent) to the next bytes of the area with
    /// mremap(2), keeping its pages shared. `prot` is its current protection.
    ///
    /// # Safety
    /// `[from, from+len)` must be a mapping no Rust object refers to (a parent's
    /// premapped memory inherited at fork).
    pub unsafe fn adopt(&mut self, from: u64, len: u64, prot: i32) -> Result<Mapping, Errno> {
        let at = self.next;
        if at + len > self.start + self.len {
            return Err(Errno::ENOMEM);
        }
        // SAFETY: the source is unused by Rust code (caller); the target lies in our
        // reservation past every range handed out, which MREMAP_FIXED replaces.
        let r = unsafe { libc::mremap(from as *mut _, len as usize, len as usize, libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED, at as *mut libc::c_void) };
        if r == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        self.next += len;
        Ok(Mapping { addr: at, len, writable: prot & libc::PROT_WRITE != 0 })
    }

    /// Attaches `[pgoff, pgoff+len)` of SysV segment `id` (`seg_len` bytes, page
    /// rounded) at the next `len` bytes of the area, as a real attachment: shmat(2)
    /// wherever the kernel likes, mremap(2) of the wanted part into place, munmap(2)
    /// of the rest; then `prot` (the attachment is made read-only with SHM_RDONLY
    /// in `shmflg`).
    pub fn attach_shm(&mut self, id: i32, seg_len: u64, pgoff: u64, len: u64, shmflg: i32, prot: i32) -> Result<Mapping, Errno> {
        let at = self.next;
        if at + len > self.start + self.len || pgoff.checked_add(len).is_none_or(|e| e > seg_len) {
            return Err(Errno::ENOMEM);
        }
        // SAFETY: a new attachment at a kernel-chosen address touches nothing existing.
        let base = unsafe { libc::shmat(id, std::ptr::null(), shmflg) };
        if base as isize == -1 {
            return Err(Errno::last());
        }
        let base = base as u64;
        // SAFETY: moves part of the attachment just made (nothing refers to it) into
        // our reservation past every range handed out, which MREMAP_FIXED replaces.
        let r = unsafe { libc::mremap((base + pgoff) as *mut _, len as usize, len as usize, libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED, at as *mut libc::c_void) };
        let moved = r != libc::MAP_FAILED;
        let err = Errno::last();
        // SAFETY: the rest of the fresh attachment (all of it if the move failed).
        unsafe {
            if !moved {
                libc::munmap(base as *mut _, seg_len as usize);
            } else {
                if pgoff > 0 {
                    libc::munmap(base as *mut _, pgoff as usize);
                }
                if pgoff + len < seg_len {
                    libc::munmap((base + pgoff + len) as *mut _, (seg_len - pgoff - len) as usize);
                }
            }
        }
        if !moved {
            return Err(err);
        }
        self.next += len;
        let mut m = Mapping { addr: at, len, writable: shmflg & libc::SHM_RDONLY == 0 };
        let now = libc::PROT_READ | if m.writable { libc::PROT_WRITE } else { 0 } | if shmflg & super::ipc::SHM_EXEC != 0 { libc::PROT_EXEC } else { 0 };
        if prot != now {
            m.protect(prot)?;
        }
        Ok(m)
    }

    /// Leaves `len` bytes of the area unmapped (still reserved).
    pub fn skip(&mut self, len: u64) -> u64 {
        let at = self.next;
        self.next += len;
        at
    }
}

/// A mapping crtool created for a task being restored; the only handle to its
/// memory. It stays mapped when dropped: the restorer takes it over.
pub struct Mapping {
    addr: u64,
    len: u64,
    writable: bool,
}

impl Mapping {
    /// A fresh mapping wherever the kernel puts it.
    pub fn anywhere(len: u64, prot: i32, flags: i32) -> Result<Mapping, Errno> {
        // SAFETY: a fresh mapping at a kernel-chosen address touches nothing existing.
        let r = unsafe { libc::mmap(std::ptr::null_mut(), len as usize, prot, flags, -1, 0) };
        if r == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        Ok(Mapping { addr: r as u64, len, writable: prot & libc::PROT_WRITE != 0 })
    }

    pub fn addr(&self) -> u64 {
        self.addr
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `len` bytes at `off`, if the mapping is writable and the range inside it.
    pub fn bytes_mut(&mut self, off: u64, len: u64) -> Option<&mut [u8]> {
        if !self.writable || off.checked_add(len)? > self.len {
            return None;
        }
        // SAFETY: the range is inside a writable mapping that only this handle
        // refers to (see `Area`), borrowed mutably for the slice's lifetime.
        Some(unsafe { std::slice::from_raw_parts_mut((self.addr + off) as *mut u8, len as usize) })
    }

    pub fn protect(&mut self, prot: i32) -> Result<(), Errno> {
        // SAFETY: changes the protection of memory only this handle refers to.
        Errno::result(unsafe { libc::mprotect(self.addr as *mut _, self.len as usize, prot) })?;
        self.writable = prot & libc::PROT_WRITE != 0;
        Ok(())
    }

    pub fn advise(&self, advice: i32) -> Result<(), Errno> {
        // SAFETY: advice flags on memory only this handle refers to; MADV_DONTNEED
        // and other data-changing advice are never passed.
        Errno::result(unsafe { libc::madvise(self.addr as *mut _, self.len as usize, advice) }).map(drop)
    }

    /// Drops the pages of `[off, off+len)` (MADV_DONTNEED): anonymous memory reads
    /// as zeros again, a private file mapping as the file.
    pub fn discard(&mut self, off: u64, len: u64) -> Result<(), Errno> {
        if off.checked_add(len).is_none_or(|e| e > self.len) {
            return Err(Errno::EINVAL);
        }
        // SAFETY: data-changing advice on memory only this (mutably borrowed) handle
        // refers to.
        Errno::result(unsafe { libc::madvise((self.addr + off) as *mut _, len as usize, libc::MADV_DONTNEED) }).map(drop)
    }

    /// mlock2(2) of the whole mapping (`on_fault`: MLOCK_ONFAULT, pages locked as
    /// they are touched).
    pub fn lock(&self, on_fault: bool) -> Result<(), Errno> {
        // SAFETY: locks memory only this handle refers to; no data changes.
        Errno::result(unsafe { libc::syscall(libc::SYS_mlock2, self.addr, self.len, if on_fault { 1 } else { 0 }) }).map(drop)
    }

    /// Installs guard pages over `[off, off+len)` (MADV_GUARD_INSTALL, Linux 6.13).
    pub fn guard(&mut self, off: u64, len: u64) -> Result<(), Errno> {
        if off.checked_add(len).is_none_or(|e| e > self.len) {
            return Err(Errno::EINVAL);
        }
        // SAFETY: makes part of memory only this handle refers to inaccessible; no
        // Rust reference into it outlives the mutable borrow.
        Errno::result(unsafe { libc::madvise((self.addr + off) as *mut _, len as usize, 102 /* MADV_GUARD_INSTALL */) }).map(drop)
    }

    /// Pre-faults `[off, off+len)` writable in one call (MADV_POPULATE_WRITE), much
    /// cheaper than one page fault per page while filling. Best effort.
    pub fn populate(&self, off: u64, len: u64) {
        // SAFETY: faults in pages of our own mapping; no data changes.
        unsafe { libc::madvise((self.addr + off) as *mut _, len as usize, 23 /* MADV_POPULATE_WRITE */) };
    }
}

/// Pagemap bits (Documentation/admin-guide/mm/pagemap.rst).
pub const PM_PRESENT: u64 = 1 << 63;
pub const PM_SWAP: u64 = 1 << 62;
pub const PM_FILE: u64 = 1 << 61;
pub const PM_PFN_MASK: u64 = (1 << 55) - 1;
/// The page is mapped by this process only (not shared copy-on-write).
pub const PM_MMAP_EXCLUSIVE: u64 = 1 << 56;
/// A guard region page (MADV_GUARD_INSTALL, Linux 6.13).
pub const PM_GUARD_REGION: u64 = 1 << 58;

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

/// A copy of this process's vdso (every process on this kernel has the same).
pub fn vdso_code() -> Option<Vec<u8>> {
    let (s, e) = crate::procinfo::vdso("self")?;
    // SAFETY: the vdso is mapped readable for the life of the process.
    Some(unsafe { std::slice::from_raw_parts(s as *const u8, (e - s) as usize) }.to_vec())
}

/// Offset of a `syscall` instruction (0f 05) inside this process's vdso, and the
/// vdso's size. Every process on this kernel has the same vdso image, so the same
/// offset in a tracee's vdso is a syscall instruction crtool can point rip at.
pub fn vdso_syscall_offset() -> Option<u64> {
    first_syscall(&vdso_code()?)
}

/// Offset of the first `syscall` instruction (0f 05) in `code`.
pub fn first_syscall(code: &[u8]) -> Option<u64> {
    code.windows(2).position(|w| w == [0x0f, 0x05]).map(|p| p as u64)
}



