//! A restoring task: a fork of crtool that already has its PID. It joins its session
//! and group, forks its own children (so that they get the right parent), then sets
//! up files and memory, prepares the restorer's arguments and jumps. Nothing here may
//! log after crtool's fds are closed (fd numbers now belong to the task).

use super::{TaskImages, TreeImages};
use crate::error::{Error, Result};
use crate::files::Parked;
use crate::mem::restore::{Slot, find_area, premap, premap_size};
use crate::mem::shmem::ShmemObjects;
use crate::sys::abi::{self, PrctlMmMap, RestorerArgs, ThreadArgs, VmaMove};
use crate::sys::blobs;
use crate::sys::cpu::SigFrameXstate;
use crate::sys::mm::{self, Area, PAGE};
use crate::sys::process::{self, Forked, fork_with_pids, fork_with_pids_signal};
use crate::sys::fd;
use crate::{task, task::timers};
use images_format::pb;
use std::convert::Infallible;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;

/// What every restoring task inherits from crtool.
pub struct Ctx<'a> {
    pub dir: &'a Path,
    pub imgs: &'a TreeImages,
    pub parked: &'a Parked,
    pub shmem: &'a ShmemObjects,
    pub status_w: RawFd,
    pub go_r: RawFd,
    pub geometry: SigFrameXstate,
    pub cpu_tick_usec: u64,
    pub groups: &'a [LeaderlessGroup],
    pub ipc: &'a crate::ipc::IpcRestore,
    /// restore --lazy-pages: private anonymous memory is left to the daemon.
    pub lazy: bool,
    /// The tree gets a PID namespace of its own (the dumped one had, or --pidns).
    pub own_pidns: bool,
}

/// A process group whose leader had exited: restore recreates it with a helper
/// process that has the leader's PID, lives until every member joined, and is reaped
/// by the process that made it (the group's session leader, or the root).
pub struct LeaderlessGroup {
    pgid: i32,
    /// The tree process that creates the helper.
    creator: u32,
    members: usize,
    /// Members write a byte here once they joined; the helper waits for all.
    joined_r: RawFd,
    joined_w: RawFd,
}

impl LeaderlessGroup {
    pub fn plan(imgs: &TreeImages, park_at: RawFd) -> Result<Vec<LeaderlessGroup>> {
        let mut out: Vec<LeaderlessGroup> = Vec::new();
        let pids: Vec<u32> = imgs.procs.iter().map(|p| p.tree.pid).collect();
        for p in &imgs.procs {
            let t = &p.tree;
            if t.pgid == 0 || pids.contains(&t.pgid) {
                continue;
            }
            if let Some(g) = out.iter_mut().find(|g| g.pgid == t.pgid as i32) {
                g.members += 1;
                continue;
            }
            let creator = if pids.contains(&t.sid) { t.sid } else { imgs.inv.root_pid };
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
            let joined_r = fd::dup_above(r.as_raw_fd(), park_at).map_err(|e| Error::Reported(format!("pipe for group {}: {e}", t.pgid)))?;
            let joined_w = fd::dup_above(w.as_raw_fd(), park_at).map_err(|e| Error::Reported(format!("pipe for group {}: {e}", t.pgid)))?;
            out.push(LeaderlessGroup { pgid: t.pgid as i32, creator, members: 1, joined_r, joined_w });
        }
        Ok(out)
    }

    pub fn close(&self) {
        fd::close_raw(self.joined_r);
        fd::close_raw(self.joined_w);
    }

}

/// Runs process `idx` of the tree in this (just forked) process. Never returns.
/// `inherited`: the parent's premapped memory, which this process inherited at fork.
pub fn run(ctx: &Ctx, idx: usize, inherited: Option<&[Slot]>) -> ! {
    let Err(e) = setup(ctx, idx, inherited);
    report_and_exit(ctx.status_w, &e)
}

/// Reports through the status pipe (one write, atomic below PIPE_BUF) and ends this
/// forked copy without running crtool's destructors.
fn report_and_exit(status: RawFd, e: &Error) -> ! {
    let msg = format!("M{e}");
    fd::write_raw(status, &msg.as_bytes()[..msg.len().min(4000)]);
    process::exit_now(1)
}

