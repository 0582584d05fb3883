//! Process-level syscalls no crate wraps: clone3 with set_tid, pidfds, remote memory.

use nix::errno::Errno;
use nix::unistd::Pid;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// What `fork_with_pids` returned in this process.
pub enum Forked {
    Parent(Pid),
    Child,
}

/// fork(2) with `flags` (e.g. CLONE_NEWPID) that gives the child exactly the PIDs
/// `pids`, from its innermost PID namespace outwards (clone3 with set_tid). EEXIST
/// means a PID is taken. Refused (EDEADLK) unless this process is single-threaded:
/// the child continues with a copy of this thread only, as after fork.
pub fn fork_with_pids(pids: &[i32], flags: u64) -> Result<Forked, Errno> {
    fork_with_pids_signal(pids, flags, libc::SIGCHLD)
}

/// `fork_with_pids` whose child sends `exit_signal` (0: none) to its parent when it
/// ends, as clone(2) children may.
pub fn fork_with_pids_signal(pids: &[i32], flags: u64, exit_signal: i32) -> Result<Forked, Errno> {
    single_threaded()?;
    let args = super::abi::CloneArgs {
        flags,
        exit_signal: exit_signal as u64,
        set_tid: if pids.is_empty() { 0 } else { pids.as_ptr() as u64 },
        set_tid_size: pids.len() as u64,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM duplicates the address space like fork (the
    // caller is single-threaded, checked above); `args` and `pids` outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_clone3, &args as *const super::abi::CloneArgs, std::mem::size_of::<super::abi::CloneArgs>()) };
    match Errno::result(r)? {
        0 => Ok(Forked::Child),
        child => Ok(Forked::Parent(Pid::from_raw(child as i32))),
    }
}

pub fn pidfd_open(pid: Pid) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes no pointers; a non-negative result is a new fd we own.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    let fd = Errno::result(r)? as RawFd;
    // SAFETY: fd was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// pidfd_open(pid, flags) (flags: PIDFD_NONBLOCK = O_NONBLOCK).
pub fn pidfd_open_flags(pid: i32, flags: u32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes no pointers; a non-negative result is a new fd we own.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) };
    let fd = Errno::result(r)? as RawFd;
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// SIGKILL to the process behind `pidfd` (pidfd_send_signal(2)): never another
/// process that reused its PID.
pub fn pidfd_kill(pidfd: std::os::fd::BorrowedFd) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_send_signal with no siginfo pointer.
    Errno::result(unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), libc::SIGKILL, 0usize, 0u32) }).map(drop)
}

/// process_mrelease(2): frees the memory of the dying process behind `pidfd`
/// from this thread, alongside its own exit.
pub fn mrelease(pidfd: &OwnedFd) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    // SAFETY: process_mrelease takes an fd and flags, no pointers.
    Errno::result(unsafe { libc::syscall(libc::SYS_process_mrelease, pidfd.as_raw_fd(), 0u32) }).map(drop)
}

