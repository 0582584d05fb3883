//! `crtool dump`: discover and freeze the tree → collect each process (proc, ptrace,
//! parasite) → write images → cure and detach, or kill. This module only sequences;
//! resource knowledge lives in `task`, `mem` and `files`.

mod process;
mod tree;
pub mod workdir;

use crate::error::{Error, Result};
use crate::files::FileTable;
use crate::mem::dump::PageStats;
use crate::sys::{cpu, mm};
use crate::task;
use images_format::{pb, Compression, ImageKind, write_entries};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct DumpOpts {
    pub pid: i32,
    pub dir: PathBuf,
    pub leave_running: bool,
    pub compress: bool,
    pub shell_job: bool,
    /// Resources expected outside the tree (--external), e.g. "pipe:[1234]".
    pub external: Vec<String>,
    /// Unix sockets connected to peers outside the tree are dumped (--ext-unix-sk).
    pub ext_unix_sk: bool,
    /// File locks are dumped and taken again at restore (--file-locks).
    pub file_locks: bool,
    /// Largest deleted file whose data the images take (--ghost-limit), bytes.
    pub ghost_limit: u64,
    /// Deleted files with another name go by a hard link (--link-remap).
    pub link_remap: bool,
    /// Established TCP connections are dumped (--tcp-established).
    pub tcp_established: bool,
    /// Half-open connections to listeners are let go (--skip-in-flight).
    pub skip_in_flight: bool,
    /// With leave_running: private anonymous memory is copied after the tree
    /// runs again (see mem::background); false: while it is frozen.
    pub background_copy: bool,
    /// The tree's memory is tracked after the dump (--track-mem, pre-dump).
    pub track_mem: bool,
    /// The previous dump (--prev-images-dir): the `parent` link's text and the
    /// directory it names.
    pub prev: Option<(PathBuf, PathBuf)>,
    /// Page images go to a page server at (address, port) (--page-server).
    pub page_server: Option<(String, u16)>,
    /// dump --lazy-pages: private anonymous memory stays in the tree, which
    /// stays stopped and serves it on (address, port) to a lazy-pages daemon
    /// (see lazy::remote) until that has it all; then the tree is killed.
    pub lazy_pages: Option<(String, u16)>,
    /// Where "\0" is written once a lazy dump's images are complete and its
    /// memory is being served (--status-fd).
    pub status_fd: Option<i32>,
}

#[derive(Debug, Default)]
pub struct DumpStats {
    pub frozen: Duration,
    /// dump --lazy-pages: bytes served to the lazy-pages daemon, and for how long.
    pub lazy_served: Option<(u64, Duration)>,
    pub pages: PageStats,
    pub vmas: usize,
    pub fds: usize,
    pub processes: usize,
    pub threads: usize,
}

/// State shared by the per-process dumps.
pub struct DumpCtx {
    pub opts: DumpOpts,
    pub compression: Compression,
    pub zero_pfn: Option<u64>,
    pub vdso_syscall: Option<u64>,
    /// Offset of the vdso's `syscall; ...; ret` (see `infect::gadgets`).
    pub vdso_syscall_ret: Option<u64>,
    /// Where tasks' files hold an rt_sigreturn sequence.
    pub sigreturns: crate::infect::gadgets::SigreturnCache,
    /// The XSAVE geometry of signal frames (for the parasite's cure frames).
    pub geometry: cpu::SigFrameXstate,
    pub files: FileTable,
    pub shmem_seen: BTreeSet<u64>,
    /// Page frames of each dumped process (by pid in the tree), for its children.
    pub frames: std::collections::BTreeMap<i32, std::sync::Arc<crate::mem::dump::Frames>>,
    /// Identities of mapped files, computed once per file.
    pub identities: crate::files::identity::Cache,
    pub stats: DumpStats,
    /// (outer tid, tid in the tree's namespace) for every thread.
    tids: Vec<(i32, i32)>,
    /// Where the images are written until the dump has succeeded.
    pub work: PathBuf,
    /// Every image file written so far, for the inventory's manifest.
    pub manifest: Vec<pb::ImageFile>,
    /// The tree has a network namespace of its own (crtool works in it).
    pub own_netns: bool,
    /// --external net[INO]:KEY: the namespace is the caller's.
    pub netns_external: Option<(u64, String)>,
    /// The previous dump's memory tracking (--prev-images-dir): its tracker and
    /// the userfaultfds it held, by pid in the tree (with the outer pid).
    pub old_tracker: Option<i32>,
    pub tracked: std::collections::BTreeMap<i32, (i32, std::os::fd::OwnedFd)>,
    /// A scan protected pages again: the previous tracking no longer tells what
    /// changed since the previous dump (see `track`).
    pub rearmed: bool,
    /// Userfaultfds for the next dump (--track-mem): (pid in the tree, pid, fd).
    pub new_uffds: Vec<(i32, i32, std::os::fd::OwnedFd)>,
    /// The page server the page images go to (--page-server).
    pub page_client: Option<crate::pageserver::Client>,
    /// Page buffers, kept from one process's dump to the next.
    pub page_buffers: Vec<memmap2::MmapMut>,
    /// Private anonymous memory is copied after the tree runs again
    /// (--leave-running without memory tracking; see mem::background).
    pub background: bool,
    /// The background copies still to do, one per process.
    pub deferred: Vec<crate::mem::background::Deferred>,
    /// Processes with children in the tree (pids in the tree).
    pub parents: BTreeSet<i32>,
}

