//! Restoring memory, first half: inside the future task (still running crtool code),
//! reserve one "premap area" where neither crtool nor the task has anything, map every
//! VMA there, fill it from the page image, and list the moves the restorer makes.

use crate::error::{Error, Result};
use crate::mem::vma;
use crate::sys::abi::{VmaMove, VmaProtect};
use crate::sys::mm::{Area, Mapping, PAGE};
use images_format::pb::{self, VmaKind};
use crate::mem::shmem::ShmemObjects;
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
/// unaccounted ones with MAP_NORESERVE, the rest with their final protection (and
/// MAP_NORESERVE where they had it, "nr").
/// Returns (protection, extra mmap flags).
fn initial_prot(v: &pb::Vma) -> (i32, i32) {
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let noreserve = if vma::has_flag(v, "nr") { libc::MAP_NORESERVE } else { 0 };
    if vma::has_flag(v, "ac") {
        (rw, 0)
    } else if v.prot & libc::PROT_WRITE as u32 != 0 {
        (rw, libc::MAP_NORESERVE)
    } else {
        (v.prot as i32, noreserve)
    }
}

/// Total bytes the VMAs that get premapped need.
pub fn premap_size(vmas: &[pb::Vma]) -> u64 {
    vmas.iter().filter(|v| vma::is_restorable(v)).map(|v| v.end - v.start).sum()
}

/// Whether each VMA holds pages inherited from the parent (see `mem::dump::Frames`):
/// such a VMA is not premapped afresh but taken over from the parent's premapped
/// memory, which this process inherited copy-on-write when it was forked.
pub fn inherits(vmas: &[pb::Vma], pagemap: &[pb::PagemapEntry]) -> Vec<bool> {
    let mut out = vec![false; vmas.len()];
    let mut i = 0;
    for e in pagemap.iter().filter(|e| e.inherited) {
        while i < vmas.len() && vmas[i].end <= e.vaddr {
            i += 1;
        }
        if vmas.get(i).is_some_and(|v| v.start <= e.vaddr) {
            out[i] = true;
        }
    }
    out
}

/// Whether `b` can share one premapped mapping with `a`, the VMA right below it:
/// private anonymous memory with the same flags and the same initial protection.
/// Such runs (e.g. one allocation whose pages alternate protections) are mapped and
/// moved as one VMA; the restorer then gives each member its own protection, after
/// crtool's own mappings are gone. Restoring a task near `vm.max_map_count` thus
/// never needs more VMAs at once than the task itself had.
fn joins(a: &pb::Vma, b: &pb::Vma) -> bool {
    let anon = |v: &pb::Vma| v.kind() == VmaKind::VmaAnonPrivate && !v.growsdown;
    anon(a) && anon(b) && a.end == b.start && a.flags == b.flags && initial_prot(a) == initial_prot(b)
}

/// The restorable VMAs in runs that are premapped together (index ranges into
/// `vmas`, in address order). A VMA taken over from the parent (`solo`) is a run
/// of its own.
pub fn groups(vmas: &[pb::Vma], solo: &[bool]) -> Vec<std::ops::Range<usize>> {
    let alone = |i: usize| solo.get(i).copied().unwrap_or(false);
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, v) in vmas.iter().enumerate().filter(|(_, v)| vma::is_restorable(v)) {
        match out.last_mut() {
            Some(g) if g.end == i && !alone(i) && !alone(i - 1) && joins(&vmas[i - 1], v) => g.end = i + 1,
            _ => out.push(i..i + 1),
        }
    }
    out
}

/// A premapped run of VMAs (see `groups`): where it sits now, and the image's VMAs.
pub struct Slot<'a> {
    pub vmas: &'a [pb::Vma],
    pub map: Mapping,
    /// Left empty for the lazy-pages daemon (see `premap`).
    pub lazy: bool,
}

