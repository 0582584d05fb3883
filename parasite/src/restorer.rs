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
/// _IOWR(0xAA, 0x00, struct uffdio_register).
const UFFDIO_REGISTER: usize = 0xC020_AA00;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

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
    // SAFETY: `a` is the prepared args block.
    if let Err((step, index, errno)) = unsafe { restore(a) } {
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

/// # Safety
/// `a` is a fully prepared args block inside the area.
unsafe fn restore(a: &RestorerArgs) -> Result<(), Failure> {
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

        let protects = a.protects as *const VmaProtect;
        for i in 0..a.nr_protects as usize {
            let p = *protects.add(i);
            check(STEP_PROTECT, i, syscall3(NR_MPROTECT, p.addr as usize, p.len as usize, p.prot as usize))?;
        }
        // Lazy memory: from now on a missing page is asked of the lazy-pages daemon.
        if a.uffd >= 0 {
            let lazy = a.lazy as *const VmaProtect;
            for i in 0..a.nr_lazy as usize {
                let l = *lazy.add(i);
                // struct uffdio_register: range (start, len), mode, ioctls (out).
                let mut reg = [l.addr, l.len, UFFDIO_REGISTER_MODE_MISSING, 0u64];
                check(STEP_LAZY, i, syscall3(NR_IOCTL, a.uffd as usize, UFFDIO_REGISTER, reg.as_mut_ptr() as usize))?;
            }
            syscall3(NR_CLOSE, a.uffd as usize, 0, 0);
            let ready = b'R';
            check(STEP_LAZY, 9999, syscall3(NR_WRITE, a.lazy_fd as usize, &ready as *const u8 as usize, 1))?;
            syscall3(NR_CLOSE, a.lazy_fd as usize, 0, 0);
        }
        // Every mapping is in place: READ_IMPLIES_EXEC can no longer widen one.
        check(STEP_PERSONALITY, 0, syscall3(NR_PERSONALITY, a.personality as usize, 0, 0))?;

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
            // SIGKILL and SIGSTOP have no action; SIGTRAP's is set by crtool after
            // the final trap (a trap while SIGTRAP is blocked resets it to SIG_DFL).
            if sig == 9 || sig == 19 || sig == 5 {
                continue;
            }
            let act = &a.sigactions[sig - 1];
            check(STEP_SIGACTIONS, sig, syscall6(NR_RT_SIGACTION, sig, act as *const KSigaction as usize, 0, 8, 0, 0))?;
        }
        for which in 0..3usize {
            let t = &a.itimers[which];
            check(STEP_ITIMERS, which, syscall3(NR_SETITIMER, which, t as *const Itimerval as usize, 0))?;
        }

        let shared = a.shared_pending as *const [u8; SIGINFO_SIZE];
        for i in 0..a.nr_shared_pending as usize {
            let info = shared.add(i);
            let sig = core::ptr::read_unaligned(info as *const i32);
            check(STEP_SIGNALS, i, syscall3(NR_RT_SIGQUEUEINFO, a.tgid as usize, sig as usize, info as usize))?;
        }
        let threads = a.threads as *const ThreadArgs;
        for i in 0..a.nr_threads as usize {
            spawn_thread(threads.add(i)).map_err(|e| (STEP_THREADS, i as u32, e))?;
        }
        // After the threads: a timer may notify one of them (SIGEV_THREAD_ID).
        let timers = a.timers as *const TimerArgs;
        if a.nr_timers > 0 {
            // PR_TIMER_CREATE_RESTORE_IDS: timer_create takes the id we ask for.
            check(STEP_TIMERS, 999, syscall6(NR_PRCTL, 77, 1, 0, 0, 0, 0))?;
            for i in 0..a.nr_timers as usize {
                create_timer(&*timers.add(i)).map_err(|e| (STEP_TIMERS, i as u32, e))?;
            }
            syscall6(NR_PRCTL, 77, 0, 0, 0, 0, 0);
        }
        if a.mlockall != 0 {
            check(STEP_MM, 1, syscall3(NR_MLOCKALL, a.mlockall as usize, 0, 0))?;
        }
        apply_thread(&a.main)?;
        apply_creds(a)?;
        after_creds(&a.main)?;
        // PR_SET_DUMPABLE is set by crtool once every thread has its credentials
        // (each thread's uid change resets it).
    }
    Ok(())
}

