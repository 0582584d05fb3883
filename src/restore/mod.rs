//! `crtool restore`: read and check images → fork the task with its exact PID →
//! (in the child, see `child`) rebuild state and jump to the restorer → watch it with
//! ptrace, remove the restorer area, and let the task run.

mod child;

use crate::error::{Error, PtraceCtx, Result};
use crate::sys::abi::RestorerArgs;
use crate::sys::process::{Forked, fork_with_pid, read_remote};
use crate::sys::ptrace::{self, Stop};
use crate::sys::{cpu, mm};
use crate::task;
use images_format::{pb, read_entries, read_one, ImageKind};
use nix::unistd::Pid;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct RestoreOpts {
    pub dir: PathBuf,
    /// Leave the restored task running and exit (CRIU's -d).
    pub detach: bool,
}

pub enum Outcome {
    Detached(i32),
    /// The restored task ran to completion: its exit code, or 128 + signal.
    Exited(i32),
}

/// Everything the images say about one task.
pub struct TaskImages {
    pub tree: pb::PstreeEntry,
    pub core: pb::TaskCore,
    pub mm: pb::Mm,
    pub pagemap: Vec<pb::PagemapEntry>,
    pub fds: Vec<pb::FdEntry>,
    pub files: Vec<pb::FileEntry>,
}

fn bad(file: &str, msg: impl Into<String>) -> Error {
    Error::BadImage { file: file.into(), msg: msg.into() }
}

pub fn load(dir: &std::path::Path) -> Result<(pb::Inventory, TaskImages)> {
    let inv: pb::Inventory = read_one(dir, ImageKind::Inventory, 0)?;
    if inv.format_version != images_format::FORMAT_VERSION {
        return Err(bad("inventory.img", format!("format version {} (this crtool reads {})", inv.format_version, images_format::FORMAT_VERSION)));
    }
    if inv.pids.len() != 1 {
        return Err(bad("inventory.img", format!("{} tasks; this version restores exactly one", inv.pids.len())));
    }
    let pid = inv.root_pid;
    let tree: Vec<pb::PstreeEntry> = read_entries(dir, ImageKind::Pstree, 0)?;
    let tree = tree.into_iter().find(|t| t.pid == pid).ok_or_else(|| bad("pstree.img", format!("no entry for pid {pid}")))?;
    let core: pb::TaskCore = read_one(dir, ImageKind::Core, pid)?;
    if core.threads.len() != 1 {
        return Err(bad(&format!("core-{pid}.img"), format!("{} threads; this version restores one", core.threads.len())));
    }
    let mm: pb::Mm = read_one(dir, ImageKind::Mm, pid)?;
    crate::mem::vma::validate(pid, &mm.vmas)?;
    let pagemap = read_entries(dir, ImageKind::Pagemap, pid)?;
    let fds = read_entries(dir, ImageKind::Fdinfo, pid)?;
    let files = read_entries(dir, ImageKind::Files, 0)?;
    Ok((inv, TaskImages { tree, core, mm, pagemap, fds, files }))
}

fn holder_of(pid: i32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(format!("running process {pid} ({})", comm.trim()))
}

pub fn restore(opts: &RestoreOpts) -> Result<Outcome> {
    let (_inv, imgs) = load(&opts.dir)?;
    let pid = imgs.core.pid as i32;
    let thread = &imgs.core.threads[0];
    task::regs::check_cpu(pid, thread.fpu.as_ref().ok_or_else(|| bad(&format!("core-{pid}.img"), "no FPU state"))?)?;
    if let Some(holder) = holder_of(pid) {
        return Err(Error::PidTaken { pid, holder });
    }
    let vdso_syscall = mm::vdso_syscall_offset().ok_or_else(|| Error::Restore { pid, msg: "crtool has no vdso".into() })?;
    let target_vdso = imgs.mm.vmas.iter().find(|v| v.kind() == pb::VmaKind::VmaVdso)
        .ok_or_else(|| bad(&format!("mm-{pid}.img"), "no vdso mapping"))?.start;
    let geometry = cpu::sigframe_xstate();
    if geometry.xstate_size == 0 {
        return Err(Error::Restore { pid, msg: "cannot learn the signal frame's XSAVE size".into() });
    }

    let (status_r, status_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
    let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
    log::info!("pid {pid}: forking with its PID");
    // SAFETY: crtool is single-threaded during restore (no helper threads are started).
    let forked = unsafe { fork_with_pid(pid) }.map_err(|e| match e {
        nix::errno::Errno::EEXIST => Error::PidTaken { pid, holder: holder_of(pid).unwrap_or_else(|| "another process".into()) },
        e => Error::Restore { pid, msg: format!("clone3 with set_tid: {e}") },
    })?;
    match forked {
        Forked::Child => {
            drop(status_r);
            drop(go_w);
            child::run(&opts.dir, &imgs, status_w, go_r, geometry)
        }
        Forked::Parent(child) => {
            drop(status_w);
            drop(go_r);
            match supervise(child, &status_r, &go_w, target_vdso + vdso_syscall) {
                Ok(()) => {}
                Err(e) => {
                    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                    while let Ok(Some(s)) = ptrace::wait(child, false) {
                        if matches!(s, Stop::Exited(_) | Stop::Killed(_)) {
                            break;
                        }
                    }
                    return Err(e);
                }
            }
            log::info!("pid {pid}: restored and running");
            if opts.detach {
                return Ok(Outcome::Detached(pid));
            }
            loop {
                match ptrace::wait(child, false).map_err(|e| Error::sys("waitpid", e))? {
                    Some(Stop::Exited(c)) => return Ok(Outcome::Exited(c)),
                    Some(Stop::Killed(s)) => return Ok(Outcome::Exited(128 + s)),
                    _ => {}
                }
            }
        }
    }
}

/// Reads what the child or restorer reported before dying, if anything.
fn failure(pid: i32, status_r: &OwnedFd) -> Error {
    let mut buf = vec![0u8; 4096];
    let n = nix::unistd::read(status_r, &mut buf).unwrap_or(0);
    if n > 0 && buf[0] == b'M' {
        return Error::Reported(String::from_utf8_lossy(&buf[1..n]).into_owned());
    }
    Error::Restore { pid, msg: failure_text(pid, &buf[..n]) }
}

fn failure_text(pid: i32, buf: &[u8]) -> String {
    let n = buf.len();
    if n == 0 {
        return "the new task died without a report".into();
    }
    if n >= std::mem::size_of::<crate::sys::abi::RestorerFailure>() {
        let step = u32::from_le_bytes(buf[0..4].try_into().unwrap());
        let index = u32::from_le_bytes(buf[4..8].try_into().unwrap());
        let errno = i64::from_le_bytes(buf[8..16].try_into().unwrap());
        return format!("restorer step {} (item {index}) failed: {}", step_name(step), nix::errno::Errno::from_raw(errno as i32));
    }
    format!("pid {pid}: unreadable report")
}

fn step_name(step: u32) -> &'static str {
    use crate::sys::abi::*;
    match step {
        STEP_DROP_RSEQ => "drop crtool's rseq",
        STEP_UNMAP => "unmap crtool",
        STEP_SPECIALS => "move vdso/vvar",
        STEP_VMAS => "move VMAs into place",
        STEP_MM => "PR_SET_MM_MAP",
        STEP_XCOMP => "request AMX permission",
        STEP_SIGACTIONS => "sigactions",
        STEP_ITIMERS => "itimers",
        STEP_THREAD => "thread state (robust list, rseq, fs/gs)",
        STEP_CREDS => "credentials",
        _ => "unknown",
    }
}

