//! `crtool restore`: read and check images → open shared files and memory in crtool
//! → fork the tree with exact PIDs (each task forks its own children, see `child`) →
//! every task rebuilds itself and jumps into the restorer → `supervise` catches every
//! thread at its final trap, lets them all through rt_sigreturn, removes the restorer
//! areas, and lets the tree run.

mod child;
pub mod pidns;
pub mod preflight;
mod supervise;

use crate::error::{Error, Result};
use crate::files::Parked;
use crate::mem::shmem::ShmemObjects;
use crate::sys::process::{Forked, fork_with_pids};
use crate::sys::{cpu, mm};
use crate::task;
use images_format::{pb, read_entries, read_one, ImageKind};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct RestoreOpts {
    pub dir: PathBuf,
    /// Leave the restored tree running and exit (CRIU's -d).
    pub detach: bool,
    pub checks: preflight::Checks,
    /// Where to write the restored root's PID (as crtool sees it) once it runs.
    pub pidfile: Option<PathBuf>,
    /// Restore into a new PID namespace under an init of crtool's (--pidns).
    pub pidns: bool,
    /// Pipes the caller hands over for ones that were external at dump
    /// (--inherit-fd fd[N]:pipe:[ID]): pipe id → crtool's fd N.
    pub inherit: std::collections::BTreeMap<u64, i32>,
    /// Sockets the caller hands over for stream sockets whose peer was outside the
    /// tree (--inherit-fd fd[N]:socket:[INO]): socket inode → crtool's fd N.
    pub inherit_socks: std::collections::BTreeMap<u64, i32>,
    /// Outside links of the tree's network namespace's links: veth peers to make
    /// (--veth-pair IN=OUT) and lower links of macvlan ones (--external
    /// macvlan[IN]:OUT): inside name → outside name.
    pub veth: std::collections::BTreeMap<String, String>,
    /// Namespaces handed over for external ones (--inherit-fd fd[N]:KEY): key →
    /// crtool's fd N.
    pub inherit_ns: std::collections::BTreeMap<String, i32>,
    /// Leave private anonymous memory to the lazy-pages daemon (--lazy-pages).
    pub lazy_pages: bool,
}

pub enum Outcome {
    Detached(i32),
    /// The restored root ran to completion: its exit code, or 128 + signal.
    Exited(i32),
}

/// What the images say about one live (non-zombie) task.
pub struct TaskImages {
    pub core: pb::TaskCore,
    pub mm: pb::Mm,
    pub pagemap: Vec<pb::PagemapEntry>,
    pub fds: Vec<pb::FdEntry>,
}

pub struct ProcImages {
    pub tree: pb::PstreeEntry,
    /// None for a zombie.
    pub task: Option<TaskImages>,
}

pub struct TreeImages {
    pub inv: pb::Inventory,
    /// Parents before children.
    pub procs: Vec<ProcImages>,
    pub files: Vec<pb::FileEntry>,
    pub pipes: Vec<pb::PipeData>,
    pub sockets: Vec<pb::UnixSocket>,
    pub packets: Vec<pb::SkPacket>,
    pub memfds: Vec<pb::MemfdInode>,
    pub memfd_chunks: Vec<pb::MemfdChunk>,
    pub ghosts: Vec<pb::GhostFile>,
    pub ghost_chunks: Vec<pb::GhostChunk>,
    /// Pseudo-terminal pairs (tty.img), in index order.
    pub ptys: Vec<pb::PtyPair>,
    /// Inet sockets (inetsk.img).
    pub inet: Vec<pb::InetSocket>,
    /// Netlink sockets (netlinksk.img).
    pub netlink: Vec<pb::NetlinkSocket>,
    /// Packet sockets (packetsk.img).
    pub packet: Vec<pb::PacketSocket>,
    /// The tree's own network namespace (netns.img), if it had one.
    pub netns: Option<pb::NetNamespace>,
}

impl TreeImages {
    pub fn root(&self) -> &ProcImages {
        &self.procs[0]
    }
    /// Children of `pid`, process-group leaders first so that members can join them.
    pub fn children(&self, pid: u32) -> Vec<usize> {
        let mut c: Vec<usize> = (0..self.procs.len()).filter(|&i| self.procs[i].tree.ppid == pid && self.procs[i].tree.pid != pid).collect();
        c.sort_by_key(|&i| {
            let t = &self.procs[i].tree;
            let leads = self.procs.iter().any(|p| p.tree.pgid == t.pid);
            (!leads, t.pid)
        });
        c
    }
    pub fn outer_pid(&self, pid: u32) -> Option<i32> {
        let i = self.inv.pids.iter().position(|&p| p == pid)?;
        self.inv.outer_pids.get(i).map(|&p| p as i32)
    }
}

