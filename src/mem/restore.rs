//! Restoring memory, first half: inside the future task (still running crtool code),
//! reserve one "premap area" where neither crtool nor the task has anything, map every
//! VMA there, fill it from the page image, and list the moves the restorer makes.

use crate::error::{Error, Result};
use crate::mem::vma;
use crate::sys::abi::VmaMove;
use crate::sys::mm::{Area, Mapping, PAGE};
use images_format::pb::{self, VmaKind};
use crate::mem::shmem::ShmemObjects;
use images_format::PagesReader;
use std::fs::OpenOptions;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

/// Lowest address the area may start at, and the highest it may end at.
const AREA_MIN: u64 = 0x1000_0000;
const AREA_MAX: u64 = 0x7ff0_0000_0000;

/// Finds `len` free bytes that are free both in this process and in the task's
/// layout, so that moving VMAs into place can never overwrite the area.
pub fn find_area(pid: i32, target: &[pb::Vma], len: u64) -> Result<u64> {
    let mut used: Vec<(u64, u64)> = target.iter().map(|v| (v.start, v.end)).collect();
    let own = crate::procinfo::maps("self").map_err(|e| Error::io("/proc/self/maps", e))?;
    used.extend(own.into_iter().map(|(s, e, _)| (s, e)));
    used.sort();
    // Top-down: the highest gap below AREA_MAX that fits, with a guard page each side.
    let mut hi = AREA_MAX;
    for &(s, e) in used.iter().rev() {
        if e + PAGE <= hi && hi - (e + PAGE) >= len + PAGE && e + PAGE >= AREA_MIN {
            return Ok((hi - len - PAGE) & !(PAGE - 1));
        }
        hi = hi.min(s);
    }
    if hi >= AREA_MIN + len + PAGE {
        return Ok((hi - len - PAGE) & !(PAGE - 1));
    }
    Err(Error::Restore { pid, msg: format!("no free address range of {len} bytes for the restore area") })
}

/// How a private VMA is first mapped so that the kernel accounts it as it did
/// ("ac" in smaps): accounted ones read-write (protected after the fill), writable
/// unaccounted ones with MAP_NORESERVE, the rest with their final protection.
/// Returns (protection, extra mmap flags).
fn initial_prot(v: &pb::Vma) -> (i32, i32) {
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    if vma::has_flag(v, "ac") {
        (rw, 0)
    } else if v.prot & libc::PROT_WRITE as u32 != 0 {
        (rw, libc::MAP_NORESERVE)
    } else {
        (v.prot as i32, 0)
    }
}

/// Total bytes the VMAs that get premapped need.
pub fn premap_size(vmas: &[pb::Vma]) -> u64 {
    vmas.iter().filter(|v| vma::is_restorable(v)).map(|v| v.end - v.start).sum()
}

/// A premapped VMA: where it sits now and the image's description of it.
pub struct Slot<'a> {
    pub vma: &'a pb::Vma,
    pub map: Mapping,
}