/// What the inventory says of the tree, known once it is collected.
struct Seal {
    root_vpid: u32,
    pids: Vec<u32>,
    outer_pids: Vec<u32>,
    new_pid_ns: bool,
    new_mount_ns: bool,
    ns: crate::ipc::NsFlags,
}

impl DumpCtx {
    pub fn vtid(&self, tid: i32) -> i32 {
        self.tids.iter().find(|(t, _)| *t == tid).map(|&(_, v)| v).unwrap_or(tid)
    }
}

/// Field `n` (as numbered in proc(5)) of /proc/PID/stat.
pub fn process_stat_field(pid: i32, n: usize) -> Result<u64> {
    Ok(process::Stat::read(pid)?.field(n))
}

/// Refuses targets that cannot be dumped, before anything else is done: init,
/// crtool itself, kernel threads, zombies.
pub fn check_target(pid: i32) -> Result<()> {
    let refuse = |what: String, hint: &'static str| Err(Error::Unsupported { pid, fd: None, what, hint: Some(hint) });
    if pid == std::process::id() as i32 {
        return refuse("it is crtool itself".into(), "give the PID of the tree to dump");
    }
    if pid == 1 {
        return refuse("it is the init of crtool's PID namespace (every process hangs from it, crtool too)".into(), "dump the subtree you want, or run crtool outside that namespace");
    }
    let stat = process::Stat::read(pid)?;
    if stat.field(9) & 0x20_0000 != 0 {
        return refuse("it is a kernel thread".into(), "kernel threads cannot be checkpointed");
    }
    if stat.state == 'Z' {
        return refuse(format!("it is a zombie: it has exited and waits for its parent {} to reap it", stat.field(4)), "there is nothing left to dump");
    }
    Ok(())
}

/// Dumps as `opts` say. A background copy (--leave-running) that the tree's
/// own changes to its memory made impossible (Error::BackgroundCopy: the tree
/// runs on, nothing was written) is done again with the memory copied while
/// the tree is frozen.
pub fn dump(opts: &DumpOpts) -> Result<DumpStats> {
    match dump_once(opts, opts.leave_running && opts.background_copy && !opts.track_mem && opts.prev.is_none()) {
        Err(Error::BackgroundCopy { pid, what }) => {
            log::warn!("pid {pid}: its memory changed under the background copy ({what}): dumping again, memory copied while the tree is frozen");
            dump_once(opts, false)
        }
        r => r,
    }
}

