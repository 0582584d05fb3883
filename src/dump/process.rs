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

pub fn dump_process(p: &mut FrozenProc, survey: Survey, ctx: &mut DumpCtx) -> Result<()> {
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
    let mut timers = timers::list(pid)?;

    // Every thread's rseq area (read while all of them sit in ptrace stops: the
    // main thread runs the parasite from the next line on).
    let mut rseq_areas = Vec::new();
    for t in &p.threads {
        let r = crate::sys::ptrace::get_rseq(t.pid).map_err(|e| Error::Ptrace { pid: t.pid.as_raw(), op: "PTRACE_GET_RSEQ_CONFIGURATION", errno: e })?;
        rseq_areas.push(r.rseq_abi_pointer);
    }
    let (main, _) = p.threads.split_first().ok_or_else(|| unsupported("it has no threads".into(), None))?;
    let locked_before = vma::locked_kib(pid)?;
    let mut parasite = Parasite::inject(&p.threads, ctx.geometry)?;
    let info = parasite.info()?;
    crate::fault::point(3)?;
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
    crate::fault::point(4)?;

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
    let pages = dumper.dump(&vmas, ctx.frames.get(&p.ppid), &mut parasite, pages, &mut ctx.page_buffers)?;
    let pages = if ctx.background {
        Some(pages)
    } else {
        ctx.manifest.push(pages.finish()?);
        None
    };
    crate::fault::point(5)?;
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
    let extras = p.threads.iter().map(|t| task::probe_thread(t, scratch)).collect::<Result<Vec<_>>>()?;
    timers::read_values(main, &mut timers, scratch)?;
    parasite.finish()?;
    crate::fault::point(6)?;
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
    ctx.stats.fds += fds.len();
    log::info!("pid {pid}: {} pages dumped ({} scanned, {} zero), {} VMAs, {} fds, {} threads",
        dumper.stats.dumped, dumper.stats.scanned, dumper.stats.zero, vmas.len(), fds.len(), p.threads.len());

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
    ctx.frames.insert(p.vpid, std::mem::take(&mut dumper.frames));
    crate::fault::point(7)
}