/// What a credential change resets, set per thread once its credentials are final.
fn after_creds(t: &ThreadArgs) -> Result<(), Failure> {
    // SAFETY: prctl options that take plain integers.
    unsafe {
        if t.pdeath_signal != 0 {
            check(STEP_CREDS, 20, syscall6(NR_PRCTL, 1 /* PR_SET_PDEATHSIG */, t.pdeath_signal as usize, 0, 0, 0, 0))?;
        }
        if t.mce_kill != 2 {
            check(STEP_THREAD, 20, syscall6(NR_PRCTL, 33 /* PR_MCE_KILL */, 1 /* PR_MCE_KILL_SET */, t.mce_kill as usize, 0, 0, 0))?;
        }
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

/// Per-thread state, set by the thread itself.
///
/// # Safety
/// `t` points at prepared ThreadArgs inside the area.
unsafe fn apply_thread(t: &ThreadArgs) -> Result<(), Failure> {
    // SAFETY: plain syscalls on this thread with pointers into the task's memory or
    // the area.
    unsafe {
        if t.robust_list != 0 {
            check(STEP_THREAD, 0, syscall3(NR_SET_ROBUST_LIST, t.robust_list as usize, t.robust_list_len as usize, 0))?;
        }
        syscall3(NR_SET_TID_ADDRESS, t.clear_child_tid as usize, 0, 0);
        if t.rseq.ptr != 0 {
            check(STEP_THREAD, 1, syscall6(NR_RSEQ, t.rseq.ptr as usize, t.rseq.len as usize, 0, t.rseq.sig as usize, 0, 0))?;
        }
        check(STEP_THREAD, 2, syscall3(NR_ARCH_PRCTL, 0x1002 /* ARCH_SET_FS */, t.fs_base as usize, 0))?;
        check(STEP_THREAD, 3, syscall3(NR_ARCH_PRCTL, 0x1001 /* ARCH_SET_GS */, t.gs_base as usize, 0))?;
        if t.comm[0] != 0 {
            syscall6(NR_PRCTL, 15 /* PR_SET_NAME */, t.comm.as_ptr() as usize, 0, 0, 0, 0);
        }
        let pending = t.pending as *const [u8; SIGINFO_SIZE];
        let tgid = (*(t.process as *const RestorerArgs)).tgid;
        for i in 0..t.nr_pending as usize {
            let info = pending.add(i);
            let sig = core::ptr::read_unaligned(info as *const i32);
            check(STEP_SIGNALS, 100 + i, syscall6(NR_RT_TGSIGQUEUEINFO, tgid as usize, t.tid as usize, sig as usize, info as usize, 0, 0))?;
        }
    }
    Ok(())
}

/// Credentials are per thread at the syscall level: every thread sets its own, in
/// the order that keeps each step allowed: groups; SECBIT_NO_SETUID_FIXUP so that
/// the uid change keeps the capabilities needed for the rest; gids and uids; the
/// capability sets (with CAP_SETPCAP for now); the bounding set; ambient
/// capabilities (before securebits that could forbid raising them); the final
/// securebits; the final capability sets.
fn apply_creds(a: &RestorerArgs) -> Result<(), Failure> {
    const SETPCAP: u64 = 1 << 8;
    let ng = (a.nr_groups as usize).min(MAX_GROUPS);
    let [inh, prm, eff, bnd, amb] = a.caps;
    // SAFETY: credential syscalls with pointers into the args block or locals.
    unsafe {
        check(STEP_CREDS, 0, syscall3(NR_SETGROUPS, ng, a.groups.as_ptr() as usize, 0))?;
        check(STEP_CREDS, 4, syscall6(NR_PRCTL, 28 /* PR_SET_SECUREBITS */, 1 << 2 /* NO_SETUID_FIXUP */, 0, 0, 0, 0))?;
        check(STEP_CREDS, 1, syscall3(NR_SETRESGID, a.gids[0] as usize, a.gids[1] as usize, a.gids[2] as usize))?;
        syscall3(NR_SETFSGID, a.gids[3] as usize, 0, 0);
        check(STEP_CREDS, 2, syscall3(NR_SETRESUID, a.uids[0] as usize, a.uids[1] as usize, a.uids[2] as usize))?;
        syscall3(NR_SETFSUID, a.uids[3] as usize, 0, 0);
        capset(prm | SETPCAP, eff | SETPCAP, inh).map_err(|e| (STEP_CREDS, 5, e))?;
        for cap in 0..=(a.cap_last.min(63) as usize) {
            if bnd & (1 << cap) == 0 {
                check(STEP_CREDS, 100 + cap, syscall6(NR_PRCTL, 24 /* PR_CAPBSET_DROP */, cap, 0, 0, 0, 0))?;
            }
        }
        for cap in 0..64usize {
            if amb & (1 << cap) != 0 {
                check(STEP_CREDS, 200 + cap, syscall6(NR_PRCTL, 47 /* PR_CAP_AMBIENT */, 2 /* RAISE */, cap, 0, 0, 0))?;
            }
        }
        check(STEP_CREDS, 6, syscall6(NR_PRCTL, 28 /* PR_SET_SECUREBITS */, a.securebits as usize, 0, 0, 0, 0))?;
        capset(prm, eff, inh).map_err(|e| (STEP_CREDS, 7, e))?;
    }
    Ok(())
}

/// capset(2) of the calling thread (version 3: 64-bit sets).
///
/// # Safety
/// A plain syscall with pointers to locals.
unsafe fn capset(prm: u64, eff: u64, inh: u64) -> Result<(), i64> {
    let header: [u32; 2] = [0x2008_0522 /* _LINUX_CAPABILITY_VERSION_3 */, 0];
    let lo = |v: u64| v as u32;
    let hi = |v: u64| (v >> 32) as u32;
    let data: [u32; 6] = [lo(eff), lo(prm), lo(inh), hi(eff), hi(prm), hi(inh)];
    // SAFETY: capset reads the header and two data structs.
    let r = unsafe { syscall3(NR_CAPSET, header.as_ptr() as usize, data.as_ptr() as usize, 0) };
    if r < 0 { Err(-r as i64) } else { Ok(()) }
}

const THREAD_FLAGS: u64 = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000; // VM FS FILES SIGHAND THREAD SYSVSEM

/// Creates one thread with its exact TID. The new thread runs `thread_main` on its
/// own stack, traps for crtool, then returns to its saved registers.
///
/// # Safety
/// `t` points at prepared ThreadArgs whose stack lies inside the area.
unsafe fn spawn_thread(t: *const ThreadArgs) -> Result<(), i64> {
    // SAFETY: t is valid (caller); the clone args live on this stack for the call.
    let tid = unsafe { [(*t).tid] };
    let args = CloneArgs {
        flags: THREAD_FLAGS,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: 0,
        // SAFETY: as above.
        stack: unsafe { (*t).stack_top - (*t).stack_size },
        stack_size: unsafe { (*t).stack_size },
        tls: 0,
        set_tid: tid.as_ptr() as u64,
        set_tid_size: 1,
        cgroup: 0,
    };
    let ret: isize;
    // SAFETY: clone3 with CLONE_VM: the child starts on its own stack inside the area
    // with r12 = t, calls thread_main, traps, and returns to user code through
    // rt_sigreturn; it never returns into this function.
    unsafe {
        core::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov rdi, r12",
            "call {entry}",
            "int3",
            "mov rsp, [r12 + {frame}]",
            "add rsp, 8",
            "mov eax, 15",
            "syscall",
            "ud2",
            "2:",
            entry = sym thread_main,
            frame = const core::mem::offset_of!(ThreadArgs, sigframe),
            inlateout("rax") NR_CLONE3 as isize => ret,
            in("rdi") &args as *const CloneArgs,
            in("rsi") core::mem::size_of::<CloneArgs>(),
            in("r12") t,
            lateout("rcx") _, lateout("r11") _,
        );
    }
    if ret < 0 { Err(-ret as i64) } else { Ok(()) }
}

extern "C" fn thread_main(t: *const ThreadArgs) {
    // SAFETY: t is the ThreadArgs this thread was created for.
    let t = unsafe { &*t };
    // SAFETY: t.process points at the process's RestorerArgs.
    let a = unsafe { &*(t.process as *const RestorerArgs) };
    // SAFETY: this thread's own state.
    let r = unsafe { apply_thread(t) }.and_then(|_| apply_creds(a)).and_then(|_| after_creds(t));
    if let Err((step, index, errno)) = r {
        let f = RestorerFailure { step, index, errno };
        // SAFETY: report and take the whole process down.
        unsafe {
            syscall3(NR_WRITE, a.status_fd as usize, &f as *const RestorerFailure as usize, core::mem::size_of::<RestorerFailure>());
        }
        exit_group(1);
    }
}

/// Recreates a POSIX timer with its original id (PR_TIMER_CREATE_RESTORE_IDS).
///
/// # Safety
/// Plain syscalls with pointers to locals.
unsafe fn create_timer(t: &TimerArgs) -> Result<(), i64> {
    #[repr(C)]
    struct SigEvent {
        value: u64,
        signo: i32,
        notify: i32,
        tid: i32,
        _pad: [i32; 11],
    }
    let sev = SigEvent { value: t.sigev_value, signo: t.signo, notify: t.notify, tid: t.notify_tid, _pad: [0; 11] };
    let mut id: i32 = t.id;
    // SAFETY: timer_create reads sev and reads/writes id (the requested id).
    let r = unsafe { syscall3(NR_TIMER_CREATE, t.clock as usize, &sev as *const SigEvent as usize, &mut id as *mut i32 as usize) };
    if r < 0 {
        return Err(-r as i64);
    }
    if id != t.id {
        return Err(-(id as i64) - 1000);
    }
    let mut spec = [t.interval_sec, t.interval_nsec, t.value_sec, t.value_nsec];
    let mut flags = 0usize;
    if t.pending != 0 {
        // Expire at once, at an absolute time placed so that the next expiry is the
        // one the dumped timer had (now + value - interval, never in the future).
        let mut now = [0i64; 2];
        // SAFETY: clock_gettime writes one timespec.
        let r = unsafe { syscall3(NR_CLOCK_GETTIME, t.clock as usize, now.as_mut_ptr() as usize, 0) };
        if r < 0 {
            return Err(-r as i64);
        }
        const NS: i64 = 1_000_000_000;
        let at = (now[0] as i128 * NS as i128 + now[1] as i128) + (t.value_sec as i128 * NS as i128 + t.value_nsec as i128)
            - (t.interval_sec as i128 * NS as i128 + t.interval_nsec as i128);
        let at = at.max(1);
        spec[2] = (at / NS as i128) as i64;
        spec[3] = (at % NS as i128) as i64;
        flags = 1; // TIMER_ABSTIME
    }
    // SAFETY: timer_settime reads one itimerspec.
    let r = unsafe { syscall6(NR_TIMER_SETTIME, id as usize, flags, spec.as_ptr() as usize, 0, 0, 0) };
    if r < 0 { Err(-r as i64) } else { Ok(()) }
}