fn setup(ctx: &Ctx, idx: usize, inherited: Option<&[Slot]>) -> Result<Infallible> {
    let imgs = ctx.imgs;
    let me = &imgs.procs[idx];
    let t = &me.tree;
    let pid = t.pid as i32;
    let fail = |msg: String| Error::Restore { pid, msg };
    if idx == 0 {
        let mut go = [0u8; 1];
        if fd::read_raw(ctx.go_r, &mut go).ok() != Some(1) {
            return Err(fail("crtool went away".into()));
        }
        if imgs.inv.new_mount_ns {
            remount_proc().map_err(|e| fail(format!("mounting /proc for the new PID namespace: {e}")))?;
        }
        ctx.ipc.enter_namespaces()?;
    }
    // Session and process group; children inherit them, so before forking them.
    // A session or group of 0 lay outside the dumped tree: it is inherited.
    if t.sid as i32 == pid {
        nix::unistd::setsid().map_err(|e| fail(format!("setsid: {e}")))?;
        // Its controlling terminal, before any member is forked (they inherit it).
        if let Some(p) = imgs.ptys.iter().find(|p| p.session == pid) {
            let fd = ctx.parked.ctty_fd(p.index).ok_or_else(|| fail(format!("no slave of /dev/pts/{} was made", p.index)))?;
            crate::sys::tty::set_controlling(fd::borrow(fd)).map_err(|e| fail(format!("TIOCSCTTY on /dev/pts/{}: {e}", p.index)))?;
        }
    }
    // Helpers standing in for exited group leaders, made before any member exists.
    let mut helpers = Vec::new();
    for g in ctx.groups.iter().filter(|g| g.creator == t.pid) {
        let forked = fork_with_pids(&[g.pgid], libc::CLONE_UNTRACED as u64).map_err(|e| fail(format!("helper for process group {}: {e}", g.pgid)))?;
        match forked {
            Forked::Child => {
                let _ = nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0));
                fd::close_raw(g.joined_w);
                let mut b = [0u8; 1];
                let mut n = 0;
                while n < g.members && fd::read_raw(g.joined_r, &mut b).ok() == Some(1) {
                    n += 1;
                }
                process::exit_now(0);
            }
            Forked::Parent(h) => {
                // Also from this side (as shells do), so that the group exists before
                // any member is forked, whichever process runs first.
                let _ = nix::unistd::setpgid(h, h);
                helpers.push(h);
            }
        }
    }
    let own_pgid = nix::unistd::getpgrp().as_raw();
    let leaderless = ctx.groups.iter().find(|g| g.pgid == t.pgid as i32);
    if t.pgid != 0 && t.pgid as i32 != own_pgid && (t.pgid as i32 == pid || leaderless.is_some() || imgs.procs.iter().any(|p| p.tree.pid == t.pgid)) {
        let target = nix::unistd::Pid::from_raw(if t.pgid as i32 == pid { 0 } else { t.pgid as i32 });
        nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), target).map_err(|e| fail(format!("setpgid({}): {e}", t.pgid)))?;
    }
    if let Some(g) = leaderless {
        fd::write_raw(g.joined_w, b"j");
    }
    // The foreground group of the session's terminal, set by its members once the
    // group exists (from a background group: SIGTTOU blocked meanwhile).
    if let Some(p) = imgs.ptys.iter().find(|p| p.session != 0 && p.session as u32 == t.sid && p.fg_pgrp as u32 == t.pgid && p.fg_pgrp != p.session) {
        let fd = ctx.parked.ctty_fd(p.index).ok_or_else(|| fail(format!("no slave of /dev/pts/{} was made", p.index)))?;
        crate::sys::signals::with_blocked(libc::SIGTTOU, || crate::sys::tty::set_foreground(fd::borrow(fd), p.fg_pgrp))
            .map_err(|e| fail(format!("TIOCSPGRP {} on /dev/pts/{}: {e}", p.fg_pgrp, p.index)))?;
    }

    if me.task.is_none() {
        // A zombie: end the way the original did and stay unreaped.
        process::set_comm(&t.comm);
        if let (&[r, e, s, _], &[gr, ge, gs, _]) = (t.uids.as_slice(), t.gids.as_slice()) {
            process::set_ids([r, e, s], [gr, ge, gs]).map_err(|e| fail(format!("zombie credentials: {e}")))?;
        }
        process::exit_like(t.exit_status);
    }

    // Memory first: children forked after this inherit it copy-on-write, and take
    // over the parts they still shared with this process when it was dumped.
    let task = me.task.as_ref().ok_or_else(|| fail("no task images".into()))?;
    let pm = premap_task(ctx, idx, pid, task, inherited)?;
    let mut zombies = Vec::new();
    for c in imgs.children(t.pid) {
        let cpid = imgs.procs[c].tree.pid as i32;
        let outer = if imgs.inv.new_pid_ns { imgs.outer_pid(cpid as u32) } else { None };
        // A zombie-to-be is not traced: it only exits, and crtool need not see that.
        let flags = if imgs.procs[c].task.is_none() { libc::CLONE_UNTRACED as u64 } else { 0 };
        let sig = imgs.procs[c].tree.exit_signal;
        let forked = outer
            .and_then(|o| fork_with_pids_signal(&[cpid, o], flags, sig).ok())
            .map_or_else(|| fork_with_pids_signal(&[cpid], flags, sig), Ok)
            .map_err(|e| fail(format!("forking child {cpid}: {e}")))?;
        match forked {
            Forked::Child => run(ctx, c, Some(&pm.slots)),
            Forked::Parent(z) if imgs.procs[c].task.is_none() => zombies.push(z),
            Forked::Parent(_) => {}
        }
    }
    // Let zombies die now, while this task's signals are unblocked and its SIGCHLD
    // disposition is still crtool's default: the SIGCHLD they raise is discarded
    // here instead of reaching the task's own handler after the restore.
    for z in zombies {
        process::wait_exited_nowait(z);
    }
    // Our helpers exit once their groups are populated; reap them before we run on.
    for h in helpers {
        let _ = nix::sys::wait::waitpid(h, None);
    }
    task::apply_after_fork(&task.core);
    setup_task(ctx, pid, task, pm)
}

