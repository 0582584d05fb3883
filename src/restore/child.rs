//! The restore child: a fork of crtool that already has the task's PID. It sets up
//! session, files and memory, prepares the restorer's arguments, and jumps. Nothing
//! here may log after crtool's fds are closed (fd numbers now belong to the task).

use super::TaskImages;
use crate::error::{Error, Result};
use crate::mem::restore::{find_area, premap, premap_size};
use crate::sys::abi::{self, PrctlMmMap, RestorerArgs, RseqReg, VmaMove};
use crate::sys::blobs;
use crate::sys::cpu::SigFrameXstate;
use crate::sys::mm::{self, PAGE};
use crate::{files, task};
use images_format::{pb, PagesReader};
use std::convert::Infallible;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

unsafe extern "C" {
    /// glibc's offset of the thread's rseq area from the thread pointer (glibc ≥ 2.35).
    static __rseq_offset: isize;
    static __rseq_size: u32;
}

pub fn run(dir: &Path, imgs: &TaskImages, status_w: OwnedFd, go_r: OwnedFd, geometry: SigFrameXstate) -> ! {
    let status = status_w.as_raw_fd();
    let Err(e) = setup(dir, imgs, &status_w, go_r, geometry);
    let msg = format!("M{e}");
    // SAFETY: write(2) of a local buffer, then _exit without running crtool's
    // destructors or atexit handlers in this forked copy.
    unsafe {
        libc::write(status, msg.as_ptr().cast(), msg.len());
        libc::_exit(1)
    }
}

/// Our own special mappings ([vdso], [vvar], [vvar_vclock]) by name.
fn own_specials() -> Result<Vec<(String, u64, u64)>> {
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| Error::io("/proc/self/maps", e))?;
    let mut out = Vec::new();
    for l in maps.lines() {
        let name = l.split_whitespace().nth(5).unwrap_or("");
        if matches!(name, "[vdso]" | "[vvar]" | "[vvar_vclock]") {
            let (s, e) = l.split_whitespace().next().and_then(|r| r.split_once('-')).unwrap_or(("0", "0"));
            out.push((name.to_string(), u64::from_str_radix(s, 16).unwrap_or(0), u64::from_str_radix(e, 16).unwrap_or(0)));
        }
    }
    Ok(out)
}

fn special_name(k: pb::VmaKind) -> Option<&'static str> {
    match k {
        pb::VmaKind::VmaVdso => Some("[vdso]"),
        pb::VmaKind::VmaVvar => Some("[vvar]"),
        pb::VmaKind::VmaVvarVclock => Some("[vvar_vclock]"),
        _ => None,
    }
}

