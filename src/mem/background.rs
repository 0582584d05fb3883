//! Background snapshots (`dump --leave-running`): the tree is frozen only while
//! its state is read and its private anonymous memory is write-protected; the
//! pages are copied after it runs again, each page a task is about to write
//! being copied first (as QEMU's background snapshot does), so that the images
//! hold the memory of the frozen instant.
//!
//! The protection is a userfaultfd in synchronous write-protect mode made in
//! each process (sys::uffd) and held by crtool only: a write to a protected
//! page stops the writer (also a write from the kernel, e.g. read(2) into it)
//! until crtool's fault thread has saved the page and lifted the protection.
//! Closing the userfaultfd lifts every protection and wakes every writer: a
//! failed dump, or crtool killed, leaves the tree running as if nothing
//! happened.
//!
//! Memory that changes without a write fault (munmap, mremap, madvise
//! MADV_DONTNEED of pages not copied yet) makes the copy fail
//! (`Error::BackgroundCopy`, and `dump` dumps again with the memory copied
//! while frozen). The userfaultfd reports such changes as events, but only
//! once they are made; so a chunk that was read is accepted only after lifting
//! its protection succeeded, which the kernel refuses (EAGAIN) from the start
//! of a change until its event is read, and the fault thread reads events
//! under the lock the copy takes next. PAGEMAP_SCAN after each read also
//! checks that every page read was still protected and present (or saved by
//! the fault thread first).
//!
//! Some kernel writes cannot wait for a userfaultfd at all: those of an
//! exiting thread (its clear_child_tid and robust-list words: their pages are
//! saved while frozen and left writable, see `robust_words`), and the futex
//! code's own (priority-inheritance futexes: a process seen using them is
//! copied while frozen, see `pi_in_use`).

use crate::error::{Error, Result};
use crate::infect::Tracee;
use crate::mem::dump::{PageStats, zero_volatile};
use crate::mem::pipeline::Pipeline;
use crate::sys::mm::PAGE;
use crate::sys::{process, uffd};
use images_format::pb::{self, VmaKind};
use images_format::PagesWriter;
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// The words the kernel writes when thread `tid` exits, besides its
/// clear_child_tid: the futex words of the robust mutexes it holds and of the
/// one it is taking (its robust list, set_robust_list(2), walked through its
/// memory; bit 0 of a pointer marks a priority-inheritance mutex, as the kernel
/// reads it). A write from an exiting task cannot wait for a userfaultfd (the
/// kernel fails it silently: mm/userfaultfd.c), so their pages stay writable.
/// Also whether the list holds a priority-inheritance mutex (see `pi_in_use`).
pub fn robust_words(tid: Pid) -> (Vec<u64>, bool) {
    let Ok((head, _)) = crate::sys::ptrace::get_robust_list(tid) else { return (Vec::new(), false) };
    if head == 0 {
        return (Vec::new(), false);
    }
    let read = |addr: u64| -> Option<u64> {
        let mut b = [0u8; 8];
        process::read_remote(tid, addr, &mut b).ok()?;
        Some(u64::from_le_bytes(b))
    };
    // struct robust_list_head: next, futex_offset, list_op_pending.
    let mut out = vec![head];
    let (Some(first), Some(offset), Some(pending)) = (read(head), read(head + 8), read(head + 16)) else { return (out, false) };
    let offset = offset as i64;
    let mut pi = pending & 1 != 0 || first & 1 != 0;
    if pending & !1 != 0 {
        out.push((pending & !1).wrapping_add_signed(offset));
    }
    // (At most as many entries as the kernel itself follows: ROBUST_LIST_LIMIT.)
    let mut at = first & !1;
    for _ in 0..2048 {
        if at == head || at == 0 {
            break;
        }
        out.push(at.wrapping_add_signed(offset));
        match read(at) {
            Some(next) => {
                pi |= next & 1 != 0;
                at = next & !1;
            }
            None => break,
        }
    }
    (out, pi)
}