fn bad(file: &str, msg: impl Into<String>) -> Error {
    Error::BadImage { file: file.into(), msg: msg.into() }
}

/// Refuses, before anything is created there, a directory that does not exist or
/// holds no complete dump.
pub fn check_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => crate::dump::workdir::recover(dir)?,
        Ok(_) => return Err(Error::io(dir, std::io::Error::from(std::io::ErrorKind::NotADirectory))),
        Err(e) => return Err(Error::io(dir, e)),
    }
    if !dir.join(ImageKind::Inventory.file_name(0)).exists() {
        return Err(images_format::ImageError::NoDump { dir: dir.to_path_buf() }.into());
    }
    Ok(())
}

pub fn load(dir: &Path) -> Result<TreeImages> {
    let inv: pb::Inventory = match read_one(dir, ImageKind::Inventory, 0) {
        Err(images_format::ImageError::Missing { .. }) => return Err(images_format::ImageError::NoDump { dir: dir.to_path_buf() }.into()),
        r => r?,
    };
    if inv.format_version != images_format::FORMAT_VERSION {
        return Err(bad("inventory.img", format!("format version {} (this crtool reads {})", inv.format_version, images_format::FORMAT_VERSION)));
    }
    // Every file the dump wrote, whole and unchanged, and nothing else.
    images_format::check_manifest(dir, &inv, false)?;
    let tree: Vec<pb::PstreeEntry> = read_entries(dir, ImageKind::Pstree, 0)?;
    if tree.first().map(|t| t.pid) != Some(inv.root_pid) {
        return Err(bad("pstree.img", format!("the first entry is not the root pid {}", inv.root_pid)));
    }
    let mut procs = Vec::new();
    for (i, t) in tree.into_iter().enumerate() {
        if i > 0 && !procs.iter().any(|p: &ProcImages| p.tree.pid == t.ppid) {
            return Err(bad("pstree.img", format!("pid {} comes before its parent {}", t.pid, t.ppid)));
        }
        let task = if t.zombie {
            None
        } else {
            let pid = t.pid;
            let core: pb::TaskCore = read_one(dir, ImageKind::Core, pid)?;
            if core.threads.is_empty() || core.threads.len() != t.threads.len() {
                return Err(bad(&format!("core-{pid}.img"), format!("{} threads, pstree.img says {}", core.threads.len(), t.threads.len())));
            }
            let mm: pb::Mm = read_one(dir, ImageKind::Mm, pid)?;
            crate::mem::vma::validate(pid, &mm.vmas)?;
            Some(TaskImages { core, mm, pagemap: read_entries(dir, ImageKind::Pagemap, pid)?, fds: read_entries(dir, ImageKind::Fdinfo, pid)? })
        };
        procs.push(ProcImages { tree: t, task });
    }
    let files = read_entries(dir, ImageKind::Files, 0)?;
    let pipes = if dir.join(ImageKind::Pipes.file_name(0)).exists() { read_entries(dir, ImageKind::Pipes, 0)? } else { Vec::new() };
    let optional = |k: ImageKind| dir.join(k.file_name(0)).exists();
    let sockets = if optional(ImageKind::UnixSk) { read_entries(dir, ImageKind::UnixSk, 0)? } else { Vec::new() };
    let packets = if optional(ImageKind::SkQueues) { read_entries(dir, ImageKind::SkQueues, 0)? } else { Vec::new() };
    let memfds = if optional(ImageKind::Memfd) { read_entries(dir, ImageKind::Memfd, 0)? } else { Vec::new() };
    let memfd_chunks = if optional(ImageKind::MemfdPages) { read_entries(dir, ImageKind::MemfdPages, 0)? } else { Vec::new() };
    let ghosts = if optional(ImageKind::Ghost) { read_entries(dir, ImageKind::Ghost, 0)? } else { Vec::new() };
    let ghost_chunks = if optional(ImageKind::GhostData) { read_entries(dir, ImageKind::GhostData, 0)? } else { Vec::new() };
    let ptys = if optional(ImageKind::Tty) { read_entries(dir, ImageKind::Tty, 0)? } else { Vec::new() };
    let inet = if optional(ImageKind::InetSk) { read_entries(dir, ImageKind::InetSk, 0)? } else { Vec::new() };
    let netlink = if optional(ImageKind::NetlinkSk) { read_entries(dir, ImageKind::NetlinkSk, 0)? } else { Vec::new() };
    let netns = if optional(ImageKind::NetNs) { read_entries(dir, ImageKind::NetNs, 0)?.into_iter().next() } else { None };
    let packet = if optional(ImageKind::PacketSk) { read_entries(dir, ImageKind::PacketSk, 0)? } else { Vec::new() };
    Ok(TreeImages { inv, procs, files, pipes, sockets, packets, memfds, memfd_chunks, ghosts, ghost_chunks, ptys, inet, netlink, netns, packet })
}

