//! Dumping one frozen process: its fds, memory (through the parasite), core state of
//! every thread, then its image files.

use super::tree::FrozenProc;
use super::DumpCtx;
use crate::error::{Error, Result};
use crate::infect::Parasite;
use crate::mem::{dump::PageDumper, vma};
use crate::task;
use crate::{files, task::timers};
use images_format::{pb, ImageKind, PagesWriter, write_entries};

/// Fields of /proc/PID/stat after the command name: the state letter (field 3),
/// and the numbers from field 4 on.
pub struct Stat {
    pub state: char,
    fields: Vec<u64>,
}

impl Stat {
    pub fn read(pid: i32) -> Result<Stat> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NoProcess(pid),
            _ => Error::proc(pid, "stat", e),
        })?;
        let mut rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("").split_whitespace();
        let state = rest.next().and_then(|s| s.chars().next()).unwrap_or('?');
        Ok(Stat { state, fields: rest.map(|v| v.parse::<i64>().map(|x| x as u64).unwrap_or(0)).collect() })
    }
    /// Field number `n` as numbered in proc(5).
    pub fn field(&self, n: usize) -> u64 {
        self.fields.get(n - 4).copied().unwrap_or(0)
    }
}

/// Who a process group or session id belongs to, in the tree's PID namespace.
pub enum Owner {
    /// A process of the dumped tree leads it.
    Member(i32),
    /// Its leader lives outside the tree (or outside the tree's PID namespace).
    Outside(i32),
    /// Its leader has exited; the id lives on in the remaining members.
    Gone(i32),
}

pub struct Ids {
    pub pgid: Owner,
    pub sid: Owner,
}

/// The process group and session of `pid`, from its NSpgid/NSsid (innermost = the
/// tree's namespace, 0 when the leader is outside it) and whether the leader exists.
pub fn group_and_session(pid: i32, vpids: &[i32]) -> Result<Ids> {
    let st = Stat::read(pid)?;
    let (pgid, sid) = (st.field(5) as i32, st.field(6) as i32);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| Error::proc(pid, "status", e))?;
    let inner = |key: &str| -> i32 {
        status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().last()?.parse().ok()).unwrap_or(0)
    };
    let classify = |outer: i32, inner: i32| {
        if inner != 0 && vpids.contains(&inner) {
            Owner::Member(inner)
        } else if inner == 0 || std::path::Path::new(&format!("/proc/{outer}")).exists() {
            Owner::Outside(outer)
        } else {
            Owner::Gone(inner)
        }
    };
    Ok(Ids { pgid: classify(pgid, inner("NSpgid:")), sid: classify(sid, inner("NSsid:")) })
}

/// A frozen process's fds and VMAs, read (and checked for what crtool cannot
/// restore) before any parasite enters the tree.
pub struct Survey {
    fds: Vec<files::FdInfo>,
    vmas: Vec<pb::Vma>,
}

impl Survey {
    /// `tracked`: crtool's memory tracking registered it (write protection by
    /// a userfaultfd of the previous dump's tracker).
    pub fn take(pid: i32, file_locks: bool, tracked: bool) -> Result<Survey> {
        let fds = files::list(pid)?;
        files::precheck(pid, &fds, file_locks)?;
        Ok(Survey { fds, vmas: vma::collect(pid, tracked)? })
    }

    /// The pty pairs whose masters this process holds (by index).
    pub fn pty_masters(&self) -> impl Iterator<Item = u32> + '_ {
        self.fds.iter().filter_map(|f| f.tty_index)
    }
}

/// A process between `start` and `finish`: the parasite in place, the fds
/// dumped, the private memory being copied on a thread of its own (whose
/// parasite commands go through the lent control socket, see
/// `infect::Channel`). Dropped unfinished (a failed dump), it waits for that
/// thread, then removes the parasite.
pub struct Started<'a> {
    p: &'a FrozenProc,
    parasite: Option<Parasite<'a>>,
    memory: Option<std::thread::JoinHandle<Option<Memory>>>,
    /// Set when the dump failed: the memory thread stops at its next pipe-full.
    cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
    fds: usize,
    fd_entries: Vec<pb::FdEntry>,
    timers: Vec<pb::PosixTimer>,
    info: crate::sys::abi::ParasiteInfo,
    mlockall: u32,
    exe: (String, bool, u64),
}