fn dump_once(opts: &DumpOpts, background: bool) -> Result<DumpStats> {
    let pid = opts.pid;
    process::Stat::read(pid)?; // a clear "no such process" before anything else
    let work_dir = workdir::WorkDir::create(&opts.dir)?;
    let work_path = work_dir.path.clone();
    let mut work = Some(work_dir);
    // Every fd of the tree passes through crtool (a few hundred at a time).
    crate::sys::process::raise_nofile();
    let vdso = mm::vdso_code();
    let mut ctx = DumpCtx {
        opts: opts.clone(),
        compression: if opts.compress { Compression::Zstd } else { Compression::Raw },
        zero_pfn: mm::zero_pfn(),
        vdso_syscall: vdso.as_deref().and_then(mm::first_syscall),
        vdso_syscall_ret: vdso.as_deref().and_then(crate::infect::gadgets::vdso_syscall_ret),
        sigreturns: Default::default(),
        geometry: cpu::sigframe_xstate(),
        files: FileTable::default(),
        shmem_seen: BTreeSet::new(),
        identities: Default::default(),
        frames: Default::default(),
        stats: DumpStats::default(),
        tids: Vec::new(),
        work: work_path.clone(),
        manifest: Vec::new(),
        own_netns: false,
        netns_external: None,
        old_tracker: None,
        tracked: Default::default(),
        rearmed: false,
        new_uffds: Vec::new(),
        page_buffers: Vec::new(),
        background,
        deferred: Vec::new(),
        parents: BTreeSet::new(),
        page_client: match &opts.page_server {
            Some((a, p)) => Some(crate::pageserver::Client::connect(a, *p)?),
            None => None,
        },
    };
    // (Bound before the freeze: a port in use fails the dump before it starts.)
    let lazy_listener = match &opts.lazy_pages {
        Some((a, p)) => Some(std::net::TcpListener::bind((a.as_str(), *p)).map_err(|e| Error::io(format!("--lazy-pages: listening on {a}:{p}"), e))?),
        None => None,
    };
    if let Some((link, prev)) = &opts.prev {
        std::os::unix::fs::symlink(link, work_path.join("parent")).map_err(|e| Error::io(work_path.join("parent"), e))?;
        if let Some((tracker, fds)) = crate::mem::track::take_over(prev) {
            ctx.old_tracker = Some(tracker);
            ctx.tracked = fds;
        }
    }

    ctx.files.ghosts.limit = opts.ghost_limit;
    ctx.files.ghosts.link_remap = opts.link_remap;
    ctx.files.ghosts.link_tag = crate::files::ghost::link_tag(&opts.dir);
    ctx.files.inet.tcp_established = opts.tcp_established;
    ctx.files.inet.skip_in_flight = opts.skip_in_flight;
    ctx.files.shell_job = opts.shell_job;
    // /proc/locks is read while the tree is frozen; its first read in a while
    // waits for an RCU grace period (fs/locks.c takes file_rwsem for writing):
    // taken here, before the freeze, the next one is quick.
    let _ = std::fs::read("/proc/locks");
    if let Some(w) = work.as_mut() {
        let pages = opts.page_server.is_none();
        w.prepare(move || image_names(pid, pages));
    }
    let t0 = Instant::now();
    let mut frozen = tree::freeze(pid, cpu::xsave_size())?;
    // A tree with a network namespace of its own: crtool works in it (sock_diag,
    // the network lock, the namespace's configuration) until the dump ends.
    ctx.own_netns = crate::net::own_netns(pid);
    ctx.netns_external = opts.external.iter().find_map(|x| crate::net::parse_external(x));
    if let Some((ino, _)) = &ctx.netns_external
        && (!ctx.own_netns || crate::net::ns_ino(pid) != Some(*ino))
    {
        return Err(Error::Unsupported { pid, fd: None, what: format!("--external net[{ino}]:...: the tree's network namespace is {}", crate::net::ns_ino(pid).map_or("?".into(), |i| format!("net:[{i}]"))), hint: Some("name the inode of the tree's own network namespace (ls -l /proc/PID/ns/net)") });
    }
    let netns = if ctx.own_netns { Some(crate::net::enter(pid)?) } else { None };
    log::info!("tree of pid {pid}: {} processes frozen in {:?}", frozen.procs.len(), t0.elapsed());
    // The images take the target's place only once complete and checked, before
    // anything is killed.
    let result = crate::fault::point(1).and_then(|()| collect(&mut frozen, &mut ctx)).and_then(|seal| {
        if ctx.background {
            // Completed once the memory is copied, the tree running.
            return Ok(Some(seal));
        }
        complete(&mut ctx, &seal, &mut work).map(|()| None)
    });
    let outcome = match result {
        Ok(later) => {
            let mut kill = !opts.leave_running;
            if let Some(l) = &lazy_listener {
                // The images are complete; the tree stays stopped and serves its
                // memory to the lazy restore's daemon.
                ctx.stats.frozen = t0.elapsed();
                let t = Instant::now();
                match serve_lazy(l, &frozen, &opts.dir, opts.status_fd) {
                    Ok(crate::lazy::remote::End::Done { bytes }) => ctx.stats.lazy_served = Some((bytes, t.elapsed())),
                    Ok(crate::lazy::remote::End::Aborted) => {
                        // No restored copy runs: the tree runs on; the images,
                        // whose memory was the tree's, go.
                        ctx.files.inet.release();
                        let _ = release(frozen, false);
                        remove_images(&opts.dir);
                        return Err(Error::Lazy { msg: format!("the lazy restore of pid {pid} failed or never asked for memory: the tree runs on, and the images in {} (useless without it) were removed", opts.dir.display()) });
                    }
                    Err(e) => {
                        // Pages were served: the restored copy may have run.
                        let _ = release(frozen, true);
                        remove_images(&opts.dir);
                        return Err(Error::Lazy { msg: format!("{e}: the tree of pid {pid} was killed (its restored copy may have run) and the images removed") });
                    }
                }
                kill = true;
            }
            if !kill {
                // The connections run on (killed, they close silently in repair
                // mode, and the lock stays until the restore).
                ctx.files.inet.release();
            }
            let pids: Vec<i32> = frozen.procs.iter().map(|p| p.pid).collect();
            release(frozen, kill)?;
            // The next dump of the chain starts from this one.
            if opts.track_mem
                && let Err(e) = crate::mem::track::start(&opts.dir, &ctx.new_uffds)
            {
                log::warn!("memory tracking not kept ({e}): the next dump with --prev-images-dir {} stores every page", opts.dir.display());
            }
            if let Some(t) = ctx.old_tracker {
                crate::mem::track::stop(t);
            }
            if lazy_listener.is_none() {
                ctx.stats.frozen = t0.elapsed();
            }
            if let Some(seal) = later {
                log::info!("tree of pid {pid}: running again after {:?} frozen, its memory write-protected; copying it in the background", ctx.stats.frozen);
                let copied = copy_in_background(&mut ctx).and_then(|()| complete(&mut ctx, &seal, &mut work));
                if let Err(e) = copied {
                    ctx.deferred.clear();
                    ctx.files.ghosts.remove_links();
                    return Err(crate::sys::signals::interrupted().map_or(e, |sig| Error::Interrupted { sig }));
                }
            }
            if kill {
                // Until their parents (or init) reap them, the dead keep their PIDs:
                // wait a little, so that a restore right after the dump finds them free.
                let deadline = Instant::now() + Duration::from_secs(2);
                while pids.iter().any(|p| std::path::Path::new(&format!("/proc/{p}")).exists()) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            log::info!("tree of pid {pid}: {} after {:?} frozen", if kill { "killed" } else { "resumed" }, ctx.stats.frozen);
            Ok(ctx.stats)
        }
        Err(e) => {
            // Nothing of the dump stays: the links it made go too, connections
            // leave repair mode and the network lock goes, memory protections
            // are lifted.
            ctx.deferred.clear();
            ctx.files.ghosts.remove_links();
            ctx.files.inet.release();
            if ctx.rearmed
                && let Some((_, prev)) = &opts.prev
            {
                // Pages written since the previous dump were protected again:
                // that dump can no longer be a parent of an incremental one.
                crate::mem::track::forget(prev, ctx.old_tracker);
            }
            // Every task goes back exactly as it was and runs on.
            if let Err(r) = release(frozen, false) {
                log::error!("releasing the tree after a failed dump: {r}");
            }
            Err(crate::sys::signals::interrupted().map_or(e, |sig| Error::Interrupted { sig }))
        }
    };
    drop(netns);
    outcome
}

/// The names of the image files a dump of the tree of `pid` is expected to
/// write here (from the tree as it is now, before the freeze); `pages`: page
/// images too (not with a page server, which gets them instead).
fn image_names(pid: i32, pages: bool) -> Vec<String> {
    let per_task = if pages { &[ImageKind::Core, ImageKind::Mm, ImageKind::Fdinfo, ImageKind::Pagemap, ImageKind::Pages][..] } else { &[ImageKind::Core, ImageKind::Mm, ImageKind::Fdinfo, ImageKind::Pagemap][..] };
    let mut names: Vec<String> = ImageKind::all().iter().filter(|k| !k.per_task() && **k != ImageKind::Inventory).map(|k| k.file_name(0)).collect();
    for p in tree::predict(pid) {
        names.extend(per_task.iter().map(|k| k.file_name(p as u32)));
    }
    names
}

/// Most processes whose memory is copied at once (each with its page
/// buffers and compressors, see mem::pipeline).
const MAX_MEMORY_THREADS: usize = 8;

/// How many processes of a tree have their memory copied at once: one per CPU
/// (each copy also keeps the task's own vmsplice and a writer thread busy),
/// one with a page server (one connection carries every page image).
pub(crate) fn memory_threads(ctx: &DumpCtx) -> usize {
    if ctx.page_client.is_some() {
        return 1;
    }
    crate::par::width().min(MAX_MEMORY_THREADS)
}

/// A pseudo-terminal that is a session's controlling terminal comes back as that
/// only if its foreground process group has a process in that session of the tree
/// (restore sets it from inside the group).
fn check_terminal_sessions(ptys: &[pb::PtyPair], entries: &[pb::PstreeEntry], root: i32) -> Result<()> {
    for p in ptys.iter().filter(|p| p.session != 0) {
        if !entries.iter().any(|e| e.pgid == p.fg_pgrp as u32 && e.sid == p.session as u32) {
            return Err(Error::Unsupported {
                pid: root,
                fd: None,
                what: format!("/dev/pts/{} is the controlling terminal of session {} but its foreground process group {} has no process in that session", p.index, p.session, p.fg_pgrp),
                hint: Some("dump when a job of the session is in the foreground"),
            });
        }
    }
    Ok(())
}

/// dump --lazy-pages: serves the private memory the images left in the stopped
/// tree (entries marked `lazy` in `dir`'s pagemaps) on `listener` until the
/// lazy-pages daemon has all of it (lazy::remote).
fn serve_lazy(listener: &std::net::TcpListener, frozen: &tree::FrozenTree, dir: &std::path::Path, status_fd: Option<i32>) -> Result<crate::lazy::remote::End> {
    let mut ranges = crate::lazy::remote::Ranges::new();
    // The memory is read through /proc/PID/mem, which reads PROT_NONE memory too.
    let mut mem = std::collections::BTreeMap::new();
    for p in frozen.procs.iter().filter(|p| p.zombie.is_none()) {
        let entries: Vec<pb::PagemapEntry> = images_format::read_entries(dir, ImageKind::Pagemap, p.vpid as u32)?;
        let r: Vec<(u64, u64)> = entries.iter().filter(|e| e.lazy).map(|e| (e.vaddr, e.vaddr + e.nr_pages as u64 * mm::PAGE)).collect();
        ranges.insert(p.vpid as u32, r);
        let f = std::fs::File::open(format!("/proc/{}/mem", p.pid)).map_err(|e| Error::proc(p.pid, "mem", e))?;
        mem.insert(p.vpid as u32, f);
    }
    let mib: u64 = ranges.values().flatten().map(|(s, e)| e - s).sum::<u64>() >> 20;
    log::info!("images complete; serving {mib} MiB of memory to a lazy-pages daemon on {:?}", listener.local_addr().ok());
    if let Some(fd) = status_fd {
        crate::sys::fd::write_raw(fd, b"\0");
        crate::sys::fd::close_raw(fd);
    }
    // Once a daemon is there, a restored copy may run: the tree must not
    // outlive the dump (resumed by the kernel when crtool dies).
    let connected = || -> Result<()> {
        for t in frozen.procs.iter().flat_map(|p| p.threads.iter()) {
            crate::sys::ptrace::set_exit_kill(t.pid).map_err(|e| Error::Ptrace { pid: t.pid.as_raw(), op: "PTRACE_SETOPTIONS(EXITKILL)", errno: e })?;
        }
        Ok(())
    };
    crate::lazy::remote::serve(listener, &ranges, connected, |vpid, addr, buf| {
        use std::os::unix::fs::FileExt;
        mem.get(&vpid).ok_or_else(|| std::io::Error::other("no such process"))?.read_exact_at(buf, addr)
    })
}

/// Removes the image files of a dump from `dir` (the inventory first).
fn remove_images(dir: &std::path::Path) {
    let _ = std::fs::remove_file(dir.join(ImageKind::Inventory.file_name(0)));
    if let Ok(rd) = std::fs::read_dir(dir) {
        for d in rd.flatten() {
            if ImageKind::parse_file_name(&d.file_name().to_string_lossy()).is_some() {
                let _ = std::fs::remove_file(d.path());
            }
        }
    }
}

fn release(tree: tree::FrozenTree, kill: bool) -> Result<()> {
    if kill {
        // Kill every process first: a thread-group leader reports its death only
        // after its other threads are reaped, so waiting one by one would hang.
        let live: Vec<nix::unistd::Pid> = tree.procs.iter().filter(|p| p.zombie.is_none()).map(|p| nix::unistd::Pid::from_raw(p.pid)).collect();
        let pidfds: Vec<_> = live.iter().filter_map(|&p| crate::sys::process::pidfd_open(p).ok()).collect();
        for &p in &live {
            let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
        }
        // Their memory is freed here too, alongside their own exit (a large
        // process takes tens of milliseconds to tear down).
        for fd in &pidfds {
            let _ = crate::sys::process::mrelease(fd);
        }
        let mut left: usize = tree.procs.iter().map(|p| p.threads.len()).sum();
        for p in tree.procs {
            for t in p.threads {
                t.forget();
            }
        }
        while left > 0 {
            match crate::sys::ptrace::wait_any() {
                Ok((_, crate::sys::ptrace::Stop::Exited(_) | crate::sys::ptrace::Stop::Killed(_))) => left -= 1,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        return Ok(());
    }
    let mut first_err = None;
    for p in tree.procs {
        for t in p.threads {
            if let Err(e) = t.release(false) {
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// The background copies (the tree running), their images in the manifest.
fn copy_in_background(ctx: &mut DumpCtx) -> Result<()> {
    let t = Instant::now();
    let (mut bytes, mut saved) = (0, 0);
    for d in std::mem::take(&mut ctx.deferred) {
        let c = d.finish(&mut ctx.page_buffers)?;
        saved += c.saved_first;
        ctx.manifest.push(c.pages);
        ctx.manifest.push(write_entries(&ctx.work, ImageKind::Pagemap, c.vpid as u32, &c.entries)?);
        ctx.stats.pages.dumped += c.stats.dumped;
        bytes += c.stats.dumped * mm::PAGE;
    }
    log::info!("{} MiB copied in the background in {:?}; {saved} pages saved before the tree wrote them", bytes >> 20, t.elapsed());
    Ok(())
}

/// Writes the inventory (last: a directory without one was not completely
/// dumped), checks that restore would rebuild the images, and puts them in
/// place of the target directory.
fn complete(ctx: &mut DumpCtx, seal: &Seal, work: &mut Option<workdir::WorkDir>) -> Result<()> {
    let dir = &ctx.work.clone();
    let mut files = std::mem::take(&mut ctx.manifest);
    files.sort_by(|a, b| a.name.cmp(&b.name));
    let inventory_name = ImageKind::Inventory.file_name(0);
    let keep: BTreeSet<&str> = files.iter().map(|f| f.name.as_str()).chain([inventory_name.as_str()]).collect();
    work.as_mut().ok_or_else(|| Error::io(&ctx.work, std::io::Error::other("no working directory")))?.sweep(&keep)?;
    let inventory = pb::Inventory {
        format_version: images_format::FORMAT_VERSION,
        root_pid: seal.root_vpid,
        page_compression: ctx.compression.code(),
        pids: seal.pids.clone(),
        new_pid_ns: seal.new_pid_ns,
        new_mount_ns: seal.new_mount_ns,
        outer_pids: seal.outer_pids.clone(),
        files,
        new_ipc_ns: seal.ns.new_ipc_ns,
        new_uts_ns: seal.ns.new_uts_ns,
        remote_pages: ctx.page_client.is_some(),
        lazy_pages: ctx.opts.lazy_pages.is_some(),
    };
    write_entries(dir, ImageKind::Inventory, 0, &[inventory])?;
    crate::fault::point(8)?;
    crate::error::check_interrupt()?;
    // Would restore rebuild this? Checked now, while the tree still exists.
    let imgs = crate::restore::load(dir)?;
    crate::restore::preflight::check(&imgs, Default::default()).map_err(|e| match e {
        Error::Restore { pid, msg } => Error::NotRestorable { pid, msg },
        e => e,
    })?;
    crate::fault::point(9)?;
    // Like CRIU, images are not fsync()ed: they sit in the page cache when the tasks
    // are killed, which survives everything but a host crash.
    crate::error::check_interrupt()?;
    // (The page server keeps what it has only once the images are complete.)
    ctx.page_client.as_ref().map_or(Ok(()), |c| c.bye())?;
    work.as_mut().ok_or_else(|| Error::io(&ctx.work, std::io::Error::other("no working directory")))?.commit()?;
    crate::fault::point(12)
}

fn collect(tree: &mut tree::FrozenTree, ctx: &mut DumpCtx) -> Result<Seal> {
    let root = ctx.opts.pid;
    for p in &tree.procs {
        for t in &p.threads {
            let tid = t.pid.as_raw();
            ctx.tids.push((tid, if tree.new_pid_ns { crate::procinfo::innermost_pid(tid).unwrap_or(tid) } else { tid }));
        }
        ctx.tids.push((p.pid, p.vpid));
    }
    // Refuse what cannot be restored before any parasite enters any task (the tree
    // is frozen, so what is read here stays true for the dump itself).
    let live: Vec<task::precheck::Proc> = tree
        .procs
        .iter()
        .filter(|p| p.zombie.is_none())
        .map(|p| task::precheck::Proc { pid: p.pid, tids: p.threads.iter().map(|t| t.pid.as_raw()).collect() })
        .collect();
    let root_mnt = tree.new_mount_ns.then(|| std::fs::read_link(format!("/proc/{root}/ns/mnt")).ok()).flatten();
    let mut tree_ns = crate::ipc::tree_namespaces(root);
    if ctx.own_netns {
        // Every process of the tree in the root's network namespace, none in crtool's.
        let link = |p: i32| std::fs::read_link(format!("/proc/{p}/ns/net")).ok();
        if let Some(p) = tree.procs.iter().filter(|p| p.zombie.is_none()).find(|p| link(p.pid) != link(root)) {
            return Err(Error::Unsupported { pid: p.pid, fd: None, what: "it is in another network namespace than the tree's root".into(), hint: Some("all processes of the tree must share one network namespace") });
        }
        if let Some(l) = link(root) {
            tree_ns.push(("net", l));
        }
        let pids: BTreeSet<i32> = tree.procs.iter().map(|p| p.pid).collect();
        if ctx.netns_external.is_some() {
            // The caller's namespace: others may use it.
        } else if let Some(m) = crate::net::bind_mounted(root) {
            return Err(Error::Unsupported { pid: root, fd: None, what: format!("its network namespace is also held by the bind mount {} (ip netns?), outside the dumped tree", m.display()), hint: Some("dump with --external net[INO]:KEY to keep the caller's namespace and join it at restore") });
        } else if let Some(o) = crate::net::outside_user(root, &pids) {
            let comm = std::fs::read_to_string(format!("/proc/{o}/comm")).unwrap_or_default();
            return Err(Error::Unsupported { pid: root, fd: None, what: format!("its network namespace is also used by pid {o} ({}), outside the dumped tree", comm.trim()), hint: Some("dump the tree of every process in the namespace, or keep the namespace as the caller's with --external net[INO]:KEY") });
        }
    }
    crate::par::map(&live, crate::par::width(), |p| task::precheck::check_process(p, root_mnt.as_deref(), &tree_ns))?;
    task::precheck::check_sharing(&live)?;
    if !ctx.opts.file_locks {
        task::precheck::check_locks(&live.iter().map(|p| p.pid).collect::<Vec<_>>())?;
    }
    crate::fault::point(2)?;
    ctx.parents = tree.procs.iter().map(|p| p.ppid).collect();
    let tracked: Vec<(i32, bool)> = tree.procs.iter().filter(|p| p.zombie.is_none()).map(|p| (p.pid, ctx.tracked.iter().any(|(_, (outer, _))| *outer == p.pid))).collect();
    let surveys = crate::par::map(&tracked, crate::par::width(), |&(pid, tracked)| process::Survey::take(pid, ctx.opts.file_locks, tracked))?;
    ctx.files.ptys.masters = surveys.iter().flat_map(|s| s.pty_masters()).collect();
    let mut surveys = surveys.into_iter();
    let vpids: Vec<i32> = tree.procs.iter().map(|p| p.vpid).collect();
    // The init of a new PID namespace sees an outside session as 0 and keeps seeing
    // it so when it inherits crtool's at restore.
    let outside_ok = ctx.opts.shell_job || tree.new_pid_ns;
    let mut entries = Vec::new();
    // Processes whose memory is being copied (see process::Started), at most
    // `width` at once.
    let width = memory_threads(ctx);
    let mut started: std::collections::VecDeque<process::Started> = Default::default();
    for p in tree.procs.iter_mut() {
        let ids = process::group_and_session(p.pid, &vpids)?;
        let outside = |what: &str, id: i32| Error::Unsupported {
            pid: p.pid,
            fd: None,
            what: format!("its {what} {id} belongs to a process outside the dumped tree"),
            hint: Some(if p.pid == root { "start it with setsid, or use --shell-job" } else { "dump from the session leader, or use --shell-job" }),
        };
        // 0 = outside the tree (shell job, or above a new PID namespace): the restored
        // task inherits crtool's. A group whose leader exited keeps its id (restore
        // recreates it with a short-lived helper); a session whose leader exited
        // cannot be recreated.
        let vpgid = match ids.pgid {
            process::Owner::Outside(id) if !outside_ok => return Err(outside("process group", id)),
            process::Owner::Outside(_) => 0,
            process::Owner::Member(v) | process::Owner::Gone(v) => v,
        };
        let vsid = match ids.sid {
            process::Owner::Outside(id) if !outside_ok => return Err(outside("session", id)),
            process::Owner::Outside(_) => 0,
            process::Owner::Member(v) => v,
            process::Owner::Gone(v) => {
                return Err(Error::Unsupported { pid: p.pid, fd: None, what: format!("its session leader {v} has exited"), hint: Some("orphaned sessions are not supported yet") });
            }
        };
        let stat = process::Stat::read(p.pid)?;
        let exit_signal = stat.field(38) as i32;
        // A controlling terminal comes back only with a session from outside the tree
        // (--shell-job: the restored task joins crtool's session and terminal).
        let tty = stat.field(7);
        let own_pty = crate::files::tty::ctty_index(tty).is_some_and(|i| ctx.files.ptys.masters.contains(&i));
        if tty != 0 && vsid != 0 && p.zombie.is_none() && !own_pty {
            return Err(Error::Unsupported { pid: p.pid, fd: None, what: format!("its session has a controlling terminal (tty {}:{})", (tty >> 8) & 0xfff, tty & 0xff), hint: Some("a terminal whose master is outside the tree is supported only as a shell job's (--shell-job)") });
        }
        if let Some(status) = p.zombie {
            let comm = std::fs::read_to_string(format!("/proc/{}/comm", p.pid)).unwrap_or_default().trim_end_matches('\n').to_string();
            let id = |key| crate::procinfo::ids(p.pid, key).unwrap_or_default().into_iter().map(|v| v as u32).collect();
            entries.push(pb::PstreeEntry { pid: p.vpid as u32, ppid: p.ppid as u32, pgid: vpgid as u32, sid: vsid as u32, threads: vec![], zombie: true, exit_status: status, comm, uids: id("Uid"), gids: id("Gid"), exit_signal });
            continue;
        }
        crate::error::check_interrupt()?;
        let survey = surveys.next().ok_or(Error::NoProcess(p.pid))?;
        ctx.stats.processes += 1;
        ctx.stats.threads += p.threads.len();
        let threads = p.threads.iter().map(|t| ctx.vtid(t.pid.as_raw()) as u32).collect();
        entries.push(pb::PstreeEntry { pid: p.vpid as u32, ppid: p.ppid as u32, pgid: vpgid as u32, sid: vsid as u32, threads, zombie: false, exit_status: 0, comm: String::new(), uids: vec![], gids: vec![], exit_signal });
        // The parent's memory is complete first: its page frames tell which pages
        // this process still shares with it.
        while started.len() >= width || started.iter().any(|s| s.vpid() == p.ppid) {
            let Some(s) = started.pop_front() else { break };
            process::finish(s, ctx)?;
        }
        started.push_back(process::start(p, survey, ctx)?);
        log::debug!("pid {}: copying its memory; {} processes' memory being copied", started.back().map_or(0, |s| s.pid()), started.len());
    }
    while let Some(s) = started.pop_front() {
        process::finish(s, ctx)?;
    }
    drop(started);

    ctx.files.finish_epolls()?;
    // Unix sockets: how they connect, and their queues (files passed in them join
    // the file table).
    let vpids: std::collections::HashMap<i32, i32> = ctx.tids.iter().copied().collect();
    ctx.files.check_outside_sockets(&tree.procs.iter().map(|p| p.pid).collect())?;
    let sockets = ctx.files.finish_sockets(&|outer| vpids.get(&outer).copied(), ctx.opts.ext_unix_sk, tree.new_pid_ns)?;
    ctx.files.ptys.check_outside(&tree.procs.iter().map(|p| p.pid).collect())?;
    let ptys = ctx.files.ptys.finish(&|outer| vpids.get(&outer).copied())?;
    let inet = ctx.files.inet.finish()?;
    check_terminal_sessions(&ptys, &entries, root)?;
    if ctx.opts.file_locks {
        let pids: Vec<i32> = tree.procs.iter().map(|p| p.pid).collect();
        crate::files::locks::check_all_accounted(&pids, &ctx.files.locks_taken)?;
    }
    // Pipes and FIFOs shared with processes outside the tree.
    let tree_pids: BTreeSet<i32> = tree.procs.iter().map(|p| p.pid).collect();
    let pipes_external: Vec<String> = ctx.opts.external.iter().filter(|x| !x.starts_with("net[")).cloned().collect();
    ctx.files.check_outside_peers(&tree_pids, &pipes_external)?;
    let dir = &ctx.work.clone();
    let pids: Vec<u32> = tree.procs.iter().filter(|p| p.zombie.is_none()).map(|p| p.vpid as u32).collect();
    let outer_pids = tree.procs.iter().filter(|p| p.zombie.is_none()).map(|p| p.pid as u32).collect();
    ctx.manifest.push(write_entries(dir, ImageKind::Pstree, 0, &entries)?);
    ctx.manifest.push(write_entries(dir, ImageKind::Files, 0, &ctx.files.entries)?);
    let mut pipes = ctx.files.pipes.clone();
    pipes.sort_by_key(|p| p.pipe_id);
    ctx.manifest.push(write_entries(dir, ImageKind::Pipes, 0, &pipes)?);
    ctx.manifest.push(write_entries(dir, ImageKind::UnixSk, 0, &sockets)?);
    let memfds: Vec<pb::MemfdInode> = ctx.files.memfds.inodes.values().cloned().collect();
    ctx.manifest.push(write_entries(dir, ImageKind::Memfd, 0, &memfds)?);
    ctx.manifest.push(write_entries(dir, ImageKind::MemfdPages, 0, &ctx.files.memfds.chunks)?);
    let ghosts: Vec<pb::GhostFile> = ctx.files.ghosts.files.values().cloned().collect();
    ctx.manifest.push(write_entries(dir, ImageKind::Ghost, 0, &ghosts)?);
    ctx.manifest.push(write_entries(dir, ImageKind::GhostData, 0, &ctx.files.ghosts.chunks)?);
    ctx.manifest.push(write_entries(dir, ImageKind::SkQueues, 0, &ctx.files.packets)?);
    ctx.manifest.push(write_entries(dir, ImageKind::Tty, 0, &ptys)?);
    ctx.manifest.push(write_entries(dir, ImageKind::InetSk, 0, &inet)?);
    let netlink: Vec<pb::NetlinkSocket> = ctx.files.netlink.values().cloned().collect();
    ctx.manifest.push(write_entries(dir, ImageKind::NetlinkSk, 0, &netlink)?);
    let packet: Vec<pb::PacketSocket> = ctx.files.packet.values().cloned().collect();
    ctx.manifest.push(write_entries(dir, ImageKind::PacketSk, 0, &packet)?);
    let ns = crate::ipc::dump(dir, root, &pids, &mut ctx.manifest)?;
    if !ctx.own_netns {
        ctx.files.check_tun(&[], root)?;
    }
    if ctx.own_netns {
        // (crtool's thread is in the tree's namespace: see `dump`.)
        let netns = match &ctx.netns_external {
            Some((_, key)) => pb::NetNamespace { external_key: key.clone(), ..Default::default() },
            None => crate::net::dump(root)?,
        };
        ctx.files.check_tun(&netns.links, root)?;
        ctx.manifest.push(write_entries(dir, ImageKind::NetNs, 0, &[netns])?);
    }
    Ok(Seal { root_vpid: tree.procs[0].vpid as u32, pids, outer_pids, new_pid_ns: tree.new_pid_ns, new_mount_ns: tree.new_mount_ns, ns })
}