/// Duplicates fd `target_fd` of the process behind `pidfd` into this process.
pub fn pidfd_getfd(pidfd: &OwnedFd, target_fd: i32) -> Result<OwnedFd, Errno> {
    use std::os::fd::AsRawFd;
    // SAFETY: no pointers; a non-negative result is a new fd we own.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target_fd, 0) };
    let fd = Errno::result(r)? as RawFd;
    // SAFETY: fresh fd from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Writes `data` at `addr` in `pid`'s address space.
pub fn write_remote(pid: Pid, addr: u64, data: &[u8]) -> Result<(), Errno> {
    let mut done = 0;
    while done < data.len() {
        let local = libc::iovec { iov_base: data[done..].as_ptr() as *mut _, iov_len: data.len() - done };
        let remote = libc::iovec { iov_base: (addr + done as u64) as *mut _, iov_len: data.len() - done };
        // SAFETY: the local iovec covers our slice; remote memory is checked by the kernel.
        let r = unsafe { libc::process_vm_writev(pid.as_raw(), &local, 1, &remote, 1, 0) };
        let n = Errno::result(r)? as usize;
        if n == 0 {
            return Err(Errno::EFAULT);
        }
        done += n;
    }
    Ok(())
}

/// Reads `buf.len()` bytes at `addr` from `pid`.
pub fn read_remote(pid: Pid, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
    let mut done = 0;
    while done < buf.len() {
        let len = buf.len() - done;
        let local = libc::iovec { iov_base: buf[done..].as_mut_ptr().cast(), iov_len: len };
        let remote = libc::iovec { iov_base: (addr + done as u64) as *mut _, iov_len: len };
        // SAFETY: the local iovec covers our buffer; remote memory is checked by the kernel.
        let r = unsafe { libc::process_vm_readv(pid.as_raw(), &local, 1, &remote, 1, 0) };
        let n = Errno::result(r)? as usize;
        if n == 0 {
            return Err(Errno::EFAULT);
        }
        done += n;
    }
    Ok(())
}

/// kcmp(2) KCMP_FILE: `Equal` when fd `a` of `pid_a` and fd `b` of `pid_b` are one
/// open file description, else the kernel's (stable) order of the two.
pub fn kcmp_file(pid_a: i32, a: i32, pid_b: i32, b: i32) -> Result<std::cmp::Ordering, Errno> {
    // SAFETY: kcmp takes no pointers for KCMP_FILE.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid_a, pid_b, 0 /* KCMP_FILE */, a, b) };
    Ok(match Errno::result(r)? {
        0 => std::cmp::Ordering::Equal,
        1 => std::cmp::Ordering::Less,
        _ => std::cmp::Ordering::Greater,
    })
}

/// kcmp(2) KCMP_EPOLL_TFD: whether fd `fd` of `pid` is the file epoll `epfd` of
/// `ep_pid` watches as target fd `tfd` (its `toff`-th watch with that number).
pub fn kcmp_epoll_tfd(pid: i32, fd: i32, ep_pid: i32, epfd: i32, tfd: i32, toff: u32) -> Result<bool, Errno> {
    #[repr(C)]
    struct Slot {
        efd: u32,
        tfd: u32,
        toff: u32,
    }
    let slot = Slot { efd: epfd as u32, tfd: tfd as u32, toff };
    // SAFETY: the kernel reads one kcmp_epoll_slot from `slot`.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid, ep_pid, 7 /* KCMP_EPOLL_TFD */, fd, &raw const slot) };
    Ok(Errno::result(r)? == 0)
}

/// struct sched_attr (sched_getattr(2), SCHED_ATTR_SIZE_VER1).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct SchedAttr {
    pub size: u32,
    pub policy: u32,
    pub flags: u64,
    pub nice: i32,
    pub priority: u32,
    pub runtime: u64,
    pub deadline: u64,
    pub period: u64,
    pub util_min: u32,
    pub util_max: u32,
}

/// sched_getattr(2) of thread `tid`.
pub fn sched_getattr(tid: i32) -> Result<SchedAttr, Errno> {
    let mut a = SchedAttr::default();
    // SAFETY: the kernel writes at most `size` bytes into our local struct.
    Errno::result(unsafe { libc::syscall(libc::SYS_sched_getattr, tid, &mut a as *mut SchedAttr, std::mem::size_of::<SchedAttr>() as u32, 0) })?;
    Ok(a)
}

/// sched_setattr(2) of thread `tid`.
pub fn sched_setattr(tid: i32, a: &SchedAttr) -> Result<(), Errno> {
    let mut a = *a;
    a.size = std::mem::size_of::<SchedAttr>() as u32;
    // SAFETY: the kernel reads our local struct.
    Errno::result(unsafe { libc::syscall(libc::SYS_sched_setattr, tid, &a as *const SchedAttr, 0) }).map(drop)
}

const IOPRIO_WHO_PROCESS: i32 = 1;

/// ioprio_get(IOPRIO_WHO_PROCESS, tid).
pub fn ioprio_get(tid: i32) -> Result<i32, Errno> {
    // SAFETY: no pointers.
    Errno::result(unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid) }).map(|v| v as i32)
}

/// ioprio_set(IOPRIO_WHO_PROCESS, tid, prio).
pub fn ioprio_set(tid: i32, prio: i32) -> Result<(), Errno> {
    // SAFETY: no pointers.
    Errno::result(unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, tid, prio) }).map(drop)
}