/// What crtool sets from outside once every task exists and before it runs: SIGIO
/// owners (they name tasks), scheduling and /proc knobs of each task.
fn from_outside(imgs: &TreeImages, parked: &mut Parked, shmem: &ShmemObjects, sup: &supervise::Supervisor) -> Result<()> {
    // Every task has its deleted files open or mapped: they go again; memfd seals
    // that would have forbidden the tasks' mappings go on.
    shmem.ghosts().remove();
    shmem.memfds().seal(true)?;
    // Queues first: with no SIGIO owner set yet, refilling them signals nobody.
    parked.finish_sockets(&imgs.packets, &|v| sup.outer_pid(v))?;
    parked.set_owners(&imgs.files, &|v| sup.outer_pid(v))?;
    for t in imgs.procs.iter().filter_map(|p| p.task.as_ref()) {
        let vpid = t.core.pid as i32;
        let missing = |v: i32| Error::Restore { pid: vpid, msg: format!("thread {v} is missing from the restored tree") };
        let pid = sup.outer_pid(vpid).ok_or_else(|| missing(vpid))?;
        let threads = t.core.threads.iter().map(|th| sup.outer_pid(th.tid as i32).map(|o| (o, th)).ok_or_else(|| missing(th.tid as i32))).collect::<Result<Vec<_>>>()?;
        task::apply_from_outside(&t.core, pid, &threads)?;
    }
    // Last: the TCP connections go live (out of repair mode, network unlocked).
    parked.finish_inet()?;
    Ok(())
}

fn holder_of(pid: i32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if rest.first() == Some(&"Z") {
        return Some(format!("zombie {pid} ({}), which waits for its parent {} to reap it", comm.trim(), rest.get(1).unwrap_or(&"?")));
    }
    Some(format!("running process {pid} ({})", comm.trim()))
}

/// Every --inherit-fd names a pipe the images hold as external.
fn check_inherited(imgs: &TreeImages, inherit: &std::collections::BTreeMap<u64, i32>) -> Result<()> {
    use images_format::pb::file_entry::Kind;
    let external: std::collections::BTreeSet<u64> = imgs
        .files
        .iter()
        .filter_map(|f| match &f.kind {
            Some(Kind::Pipe(p)) if p.external => Some(p.pipe_id),
            _ => None,
        })
        .collect();
    for (id, fd) in inherit {
        if !external.contains(id) {
            let known = if external.is_empty() { "none".to_string() } else { external.iter().map(|i| format!("pipe:[{i}]")).collect::<Vec<_>>().join(", ") };
            return Err(Error::Restore {
                pid: imgs.inv.root_pid as i32,
                msg: format!("--inherit-fd fd[{fd}]:pipe:[{id}]: the images have no external pipe:[{id}] (their external pipes: {known})"),
            });
        }
    }
    Ok(())
}