/// Whether thread `t` uses priority-inheritance futexes as far as a dump can
/// see: blocked in a PI futex operation, or holding a PI robust mutex
/// (`robust_words`). The kernel's PI futex code writes the futex word through
/// a fault path that cannot wait for a userfaultfd (the write fails with
/// EFAULT and glibc aborts), so such a process's memory is copied while frozen.
pub fn pi_in_use(t: &Tracee, robust_pi: bool) -> bool {
    // futex(2) operations (low bits of the op): LOCK_PI, UNLOCK_PI, TRYLOCK_PI,
    // WAIT_REQUEUE_PI, CMP_REQUEUE_PI, LOCK_PI2.
    let op = t.regs.rsi & 0x7f;
    robust_pi || (t.regs.orig_rax == libc::SYS_futex as u64 && matches!(op, 6 | 7 | 8 | 11 | 12 | 13))
}

/// Whether the pages of `v` are copied in the background: private anonymous
/// memory (the kernel write-protects only anonymous, shmem and hugetlb memory
/// synchronously; shared memory may be written by processes outside the tree).
pub fn eligible(v: &pb::Vma) -> bool {
    v.kind() == VmaKind::VmaAnonPrivate && crate::mem::vma::has_private_pages(v)
}

/// What the fault thread and the copy share.
struct State {
    /// Every page below this address was copied (the copy goes in address order).
    done_until: u64,
    /// Every page below this address was read by the copy, while protected:
    /// what a task writes there now is not needed.
    read_until: u64,
    /// Pages saved by the fault thread before a task wrote them, not yet copied.
    saved: BTreeMap<u64, Box<[u8]>>,
    /// Why the copy cannot be trusted, if it cannot.
    failed: Option<String>,
    /// Pages saved by the fault thread so far.
    saved_total: u64,
}

struct Shared {
    pid: i32,
    /// None: nothing is protected (everything was copied while frozen).
    uffd: Option<OwnedFd>,
    mem: File,
    pagemap: File,
    /// Data runs (address, pages), in address order.
    runs: Vec<(u64, u64)>,
    state: Mutex<State>,
    stop: AtomicBool,
}

impl Shared {
    fn in_runs(&self, page: u64) -> bool {
        let i = self.runs.partition_point(|&(a, n)| a + n * PAGE <= page);
        self.runs.get(i).is_some_and(|&(a, _)| a <= page)
    }

    /// Whether every page of [start, end) is still protected (not written,
    /// unmapped or dropped since it was protected).
    fn unwritten(&self, start: u64, end: u64) -> std::result::Result<Vec<(u64, u64)>, nix::errno::Errno> {
        uffd::written(self.pagemap.as_fd(), start, end, false)
    }

    /// The ranges of [start, end) whose pages are neither present nor swapped
    /// out (dropped, or a new mapping not touched yet).
    fn absent(&self, start: u64, end: u64) -> std::result::Result<Vec<(u64, u64)>, nix::errno::Errno> {
        let both = uffd::PAGE_IS_PRESENT | uffd::PAGE_IS_SWAPPED;
        uffd::regions(self.pagemap.as_fd(), start, end, both, both, 0)
    }