/// What the memory thread gets.
struct Lent {
    dumper: PageDumper,
    vmas: Vec<pb::Vma>,
    chan: crate::infect::Channel,
    pool: Vec<memmap2::MmapMut>,
    pages: PagesWriter,
    parent: Option<std::sync::Arc<crate::mem::dump::Frames>>,
}

/// What the memory thread hands back.
struct Memory {
    dumper: PageDumper,
    vmas: Vec<pb::Vma>,
    chan: Option<crate::infect::Channel>,
    pool: Vec<memmap2::MmapMut>,
    pages: Result<PagesWriter>,
}

impl Started<'_> {
    /// The process's pid in the tree's namespace.
    pub fn vpid(&self) -> i32 {
        self.p.vpid
    }

    /// The process's pid (in crtool's namespace).
    pub fn pid(&self) -> i32 {
        self.p.pid
    }

    /// Waits for the memory thread; its control socket goes back to the parasite.
    fn join(&mut self) -> Result<Option<Memory>> {
        let Some(h) = self.memory.take() else { return Ok(None) };
        let m = h.join().ok().flatten().ok_or_else(|| Error::io("the memory thread", std::io::Error::other(format!("it ended without pid {}'s memory", self.p.pid))))?;
        let mut m = m;
        if let (Some(par), Some(chan)) = (self.parasite.as_mut(), m.chan.take()) {
            par.give_back(chan);
        }
        Ok(Some(m))
    }
}

impl Drop for Started<'_> {
    fn drop(&mut self) {
        self.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        // (The parasite, dropped after, is removed by crtool's main thread.)
        let _ = self.join();
    }
}