pub fn restore(opts: &RestoreOpts) -> Result<Outcome> {
    let mut imgs = load(&opts.dir)?;
    let root_pid = imgs.inv.root_pid as i32;
    preflight::check(&imgs, opts.checks)?;
    check_inherited(&imgs, &opts.inherit)?;
    crate::fault::point(101)?;
    if imgs.inv.lazy_pages && !opts.lazy_pages {
        return Err(Error::Restore {
            pid: root_pid,
            msg: "the memory of this dump stayed with the dumped tree (dump --lazy-pages): restore with --lazy-pages, with `crtool lazy-pages -D DIR --page-server --address A --port P` of that dump running".into(),
        });
    }
    // The daemon learns how the restore ends through this (a drop: it failed).
    let lazy = if opts.lazy_pages { Some(crate::lazy::Control::connect(&opts.dir)?) } else { None };
    if opts.pidns && imgs.inv.new_pid_ns {
        return Err(Error::Restore { pid: root_pid, msg: "--pidns: the dumped tree had a PID namespace of its own, which restore creates anyway".into() });
    }
    if std::process::id() == 1 && opts.detach && !opts.pidns && !imgs.inv.new_pid_ns {
        return Err(Error::Restore {
            pid: root_pid,
            msg: "crtool is the init of its PID namespace (started by unshare -pf?): a detached tree would die when crtool exits; restore without -d, or with --pidns".into(),
        });
    }
    for p in &imgs.procs {
        if !imgs.inv.new_pid_ns && !opts.pidns
            && let Some(holder) = holder_of(p.tree.pid as i32) {
                return Err(Error::PidTaken { pid: p.tree.pid as i32, holder });
            }
    }
    let vdso_syscall = mm::vdso_syscall_offset().ok_or_else(|| Error::Restore { pid: root_pid, msg: "crtool has no vdso".into() })?;
    let geometry = cpu::sigframe_xstate();
    if geometry.xstate_size == 0 {
        return Err(Error::Restore { pid: root_pid, msg: "cannot learn the signal frame's XSAVE size".into() });
    }

    // The tree's network namespace first: the sockets crtool makes and the tree it
    // forks are in it (crtool's thread stays there until the end).
    enum Netns {
        Made(#[allow(dead_code)] crate::net::Made),
        Joined(#[allow(dead_code)] crate::net::Entered),
    }
    let _netns = match &imgs.netns {
        Some(ns) if !ns.external_key.is_empty() => {
            let fd = opts.inherit_ns.get(&ns.external_key).ok_or_else(|| Error::Restore {
                pid: root_pid,
                msg: format!("the tree's network namespace was the caller's (--external net[...]:{0}): hand one over with --inherit-fd fd[N]:{0}", ns.external_key),
            })?;
            Some(Netns::Joined(crate::net::join(*fd)?))
        }
        Some(ns) => Some(Netns::Made(crate::net::create(ns, &opts.veth)?)),
        None => None,
    };
    // Parked fds sit above every target fd: make room for them.
    crate::sys::process::raise_nofile();
    let max_fd = imgs.procs.iter().filter_map(|p| p.task.as_ref()).flat_map(|t| t.fds.iter().map(|f| f.fd)).max().unwrap_or(2);
    // For each file id: how many tasks hold it, and the first of them.
    let mut users: std::collections::BTreeMap<u32, (usize, i32)> = Default::default();
    for t in imgs.procs.iter().filter_map(|p| p.task.as_ref()) {
        let ids: std::collections::BTreeSet<u32> = t.fds.iter().map(|f| f.file_id).collect();
        for id in ids {
            users.entry(id).or_insert((0, t.core.pid as i32)).0 += 1;
        }
    }
    // Removed working directories, made again for the tasks to enter.
    let mut ghost_dirs = {
        let mut cores: Vec<&mut pb::TaskCore> = imgs.procs.iter_mut().filter_map(|p| p.task.as_mut()).map(|t| &mut t.core).collect();
        crate::files::ghost::GhostDirs::create(&mut cores)?
    };
    let memfds = crate::files::memfd::MemfdObjects::create(&imgs.memfds, &imgs.memfd_chunks)?;
    let ghosts = crate::files::ghost::Ghosts::create(&imgs.ghosts, &imgs.ghost_chunks)?;
    let ptys = crate::files::tty::Ptys::create(&imgs.ptys, &imgs.files)?;
    let mut parked = Parked::open_all(&imgs.files, &imgs.pipes, &imgs.sockets, &imgs.packets, (max_fd + 1).max(3), &users, opts.inherit.clone(), &opts.inherit_socks, !imgs.inv.new_pid_ns && !opts.pidns, &memfds, &ghosts, &ptys, &imgs.ptys, &imgs.inet, &imgs.netlink, &imgs.packet)?;
    drop(ptys);
    let tasks: Vec<(u32, &pb::Mm, &[pb::PagemapEntry])> =
        imgs.procs.iter().filter_map(|p| p.task.as_ref()).map(|t| (t.core.pid, &t.mm, t.pagemap.as_slice())).collect();
    let shmem = ShmemObjects::create(&opts.dir, &tasks)?.with_memfds(memfds).with_ghosts(ghosts);
    let mut ipc = crate::ipc::IpcRestore::prepare(&opts.dir, &imgs.inv, &tasks.iter().map(|t| (t.0, t.1)).collect::<Vec<_>>())?;
    crate::fault::point(102)?;

    let groups = child::LeaderlessGroup::plan(&imgs, parked.max_fd() + 1)?;
    let (status_r, status_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
    let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
    let ctx = child::Ctx {
        dir: &opts.dir,
        imgs: &imgs,
        parked: &parked,
        shmem: &shmem,
        status_w: status_w.as_raw_fd(),
        go_r: go_r.as_raw_fd(),
        geometry,
        cpu_tick_usec: crate::sys::process::cpu_itimer_tick_usec(),
        groups: &groups,
        ipc: &ipc,
        lazy: lazy.is_some(),
        own_pidns: imgs.inv.new_pid_ns || opts.pidns,
    };
    log::info!("pid {root_pid}: forking the tree ({} processes)", imgs.procs.len());
    let mut init = None;
    let forked = if opts.pidns {
        match pidns::fork_root(root_pid)? {
            pidns::Root::Child => Ok(Forked::Child),
            pidns::Root::Parent { init: i, root } => {
                init = Some(i);
                Ok(Forked::Parent(nix::unistd::Pid::from_raw(root)))
            }
        }
    } else if imgs.inv.new_pid_ns {
        let flags = libc::CLONE_NEWPID as u64 | if imgs.inv.new_mount_ns { libc::CLONE_NEWNS as u64 } else { 0 };
        let outer = imgs.outer_pid(root_pid as u32);
        let with_outer = outer.and_then(|o| fork_with_pids(&[1, o], flags).ok());
        with_outer.map_or_else(|| fork_with_pids(&[1], flags), Ok)
    } else {
        // A detached root with a parent-death signal would receive it when crtool
        // exits: it becomes a child of crtool's parent instead.
        let pdeath = imgs.root().task.as_ref().is_some_and(|t| t.core.threads.iter().any(|th| th.pdeath_signal != 0));
        if opts.detach && pdeath {
            // (clone3 takes no exit signal with CLONE_PARENT: crtool's is inherited.)
            crate::sys::process::fork_with_pids_signal(&[root_pid], libc::CLONE_PARENT as u64, 0)
        } else {
            fork_with_pids(&[root_pid], 0)
        }
    };
    let forked = forked.map_err(|e| match e {
        nix::errno::Errno::EEXIST => Error::PidTaken { pid: root_pid, holder: holder_of(root_pid).unwrap_or_else(|| "another process".into()) },
        e => Error::Restore { pid: root_pid, msg: format!("clone3 with set_tid: {e}") },
    })?;
    match forked {
        Forked::Child => child::run(&ctx, 0, None),
        Forked::Parent(root) => {
            drop(status_w);
            drop(go_r);
            let expected = supervise::Expected::from(&imgs);
            let sup = supervise::Supervisor::new(root, status_r, vdso_syscall, &imgs);
            let done = sup.run(&go_w, expected).and_then(|mut sup| match from_outside(&imgs, &mut parked, &shmem, &sup).and_then(|()| crate::fault::point(106)) {
                Ok(()) => Ok(sup),
                Err(e) => {
                    sup.kill_all();
                    Err(e)
                }
            });
            if let (Err(_), Some(i)) = (&done, init) {
                // The namespace goes with its init.
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(i), nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(i), None);
            }
            // The pidfile before the socket files are kept: a failure to write it
            // kills the tree, and they go with it.
            let done = done.and_then(|mut sup| match &opts.pidfile {
                Some(f) => match std::fs::write(f, format!("{}\n", sup.outer_pid(root_pid).unwrap_or(root_pid))) {
                    Ok(()) => Ok(sup),
                    Err(e) => {
                        sup.kill_all();
                        Err(Error::io(f, e))
                    }
                },
                None => Ok(sup),
            });
            if let Some(l) = lazy {
                l.finish(done.as_ref().ok().map(|s| init.unwrap_or_else(|| s.outer_pid(root_pid).unwrap_or(root_pid))));
            }
            // Every task is in its working directory by now.
            ghost_dirs.remove();
            parked.restored = done.is_ok();
            if done.is_ok() {
                crate::files::ghost::remove_link_remaps(&imgs.ghosts);
            }
            drop(parked); // the tasks hold their own fds now (or are dead)
            for g in &groups {
                g.close();
            }
            let mut sup = done.map_err(|e| crate::sys::signals::interrupted().map_or(e, |sig| Error::Interrupted { sig }))?;
            log::info!("pid {root_pid}: tree restored and running");
            ipc.keep();
            if opts.detach {
                let outer = sup.outer_pid(root_pid).unwrap_or(root_pid);
                sup.detach_all()?;
                return Ok(Outcome::Detached(outer));
            }
            // With --pidns the root is the init's child: the init ends with its status.
            let child = init.unwrap_or(sup.root().as_raw());
            let code = sup.detach_and_wait(child)?;
            Ok(Outcome::Exited(code))
        }
    }
}