impl Slot<'_> {
    pub fn start(&self) -> u64 {
        self.vmas[0].start
    }
    pub fn end(&self) -> u64 {
        self.vmas[self.vmas.len() - 1].end
    }
    /// The protection its memory has once `premap` is done (a run keeps the
    /// initial one until the restorer protects each member).
    fn prot(&self) -> i32 {
        let v = &self.vmas[0];
        if self.vmas.len() > 1 { initial_prot(v).0 } else { v.prot as i32 }
    }
}

/// Maps every restorable VMA (run) at the front of `area`, fills private pages from
/// the page image and applies final protections (members of a run get theirs from
/// the restorer, see `protects`). A VMA with pages inherited from the parent is
/// taken over from `parent`'s slots (inherited at fork) instead of mapped afresh:
/// its own pages are written over it, pages it did not have are dropped. Returns the
/// slots, in address order.
///
/// With `lazy` (restore --lazy-pages), private anonymous runs are left empty
/// (`Slot::lazy`) for the lazy-pages daemon, except locked ones (mlock fills
/// them at once), wipe-on-fork ones (a child forked while pages are owed gets
/// them empty, which the daemon could not tell from owed) and ones that overlap `lazy` (ranges children take over at
/// fork: they must be filled before the children are forked). A VMA taken over
/// from the parent is never lazy.
#[allow(clippy::too_many_arguments)]
pub fn premap<'a>(
    pid: i32,
    vmas: &'a [pb::Vma],
    pagemap: &[pb::PagemapEntry],
    pages: &mut crate::mem::chain::Pages,
    area: &mut Area,
    shmem: &ShmemObjects,
    parent: Option<&[Slot]>,
    lazy: Option<&[(u64, u64)]>,
    helper: &[i32],
) -> Result<Vec<Slot<'a>>> {
    let fail = |what: String, e: nix::errno::Errno| Error::Restore { pid, msg: format!("{what}: {e}") };
    let bad = |msg: String| Error::BadImage { file: format!("pagemap-{pid}.img"), msg };
    let solo = inherits(vmas, pagemap);
    let mut slots: Vec<Slot> = Vec::new();
    let mut adopted = Vec::new();
    // The protection each slot's memory has while it is filled.
    let mut prot_now = Vec::new();
    for g in groups(vmas, &solo) {
        let first = g.start;
        let members = &vmas[g];
        let v = &members[0];
        let len = members[members.len() - 1].end - v.start;
        let gd = if v.growsdown { libc::MAP_GROWSDOWN } else { 0 };
        let (rw, noreserve) = initial_prot(v);
        let shared = matches!(v.kind(), VmaKind::VmaFileShared | VmaKind::VmaAnonShared | VmaKind::VmaSysvShm | VmaKind::VmaMemfdShared);
        let mut now = if shared { v.prot as i32 } else { rw };
        let r = match v.kind() {
            _ if solo[first] => {
                let from = parent.and_then(|ps| ps.iter().find(|s| s.start() <= v.start && v.end <= s.end()));
                let from = from.ok_or_else(|| bad(format!("pages at {:#x} are the parent's, which has no such memory", v.start)))?;
                adopted.push(slots.len());
                now = from.prot();
                // SAFETY: the parent's premapped memory, inherited at fork: this
                // process has no Rust object referring to it (`from` only describes it).
                unsafe { area.adopt(from.map.addr() + (v.start - from.start()), len, from.prot()) }
            }
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
                let path = if v.ghost {
                    shmem.ghosts().path(&v.path, v.ino).ok_or_else(|| Error::BadImage { file: format!("mm-{pid}.img"), msg: format!("deleted file {} mapped at {:#x} is not in ghost.img", v.path, v.start) })?
                } else {
                    v.path.clone()
                };
                let f = OpenOptions::new().read(true).write(write).custom_flags(libc::O_CLOEXEC).open(&path)
                    .map_err(|e| Error::Restore { pid, msg: format!("cannot open {} mapped at {:#x}: {e}", v.path, v.start) })?;
                let (prot, flags) = if shared { (v.prot as i32, libc::MAP_SHARED) } else { (rw, libc::MAP_PRIVATE | noreserve) };
                area.map_next(len, prot, flags, Some(f.as_fd()), v.pgoff)
            }
            VmaKind::VmaSysvShm => crate::ipc::shm::attach(area, v, len),
            VmaKind::VmaMemfdShared | VmaKind::VmaMemfdPrivate => {
                let path = shmem.memfds().path(v.shmid).ok_or_else(|| Error::BadImage { file: format!("mm-{pid}.img"), msg: format!("memfd {} of VMA {:#x} is not in memfd.img", v.shmid, v.start) })?;
                let private = v.kind() == VmaKind::VmaMemfdPrivate;
                let write = v.open_flags & libc::O_ACCMODE as u32 == libc::O_RDWR as u32;
                let f = OpenOptions::new().read(true).write(write).custom_flags(libc::O_CLOEXEC).open(&path)
                    .map_err(|e| Error::Restore { pid, msg: format!("cannot open memfd {} mapped at {:#x}: {e}", v.path, v.start) })?;
                let (prot, flags) = if private { (rw, libc::MAP_PRIVATE | noreserve) } else { (v.prot as i32, libc::MAP_SHARED) };
                area.map_next(len, prot, flags, Some(f.as_fd()), v.pgoff)
            }
            _ => unreachable!("groups() only holds restorable VMAs"),
        };
        let map = r.map_err(|e| fail(format!("premapping {:#x}-{:#x} ({})", v.start, v.start + len, v.path), e))?;
        let (start, end) = (v.start, v.start + len);
        let is_lazy = lazy.is_some_and(|kept| {
            !solo[first]
                && members.iter().all(|m| m.kind() == VmaKind::VmaAnonPrivate && !vma::has_flag(m, "lo") && !vma::has_flag(m, "wf"))
                && !kept.iter().any(|&(s, e)| s < end && start < e)
        });
        slots.push(Slot { vmas: members, map, lazy: is_lazy });
        prot_now.push(now);
    }

    // Fill: pagemap entries are in address order, like the VMAs.
    let mut copier = Copier::new(&slots, &prot_now, &adopted);
    let mut self_mem: Option<std::io::Result<std::fs::File>> = None;
    let mut guards = Vec::new();
    let mut covered: Vec<Vec<(u64, u64)>> = vec![Vec::new(); slots.len()];
    let mut i = 0;
    for e in pagemap {
        let len = e.nr_pages as u64 * PAGE;
        while i < slots.len() && slots[i].end() <= e.vaddr {
            i += 1;
        }
        let inside = |s: &Slot| s.start() <= e.vaddr && e.vaddr.checked_add(len).is_some_and(|end| end <= s.end());
        let Some(slot) = slots.get_mut(i).filter(|s| inside(s)) else {
            return Err(bad(format!("pages at {:#x} (+{len}) lie outside every VMA", e.vaddr)));
        };
        let v = &slot.vmas[0];
        let off = e.vaddr - slot.start();
        covered[i].push((off, len));
        if e.guard {
            guards.push((i, off, len));
            continue;
        }
        if e.inherited {
            continue; // already there, shared with the parent
        }
        if slot.lazy {
            continue; // the lazy-pages daemon's
        }
        if e.lazy {
            return Err(bad(format!("pages at {:#x} stayed with the dumped process (dump --lazy-pages), but their mapping cannot be restored lazily", e.vaddr)));
        }
        if v.kind() == VmaKind::VmaAnonShared {
            continue; // filled once, in the shared object, by crtool
        }
        if !vma::has_private_pages(v) {
            return Err(bad(format!("pages at {:#x} belong to a shared file mapping", e.vaddr)));
        }
        if prot_now[i] & libc::PROT_WRITE == 0 {
            // Mapped read-only (to keep it unaccounted, or as taken over): write
            // through /proc/self/mem.
            let mut buf = vec![0u8; len as usize];
            pages.read(e, &mut buf)?;
            self_mem.get_or_insert_with(|| OpenOptions::new().write(true).open("/proc/self/mem"))
                .as_ref()
                .map_err(|err| Error::Restore { pid, msg: format!("/proc/self/mem: {err}") })?
                .write_all_at(&buf, slot.map.addr() + off)
                .map_err(|err| Error::Restore { pid, msg: format!("filling {:#x} through /proc/self/mem: {err}", e.vaddr) })?;
            continue;
        }
        if let Some(c) = copier.as_mut().filter(|c| c.covers(i)) {
            c.jobs.push((e.clone(), slot.map.addr() + off));
            continue;
        }
        slot.map.populate(off, len);
        let dst = slot.map.bytes_mut(off, len).ok_or_else(|| Error::Restore { pid, msg: format!("premapped {:#x} is not writable", v.start) })?;
        pages.read(e, dst)?;
    }
    if let Some(c) = copier.as_mut() {
        c.fill(pid, pages, helper)?;
    }
    drop(copier); // (closing the userfaultfd unregisters the slots)
    // Memory taken over from the parent: pages this process did not have (zero, or
    // clean file pages) must not show the parent's.
    for &si in &adopted {
        let slot = &mut slots[si];
        let mut at = 0;
        let mut holes = Vec::new();
        for &(off, len) in &covered[si] {
            if off > at {
                holes.push((at, off - at));
            }
            at = at.max(off + len);
        }
        if at < slot.map.len() {
            holes.push((at, slot.map.len() - at));
        }
        for (off, len) in holes {
            slot.map.discard(off, len).map_err(|e| fail(format!("MADV_DONTNEED {:#x}", slot.start() + off), e))?;
        }
    }

    for (si, slot) in slots.iter_mut().enumerate() {
        let v = &slot.vmas[0];
        let shared = matches!(v.kind(), VmaKind::VmaFileShared | VmaKind::VmaAnonShared | VmaKind::VmaSysvShm | VmaKind::VmaMemfdShared);
        if slot.vmas.len() == 1 && !shared && v.prot as i32 != prot_now[si] {
            slot.map.protect(v.prot as i32).map_err(|e| fail(format!("mprotect {:#x}", v.start), e))?;
        }
        for a in vma::advice(v) {
            slot.map.advise(a).map_err(|e| fail(format!("madvise({a}) {:#x}", v.start), e))?;
        }
        if vma::has_flag(v, "lo") {
            slot.map.lock(vma::has_flag(v, "lf")).map_err(|e| fail(format!("mlock {:#x}", v.start), e))?;
        }
    }
    for (si, off, len) in guards {
        let slot = &mut slots[si];
        slot.map.guard(off, len).map_err(|e| fail(format!("MADV_GUARD_INSTALL {:#x}", slot.start() + off), e))?;
    }
    Ok(slots)
}