/// Dumps what of `p` needs its threads stopped by crtool's main thread (the
/// tracer): files, the parasite's reports; starts the copy of its memory on a
/// thread of its own. `finish` completes it. `ctx.frames` must hold the
/// parent's page frames, if the parent is in the tree (its `finish` first).
pub fn start<'a>(p: &'a mut FrozenProc, survey: Survey, ctx: &mut DumpCtx) -> Result<Started<'a>> {
    let pid = p.pid;
    let unsupported = |what: String, hint: Option<&'static str>| Error::Unsupported { pid, fd: None, what, hint };
    let Survey { fds, mut vmas } = survey;
    vma::mark_shmem(pid, &mut vmas, &mut ctx.shmem_seen)?;
    vma::identify(pid, &mut vmas, &mut ctx.identities)?;
    // The data of mapped deleted files.
    for v in vmas.iter().filter(|v| v.ghost) {
        let path = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end);
        let f = std::fs::File::open(&path).map_err(|e| Error::proc(pid, format!("map_files/{:x}-{:x}", v.start, v.end), e))?;
        ctx.files.ghosts.record(pid, None, &v.path, &f)?;
    }
    // The data of mapped memfds (also those no fd holds any more).
    for v in vmas.iter().filter(|v| matches!(v.kind(), pb::VmaKind::VmaMemfdShared | pb::VmaKind::VmaMemfdPrivate)) {
        let path = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end);
        let f = std::fs::File::open(&path).map_err(|e| Error::proc(pid, format!("map_files/{:x}-{:x}", v.start, v.end), e))?;
        let name = crate::files::memfd::name_of(&v.path).unwrap_or_default().to_string();
        ctx.files.memfds.record(pid, &format!("memfd {} mapped at {:#x}", v.path, v.start), &name, &f)?;
    }
    // A deleted executable is a ghost file (e.g. rebuilt in place while running).
    let exe_link = crate::procinfo::file_link(&format!("/proc/{pid}/exe")).map_err(|e| Error::proc(pid, "exe", e))?;
    let (exe, exe_ghost, exe_ino) = if exe_link.deleted {
        let f = std::fs::File::open(format!("/proc/{pid}/exe")).map_err(|e| Error::proc(pid, "exe", e))?;
        ctx.files.ghosts.record(pid, None, &exe_link.path, &f)?;
        use std::os::unix::fs::MetadataExt;
        (exe_link.path, true, f.metadata().map_err(|e| Error::proc(pid, "exe", e))?.ino())
    } else {
        (task::path_of(pid, "exe")?, false, 0)
    };
    let vdso = vmas.iter().find(|v| v.kind() == pb::VmaKind::VmaVdso).map(|v| v.start);
    let (Some(vdso), Some(off)) = (vdso, ctx.vdso_syscall) else {
        return Err(unsupported("it has no vdso to run syscalls through".into(), None));
    };
    // Remote syscalls before the parasite is mapped and after it is gone run so
    // that the thread cures itself should crtool die meanwhile (infect::gadgets).
    let sigreturn = ctx.vdso_syscall_ret.and_then(|_| ctx.sigreturns.find(nix::unistd::Pid::from_raw(pid)));
    if sigreturn.is_none() {
        log::info!("pid {pid}: no rt_sigreturn sequence found in its code: crtool killed during the parasite's mmap or munmap would leave it running crtool's registers");
    }
    for t in p.threads.iter_mut() {
        t.set_syscall_ip(vdso + off);
        if let (Some(ret), Some(sigreturn)) = (ctx.vdso_syscall_ret, sigreturn) {
            t.set_stack_cure(crate::infect::tracee::StackCure { syscall_ret: vdso + ret, sigreturn, geometry: ctx.geometry });
        }
    }
    let p: &'a FrozenProc = p;
    let timers = timers::list(pid)?;

    // Every thread's rseq area (read while all of them sit in ptrace stops: the
    // main thread runs the parasite from the next line on).
    let mut rseq_areas = Vec::new();
    for t in &p.threads {
        let r = crate::sys::ptrace::get_rseq(t.pid).map_err(|e| Error::Ptrace { pid: t.pid.as_raw(), op: "PTRACE_GET_RSEQ_CONFIGURATION", errno: e })?;
        rseq_areas.push(r.rseq_abi_pointer);
    }
    if p.threads.is_empty() {
        return Err(unsupported("it has no threads".into(), None));
    }
    let locked_before = vma::locked_kib(pid)?;
    let mut parasite = Parasite::inject(&p.threads, ctx.geometry)?;
    let info = parasite.info()?;
    crate::fault::point_in(3, pid)?;
    // (The parasite's mapping is locked, hence counted, only under MCL_FUTURE.)
    let mlockall = if vma::locked_kib(pid)? != locked_before { vma::future_lock(pid, parasite.base())? } else { 0 };
    let vpids: std::collections::HashMap<i32, i32> = ctx.tids.iter().copied().collect();
    let vpid = |outer: i32| vpids.get(&outer).copied();
    // A few hundred fds at a time: crtool holds only those duplicates at once.
    let mut fd_entries = Vec::with_capacity(fds.len());
    for chunk in fds.chunks(256) {
        let numbers: Vec<i32> = chunk.iter().map(|f| f.fd).collect();
        let dups = parasite.fds(&numbers)?;
        fd_entries.extend(ctx.files.dump_fds(pid, chunk, &dups, &vpid)?);
    }
    ctx.files.resolve_epolls(pid, p.vpid, &fd_entries)?;
    crate::fault::point_in(4, pid)?;

    let pages = match &ctx.page_client {
        Some(c) => PagesWriter::remote(&ctx.work, p.vpid as u32, ctx.compression, c.file(&ImageKind::Pages.file_name(p.vpid as u32))?)?,
        None => PagesWriter::create(&ctx.work, p.vpid as u32, ctx.compression)?,
    };
    let mut dumper = PageDumper::new(pid, ctx.zero_pfn)?;
    for a in &rseq_areas {
        dumper.add_rseq_area(*a);
    }
    if let Some((_, prev)) = &ctx.opts.prev {
        // What changed since the previous dump: pages not written since are in
        // its images (only for the process it tracked).
        dumper.changes.uffd = ctx.tracked.remove(&p.vpid).filter(|(outer, _)| *outer == pid).map(|(_, f)| f);
        if dumper.changes.uffd.is_some() {
            ctx.rearmed |= ctx.opts.track_mem;
            dumper.changes.scan(pid, &vmas, ctx.opts.track_mem)?;
            dumper.parent_data = crate::mem::track::parent_data(prev, p.vpid)?;
        }
    }
    dumper.defer = ctx.background;
    dumper.lazy = ctx.opts.lazy_pages.is_some();
    dumper.frames_needed = ctx.frames.contains_key(&p.ppid) || ctx.parents.contains(&p.vpid);
    let parent = ctx.frames.get(&p.ppid).cloned();
    let share = ctx.page_buffers.len().min(crate::mem::pipeline::buffers());
    let pool: Vec<memmap2::MmapMut> = ctx.page_buffers.drain(..share).collect();
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    dumper.cancel = Some(cancel.clone());
    // The thread first: the control socket is lent only to a thread that runs
    // (a socket dropped on the way would let the parasite cure the task while
    // crtool still holds it), and comes back even if the copy panics.
    let (give, take) = std::sync::mpsc::sync_channel::<Lent>(1);
    let memory = std::thread::Builder::new()
        .name(format!("crtool-mem-{pid}"))
        .spawn(move || {
            let Lent { mut dumper, vmas, mut chan, mut pool, pages, parent } = take.recv().ok()?;
            let copied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dumper.dump(&vmas, parent.as_deref(), &mut chan, pages, &mut pool)));
            let pages = copied.unwrap_or_else(|_| Err(Error::io("the memory thread", std::io::Error::other(format!("it panicked dumping pid {pid}")))));
            Some(Memory { dumper, vmas, chan: Some(chan), pool, pages })
        })
        .map_err(|e| Error::io("starting a memory thread", e))?;
    let chan = parasite.lend();
    if let Err(std::sync::mpsc::SendError(l)) = give.send(Lent { dumper, vmas, chan, pool, pages, parent }) {
        parasite.give_back(l.chan);
        return Err(Error::io("the memory thread", std::io::Error::other(format!("it ended before it got pid {pid}'s memory"))));
    }
    Ok(Started { p, parasite: Some(parasite), memory: Some(memory), cancel, fds: fds.len(), fd_entries, timers, info, mlockall, exe: (exe, exe_ghost, exe_ino) })
}