/// A private mount namespace with a /proc of the new PID namespace (what
/// `unshare --mount-proc` gave the original).
pub(crate) fn remount_proc() -> nix::Result<()> {
    use nix::mount::{MsFlags, mount};
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)?;
    mount(Some("proc"), "/proc", Some("proc"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, None::<&str>)
}

/// Our own special mappings ([vdso], [vvar], [vvar_vclock]) by name.
fn own_specials() -> Result<Vec<(String, u64, u64)>> {
    let maps = crate::procinfo::maps("self").map_err(|e| Error::io("/proc/self/maps", e))?;
    Ok(maps.into_iter().filter(|(_, _, n)| matches!(n.as_str(), "[vdso]" | "[vvar]" | "[vvar_vclock]")).map(|(s, e, n)| (n, s, e)).collect())
}

fn special_name(k: pb::VmaKind) -> Option<&'static str> {
    match k {
        pb::VmaKind::VmaVdso => Some("[vdso]"),
        pb::VmaKind::VmaVvar => Some("[vvar]"),
        pb::VmaKind::VmaVvarVclock => Some("[vvar_vclock]"),
        _ => None,
    }
}

/// Byte layout of the restorer region that follows the premapped VMAs.
struct Region {
    args: u64,
    threads: u64,
    vmas: u64,
    protects: u64,
    lazy: u64,
    auxv: u64,
    siginfo: u64,
    timers: u64,
    frames: Vec<u64>,
    spare: u64,
    stacks: u64,
    scratch: u64,
    len: u64,
}

const THREAD_STACK: u64 = 64 * 1024;