/// Fills private anonymous slots with UFFDIO_COPY (userfaultfd(2)): the kernel
/// allocates each page and copies the data into it at once, where a write into
/// premapped memory first has it allocate a zeroed page (a fault, or
/// MADV_POPULATE_WRITE), then copies over it: a quarter less time for a large
/// process. Slots of memory taken over from the parent are not for it (their
/// pages are there), nor ones that may get transparent huge pages ("hg"), which
/// UFFDIO_COPY would fill with small ones. Without a userfaultfd (a kernel or
/// policy that refuses one) memory is filled the other way.
///
/// With more than one CPU, a helper process shares the work: forked from this
/// one (untraced, with PIDs no process of the tree needs: see
/// restore::child::helper_pids), it reads the second half of the pages from
/// the images and copies them in through the inherited userfaultfd, whose
/// UFFDIO_COPY fills this process's memory from whoever calls it.
/// (A helper thread cannot be: it would take a TID the tree may need, and
/// crtool's tracer would see it.)
struct Copier {
    uffd: std::os::fd::OwnedFd,
    /// Which slots are registered.
    covered: Vec<bool>,
    /// The entries to fill and where their first page is premapped.
    jobs: Vec<(pb::PagemapEntry, u64)>,
}

/// Largest piece of a parent directory's entry read at once (such an entry may
/// span a whole VMA).
const COPY_PIECE: u64 = 1 << 20;