    fn fail(&self, what: String) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.failed.get_or_insert(what);
    }

    /// One write fault at `addr`: the page saved if it is still to be copied,
    /// then released. False when the release must be tried again (EAGAIN: an
    /// event not read yet changes the memory map, see `try_release`).
    fn fault(&self, addr: u64) -> bool {
        let page = addr / PAGE * PAGE;
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if page >= st.read_until && self.in_runs(page) && !st.saved.contains_key(&page) {
                let mut b = vec![0u8; PAGE as usize].into_boxed_slice();
                let read = self.mem.read_exact_at(&mut b, page);
                match (read, self.unwritten(page, page + PAGE), self.absent(page, page + PAGE)) {
                    (Ok(()), Ok(w), Ok(gone)) if w.is_empty() && gone.is_empty() => {
                        st.saved.insert(page, b);
                        st.saved_total += 1;
                    }
                    _ => {
                        st.failed.get_or_insert(format!("page {page:#x} changed before it could be saved"));
                    }
                }
            }
        }
        self.try_release(page, PAGE)
    }

    /// Lifts the protection of [start, start + len) and wakes its writers: true
    /// once done, false on EAGAIN (the kernel refuses while an event it has
    /// queued on the userfaultfd is not read: try again after reading). On any
    /// other error the copy fails (closing the userfaultfd lifts it).
    fn try_release(&self, start: u64, len: u64) -> bool {
        let Some(fd) = &self.uffd else { return true };
        match uffd::write_protect(fd.as_fd(), start, len, false) {
            Ok(()) => true,
            Err(nix::errno::Errno::EAGAIN) => false,
            Err(e) => {
                self.fail(format!("lifting the protection of {start:#x} (+{len}): {e}"));
                let _ = uffd::wake(fd.as_fd(), start, len);
                true
            }
        }
    }

    /// `try_release` from the copy (the fault thread reads the events meanwhile).
    fn release(&self, start: u64, len: u64) {
        for _ in 0..5000 {
            if self.try_release(start, len) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        self.fail(format!("lifting the protection of {start:#x} (+{len}): EAGAIN for 5 s"));
    }

    /// Memory [start, end) unmapped, moved or dropped (MADV_DONTNEED): if pages
    /// of it were still to copy, the copy cannot be trusted.
    fn gone(&self, st: &mut State, start: u64, end: u64) {
        let from = start.max(st.done_until);
        let i = self.runs.partition_point(|&(a, n)| a + n * PAGE <= from);
        if self.runs.get(i).is_some_and(|&(a, _)| a < end) {
            st.failed.get_or_insert(format!("memory at {start:#x}-{end:#x} was unmapped, moved or dropped before it was copied"));
        }
    }

    fn serve(&self) {
        let Some(fd) = self.uffd.as_ref().map(|f| f.as_fd()) else { return };
        // Faults whose release must be tried again (after the events before them).
        let mut pending: Vec<u64> = Vec::new();
        while !self.stop.load(Ordering::Relaxed) {
            let wait = if pending.is_empty() { 20u8 } else { 1 };
            let mut p = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
            let _ = nix::poll::poll(&mut p, nix::poll::PollTimeout::from(wait));
            // Everything queued: events at once, faults after them.
            loop {
                // (Reading an event lets its task on: the lock is held from the
                // read to `gone`, so that the copy, which takes it next, sees it.)
                let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                match uffd::next_msg(fd) {
                    Ok(Some(uffd::Msg::Fault(addr))) => pending.push(addr),
                    Ok(Some(uffd::Msg::Gone(start, end))) => self.gone(&mut st, start, end),
                    Ok(Some(uffd::Msg::Other)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        st.failed.get_or_insert(format!("reading its userfaultfd: {e}"));
                        break;
                    }
                }
            }
            pending.retain(|&addr| !self.fault(addr));
        }
    }
}

/// One process's memory still to copy, from the freeze to the images.
pub struct Deferred {
    /// Pid in the tree.
    pub vpid: i32,
    shared: Arc<Shared>,
    /// The page image, with the pages copied while frozen (None while a copy
    /// writes it).
    pages: Option<PagesWriter>,
    /// Pagemap entries so far (pages copied while frozen, inherited, guards).
    entries: Vec<pb::PagemapEntry>,
    /// Byte ranges stored as zeros (see PageDumper::add_rseq_area).
    volatile: Vec<(u64, u64)>,
    chunk: usize,
    thread: Option<JoinHandle<()>>,
    /// Pages copied while frozen (not protectable).
    pub copied_frozen: u64,
}

/// What the copy made of one process: its page image, pagemap entries (in
/// address order) and counts.
pub struct Copied {
    pub vpid: i32,
    pub pages: pb::ImageFile,
    pub entries: Vec<pb::PagemapEntry>,
    pub stats: PageStats,
    /// Pages a task was about to write before the copy reached them (saved
    /// first by the fault thread).
    pub saved_first: u64,
}

/// Has the task behind `parasite` make a userfaultfd through /dev/userfaultfd
/// (opened by crtool: the device's permission is the permission, whatever the
/// task's capabilities), handed to crtool. None without the device (or if the
/// kernel says no): see `Deferred::arm`.
pub fn uffd_from_device(parasite: &mut crate::infect::Parasite, pid: i32) -> Option<OwnedFd> {
    let dev = std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC).open("/dev/userfaultfd").ok()?;
    match parasite.new_uffd(dev.as_fd(), uffd::NEW_FLAGS_SYNC) {
        Ok(made) => Some(made),
        Err(e) => {
            log::info!("pid {pid}: no userfaultfd from /dev/userfaultfd ({e})");
            None
        }
    }
}