/// Completes the dump `start` began: waits for the memory, stops the parasite,
/// reads each thread's state, writes the process's images.
pub fn finish(mut s: Started, ctx: &mut DumpCtx) -> Result<()> {
    let p = s.p;
    let pid = p.pid;
    let Memory { mut dumper, vmas, pool, pages, .. } = s.join()?.ok_or_else(|| Error::io("the memory thread", std::io::Error::other(format!("it was not started for pid {pid}"))))?;
    ctx.page_buffers.extend(pool);
    // (Kept for the processes in flight at once, no more.)
    ctx.page_buffers.truncate(crate::mem::pipeline::buffers() * super::memory_threads(ctx));
    let pages = pages?;
    let mut parasite = s.parasite.take().ok_or(Error::NoProcess(pid))?;
    let main = &p.threads[0];
    let (fd_entries, mut timers, info, mlockall) = (std::mem::take(&mut s.fd_entries), std::mem::take(&mut s.timers), s.info, s.mlockall);
    let (exe, exe_ghost, exe_ino) = std::mem::take(&mut s.exe);
    let pages = if ctx.background {
        Some(pages)
    } else {
        ctx.manifest.push(pages.finish()?);
        None
    };
    crate::fault::point_in(5, pid)?;
    let made = if pages.is_some() { crate::mem::background::uffd_from_device(&mut parasite, pid) } else { None };
    parasite.stop()?;
    if ctx.opts.track_mem {
        dumper.changes.arm(main, pid, &vmas)?;
        if let Some(f) = dumper.changes.uffd.take() {
            ctx.new_uffds.push((p.vpid, pid, f));
        }
    }

    // Per-thread state only the thread can report, through remote syscalls that use
    // the parasite's memory as scratch.
    let scratch = parasite.scratch();
    let mut extras = vec![task::probe_main(main, scratch, &info)?];
    let others: Vec<&crate::infect::Tracee> = p.threads.iter().skip(1).collect();
    extras.extend(task::probe_threads(&others, scratch, parasite.scratch_len())?);
    timers::read_values(main, &mut timers, scratch)?;
    parasite.finish()?;
    crate::fault::point_in(6, pid)?;
    if let Some(pages) = pages {
        // Private anonymous memory: protected now (crtool writes nothing into the
        // task after this), copied once the tree runs. The words the kernel
        // writes when a thread exits stay writable (see mem::background).
        let mut exit_words: Vec<u64> = extras.iter().map(|x| x.clear_child_tid).filter(|&a| a != 0).collect();
        let mut pi = false;
        for t in &p.threads {
            let (words, robust_pi) = crate::mem::background::robust_words(t.pid);
            exit_words.extend(words);
            pi |= crate::mem::background::pi_in_use(t, robust_pi);
        }
        let entries = std::mem::take(&mut dumper.entries);
        let runs = std::mem::take(&mut dumper.deferred);
        let mut d = crate::mem::background::Deferred::arm(main, pid, p.vpid, made, pi, runs, &dumper.deferred_vmas, &exit_words, pages, entries, dumper.volatile.clone(), dumper.chunk as usize, &mut ctx.page_buffers)?;
        d.serve()?;
        ctx.stats.pages.dumped += d.copied_frozen;
        ctx.deferred.push(d);
    }

    ctx.stats.pages.dumped += dumper.stats.dumped;
    ctx.stats.pages.scanned += dumper.stats.scanned;
    ctx.stats.pages.zero += dumper.stats.zero;
    ctx.stats.pages.in_parent += dumper.stats.in_parent;
    ctx.stats.pages.lazy += dumper.stats.lazy;
    ctx.stats.vmas += vmas.len();
    ctx.stats.fds += s.fds;
    log::info!("pid {pid}: {} pages dumped ({} scanned, {} zero), {} VMAs, {} fds, {} threads",
        dumper.stats.dumped, dumper.stats.scanned, dumper.stats.zero, vmas.len(), s.fds, p.threads.len());

    let vtids: Vec<i32> = p.threads.iter().map(|t| ctx.vtid(t.pid.as_raw())).collect();
    let mut core = task::dump(p.vpid, &p.threads, &vtids, &extras, &info, timers)?;
    for (t, c) in p.threads.iter().zip(core.threads.iter_mut()) {
        c.restart = crate::task::syscall::restart_for(t.pid, &t.regs, p.blocked.get(&t.pid.as_raw()).copied());
    }
    if let Some((sig, unreported)) = p.stopped {
        core.stop_signal = sig;
        core.stop_unreported = unreported;
    }
    let stat = Stat::read(pid)?;
    let auxv_bytes = std::fs::read(format!("/proc/{pid}/auxv")).map_err(|e| Error::proc(pid, "auxv", e))?;
    let auxv = auxv_bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
    let mm_img = pb::Mm {
        start_code: stat.field(26),
        end_code: stat.field(27),
        start_stack: stat.field(28),
        start_data: stat.field(45),
        end_data: stat.field(46),
        start_brk: stat.field(47),
        brk: info.brk,
        arg_start: stat.field(48),
        arg_end: stat.field(49),
        env_start: stat.field(50),
        env_end: stat.field(51),
        auxv,
        exe,
        exe_ghost,
        exe_ino,
        vmas,
        mlockall,
    };
    let v = p.vpid as u32;
    let dir = &ctx.work;
    let written = [
        write_entries(dir, ImageKind::Core, v, &[core])?,
        write_entries(dir, ImageKind::Mm, v, &[mm_img])?,
        write_entries(dir, ImageKind::Fdinfo, v, &fd_entries)?,
    ];
    ctx.manifest.extend(written);
    if !ctx.background {
        // (A background copy writes it once done.)
        ctx.manifest.push(write_entries(dir, ImageKind::Pagemap, v, &dumper.entries)?);
    }
    ctx.frames.insert(p.vpid, std::sync::Arc::new(std::mem::take(&mut dumper.frames)));
    crate::fault::point_in(7, pid)
}