impl Copier {
    fn new(slots: &[Slot], prot_now: &[i32], adopted: &[usize]) -> Option<Copier> {
        let eligible = |i: usize, s: &Slot| {
            prot_now[i] & libc::PROT_WRITE != 0
                && !s.lazy
                && !adopted.contains(&i)
                && s.vmas.iter().all(|v| v.kind() == VmaKind::VmaAnonPrivate && !vma::has_flag(v, "hg"))
        };
        if !slots.iter().enumerate().any(|(i, s)| eligible(i, s)) {
            return None;
        }
        let uffd = crate::sys::uffd::new_own().ok()?;
        crate::sys::uffd::api_plain(uffd.as_fd()).ok()?;
        let mut covered = vec![false; slots.len()];
        for (i, s) in slots.iter().enumerate() {
            if eligible(i, s) {
                covered[i] = crate::sys::uffd::register_missing(uffd.as_fd(), s.map.addr(), s.map.addr() + s.map.len()).is_ok();
            }
        }
        Some(Copier { uffd, covered, jobs: Vec::new() })
    }

    fn covers(&self, slot: usize) -> bool {
        self.covered.get(slot).copied().unwrap_or(false)
    }

    /// Fills every job's pages, the second half (by bytes) on a helper process
    /// forked with the PIDs `helper` when there is more than one CPU (alone
    /// when it cannot be forked).
    fn fill(&mut self, pid: i32, pages: &mut crate::mem::chain::Pages, helper: &[i32]) -> Result<()> {
        // (entry, byte in it, length, where it goes)
        let mut pieces = Vec::new();
        for (e, at) in &self.jobs {
            let len = e.nr_pages as u64 * PAGE;
            let piece = if e.in_parent { COPY_PIECE } else { len };
            let mut from = 0;
            while from < len {
                let n = piece.min(len - from);
                pieces.push((e, from, n, at + from));
                from += n;
            }
        }
        let uffd = self.uffd.as_fd();
        let fill = |pages: &mut crate::mem::chain::Pages, part: &[(&pb::PagemapEntry, u64, u64, u64)]| -> Result<()> {
            let mut buf = Vec::new();
            for &(e, from, n, at) in part {
                buf.resize(n as usize, 0);
                pages.read_part(e, from, &mut buf)?;
                copy_in(pid, uffd, e.vaddr + from, at, &buf)?;
            }
            Ok(())
        };
        let total: u64 = pieces.iter().map(|p| p.2).sum();
        if total < HELPER_MIN || crate::par::width() < 2 || helper.is_empty() {
            return fill(pages, &pieces);
        }
        let mut half = 0;
        let mut bytes = 0;
        while half < pieces.len() && bytes < total / 2 {
            bytes += pieces[half].2;
            half += 1;
        }
        let (mine, theirs) = pieces.split_at(half);
        // What the helper says when it fails.
        let (said_r, said_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::Restore { pid, msg: format!("pipe for the memory helper: {e}") })?;
        let me = nix::unistd::getpid();
        let forked = crate::sys::process::fork_with_pids_signal(helper, libc::CLONE_UNTRACED as u64, 0);
        match forked {
            Ok(crate::sys::process::Forked::Child) => {
                drop(said_r);
                // (Dies with the restoring process, whatever becomes of it, and
                // holds none of the tree's files: should it outlive a failed
                // restore for a moment, no socket or lock of the tree stays.)
                crate::sys::process::die_with_parent(me);
                {
                    use std::os::fd::AsRawFd;
                    crate::sys::fd::close_all_except(&[uffd.as_raw_fd(), said_w.as_raw_fd()]);
                }
                let r = pages.reopen().and_then(|mut p| fill(&mut p, theirs));
                if let Err(e) = &r {
                    let _ = nix::unistd::write(&said_w, e.to_string().as_bytes());
                }
                crate::sys::process::exit_now(if r.is_ok() { 0 } else { 1 });
            }
            Ok(crate::sys::process::Forked::Parent(h)) => {
                drop(said_w);
                let r = fill(pages, mine);
                if r.is_err() {
                    let _ = nix::sys::signal::kill(h, nix::sys::signal::Signal::SIGKILL);
                }
                let status = crate::sys::process::wait_any_child(h);
                r?;
                if status != Some(0) {
                    let mut said = vec![0u8; 4096];
                    let n = nix::unistd::read(&said_r, &mut said).unwrap_or(0);
                    let why = if n > 0 { String::from_utf8_lossy(&said[..n]).into_owned() } else { format!("it ended with status {status:?}") };
                    return Err(Error::Restore { pid, msg: format!("filling memory on a helper process: {why}") });
                }
                log::debug!("pid {pid}: memory filled with a helper (pid {h}), {} MiB each", bytes >> 20);
                Ok(())
            }
            // (Its PIDs taken: alone.)
            Err(e) => {
                log::debug!("pid {pid}: no helper process with PIDs {helper:?} ({e}): memory filled alone");
                fill(pages, &pieces)
            }
        }
    }
}