fn layout(task: &TaskImages, nr_vmas: usize, nr_protects: usize, frame_sizes: &[u64], scratch_len: u64) -> Region {
    let core = &task.core;
    let mut at = blobs::RESTORER_IMAGE.len() as u64;
    let mut take = |len: u64, align: u64| {
        let o = at.next_multiple_of(align);
        at = o + len;
        o
    };
    let args = take(std::mem::size_of::<RestorerArgs>() as u64, 64);
    let threads = take((core.threads.len() * std::mem::size_of::<ThreadArgs>()) as u64, 64);
    let vmas = take(nr_vmas as u64 * 24, 64);
    let protects = take(nr_protects as u64 * 24, 64);
    // Lazy ranges: at most one per premapped run.
    let lazy = take(nr_vmas as u64 * 24, 64);
    let auxv = take(task.mm.auxv.len() as u64 * 8, 64);
    let nr_siginfo = core.shared_pending.len() + core.threads.iter().map(|t| t.pending.len()).sum::<usize>();
    let siginfo = take(nr_siginfo as u64 * abi::SIGINFO_SIZE as u64, 64);
    let timers = take((core.posix_timers.len() * std::mem::size_of::<abi::TimerArgs>()) as u64, 64);
    let frames = frame_sizes.iter().map(|&s| take(s, 64)).collect();
    let spare = take(abi::SPARE_SIZE as u64, 64);
    // The main thread's stack is BLOB_STACK_SIZE; every other thread gets THREAD_STACK.
    let stacks = take(abi::BLOB_STACK_SIZE as u64 + (core.threads.len() as u64 - 1) * THREAD_STACK, PAGE);
    let scratch = at.next_multiple_of(PAGE);
    Region { args, threads, vmas, protects, lazy, auxv, siginfo, timers, frames, spare, stacks, scratch, len: scratch + scratch_len.next_multiple_of(PAGE) }
}

fn put<T: abi::Plain>(mem: &mut [u8], off: u64, v: &T) {
    let bytes = abi::bytes_of(v);
    mem[off as usize..off as usize + bytes.len()].copy_from_slice(bytes);
}

/// A task's memory, premapped in its area, and the layout of the restorer region
/// that follows it.
struct Premapped<'a> {
    area: Area,
    slots: Vec<Slot<'a>>,
    reg: Region,
    specials: Vec<VmaMove>,
    protects: Vec<abi::VmaProtect>,
}

/// The PID (in the tree's namespace) of a short-lived helper of process `idx`
/// (see mem::restore::premap), chosen so that no process of the tree can need it
/// while the helper lives. In a PID namespace of the tree's own: above every PID,
/// TID, process group and session the images hold (one per process: helpers of
/// processes restored side by side do not meet). In crtool's namespace, where
/// other trees may be restored side by side with PIDs near this one's: from the
/// top of the range down. The other namespaces' PIDs are the kernel's choice. A
/// PID taken by something else fails the helper's fork (EEXIST, or EINVAL past
/// pid_max): the memory is then filled alone.
fn helper_pids(ctx: &Ctx, idx: usize) -> Vec<i32> {
    let imgs = ctx.imgs;
    if !ctx.own_pidns {
        let pid_max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(32768);
        return vec![pid_max - 1 - idx as i32];
    }
    let ids = imgs.procs.iter().flat_map(|p| [p.tree.pid, p.tree.pgid, p.tree.sid].into_iter().chain(p.tree.threads.iter().copied()));
    vec![ids.max().unwrap_or(0) as i32 + 1 + idx as i32]
}