/// Maps every restorable VMA at the front of `area`, fills private pages from the
/// page image and applies final protections. Returns the slots, in VMA order.
pub fn premap<'a>(pid: i32, vmas: &'a [pb::Vma], pagemap: &[pb::PagemapEntry], pages: &mut PagesReader, area: &mut Area, shmem: &ShmemObjects) -> Result<Vec<Slot<'a>>> {
    let fail = |what: String, e: nix::errno::Errno| Error::Restore { pid, msg: format!("{what}: {e}") };
    let mut slots: Vec<Slot> = Vec::new();
    for v in vmas.iter().filter(|v| vma::is_restorable(v)) {
        let len = v.end - v.start;
        let gd = if v.growsdown { libc::MAP_GROWSDOWN } else { 0 };
        let (rw, noreserve) = initial_prot(v);
        let r = match v.kind() {
            VmaKind::VmaAnonPrivate => area.map_next(len, rw, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | gd | noreserve, None, 0),
            VmaKind::VmaAnonShared => {
                let path = shmem.path(v.shmid).ok_or_else(|| Error::BadImage {
                    file: format!("mm-{pid}.img"),
                    msg: format!("shared memory object {} of VMA {:#x} is unknown", v.shmid, v.start),
                })?;
                let f = OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open(&path)
                    .map_err(|e| Error::Restore { pid, msg: format!("cannot open shared memory {path}: {e}") })?;
                area.map_next(len, v.prot as i32, libc::MAP_SHARED, Some(f.as_fd()), v.pgoff)
            }
            VmaKind::VmaFilePrivate | VmaKind::VmaFileShared => {
                let shared = v.kind() == VmaKind::VmaFileShared;
                let write = v.open_flags & libc::O_ACCMODE as u32 == libc::O_RDWR as u32;
                let f = OpenOptions::new().read(true).write(write).custom_flags(libc::O_CLOEXEC).open(&v.path)
                    .map_err(|e| Error::Restore { pid, msg: format!("cannot open {} mapped at {:#x}: {e}", v.path, v.start) })?;
                let (prot, flags) = if shared { (v.prot as i32, libc::MAP_SHARED) } else { (rw, libc::MAP_PRIVATE | noreserve) };
                area.map_next(len, prot, flags, Some(f.as_fd()), v.pgoff)
            }
            _ => unreachable!("filtered by is_restorable"),
        };
        let map = r.map_err(|e| fail(format!("premapping {:#x}-{:#x} ({})", v.start, v.end, v.path), e))?;
        slots.push(Slot { vma: v, map });
    }

    // Fill: pagemap entries are in address order, like the VMAs.
    let mut self_mem: Option<std::io::Result<std::fs::File>> = None;
    let mut i = 0;
    for e in pagemap {
        let len = e.nr_pages as u64 * PAGE;
        while i < slots.len() && slots[i].vma.end <= e.vaddr {
            i += 1;
        }
        let inside = |v: &pb::Vma| v.start <= e.vaddr && e.vaddr.checked_add(len).is_some_and(|end| end <= v.end);
        let Some(slot) = slots.get_mut(i).filter(|s| inside(s.vma)) else {
            return Err(Error::BadImage {
                file: format!("pagemap-{pid}.img"),
                msg: format!("pages at {:#x} (+{len}) lie outside every VMA", e.vaddr),
            });
        };
        let v = slot.vma;
        if v.kind() == VmaKind::VmaAnonShared {
            continue; // filled once, in the shared object, by crtool
        }
        if !vma::has_private_pages(v) {
            return Err(Error::BadImage { file: format!("pagemap-{pid}.img"), msg: format!("pages at {:#x} belong to a shared file mapping", e.vaddr) });
        }
        let off = e.vaddr - v.start;
        if initial_prot(v).0 & libc::PROT_WRITE == 0 {
            // Mapped read-only to keep it unaccounted: write through /proc/self/mem.
            let mut buf = vec![0u8; len as usize];
            pages.read_into(e.offset, e.stored_len, e.crc32, &mut buf)?;
            self_mem.get_or_insert_with(|| OpenOptions::new().write(true).open("/proc/self/mem"))
                .as_ref()
                .map_err(|err| Error::Restore { pid, msg: format!("/proc/self/mem: {err}") })?
                .write_all_at(&buf, slot.map.addr() + off)
                .map_err(|err| Error::Restore { pid, msg: format!("filling {:#x} through /proc/self/mem: {err}", e.vaddr) })?;
            continue;
        }
        slot.map.populate(off, len);
        let dst = slot.map.bytes_mut(off, len).ok_or_else(|| Error::Restore { pid, msg: format!("premapped {:#x} is not writable", v.start) })?;
        pages.read_into(e.offset, e.stored_len, e.crc32, dst)?;
    }

    for slot in slots.iter_mut() {
        let v = slot.vma;
        let shared = matches!(v.kind(), VmaKind::VmaFileShared | VmaKind::VmaAnonShared);
        if !shared && v.prot as i32 != initial_prot(v).0 {
            slot.map.protect(v.prot as i32).map_err(|e| fail(format!("mprotect {:#x}", v.start), e))?;
        }
        for a in vma::advice(v) {
            slot.map.advise(a).map_err(|e| fail(format!("madvise({a}) {:#x}", v.start), e))?;
        }
    }
    Ok(slots)
}

/// The restorer's moves for the premapped slots.
pub fn moves(slots: &[Slot]) -> Vec<VmaMove> {
    slots.iter().map(|s| VmaMove { from: s.map.addr(), len: s.map.len(), to: s.vma.start }).collect()
}