/// What kcmp(2) compares between two processes.
#[derive(Debug, Clone, Copy)]
pub enum Kcmp {
    Vm = 1,
    Files = 2,
    Fs = 3,
    Sighand = 4,
    Sysvsem = 6,
}

/// kcmp(2): whether two tasks share a kernel object of kind `k` (`Equal`), or how
/// the kernel orders their (different) objects.
pub fn kcmp(a: i32, b: i32, k: Kcmp) -> Result<std::cmp::Ordering, Errno> {
    // SAFETY: kcmp with these types takes no pointers.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, a, b, k as i32, 0, 0) };
    Ok(match Errno::result(r)? {
        0 => std::cmp::Ordering::Equal,
        1 => std::cmp::Ordering::Less,
        _ => std::cmp::Ordering::Greater,
    })
}

/// How much the kernel adds to an ITIMER_VIRTUAL/ITIMER_PROF value when it is set
/// (one scheduler tick), in microseconds: set 1 s on ourselves and read it back.
pub fn cpu_itimer_tick_usec() -> u64 {
    let one_sec = libc::itimerval { it_interval: libc::timeval { tv_sec: 0, tv_usec: 0 }, it_value: libc::timeval { tv_sec: 1, tv_usec: 0 } };
    let mut got = one_sec;
    let zero = libc::itimerval { it_interval: libc::timeval { tv_sec: 0, tv_usec: 0 }, it_value: libc::timeval { tv_sec: 0, tv_usec: 0 } };
    // SAFETY: arms and disarms crtool's own ITIMER_PROF with local structs; it cannot
    // fire in between (a second of CPU time is not spent here).
    unsafe {
        libc::setitimer(libc::ITIMER_PROF, &one_sec, std::ptr::null_mut());
        libc::getitimer(libc::ITIMER_PROF, &mut got);
        libc::setitimer(libc::ITIMER_PROF, &zero, std::ptr::null_mut());
    }
    let usec = got.it_value.tv_sec as u64 * 1_000_000 + got.it_value.tv_usec as u64;
    usec.saturating_sub(1_000_000).min(100_000)
}

/// Ends this (forked) process at once, without running crtool's destructors.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit(2) never returns and runs no user code.
    unsafe { libc::_exit(code) }
}

/// Makes this (forked) process end the way `status` (a wait status) says, so that
/// it stays behind as a zombie with exactly that status.
pub fn exit_like(status: i32) -> ! {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // SAFETY: default disposition, empty mask, then the signal to ourselves.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            libc::kill(libc::getpid(), sig);
        }
    }
    exit_now(libc::WEXITSTATUS(status))
}

/// prlimit64(2) read of `resource` for `pid`: (soft, hard).
pub fn get_rlimit(pid: i32, resource: u32) -> Result<(u64, u64), Errno> {
    let mut old = libc::rlimit64 { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a NULL new limit; the kernel only writes `old`.
    let r = unsafe { libc::prlimit64(pid, resource as _, std::ptr::null(), &mut old) };
    Errno::result(r)?;
    Ok((old.rlim_cur, old.rlim_max))
}

/// Sets one of our own resource limits.
pub fn set_rlimit(resource: u32, soft: u64, hard: u64) -> Result<(), Errno> {
    let new = libc::rlimit64 { rlim_cur: soft, rlim_max: hard };
    // SAFETY: prlimit64 on ourselves reading a local struct.
    Errno::result(unsafe { libc::prlimit64(0, resource as _, &new, std::ptr::null_mut()) }).map(drop)
}

/// Raises our soft fd limit to the hard one.
pub fn raise_nofile() {
    if let Ok((_, hard)) = get_rlimit(0, libc::RLIMIT_NOFILE) {
        let _ = set_rlimit(libc::RLIMIT_NOFILE, hard, hard);
    }
}

/// PR_SET_NAME: the thread's comm (truncated by the kernel to 15 bytes).
pub fn set_comm(name: &str) {
    let c = std::ffi::CString::new(name.replace('\0', "")).unwrap_or_default();
    // SAFETY: PR_SET_NAME reads a NUL-terminated string.
    unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr()) };
}