/// Everything up to the memory: early task state, the area, the premapped VMAs.
fn premap_task<'a>(ctx: &Ctx<'a>, idx: usize, pid: i32, task: &'a TaskImages, inherited: Option<&[Slot]>) -> Result<Premapped<'a>> {
    let core = &task.core;
    let fail = |msg: String| Error::Restore { pid, msg };
    task::apply_early(core)?;

    // Specials: ours must match the task's one for one (same kernel image).
    let own = own_specials()?;
    let mut specials = Vec::new();
    for v in &task.mm.vmas {
        let Some(name) = special_name(v.kind()) else { continue };
        let Some(&(_, s, e)) = own.iter().find(|(n, _, _)| n == name) else {
            return Err(fail(format!("this kernel has no {name} mapping")));
        };
        if e - s != v.end - v.start {
            return Err(fail(format!("{name} is {} bytes here but {} in the image (dumped on another kernel)", e - s, v.end - v.start)));
        }
        specials.push(VmaMove { from: s, len: e - s, to: v.start });
    }
    if specials.len() != own.len() || specials.len() > abi::MAX_SPECIALS {
        return Err(fail(format!("the image's vdso/vvar mappings ({}) differ from this kernel's ({})", specials.len(), own.len())));
    }
    let scratch_len: u64 = specials.iter().map(|s| s.len).sum();

    // Memory: one area holds every premapped VMA, then the restorer region.
    let vmas = &task.mm.vmas;
    let nr_moves = crate::mem::restore::groups(vmas, &crate::mem::restore::inherits(vmas, &task.pagemap)).len();
    let protects = crate::mem::restore::protects(vmas, &task.pagemap);
    let frame_sizes: Vec<u64> = core.threads.iter().map(|t| task::regs::sigframe_len(t, ctx.geometry) as u64).collect();
    let reg = layout(task, nr_moves, protects.len(), &frame_sizes, scratch_len);
    let premapped = premap_size(vmas);
    let area_len = premapped + reg.len;
    let area_at = find_area(pid, vmas, area_len)?;
    let mut area = Area::reserve(area_at, area_len).map_err(|e| fail(format!("reserving the restore area at {area_at:#x}: {e}")))?;

    // Lazy: what children take over at fork must be there before they are forked.
    let kept: Option<Vec<(u64, u64)>> = ctx.lazy.then(|| {
        ctx.imgs.children(pid as u32).into_iter()
            .filter_map(|c| ctx.imgs.procs[c].task.as_ref())
            .flat_map(|t| t.pagemap.iter().filter(|e| e.inherited).map(|e| (e.vaddr, e.vaddr + e.nr_pages as u64 * PAGE)))
            .collect()
    });
    let mut pages = crate::mem::chain::Pages::open(ctx.dir, pid as u32)?;
    let helper = helper_pids(ctx, idx);
    let slots = premap(pid, vmas, &task.pagemap, &mut pages, &mut area, ctx.shmem, inherited, kept.as_deref(), &helper)?;
    crate::fault::point(103)?;
    Ok(Premapped { area, slots, reg, specials, protects })
}