/// A synchronous userfaultfd for the stopped task `t` (pid `pid`), handed to
/// crtool: `made` (from `uffd_from_device`), or made by the userfaultfd(2)
/// syscall in the task. None when the task may
/// not make one (EPERM: no CAP_SYS_PTRACE and vm.unprivileged_userfaultfd = 0).
fn new_uffd(t: &Tracee, pid: i32, made: Option<OwnedFd>) -> Result<Option<OwnedFd>> {
    let fd = match made {
        Some(fd) => fd,
        None => match crate::mem::track::uffd_in_task(t, pid, uffd::NEW_FLAGS_SYNC) {
            Err(Error::Ptrace { op: "userfaultfd", errno: nix::errno::Errno::EPERM, .. }) => return Ok(None),
            r => r?,
        },
    };
    uffd::api_sync(fd.as_fd()).map_err(|e| Error::sys(format!("pid {pid}: UFFDIO_API (write protection)"), e))?;
    Ok(Some(fd))
}

/// Write-protects `ranges` (each registered with `fd`) on two threads (the cost
/// is the page-table walk: about 18 ms per GiB of 4 KiB pages on one CPU).
fn protect_all(fd: &OwnedFd, ranges: &[(u64, u64)]) -> std::result::Result<(), nix::errno::Errno> {
    let total: u64 = ranges.iter().map(|(s, e)| e - s).sum();
    // Cut the ranges into two halves of equal bytes (at a page boundary).
    let mut half = (total / 2) / PAGE * PAGE;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for &(s, e) in ranges {
        let take = (e - s).min(half);
        if take > 0 {
            a.push((s, s + take));
        }
        if s + take < e {
            b.push((s + take, e));
        }
        half -= take;
    }
    let wp = |list: &[(u64, u64)]| list.iter().try_for_each(|&(s, e)| uffd::write_protect(fd.as_fd(), s, e - s, true));
    std::thread::scope(|sc| {
        let other = sc.spawn(|| wp(&b));
        let mine = wp(&a);
        mine.and(other.join().unwrap_or(Err(nix::errno::Errno::EIO)))
    })
}

impl Deferred {
    /// Sets up the background copy of process `pid` (`vpid` in the tree), frozen,
    /// its main thread `t` stopped without the parasite (`made`: a userfaultfd
    /// it made through the parasite, see `uffd_from_device`): `runs` (address, pages)
    /// of data in `vmas` (start, end) still to copy, `pages` its page image with
    /// the rest, `entries` the rest's pagemap entries. Protects the runs' VMAs;
    /// what cannot be protected (the task may not make a synchronous
    /// userfaultfd, a VMA the kernel will not register) is copied now.
    #[allow(clippy::too_many_arguments)]
    pub fn arm(t: &Tracee, pid: i32, vpid: i32, made: Option<OwnedFd>, frozen_only: bool, runs: Vec<(u64, u64)>, vmas: &[(u64, u64)], exit_words: &[u64], pages: PagesWriter, entries: Vec<pb::PagemapEntry>, volatile: Vec<(u64, u64)>, chunk: usize, pool: &mut Vec<memmap2::MmapMut>) -> Result<Deferred> {
        let open = |what: &str| File::open(format!("/proc/{pid}/{what}")).map_err(|e| Error::proc(pid, what, e));
        let (mem, pagemap) = (open("mem")?, open("pagemap")?);
        let fd = if frozen_only {
            log::info!("pid {pid} uses priority-inheritance futexes, whose kernel writes cannot wait for a write-protected page: its memory is copied while it is frozen");
            None
        } else {
            new_uffd(t, pid, made)?
        };
        if fd.is_none() && !frozen_only {
            log::info!("pid {pid} may not make a userfaultfd that stops kernel writes too (no /dev/userfaultfd, no CAP_SYS_PTRACE, vm.unprivileged_userfaultfd = 0): its memory is copied while it is frozen");
        }
        let mut protected = Vec::new();
        if let Some(fd) = &fd {
            for &(s, e) in vmas {
                if uffd::register_wp(fd.as_fd(), s, e).is_ok() {
                    protected.push((s, e));
                }
            }
            protect_all(fd, &protected).map_err(|e| Error::sys(format!("pid {pid}: UFFDIO_WRITEPROTECT"), e))?;
        }
        let in_protected = |a: u64| protected.iter().any(|&(s, e)| s <= a && a < e);
        let (later, now): (Vec<_>, Vec<_>) = runs.into_iter().partition(|&(a, _)| in_protected(a));
        let shared = Arc::new(Shared {
            pid,
            uffd: fd,
            mem,
            pagemap,
            runs: later,
            state: Mutex::new(State { done_until: 0, read_until: 0, saved: BTreeMap::new(), failed: None, saved_total: 0 }),
            stop: AtomicBool::new(false),
        });
        let mut d = Deferred { vpid, shared, pages: Some(pages), entries, volatile, chunk, thread: None, copied_frozen: 0 };
        if !now.is_empty() {
            d.copied_frozen = d.copy(&now, false, pool)?;
        }
        d.keep_writable(exit_words)?;
        Ok(d)
    }