/// Size of struct prctl_mm_map the kernel expects (PR_SET_MM_MAP_SIZE).
pub fn mm_map_size() -> Result<u32, Errno> {
    let mut size: u32 = 0;
    // SAFETY: PR_SET_MM_MAP_SIZE writes one u32.
    Errno::result(unsafe { libc::prctl(libc::PR_SET_MM, 15, &mut size as *mut u32, 0, 0) })?;
    Ok(size)
}

/// Default SIGPIPE disposition (die quietly when a pipe reader goes away).
pub fn default_sigpipe() {
    // SAFETY: changing one signal's disposition to the default.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// Forks a child that only waits to be killed (for feature probes).
pub fn fork_idle_child() -> Result<Pid, Errno> {
    single_threaded()?;
    // SAFETY: crtool is single-threaded (checked); the child only calls pause(2).
    match unsafe { libc::fork() } {
        -1 => Err(Errno::last()),
        0 => loop {
            // SAFETY: pause(2) until killed.
            unsafe { libc::pause() };
        },
        child => Ok(Pid::from_raw(child)),
    }
}

/// Forking with raw clone3 is only sound while this process has one thread.
pub fn single_threaded() -> Result<(), Errno> {
    match std::fs::read_dir("/proc/self/task").map(|d| d.count()) {
        Ok(1) => Ok(()),
        _ => Err(Errno::EDEADLK),
    }
}

unsafe extern "C" {
    /// glibc's offset of the thread's rseq area from the thread pointer (glibc >= 2.35).
    static __rseq_offset: isize;
    static __rseq_size: u32;
}

/// This thread's glibc rseq registration, which must go before crtool's memory does.
pub fn own_rseq() -> crate::sys::abi::RseqReg {
    // SAFETY: reading two glibc-exported constants and the thread pointer.
    unsafe {
        if __rseq_size == 0 {
            return crate::sys::abi::RseqReg::default();
        }
        let tp: u64;
        std::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly));
        crate::sys::abi::RseqReg { ptr: (tp as i64 + __rseq_offset as i64) as u64, len: 32.max(__rseq_size), sig: 0x5305_3053 }
    }
}

/// PR_SET_CHILD_SUBREAPER, on or off.
pub fn set_subreaper(on: bool) {
    // SAFETY: a prctl taking a plain integer.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, on as libc::c_ulong, 0, 0, 0) };
}

/// PR_SET_NO_NEW_PRIVS (it can only ever be turned on).
pub fn set_no_new_privs() {
    // SAFETY: a prctl taking plain integers.
    unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
}

/// setpriority(PRIO_PROCESS, tid, nice).
pub fn set_nice(tid: i32, nice: i32) -> Result<(), Errno> {
    // SAFETY: no pointers.
    Errno::result(unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) }).map(drop)
}

/// setresgid then setresuid of this (forked) process; supplementary groups dropped.
pub fn set_ids(uids: [u32; 3], gids: [u32; 3]) -> Result<(), Errno> {
    // SAFETY: id syscalls taking plain integers (and no group list).
    unsafe {
        Errno::result(libc::setgroups(0, std::ptr::null()))?;
        Errno::result(libc::setresgid(gids[0], gids[1], gids[2]))?;
        Errno::result(libc::setresuid(uids[0], uids[1], uids[2]))?;
    }
    Ok(())
}

/// PR_SET_THP_DISABLE for this mm: `value` as PR_GET_THP_DISABLE reported it (1:
/// disabled; 3: disabled except where madvise(MADV_HUGEPAGE)d, Linux 6.18).
pub fn set_thp_disable(value: i32) -> Result<(), Errno> {
    let flags: libc::c_ulong = if value & 2 != 0 { 1 << 1 /* PR_THP_DISABLE_EXCEPT_ADVISED */ } else { 0 };
    let on: libc::c_ulong = if value != 0 { 1 } else { 0 };
    // SAFETY: a prctl taking plain integers.
    Errno::result(unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, on, flags, 0 as libc::c_ulong, 0 as libc::c_ulong) }).map(drop)
}

/// Makes the membarrier registrations in `registrations` (a
/// MEMBARRIER_CMD_GET_REGISTRATIONS mask: each bit is the REGISTER_* command).
pub fn register_membarrier(registrations: u32) -> Result<(), Errno> {
    for bit in 0..31 {
        let cmd = 1u32 << bit;
        if registrations & cmd != 0 {
            // SAFETY: membarrier(2) takes plain integers.
            Errno::result(unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) })?;
        }
    }
    Ok(())
}