fn setup_task(ctx: &Ctx, pid: i32, task: &TaskImages, pm: Premapped) -> Result<Infallible> {
    let core = &task.core;
    let fail = |msg: String| Error::Restore { pid, msg };
    let Premapped { mut area, slots, reg, specials, protects } = pm;
    let moves = crate::mem::restore::moves(&slots);
    let lazy: Vec<abi::VmaProtect> = slots.iter().filter(|s| s.lazy).map(|s| abi::VmaProtect { addr: s.start(), len: s.end() - s.start(), prot: 0 }).collect();
    drop(slots); // the memory stays mapped for the restorer
    // Lazy memory: a userfaultfd of this (the task's) memory goes to the daemon now;
    // the restorer registers the ranges once they are in place.
    let uffd = if lazy.is_empty() {
        None
    } else {
        let uffd = crate::sys::uffd::new_own().map_err(|e| fail(format!("userfaultfd: {e}")))?;
        crate::sys::uffd::api_lazy(uffd.as_fd()).map_err(|e| fail(format!("UFFDIO_API: {e}")))?;
        let me = crate::sys::process::pidfd_open(nix::unistd::getpid()).map_err(|e| fail(format!("pidfd_open: {e}")))?;
        let ranges: Vec<(u64, u64)> = lazy.iter().map(|l| (l.addr, l.len)).collect();
        let conn = crate::lazy::hand_over(ctx.dir, pid as u32, &ranges, uffd.as_fd(), me.as_fd())?;
        Some((uffd, conn))
    };

    let rwx = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;
    let mut region_map = area
        .map_next(reg.scratch, rwx, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, None, 0)
        .map_err(|e| fail(format!("mapping the restorer: {e}")))?;
    area.skip(reg.len - reg.scratch); // scratch for the vdso moves stays reserved
    let region = region_map.addr();
    let area_start = area.start();
    let mem = region_map.bytes_mut(0, reg.scratch).ok_or_else(|| fail("the restorer region is not writable".into()))?;
    let image = blobs::relocated(blobs::RESTORER_IMAGE, blobs::RESTORER_RELOCS, region);
    mem[..image.len()].copy_from_slice(&image);
    for (i, m) in moves.iter().enumerate() {
        put(mem, reg.vmas + i as u64 * 24, m);
    }
    for (i, p) in protects.iter().enumerate() {
        put(mem, reg.protects + i as u64 * 24, p);
    }
    for (i, l) in lazy.iter().enumerate() {
        put(mem, reg.lazy + i as u64 * 24, l);
    }
    for (i, v) in task.mm.auxv.iter().enumerate() {
        put(mem, reg.auxv + i as u64 * 8, v);
    }
    let mut si = reg.siginfo;
    // SIGKILL and SIGSTOP cannot wait blocked: crtool sends them when it lets go.
    // Timer signals come from the timers themselves (timers::to_args).
    let queued = |list: &[Vec<u8>]| -> Vec<Vec<u8>> {
        list.iter()
            .filter(|s| !matches!(s.get(0..4).map(|b| i32::from_le_bytes(b.try_into().unwrap())), Some(libc::SIGKILL | libc::SIGSTOP)))
            .filter(|s| !timers::is_timer_signal(s))
            .cloned()
            .collect()
    };
    let timer_pending = timers::pending_timer_ids(core.shared_pending.iter().chain(core.threads.iter().flat_map(|t| t.pending.iter())));
    let mut siginfos = |list: &[Vec<u8>], mem: &mut [u8]| -> (u64, u32) {
        let list = queued(list);
        let start = si;
        for s in &list {
            let n = s.len().min(abi::SIGINFO_SIZE);
            mem[si as usize..si as usize + n].copy_from_slice(&s[..n]);
            si += abi::SIGINFO_SIZE as u64;
        }
        (region + start, list.len() as u32)
    };
    let (shared_pending, nr_shared) = siginfos(&core.shared_pending, mem);
    for (i, tm) in core.posix_timers.iter().enumerate() {
        put(mem, reg.timers + (i * std::mem::size_of::<abi::TimerArgs>()) as u64, &timers::to_args(tm, timer_pending.contains(&tm.id)));
    }
    let mut thread_args = Vec::new();
    let mut stack_at = region + reg.stacks + abi::BLOB_STACK_SIZE as u64;
    for (i, t) in core.threads.iter().enumerate() {
        let frame_addr = region + reg.frames[i];
        let frame = task::regs::build_sigframe(t, frame_addr, ctx.geometry);
        mem[reg.frames[i] as usize..reg.frames[i] as usize + frame.len()].copy_from_slice(&frame);
        let mut ta = task::thread_args(t);
        ta.sigframe = frame_addr;
        (ta.pending, ta.nr_pending) = siginfos(&t.pending, mem);
        ta.process = region + reg.args;
        if i > 0 {
            stack_at += THREAD_STACK;
            ta.stack_top = stack_at;
            ta.stack_size = THREAD_STACK;
        }
        thread_args.push(ta);
    }
    for (i, ta) in thread_args.iter().skip(1).enumerate() {
        put(mem, reg.threads + (i * std::mem::size_of::<ThreadArgs>()) as u64, ta);
    }

    let m = &task.mm;
    let mut args = Box::new(RestorerArgs {
        status_fd: -1,
        exe_fd: -1,
        self_rseq: process::own_rseq(),
        area_start,
        area_len: area.len(),
        specials: [VmaMove::default(); abi::MAX_SPECIALS],
        nr_specials: specials.len() as u32,
        nr_vmas: moves.len() as u32,
        scratch: region + reg.scratch,
        vmas: region + reg.vmas,
        mm: PrctlMmMap {
            start_code: m.start_code, end_code: m.end_code, start_data: m.start_data, end_data: m.end_data,
            start_brk: m.start_brk, brk: m.brk, start_stack: m.start_stack, arg_start: m.arg_start, arg_end: m.arg_end,
            env_start: m.env_start, env_end: m.env_end, auxv: region + reg.auxv, auxv_size: (m.auxv.len() * 8) as u32, exe_fd: 0,
        },
        sigactions: [abi::KSigaction::default(); 64],
        itimers: [abi::Itimerval::default(); 3],
        main: thread_args[0],
        threads: region + reg.threads,
        nr_threads: core.threads.len() as u32 - 1,
        nr_shared_pending: nr_shared,
        shared_pending,
        timers: region + reg.timers,
        nr_timers: core.posix_timers.len() as u32,
        tgid: pid,
        xcomp_perm_feature: if core.threads.iter().any(|t| t.fpu.as_ref().is_some_and(task::regs::needs_amx)) { 18 } else { 0 },
        uids: [0; 4],
        gids: [0; 4],
        nr_groups: 0,
        dumpable: 1,
        groups: [0; abi::MAX_GROUPS],
        caps: [0; 5],
        securebits: 0,
        cap_last: 0,
        personality: 0,
        sigframe: region + reg.frames[0],
        spare: region + reg.spare,
        protects: region + reg.protects,
        nr_protects: protects.len() as u32,
        mlockall: task.mm.mlockall,
        uffd: -1,
        lazy_fd: -1,
        nr_lazy: lazy.len() as u32,
        _pad: 0,
        lazy: region + reg.lazy,
    });
    args.specials[..specials.len()].copy_from_slice(&specials);
    task::fill_restorer_args(core, &mut args, ctx.cpu_tick_usec);
    if core.creds.as_ref().is_some_and(|c| c.groups.len() > abi::MAX_GROUPS) {
        return Err(fail(format!("more than {} supplementary groups", abi::MAX_GROUPS)));
    }

    // Files: keep the status pipe and exe above every target fd, drop all of crtool's
    // other fds, install the task's from the parked ones, close those.
    let top = ctx.parked.max_fd() + 1;
    let status = fd::dup_above(ctx.status_w, top).map_err(|e| fail(format!("F_DUPFD: {e}")))?;
    let exe_path = if m.exe_ghost { ctx.shmem.ghosts().path(&m.exe, m.exe_ino).ok_or_else(|| fail(format!("the deleted executable {} is not in ghost.img", m.exe)))? } else { m.exe.clone() };
    let exe_fd = fd::open_at_pos(&exe_path, libc::O_RDONLY, 0).map_err(|e| fail(format!("cannot open the executable {}: {e}", m.exe)))?;
    let exe_hi = fd::dup_above(exe_fd.as_raw_fd(), status + 1).map_err(|e| fail(format!("F_DUPFD: {e}")))?;
    drop(exe_fd);
    let (uffd_hi, conn_hi) = match uffd {
        Some((u, c)) => {
            let u = fd::dup_above(u.as_raw_fd(), exe_hi + 1).map_err(|e| fail(format!("F_DUPFD: {e}")))?;
            (u, fd::dup_above(c.as_raw_fd(), u + 1).map_err(|e| fail(format!("F_DUPFD: {e}")))?)
        }
        None => (-1, -1),
    };
    let keep = [status, exe_hi, uffd_hi, conn_hi];
    fd::close_all_except(&[&keep[..], &ctx.parked.all_fds()].concat());
    if let Err(e) = ctx.parked.install(pid, &task.fds) {
        report_and_exit(status, &e);
    }
    ctx.parked.close_all();
    if let Err(e) = ctx.parked.take_locks(pid, &task.fds) {
        report_and_exit(status, &e);
    }
    if let Err(e) = task::apply_root(core) {
        report_and_exit(status, &e);
    }
    args.status_fd = status;
    args.exe_fd = exe_hi;
    args.uffd = uffd_hi;
    args.lazy_fd = conn_hi;
    args.mm.exe_fd = exe_hi as u32;
    let _warnings = task::apply_rlimits(core); // nowhere to log them from here
    if let Err(e) = crate::fault::point(104) {
        report_and_exit(status, &e);
    }

    put(mem, reg.args, &*args);
    mm::block_all_signals();
    // SAFETY: the restorer blob is mapped and relocated at `region`, its args and
    // stack prepared inside the area, which the restorer keeps.
    unsafe { mm::jump_to_restorer(region + blobs::RESTORER_ENTRY, region + reg.args, region + reg.stacks + abi::BLOB_STACK_SIZE as u64) }
}

