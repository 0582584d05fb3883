//! The restorer: the last code that runs in a task being restored. crtool has already
//! premapped and filled every VMA inside one "area" and prepared `RestorerArgs`. This
//! blob unmaps crtool, moves everything into place, restores process state that must
//! be set from inside, stops for crtool with `int3`, then returns to the saved
//! registers through rt_sigreturn.

#![no_std]
#![no_main]

#[path = "abi.rs"]
mod abi;
mod rt;

use abi::*;
use rt::*;

const MREMAP_MAYMOVE: usize = 1;
const MREMAP_FIXED: usize = 2;
const TASK_SIZE: u64 = (1 << 47) - 4096;
const NR_RT_SIGRETURN: usize = 15;

/// Entry: rdi = &RestorerArgs, rsp = top of the restorer's stack inside the area.
#[unsafe(naked)]
#[unsafe(no_mangle)]
#[unsafe(link_section = ".text.entry")]
pub unsafe extern "C" fn _start() -> ! {
    core::arch::naked_asm!(
        "and rsp, -16",
        "mov r12, rdi",
        "call {main}",
        // Everything is in place: let crtool take its last look, then return to the
        // task's own registers. rsp = sigframe + 8 as rt_sigreturn expects.
        "int3",
        "mov rsp, [r12 + {frame}]",
        "add rsp, 8",
        "mov eax, {nr}",
        "syscall",
        "ud2",
        main = sym restorer_main,
        frame = const core::mem::offset_of!(RestorerArgs, sigframe),
        nr = const NR_RT_SIGRETURN,
    );
}

extern "C" fn restorer_main(args: *const RestorerArgs) {
    // SAFETY: crtool passes a pointer to a fully initialised RestorerArgs in the area.
    let a = unsafe { &*args };
    if let Err((step, index, errno)) = restore(a) {
        let f = RestorerFailure { step, index, errno };
        // SAFETY: writes the plain-data failure record to the status pipe.
        unsafe {
            syscall3(NR_WRITE, a.status_fd as usize, &f as *const RestorerFailure as usize, core::mem::size_of::<RestorerFailure>());
        }
        exit_group(1);
    }
    // SAFETY: closing the status pipe tells crtool that nothing failed.
    unsafe { syscall3(NR_CLOSE, a.status_fd as usize, 0, 0) };
}

type Failure = (u32, u32, i64);

fn check(step: u32, index: usize, ret: isize) -> Result<isize, Failure> {
    if ret < 0 && ret > -4096 { Err((step, index as u32, -ret as i64)) } else { Ok(ret) }
}