    /// Saves now (frozen) and unprotects the pages holding `words` (see
    /// `robust_words`).
    fn keep_writable(&mut self, words: &[u64]) -> Result<()> {
        let sh = &self.shared;
        let Some(fd) = &sh.uffd else { return Ok(()) };
        let mut pages: Vec<u64> = words.iter().map(|w| w / PAGE * PAGE).collect();
        pages.sort_unstable();
        pages.dedup();
        let mut st = sh.state.lock().unwrap_or_else(|p| p.into_inner());
        for page in pages {
            if !sh.in_runs(page) {
                continue;
            }
            let mut b = vec![0u8; PAGE as usize].into_boxed_slice();
            sh.mem.read_exact_at(&mut b, page).map_err(|e| Error::proc(sh.pid, "mem", e))?;
            st.saved.insert(page, b);
            uffd::write_protect(fd.as_fd(), page, PAGE, false).map_err(|e| Error::sys(format!("pid {}: UFFDIO_WRITEPROTECT of {page:#x}", sh.pid), e))?;
        }
        Ok(())
    }

    /// Starts serving write faults (before the tree runs again).
    pub fn serve(&mut self) -> Result<()> {
        let s = self.shared.clone();
        let h = std::thread::Builder::new().name("crtool-wp".into()).spawn(move || s.serve()).map_err(|e| Error::io("starting the write-fault thread", e))?;
        self.thread = Some(h);
        Ok(())
    }

    /// Copies the protected pages (the tree running), then lets them go.
    pub fn finish(mut self, pool: &mut Vec<memmap2::MmapMut>) -> Result<Copied> {
        let runs = self.shared.runs.clone();
        let copied = self.copy(&runs, true, pool);
        self.stop();
        // Every protection goes now, before the images are finished (the fault
        // thread is gone: this is the last reference).
        if let Some(sh) = Arc::get_mut(&mut self.shared) {
            sh.uffd = None;
        }
        let dumped = copied?;
        let mut entries = std::mem::take(&mut self.entries);
        entries.sort_by_key(|e| e.vaddr);
        let saved_first = self.shared.state.lock().unwrap_or_else(|p| p.into_inner()).saved_total;
        let pages = self.pages.take().ok_or_else(|| Error::io("the page image", std::io::Error::other("lost by a failed copy")))?.finish()?;
        Ok(Copied { vpid: self.vpid, pages, entries, stats: PageStats { dumped, ..Default::default() }, saved_first })
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }

    /// Copies `runs` (address order) into the page image, one chunk each;
    /// `live`: the tree runs (reads are checked and the protection lifted).
    /// Returns the pages copied.
    fn copy(&mut self, runs: &[(u64, u64)], live: bool, pool: &mut Vec<memmap2::MmapMut>) -> Result<u64> {
        let sh = self.shared.clone();
        let pid = sh.pid;
        let out = self.pages.take().ok_or_else(|| Error::io("the page image", std::io::Error::other("lost by a failed copy")))?;
        let mut pipe = Pipeline::start(out, self.chunk, pool)?;
        let mut pending = Vec::new();
        let mut total = 0u64;
        let mut i = 0;
        let result = (|| -> Result<()> {
            while i < runs.len() {
                crate::error::check_interrupt()?;
                let mut buf = pipe.buffer()?;
                let first = i;
                let mut off = 0usize;
                let mut parts = Vec::new();
                while i < runs.len() && off + (runs[i].1 * PAGE) as usize <= self.chunk {
                    let (a, n) = runs[i];
                    let len = (n * PAGE) as usize;
                    sh.mem.read_exact_at(&mut buf[off..off + len], a).map_err(|e| {
                        if live { Error::BackgroundCopy { pid, what: format!("reading {a:#x} (+{len}): {e}") } } else { Error::proc(pid, "mem", e) }
                    })?;
                    zero_volatile(&self.volatile, a, &mut buf[off..off + len]);
                    parts.push((off, len));
                    off += len;
                    i += 1;
                }
                if i == first {
                    return Err(Error::io(format!("/proc/{pid}/mem"), std::io::Error::other(format!("a run of {} pages is larger than a buffer", runs[i].1))));
                }
                if live {
                    self.check_and_overlay(&runs[first..i], &mut buf)?;
                }
                for &(a, n) in &runs[first..i] {
                    pending.push(self.entries.len());
                    self.entries.push(pb::PagemapEntry { vaddr: a, nr_pages: n as u32, ..Default::default() });
                    total += n;
                }
                pipe.submit(buf, parts)?;
                if live && first == 0 {
                    crate::fault::point(17)?;
                }
            }
            Ok(())
        })();
        let finished = pipe.finish(pool);
        result?;
        let (out, chunks) = finished?;
        self.pages = Some(out);
        for (&e, c) in pending.iter().zip(chunks.iter()) {
            let e = &mut self.entries[e];
            e.offset = c.offset;
            e.stored_len = c.stored_len;
            e.crc32 = c.crc32;
        }
        Ok(total)
    }

    /// After `runs` were read into `buf` (the tree running): every page read
    /// must have been protected all along, or saved by the fault thread first
    /// (whose copy replaces what was read). Marks them copied.
    fn check_and_overlay(&self, runs: &[(u64, u64)], buf: &mut [u8]) -> Result<()> {
        let sh = &self.shared;
        let pid = sh.pid;
        let (start, end) = (runs[0].0, runs.last().map(|&(a, n)| a + n * PAGE).unwrap_or(0));
        let scan_err = |e| Error::BackgroundCopy { pid, what: format!("PAGEMAP_SCAN of {start:#x}-{end:#x}: {e}") };
        // Pages written (or replaced: a new page is not protected) and pages no
        // longer there (dropped, unmapped), since they were protected.
        let mut written = sh.unwritten(start, end).map_err(scan_err)?;
        written.extend(sh.absent(start, end).map_err(scan_err)?);
        sh.state.lock().unwrap_or_else(|p| p.into_inner()).read_until = end;
        // Lifting the protection succeeds only while no change of the memory
        // map is under way whose event is not read yet (the kernel answers
        // EAGAIN from its start until then): once it has, every unmap, remap or
        // drop before it has been through `gone`, under the lock taken next.
        for &(a, n) in runs {
            sh.release(a, n * PAGE);
        }
        let mut st = sh.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = &st.failed {
            return Err(Error::BackgroundCopy { pid, what: why.clone() });
        }
        let mut off = 0usize;
        for &(a, n) in runs {
            let run_end = a + n * PAGE;
            for &(ws, we) in written.iter().filter(|&&(ws, we)| ws < run_end && we > a) {
                let mut p = ws.max(a);
                while p < we.min(run_end) {
                    if !st.saved.contains_key(&p) {
                        return Err(Error::BackgroundCopy { pid, what: format!("page {p:#x} was unmapped, dropped or moved during the copy") });
                    }
                    p += PAGE;
                }
            }
            let saved: Vec<u64> = st.saved.range(a..run_end).map(|(&p, _)| p).collect();
            for p in saved {
                if let Some(data) = st.saved.remove(&p) {
                    let o = off + (p - a) as usize;
                    buf[o..o + PAGE as usize].copy_from_slice(&data);
                    zero_volatile(&self.volatile, p, &mut buf[o..o + PAGE as usize]);
                }
            }
            off += (n * PAGE) as usize;
        }
        st.done_until = end;
        Ok(())
    }
}

impl Drop for Deferred {
    /// (The userfaultfd closes with the last reference: every protection goes.)
    fn drop(&mut self) {
        self.stop();
    }
}