/// Seizes the child, lets it build itself, and finishes the restore at its int3:
/// through rt_sigreturn, then one injected munmap removes the restorer area.
fn supervise(child: Pid, status_r: &OwnedFd, go_w: &OwnedFd, syscall_ip: u64) -> Result<()> {
    let pid = child.as_raw();
    ptrace::seize(child, true).ptrace(child, "PTRACE_SEIZE")?;
    nix::unistd::write(go_w.as_fd(), b"g").map_err(|e| Error::sys("go pipe", e))?;
    loop {
        match ptrace::wait(child, false).ptrace(child, "waitpid")? {
            Some(Stop::Signal(libc::SIGTRAP)) => break,
            Some(Stop::Exited(_)) | Some(Stop::Killed(_)) => {
                return Err(failure(pid, status_r));
            }
            Some(Stop::Signal(sig)) => {
                let regs = ptrace::getregs(child).ok();
                return Err(Error::Restore { pid, msg: format!("restorer got signal {sig} at rip {:#x}", regs.map(|r| r.rip).unwrap_or(0)) });
            }
            Some(_) => ptrace::cont(child).ptrace(child, "PTRACE_CONT")?,
            None => {}
        }
    }
    let at_trap = ptrace::getregs(child).ptrace(child, "PTRACE_GETREGS")?;
    let mut area = [0u8; 16];
    let off = std::mem::offset_of!(RestorerArgs, area_start) as u64;
    read_remote(child, at_trap.r12 + off, &mut area).ptrace(child, "process_vm_readv")?;
    let area_start = u64::from_le_bytes(area[0..8].try_into().unwrap());
    let area_len = u64::from_le_bytes(area[8..16].try_into().unwrap());

    for _ in 0..2 {
        ptrace::cont_syscall(child).ptrace(child, "PTRACE_SYSCALL")?;
        expect_syscall(child)?;
    }
    let mut restored = ptrace::getregs(child).ptrace(child, "PTRACE_GETREGS")?;
    restored.orig_rax = u64::MAX;
    let mut r = restored;
    r.rip = syscall_ip;
    r.rax = libc::SYS_munmap as u64;
    (r.rdi, r.rsi) = (area_start, area_len);
    ptrace::setregs(child, &r).ptrace(child, "PTRACE_SETREGS")?;
    for _ in 0..2 {
        ptrace::cont_syscall(child).ptrace(child, "PTRACE_SYSCALL")?;
        expect_syscall(child)?;
    }
    let res = ptrace::getregs(child).ptrace(child, "PTRACE_GETREGS")?.rax as i64;
    if res != 0 {
        return Err(Error::Restore { pid, msg: format!("removing the restorer area failed: {res}") });
    }
    ptrace::setregs(child, &restored).ptrace(child, "PTRACE_SETREGS")?;
    ptrace::detach(child).ptrace(child, "PTRACE_DETACH")
}

fn expect_syscall(child: Pid) -> Result<()> {
    match ptrace::wait(child, false).ptrace(child, "waitpid")? {
        Some(Stop::Syscall) => Ok(()),
        other => Err(Error::Restore { pid: child.as_raw(), msg: format!("unexpected {other:?} while finishing the restore") }),
    }
}