/// Memory filled alone below this (a fork costs more than it saves).
const HELPER_MIN: u64 = 32 << 20;

/// UFFDIO_COPY of `data` to `at` (the premapped place of `vaddr`).
fn copy_in(pid: i32, uffd: std::os::fd::BorrowedFd, vaddr: u64, at: u64, data: &[u8]) -> Result<()> {
    let n = data.len() as u64;
    let mut done = 0u64;
    while done < n {
        match crate::sys::uffd::copy(uffd, at + done, &data[done as usize..]) {
            Ok(0) => return Err(Error::Restore { pid, msg: format!("filling {:#x} (UFFDIO_COPY): nothing copied", vaddr + done) }),
            Ok(k) => done += k,
            Err((_, k)) if k > 0 => done += k,
            Err((err, _)) => {
                return Err(Error::Restore { pid, msg: format!("filling {:#x} (UFFDIO_COPY): {err}", vaddr + done) });
            }
        }
    }
    Ok(())
}

/// The restorer's moves for the premapped slots.
pub fn moves(slots: &[Slot]) -> Vec<VmaMove> {
    slots.iter().map(|s| VmaMove { from: s.map.addr(), len: s.map.len(), to: s.start() }).collect()
}

/// The protections the restorer applies once runs are in place: every member of a
/// run of several VMAs whose protection differs from the run's initial one.
pub fn protects(vmas: &[pb::Vma], pagemap: &[pb::PagemapEntry]) -> Vec<VmaProtect> {
    groups(vmas, &inherits(vmas, pagemap))
        .into_iter()
        .filter(|g| g.len() > 1)
        .flat_map(|g| vmas[g].iter())
        .filter(|v| v.prot as i32 != initial_prot(v).0)
        .map(|v| VmaProtect { addr: v.start, len: v.end - v.start, prot: v.prot as u64 })
        .collect()
}

/// How many mappings restoring `vmas` needs at its peak, besides the restoring
/// process's own: the premapped runs, the restorer's region and its reserve.
pub fn peak_vmas(vmas: &[pb::Vma], pagemap: &[pb::PagemapEntry]) -> usize {
    groups(vmas, &inherits(vmas, pagemap)).len() + 2
}
