//! Dumping memory: find the pages worth saving with pagemap, have the parasite
//! vmsplice() them into a pipe, drain the pipe into the page image.

use crate::error::{Error, Result};
use crate::infect::Channel;
use crate::mem::vma;
use crate::sys::abi::IoVec;
use crate::sys::mm::{PAGE, PM_FILE, PM_GUARD_REGION, PM_MMAP_EXCLUSIVE, PM_PFN_MASK, PM_PRESENT, PM_SWAP, read_pagemap};
use images_format::pb::{self, VmaKind};
use images_format::PagesWriter;
use super::pipeline::Pipeline;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;

/// Pagemap entries read at once (bounds crtool's memory use for huge VMAs).
const PAGEMAP_BATCH: u64 = 64 * 1024;

/// Zeroes the `volatile` byte ranges (address, length) that lie within `buf`,
/// the memory at `vaddr` (see `PageDumper::add_rseq_area`).
pub fn zero_volatile(volatile: &[(u64, u64)], vaddr: u64, buf: &mut [u8]) {
    let end = vaddr + buf.len() as u64;
    for &(a, l) in volatile {
        if a >= vaddr && a + l <= end {
            let o = (a - vaddr) as usize;
            buf[o..o + l as usize].fill(0);
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct PageStats {
    pub scanned: u64,
    pub dumped: u64,
    pub zero: u64,
    /// Pages unchanged since the previous dump, left in its images.
    pub in_parent: u64,
    /// Pages left in the process for a lazy restore (dump --lazy-pages).
    pub lazy: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RunKind {
    /// Page data to store.
    Data,
    /// Pages still shared copy-on-write with the parent (see `Frames`).
    Inherited,
    /// Guard pages: nothing to read, installed again at restore.
    Guard,
    /// Pages not written since the previous dump, which has them.
    InParent,
}

struct Run {
    vaddr: u64,
    pages: u64,
    kind: RunKind,
}

/// The page frames of a process's private memory, kept while its children are
/// dumped: a child's page that maps the same frame at the same address, in a VMA
/// that is the same in both, was inherited at fork and written by neither. Such
/// pages are stored once (with the parent) and stay shared after restore.
#[derive(Default)]
pub struct Frames {
    vmas: Vec<(pb::Vma, Vec<u64>)>,
}

impl Frames {
    /// The parent's frames for `v`, if the parent has a VMA like it that covers it.
    fn covering(&self, v: &pb::Vma) -> Option<(&pb::Vma, &[u64])> {
        let (p, frames) = self.vmas.iter().find(|(p, _)| p.start <= v.start && v.end <= p.end)?;
        let file_offset_matches = !matches!(v.kind(), VmaKind::VmaFilePrivate | VmaKind::VmaMemfdPrivate) || (p.path == v.path && p.pgoff + (v.start - p.start) == v.pgoff);
        let same = p.kind == v.kind && p.prot == v.prot && p.flags == v.flags && file_offset_matches;
        same.then_some((p, frames.as_slice()))
    }
}

pub struct PageDumper {
    pid: i32,
    pagemap: File,
    mem: File,
    zero_pfn: Option<u64>,
    pipe_r: OwnedFd,
    pipe_w: OwnedFd,
    pub chunk: u64,
    pm: Vec<u64>,
    /// Indexes in `entries` of the data runs, in the order their chunks were
    /// queued (filled in once the writer says where each went).
    pending: Vec<usize>,
    pub entries: Vec<pb::PagemapEntry>,
    pub stats: PageStats,
    /// Page count at which the next progress line is logged (every 256 MiB).
    next_report: u64,
    /// Byte ranges the kernel rewrites on the task's next return to user space (the
    /// rseq cpu/node/cid fields): stored as zeros so that dumps stay reproducible.
    pub volatile: Vec<(u64, u64)>,
    /// This process's frames, for its children (see `Frames`).
    pub frames: Frames,
    /// What changed since the previous dump (--prev-images-dir).
    pub changes: crate::mem::track::Process,
    /// Address ranges the previous dump has page data for, in order.
    pub parent_data: Vec<(u64, u64)>,
    /// Private anonymous memory is left for a background copy (see
    /// mem::background): its data runs go to `deferred`, not to the image.
    pub defer: bool,
    /// Page frames are wanted (the process has a parent or children in the
    /// tree: see `Frames`).
    pub frames_needed: bool,
    /// Set by another thread when the dump failed elsewhere: stop at the next
    /// pipe-full.
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Data runs left for the background copy: (address, pages), in order.
    pub deferred: Vec<(u64, u64)>,
    /// The VMAs (start, end) those runs are in.
    pub deferred_vmas: Vec<(u64, u64)>,
    /// dump --lazy-pages: the data of private anonymous memory that a lazy
    /// restore can take (not locked) stays in the process; its entries say
    /// `lazy`. Such memory is not stored as inherited from the parent: a child
    /// fetches its own copy.
    pub lazy: bool,
}

impl PageDumper {
    pub fn new(pid: i32, zero_pfn: Option<u64>) -> Result<PageDumper> {
        let open = |what: &str| File::open(format!("/proc/{pid}/{what}")).map_err(|e| Error::proc(pid, what, e));
        let (pipe_r, pipe_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
        let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(1 << 20)
            .min(4 << 20);
        let got = fcntl(&pipe_w, FcntlArg::F_SETPIPE_SZ(max as i32)).unwrap_or(65536) as u64;
        let chunk = (got / PAGE).max(1) * PAGE;
        Ok(PageDumper {
            pid,
            pagemap: open("pagemap")?,
            mem: open("mem")?,
            zero_pfn,
            pipe_r,
            pipe_w,
            chunk,
            pm: Vec::new(),
            pending: Vec::new(),
            entries: Vec::new(),
            stats: PageStats::default(),
            next_report: 64 * 1024,
            volatile: Vec::new(),
            frames: Frames::default(),
            changes: Default::default(),
            parent_data: Vec::new(),
            defer: false,
            frames_needed: true,
            cancel: None,
            deferred: Vec::new(),
            deferred_vmas: Vec::new(),
            lazy: false,
        })
    }

    /// Registers a thread's rseq area: its cpu_id_start/cpu_id and node_id/mm_cid
    /// fields are saved as zeros (the kernel refills them after restore).
    pub fn add_rseq_area(&mut self, addr: u64) {
        if addr != 0 {
            self.volatile.push((addr, 8));
            self.volatile.push((addr + 20, 8));
        }
    }

    /// Dumps the pages of every VMA that keeps data of its own. Runs from several
    /// VMAs share one parasite command and one pipe-full (a task with many small
    /// VMAs costs a few round trips, not one per VMA). Pages still shared with the
    /// parent since fork (`parent`) are recorded as inherited, without data.
    /// The page image is written on a thread of its own (see `Pipeline`) and
    /// handed back once complete.
    /// `pool`: page buffers to use and give back (kept from one process to the
    /// next).
    pub fn dump(&mut self, vmas: &[pb::Vma], parent: Option<&Frames>, parasite: &mut Channel, out: PagesWriter, pool: &mut Vec<memmap2::MmapMut>) -> Result<PagesWriter> {
        let mut pipe = Pipeline::start(out, self.chunk as usize, pool)?;
        self.pending.clear();
        self.dump_to(vmas, parent, parasite, &mut pipe)?;
        let (out, chunks) = pipe.finish(pool)?;
        if chunks.len() != self.pending.len() {
            return Err(Error::io(out.path(), std::io::Error::other(format!("{} chunks stored for {} runs", chunks.len(), self.pending.len()))));
        }
        for (&i, c) in self.pending.iter().zip(chunks.iter()) {
            let e = &mut self.entries[i];
            e.offset = c.offset;
            e.stored_len = c.stored_len;
            e.crc32 = c.crc32;
        }
        Ok(out)
    }

    fn dump_to(&mut self, vmas: &[pb::Vma], parent: Option<&Frames>, parasite: &mut Channel, out: &mut Pipeline) -> Result<()> {
        parasite.take_pipe(self.pipe_w.as_fd())?;
        let mut batch: Vec<Run> = Vec::new();
        let mut batch_bytes = 0;
        let mut batch_readable = true;
        for v in vmas.iter().filter(|v| vma::has_private_pages(v)) {
            if v.kind() == VmaKind::VmaAnonShared {
                // (Entries stay in address order: what is batched goes first.)
                self.flush(&mut batch, batch_readable, parasite, out)?;
                batch_bytes = 0;
                self.dump_shmem(v, out)?;
                continue;
            }
            if self.lazy && crate::mem::background::eligible(v) && !vma::has_flag(v, "lo") && !vma::has_flag(v, "wf") {
                // (Entries stay in address order: what is batched goes first.)
                self.flush(&mut batch, batch_readable, parasite, out)?;
                batch_bytes = 0;
                for run in self.runs(v, None)? {
                    if run.kind == RunKind::Data {
                        self.stats.lazy += run.pages;
                        self.entries.push(pb::PagemapEntry { vaddr: run.vaddr, nr_pages: run.pages as u32, lazy: true, ..Default::default() });
                    } else {
                        self.record_meta(&run);
                    }
                }
                continue;
            }
            if self.defer && crate::mem::background::eligible(v) {
                // Copied after the tree runs again (mem::background).
                let mut any = false;
                for run in self.runs(v, parent)? {
                    if run.kind == RunKind::Data {
                        self.deferred.push((run.vaddr, run.pages));
                        any = true;
                    } else {
                        self.record_meta(&run);
                    }
                }
                if any {
                    self.deferred_vmas.push((v.start, v.end));
                }
                continue;
            }
            let runs = self.runs(v, parent)?;
            let readable = v.prot & libc::PROT_READ as u32 != 0;
            // (A mapping without data, such as the guard below each thread's
            // stack, does not cut the batch: the stacks of a process's threads
            // go in one parasite command, not one each.)
            if readable != batch_readable && runs.iter().any(|r| r.kind == RunKind::Data) {
                self.flush(&mut batch, batch_readable, parasite, out)?;
                batch_bytes = 0;
                batch_readable = readable;
            }
            for run in runs {
                let bytes = if run.kind == RunKind::Data { run.pages * PAGE } else { 0 };
                if batch_bytes + bytes > self.chunk || batch.len() >= crate::sys::abi::MAX_IOVS {
                    self.flush(&mut batch, batch_readable, parasite, out)?;
                    batch_bytes = 0;
                }
                batch_bytes += bytes;
                batch.push(run);
            }
        }
        self.flush(&mut batch, batch_readable, parasite, out)
    }

    /// Runs of pages in `v` worth recording: data (each run at most one pipe-full),
    /// pages inherited from the parent, guard pages. Also notes `v`'s frames.
    fn runs(&mut self, v: &pb::Vma, parent: Option<&Frames>) -> Result<Vec<Run>> {
        // (Page by page only where a page's frame matters: shared with a parent
        // or child, or in a previous dump's images.)
        let may_be_in_parent = !self.parent_data.is_empty() && crate::mem::track::tracked(v);
        if !self.frames_needed && parent.is_none() && !may_be_in_parent && crate::mem::background::eligible(v)
            && let Some(runs) = self.scanned_runs(v)?
        {
            return Ok(runs);
        }
        let kind = v.kind();
        let private = matches!(kind, VmaKind::VmaAnonPrivate | VmaKind::VmaFilePrivate | VmaKind::VmaMemfdPrivate);
        let inherit_from = parent.and_then(|p| p.covering(v)).filter(|_| private);
        let mut frames = Vec::new();
        let mut runs: Vec<Run> = Vec::new();
        let max_pages = self.chunk / PAGE;
        // (Cursors into the written ranges and the parent's data, in address order.)
        let mut written_at = 0;
        let mut parent_at = self.parent_data.partition_point(|&(_, e)| e <= v.start);
        let mut at = v.start;
        while at < v.end {
            let end = (at + PAGEMAP_BATCH * PAGE).min(v.end);
            read_pagemap(&self.pagemap, at, end, &mut self.pm).map_err(|e| Error::proc(self.pid, "pagemap", e))?;
            for (i, &e) in self.pm.iter().enumerate() {
                let addr = at + i as u64 * PAGE;
                self.stats.scanned += 1;
                let present = e & PM_PRESENT != 0;
                let swapped = e & PM_SWAP != 0 && e & PM_GUARD_REGION == 0;
                let anon_page = present && e & PM_FILE == 0;
                // A frame this process shares with another (not exclusively mapped).
                let shared_frame = (anon_page && e & PM_MMAP_EXCLUSIVE == 0).then_some(e & PM_PFN_MASK);
                if private {
                    frames.push(shared_frame.unwrap_or(0));
                }
                let wanted = if e & PM_GUARD_REGION != 0 {
                    Some(RunKind::Guard)
                } else {
                    let data = match kind {
                        VmaKind::VmaAnonPrivate => {
                            let zero = present && self.zero_pfn == Some(e & PM_PFN_MASK);
                            if zero {
                                self.stats.zero += 1;
                            }
                            (present && !zero) || swapped
                        }
                        VmaKind::VmaFilePrivate | VmaKind::VmaMemfdPrivate => anon_page || swapped,
                        _ => present || swapped,
                    };
                    let inherited = inherit_from.is_some_and(|(p, pf)| {
                        shared_frame.is_some_and(|f| f != 0 && pf.get(((addr - p.start) / PAGE) as usize) == Some(&f))
                    });
                    let in_parent = may_be_in_parent && !inherited && {
                        while parent_at < self.parent_data.len() && self.parent_data[parent_at].1 <= addr {
                            parent_at += 1;
                        }
                        self.parent_data.get(parent_at).is_some_and(|&(s, _)| s <= addr) && self.changes.unchanged(v.start, addr, &mut written_at)
                    };
                    data.then_some(if inherited { RunKind::Inherited } else if in_parent { RunKind::InParent } else { RunKind::Data })
                };
                let Some(rk) = wanted else { continue };
                match runs.last_mut() {
                    Some(r) if r.kind == rk && r.vaddr + r.pages * PAGE == addr && (rk != RunKind::Data || r.pages < max_pages) => r.pages += 1,
                    _ => runs.push(Run { vaddr: addr, pages: 1, kind: rk }),
                }
            }
            at = end;
        }
        if private {
            self.frames.vmas.push((v.clone(), frames));
        }
        Ok(runs)
    }

    /// Runs of private anonymous `v` from PAGEMAP_SCAN (ranges, not a word per
    /// page: a tenth of the time for 4 KiB pages, far less for sparse memory
    /// such as threads' stacks), when no frames are wanted (the process has
    /// neither a parent nor children in the tree) and no page can be in a
    /// previous dump: data where a page is present or swapped out, except the
    /// zero page; guard pages. None where the kernel has no PAGEMAP_SCAN (before
    /// 6.7: ENOTTY) or no category of it (EINVAL): the caller reads page by page.
    fn scanned_runs(&mut self, v: &pb::Vma) -> Result<Option<Vec<Run>>> {
        use crate::sys::uffd::{PAGE_IS_GUARD, PAGE_IS_PFNZERO, PAGE_IS_PRESENT, PAGE_IS_SWAPPED, regions};
        use nix::errno::Errno;
        let pid = self.pid;
        let pm = self.pagemap.as_fd();
        let not = PAGE_IS_PFNZERO | PAGE_IS_GUARD;
        let scanned = regions(pm, v.start, v.end, 0, PAGE_IS_GUARD, 0)
            .and_then(|g| Ok((g, regions(pm, v.start, v.end, not, not, PAGE_IS_PRESENT | PAGE_IS_SWAPPED)?)));
        let (guards, data) = match scanned {
            Ok(r) => r,
            Err(Errno::ENOTTY | Errno::EINVAL) => return Ok(None),
            Err(e) => return Err(Error::sys(format!("pid {pid}: PAGEMAP_SCAN of {:#x}-{:#x}", v.start, v.end), e)),
        };
        self.stats.scanned += (v.end - v.start) / PAGE;
        let max_pages = self.chunk / PAGE;
        let mut runs: Vec<Run> = guards.iter().map(|&(s, e)| Run { vaddr: s, pages: (e - s) / PAGE, kind: RunKind::Guard }).collect();
        // (Regions of different categories, present and swapped out, that touch
        // make one range: runs must not depend on what is swapped out.)
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(data.len());
        for &(s, e) in &data {
            match merged.last_mut() {
                Some(last) if last.1 == s => last.1 = e,
                _ => merged.push((s, e)),
            }
        }
        for &(s, e) in &merged {
            let mut a = s;
            while a < e {
                let pages = ((e - a) / PAGE).min(max_pages);
                match runs.last_mut() {
                    Some(r) if r.kind == RunKind::Data && r.vaddr + r.pages * PAGE == a && r.pages + pages <= max_pages => r.pages += pages,
                    _ => runs.push(Run { vaddr: a, pages, kind: RunKind::Data }),
                }
                a += pages * PAGE;
            }
        }
        runs.sort_by_key(|r| r.vaddr);
        Ok(Some(runs))
    }

    /// Shared anonymous memory, by its owner (the first task seen mapping it): every
    /// page the shmem object holds, read from the object itself through
    /// /proc/PID/map_files — a page only another process touched is in the object
    /// but not in the owner's page tables. Reading the object maps nothing into the
    /// owner; holes (never written) stay holes.
    fn dump_shmem(&mut self, v: &pb::Vma, out: &mut Pipeline) -> Result<()> {
        let what = format!("map_files/{:x}-{:x}", v.start, v.end);
        let f = File::open(format!("/proc/{}/{what}", self.pid)).map_err(|e| Error::proc(self.pid, &what, e))?;
        let pid = self.pid;
        let sys = |e: nix::errno::Errno| Error::sys(format!("pid {pid}: shared memory at {:#x}: lseek", v.start), e);
        let (lo, hi) = (v.pgoff, v.pgoff + (v.end - v.start));
        self.stats.scanned += (hi - lo) / PAGE;
        let mut at = lo;
        while at < hi {
            let Some(d) = crate::sys::fd::seek_data(f.as_fd(), at).map_err(sys)? else { break };
            if d >= hi {
                break;
            }
            let end = crate::sys::fd::seek_hole(f.as_fd(), d).map_err(sys)?.div_ceil(PAGE).saturating_mul(PAGE).min(hi);
            let mut s = d / PAGE * PAGE;
            while s < end {
                crate::error::check_interrupt()?;
                let len = (end - s).min(self.chunk) as usize;
                let mut buf = out.buffer()?;
                f.read_exact_at(&mut buf[..len], s).map_err(|e| Error::proc(pid, &what, e))?;
                self.record(v.start + (s - lo), len);
                out.submit(buf, vec![(0, len)])?;
                s += len as u64;
            }
            at = end.max(d + PAGE);
        }
        Ok(())
    }

    /// Records `len` bytes of pages at `vaddr`, queued as the next chunk (where it
    /// is stored is filled in by `dump`).
    fn record(&mut self, vaddr: u64, len: usize) {
        let pages = len as u64 / PAGE;
        self.pending.push(self.entries.len());
        self.entries.push(pb::PagemapEntry { vaddr, nr_pages: pages as u32, ..Default::default() });
        self.stats.dumped += pages;
        if self.stats.dumped >= self.next_report {
            self.next_report += 64 * 1024;
            log::info!("pid {}: {} MiB of memory dumped", self.pid, self.stats.dumped / 256);
        }
    }

    /// Records a run without data (inherited, guard or in the parent's pages).
    fn record_meta(&mut self, r: &Run) {
        let (inherited, guard, in_parent) = (r.kind == RunKind::Inherited, r.kind == RunKind::Guard, r.kind == RunKind::InParent);
        if in_parent {
            self.stats.in_parent += r.pages;
        }
        self.entries.push(pb::PagemapEntry { vaddr: r.vaddr, nr_pages: r.pages as u32, inherited, guard, in_parent, ..Default::default() });
    }

    fn flush(&mut self, batch: &mut Vec<Run>, readable: bool, parasite: &mut Channel, out: &mut Pipeline) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        crate::error::check_interrupt()?;
        if self.cancel.as_ref().is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed)) {
            return Err(Error::io(format!("pid {}: copying its memory", self.pid), std::io::Error::other("cancelled: the dump failed elsewhere")));
        }
        let data = |r: &&Run| r.kind == RunKind::Data;
        let total: u64 = batch.iter().filter(data).map(|r| r.pages * PAGE).sum();
        if total == 0 {
            for r in batch.drain(..) {
                self.record_meta(&r);
            }
            return Ok(());
        }
        let mut buf = out.buffer()?;
        if readable {
            let iovs: Vec<IoVec> = batch.iter().filter(data).map(|r| IoVec { base: r.vaddr, len: r.pages * PAGE }).collect();
            for part in iovs.chunks(crate::sys::abi::MAX_IOVS) {
                parasite.splice_pages(part)?;
            }
            let mut got = 0usize;
            while got < total as usize {
                let n = nix::unistd::read(&self.pipe_r, &mut buf[got..total as usize])
                    .map_err(|e| Error::sys(format!("pid {}: reading the page pipe", self.pid), e))?;
                if n == 0 {
                    return Err(Error::sys(format!("pid {}: page pipe closed early", self.pid), nix::errno::Errno::EPIPE));
                }
                got += n;
            }
        } else {
            // Not readable by the task itself (PROT_NONE): /proc/PID/mem reads it anyway.
            let mut off = 0usize;
            for r in batch.iter().filter(data) {
                let len = (r.pages * PAGE) as usize;
                self.mem.read_exact_at(&mut buf[off..off + len], r.vaddr).map_err(|e| Error::proc(self.pid, "mem", e))?;
                off += len;
            }
        }
        let mut off = 0usize;
        let mut parts = Vec::new();
        for r in batch.drain(..) {
            if r.kind != RunKind::Data {
                self.record_meta(&r);
                continue;
            }
            let len = (r.pages * PAGE) as usize;
            zero_volatile(&self.volatile, r.vaddr, &mut buf[off..off + len]);
            self.record(r.vaddr, len);
            parts.push((off, len));
            off += len;
        }
        if !parts.is_empty() {
            out.submit(buf, parts)?;
        }
        Ok(())
    }
}