/// Runs `f` while this thread is pinned to `cpu`, after yielding once so that the
/// thread is really running there.
pub fn on_cpu<T>(cpu: usize, f: impl FnOnce() -> T) -> T {
    use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
    let me = nix::unistd::Pid::from_raw(0);
    let old = sched_getaffinity(me).ok();
    let mut set = CpuSet::new();
    let pinned = set.set(cpu).is_ok() && sched_setaffinity(me, &set).is_ok();
    if pinned {
        nix::sched::sched_yield().ok();
    }
    let r = f();
    if let (true, Some(old)) = (pinned, old) {
        let _ = sched_setaffinity(me, &old);
    }
    r
}

/// Waits until child `pid` has exited, without reaping it (waitid WNOWAIT).
pub fn wait_exited_nowait(pid: Pid) {
    // SAFETY: waitid writes into a local siginfo.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        while libc::waitid(libc::P_PID, pid.as_raw() as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT) < 0
            && Errno::last() == Errno::EINTR
        {}
    }
}

/// sched_setaffinity(2) of `tid` to the CPUs in `mask` (64 per word); best effort:
/// CPUs that do not exist here are dropped, and an empty result leaves it alone.
pub fn set_affinity(tid: Pid, mask: &[u64]) {
    let mut set = nix::sched::CpuSet::new();
    let mut any = false;
    for (w, bits) in mask.iter().enumerate() {
        for b in 0..64 {
            if bits & (1 << b) != 0 && set.set(w * 64 + b).is_ok() {
                any = true;
            }
        }
    }
    if any {
        let _ = nix::sched::sched_setaffinity(tid, &set);
    }
}

/// Runs `make` in a short-lived forked child (which may change its credentials,
/// session or terminal without touching crtool's) and takes the fd it made
/// (pidfd_getfd); the child exits once crtool has it.
pub fn fd_from_helper(make: impl FnOnce() -> std::io::Result<OwnedFd>) -> std::io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (done_r, done_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    match fork_with_pids(&[], 0)? {
        Forked::Child => {
            drop(ready_r);
            drop(done_w);
            // The fd number, or minus the errno.
            let n: i32 = match make() {
                Ok(f) => {
                    let n = f.as_raw_fd();
                    std::mem::forget(f);
                    n
                }
                Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
            };
            super::fd::write_raw(ready_w.as_raw_fd(), &n.to_ne_bytes());
            let mut b = [0u8; 1];
            let _ = super::fd::read_raw(done_r.as_raw_fd(), &mut b);
            exit_now(0)
        }
        Forked::Parent(child) => {
            drop(ready_w);
            drop(done_r);
            let mut b = [0u8; 4];
            let got = super::fd::read_raw(ready_r.as_raw_fd(), &mut b);
            let n = i32::from_ne_bytes(b);
            let r = match got {
                Ok(4) if n >= 0 => pidfd_open(child).and_then(|p| pidfd_getfd(&p, n)).map_err(std::io::Error::from),
                Ok(4) => Err(std::io::Error::from_raw_os_error(-n)),
                _ => Err(std::io::Error::other("the helper went away")),
            };
            drop(done_w);
            let _ = nix::sys::wait::waitpid(child, None);
            r
        }
    }
}

/// In a forked helper: SIGKILL when the process that forked it (`parent`)
/// ends (PR_SET_PDEATHSIG, prctl(2)); ends at once if it already has.
pub fn die_with_parent(parent: Pid) {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) };
    if nix::unistd::getppid() != parent {
        exit_now(1);
    }
}

/// Waits for child `pid`, whatever signal it sends at its end (__WALL), and
/// reaps it: its exit code, None if a signal killed it (or it is not our child).
pub fn wait_any_child(pid: Pid) -> Option<i32> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes only into `status`.
        let r = unsafe { libc::waitpid(pid.as_raw(), &mut status, libc::__WALL) };
        if r == pid.as_raw() {
            return libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        }
        if r < 0 && Errno::last() != Errno::EINTR {
            return None;
        }
    }
}