fn setup(dir: &Path, imgs: &TaskImages, status_w: &OwnedFd, go_r: OwnedFd, geometry: SigFrameXstate) -> Result<Infallible> {
    let core = &imgs.core;
    let pid = core.pid as i32;
    let fail = |msg: String| Error::Restore { pid, msg };
    let mut go = [0u8; 1];
    nix::unistd::read(&go_r, &mut go).map_err(|e| fail(format!("waiting for crtool: {e}")))?;
    drop(go_r);

    // Session and process group.
    let t = &imgs.tree;
    if t.sid as i32 == pid {
        nix::unistd::setsid().map_err(|e| fail(format!("setsid: {e}")))?;
    } else {
        let ours = nix::unistd::getsid(None).map(|s| s.as_raw()).unwrap_or(0);
        if ours != t.sid as i32 {
            return Err(fail(format!("it belonged to session {} which does not exist here (this shell's session is {ours}; restore from the same shell with --shell-job)", t.sid)));
        }
    }
    if t.pgid as i32 == pid && t.sid as i32 != pid {
        nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0)).map_err(|e| fail(format!("setpgid: {e}")))?;
    }
    task::apply_early(core)?;

    // Specials: ours must match the task's one for one (same kernel image).
    let own = own_specials()?;
    let mut specials = Vec::new();
    for v in &imgs.mm.vmas {
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
    let vmas = &imgs.mm.vmas;
    let nr_vmas = vmas.iter().filter(|v| crate::mem::vma::is_restorable(v)).count();
    let thread = &core.threads[0];
    let frame_probe = task::regs::build_sigframe(thread, 0, geometry).len() as u64;
    let blob_len = blobs::RESTORER_IMAGE.len() as u64;
    let args_off = blob_len;
    let vmas_off = (args_off + std::mem::size_of::<RestorerArgs>() as u64).next_multiple_of(64);
    let auxv_off = (vmas_off + nr_vmas as u64 * 24).next_multiple_of(64);
    let frame_off = (auxv_off + imgs.mm.auxv.len() as u64 * 8).next_multiple_of(PAGE);
    let stack_off = (frame_off + frame_probe).next_multiple_of(PAGE);
    let scratch_off = stack_off + abi::BLOB_STACK_SIZE as u64;
    let region_len = scratch_off + scratch_len.next_multiple_of(PAGE);
    let premapped = premap_size(vmas);
    let area_len = premapped + region_len;
    let area = find_area(pid, vmas, area_len)?;
    let none = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    mm::map_at(area, area_len, libc::PROT_NONE, none, None, 0, false).map_err(|e| fail(format!("reserving the restore area at {area:#x}: {e}")))?;

    let mut pages = PagesReader::open(dir, pid as u32)?;
    let moves = premap(pid, vmas, &imgs.pagemap, &mut pages, area)?;
    drop(pages);

    let region = area + premapped;
    let rwx = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;
    mm::map_at(region, scratch_off, rwx, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, None, 0, true)
        .map_err(|e| fail(format!("mapping the restorer: {e}")))?;
    let image = blobs::relocated(blobs::RESTORER_IMAGE, blobs::RESTORER_RELOCS, region);
    // SAFETY: [region, region+scratch_off) was just mapped RW and nothing else uses it.
    let mem = unsafe { mm::slice_at(region, scratch_off as usize) };
    mem[..image.len()].copy_from_slice(&image);
    for (i, m) in moves.iter().enumerate() {
        let o = vmas_off as usize + i * 24;
        for (j, v) in [m.from, m.len, m.to].into_iter().enumerate() {
            mem[o + j * 8..o + j * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
    }
    for (i, v) in imgs.mm.auxv.iter().enumerate() {
        let o = auxv_off as usize + i * 8;
        mem[o..o + 8].copy_from_slice(&v.to_le_bytes());
    }
    let frame = task::regs::build_sigframe(thread, region + frame_off, geometry);
    mem[frame_off as usize..frame_off as usize + frame.len()].copy_from_slice(&frame);

    let m = &imgs.mm;
    let mut args = Box::new(RestorerArgs {
        status_fd: -1,
        exe_fd: -1,
        self_rseq: own_rseq(),
        area_start: area,
        area_len,
        specials: [VmaMove::default(); abi::MAX_SPECIALS],
        nr_specials: specials.len() as u32,
        nr_vmas: moves.len() as u32,
        scratch: region + scratch_off,
        vmas: region + vmas_off,
        mm: PrctlMmMap {
            start_code: m.start_code, end_code: m.end_code, start_data: m.start_data, end_data: m.end_data,
            start_brk: m.start_brk, brk: m.brk, start_stack: m.start_stack, arg_start: m.arg_start, arg_end: m.arg_end,
            env_start: m.env_start, env_end: m.env_end, auxv: region + auxv_off, auxv_size: (m.auxv.len() * 8) as u32, exe_fd: 0,
        },
        sigactions: [abi::KSigaction::default(); 64],
        itimers: [abi::Itimerval::default(); 3],
        rseq: RseqReg::default(),
        robust_list: 0,
        robust_list_len: 0,
        clear_child_tid: 0,
        fs_base: 0,
        gs_base: 0,
        xcomp_perm_feature: if thread.fpu.as_ref().is_some_and(task::regs::needs_amx) { 18 } else { 0 },
        uids: [0; 4],
        gids: [0; 4],
        nr_groups: 0,
        dumpable: 1,
        groups: [0; abi::MAX_GROUPS],
        sigframe: region + frame_off,
    });
    args.specials[..specials.len()].copy_from_slice(&specials);
    task::fill_restorer_args(core, &mut args);
    if core.creds.as_ref().is_some_and(|c| c.groups.len() > abi::MAX_GROUPS) {
        return Err(fail(format!("more than {} supplementary groups", abi::MAX_GROUPS)));
    }

    // Files: park the status pipe above every target fd, drop all of crtool's fds,
    // then install the task's.
    let top = imgs.fds.iter().map(|f| f.fd).max().unwrap_or(2).max(2) + 64;
    // SAFETY: F_DUPFD_CLOEXEC on an fd we own.
    let status = unsafe { libc::fcntl(status_w.as_raw_fd(), libc::F_DUPFD_CLOEXEC, top) };
    if status < 0 {
        return Err(fail(format!("F_DUPFD: {}", std::io::Error::last_os_error())));
    }
    let exe = std::ffi::CString::new(m.exe.as_bytes()).map_err(|_| fail("bad exe path".into()))?;
    // SAFETY: open(2) of a C string.
    let exe_fd = unsafe { libc::open(exe.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if exe_fd < 0 {
        return Err(fail(format!("cannot open the executable {}: {}", m.exe, std::io::Error::last_os_error())));
    }
    // SAFETY: as above.
    let exe_hi = unsafe { libc::fcntl(exe_fd, libc::F_DUPFD_CLOEXEC, status + 1) };
    // SAFETY: closes every fd except the two parked ones; no Rust object below uses
    // the closed fds (the image files were dropped above).
    unsafe {
        libc::syscall(libc::SYS_close_range, 0, status - 1, 0);
        libc::syscall(libc::SYS_close_range, status + 1, exe_hi - 1, 0);
        libc::syscall(libc::SYS_close_range, exe_hi + 1, u32::MAX, 0);
    }
    let report = |msg: String| -> Error {
        // The caller writes to `status`; the fd numbers have moved.
        Error::Restore { pid, msg }
    };
    if let Err(e) = files::restore(pid, &imgs.fds, &imgs.files) {
        return Err(write_and_exit(status, report(e.to_string())));
    }
    args.status_fd = status;
    args.exe_fd = exe_hi;
    args.mm.exe_fd = exe_hi as u32;
    let warnings = task::apply_rlimits(core);
    drop(warnings); // nowhere to log them from here; limits stay as close as allowed

    // SAFETY: the args slot inside the region is sized for RestorerArgs.
    unsafe { std::ptr::write_unaligned((region + args_off) as *mut RestorerArgs, *args) };
    mm::block_all_signals();
    // SAFETY: the restorer blob is mapped and relocated at `region`, its args and
    // stack prepared inside the area, which the restorer keeps.
    unsafe { mm::jump_to_restorer(region + blobs::RESTORER_ENTRY, region + args_off, region + scratch_off) }
}

/// Reports through the (moved) status fd and exits; never returns.
fn write_and_exit(status: i32, e: Error) -> Error {
    let msg = format!("M{e}");
    // SAFETY: write(2) of a local buffer, then _exit.
    unsafe {
        libc::write(status, msg.as_ptr().cast(), msg.len());
        libc::_exit(1)
    }
}

/// This thread's glibc rseq registration, which must go before crtool's memory does.
fn own_rseq() -> RseqReg {
    // SAFETY: reading two glibc-exported constants and the thread pointer.
    unsafe {
        if __rseq_size == 0 {
            return RseqReg::default();
        }
        let tp: u64;
        std::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly));
        RseqReg { ptr: (tp as i64 + __rseq_offset as i64) as u64, len: 32.max(__rseq_size), sig: 0x5305_3053 }
    }
}