fn restore(a: &RestorerArgs) -> Result<(), Failure> {
    // SAFETY (whole function): this blob owns the address space now. Each syscall
    // gets pointers into the area, which stays mapped until crtool removes it.
    unsafe {
        if a.self_rseq.ptr != 0 {
            let r = syscall6(NR_RSEQ, a.self_rseq.ptr as usize, a.self_rseq.len as usize, 1, a.self_rseq.sig as usize, 0, 0);
            check(STEP_DROP_RSEQ, 0, r)?;
        }
        unmap_all_but_kept(a)?;

        let n = (a.nr_specials as usize).min(MAX_SPECIALS);
        let mut off = 0u64;
        for i in 0..n {
            let s = a.specials[i];
            let tmp = a.scratch + off;
            check(STEP_SPECIALS, i, syscall6(NR_MREMAP, s.from as usize, s.len as usize, s.len as usize,
                  MREMAP_MAYMOVE | MREMAP_FIXED, tmp as usize, 0))?;
            off += s.len;
        }
        off = 0;
        for i in 0..n {
            let s = a.specials[i];
            let tmp = a.scratch + off;
            check(STEP_SPECIALS, i, syscall6(NR_MREMAP, tmp as usize, s.len as usize, s.len as usize,
                  MREMAP_MAYMOVE | MREMAP_FIXED, s.to as usize, 0))?;
            off += s.len;
        }

        let vmas = a.vmas as *const VmaMove;
        for i in 0..a.nr_vmas as usize {
            let v = *vmas.add(i);
            check(STEP_VMAS, i, syscall6(NR_MREMAP, v.from as usize, v.len as usize, v.len as usize,
                  MREMAP_MAYMOVE | MREMAP_FIXED, v.to as usize, 0))?;
        }

        let mm = a.mm;
        check(STEP_MM, 0, syscall6(NR_PRCTL, 35 /* PR_SET_MM */, 14 /* PR_SET_MM_MAP */,
              &mm as *const PrctlMmMap as usize, core::mem::size_of::<PrctlMmMap>(), 0, 0))?;
        if a.exe_fd >= 0 {
            syscall3(NR_CLOSE, a.exe_fd as usize, 0, 0);
        }

        if a.xcomp_perm_feature != 0 {
            check(STEP_XCOMP, 0, syscall3(NR_ARCH_PRCTL, 0x1023 /* ARCH_REQ_XCOMP_PERM */, a.xcomp_perm_feature as usize, 0))?;
        }

        for sig in 1..=64usize {
            if sig == 9 || sig == 19 {
                continue;
            }
            let act = &a.sigactions[sig - 1];
            check(STEP_SIGACTIONS, sig, syscall6(NR_RT_SIGACTION, sig, act as *const KSigaction as usize, 0, 8, 0, 0))?;
        }
        for which in 0..3usize {
            let t = &a.itimers[which];
            check(STEP_ITIMERS, which, syscall3(NR_SETITIMER, which, t as *const Itimerval as usize, 0))?;
        }

        if a.robust_list != 0 {
            check(STEP_THREAD, 0, syscall3(NR_SET_ROBUST_LIST, a.robust_list as usize, a.robust_list_len as usize, 0))?;
        }
        syscall3(NR_SET_TID_ADDRESS, a.clear_child_tid as usize, 0, 0);
        if a.rseq.ptr != 0 {
            check(STEP_THREAD, 1, syscall6(NR_RSEQ, a.rseq.ptr as usize, a.rseq.len as usize, 0, a.rseq.sig as usize, 0, 0))?;
        }
        check(STEP_THREAD, 2, syscall3(NR_ARCH_PRCTL, 0x1002 /* ARCH_SET_FS */, a.fs_base as usize, 0))?;
        check(STEP_THREAD, 3, syscall3(NR_ARCH_PRCTL, 0x1001 /* ARCH_SET_GS */, a.gs_base as usize, 0))?;

        let ng = (a.nr_groups as usize).min(MAX_GROUPS);
        check(STEP_CREDS, 0, syscall3(NR_SETGROUPS, ng, a.groups.as_ptr() as usize, 0))?;
        check(STEP_CREDS, 1, syscall3(NR_SETRESGID, a.gids[0] as usize, a.gids[1] as usize, a.gids[2] as usize))?;
        syscall3(NR_SETFSGID, a.gids[3] as usize, 0, 0);
        check(STEP_CREDS, 2, syscall3(NR_SETRESUID, a.uids[0] as usize, a.uids[1] as usize, a.uids[2] as usize))?;
        syscall3(NR_SETFSUID, a.uids[3] as usize, 0, 0);
        check(STEP_CREDS, 3, syscall6(NR_PRCTL, 4 /* PR_SET_DUMPABLE */, a.dumpable as usize, 0, 0, 0, 0))?;
    }
    Ok(())
}

/// Unmaps every address range outside the area and the special mappings.
///
/// # Safety
/// Must run from inside the area: everything else disappears.
unsafe fn unmap_all_but_kept(a: &RestorerArgs) -> Result<(), Failure> {
    let n = (a.nr_specials as usize).min(MAX_SPECIALS);
    let mut kept = [(0u64, 0u64); MAX_SPECIALS + 1];
    kept[0] = (a.area_start, a.area_start + a.area_len);
    for i in 0..n {
        kept[i + 1] = (a.specials[i].from, a.specials[i].from + a.specials[i].len);
    }
    let kept = &mut kept[..n + 1];
    // Insertion sort: at most five ranges.
    for i in 1..kept.len() {
        let mut j = i;
        while j > 0 && kept[j - 1].0 > kept[j].0 {
            kept.swap(j - 1, j);
            j -= 1;
        }
    }
    let mut cur = 0u64;
    for (i, &(s, e)) in kept.iter().enumerate() {
        if s > cur {
            // SAFETY: [cur, s) holds nothing the restorer needs.
            check(STEP_UNMAP, i, unsafe { syscall3(NR_MUNMAP, cur as usize, (s - cur) as usize, 0) })?;
        }
        cur = cur.max(e);
    }
    if cur < TASK_SIZE {
        // SAFETY: as above, for the range above the last kept mapping.
        check(STEP_UNMAP, kept.len(), unsafe { syscall3(NR_MUNMAP, cur as usize, (TASK_SIZE - cur) as usize, 0) })?;
    }
    Ok(())
}
