//! Process-level syscalls no crate wraps: clone3 with set_tid, pidfds, remote memory.

use nix::errno::Errno;
use nix::unistd::Pid;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

#[repr(C)]
#[derive(Default)]
struct Clone3Args {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// What `fork_with_pid` returned in this process.
pub enum Forked {
    Parent(Pid),
    Child,
}

/// fork(2) that gives the child exactly `pid` (clone3 with set_tid), in the caller's
/// PID namespace. EEXIST means the PID is taken.
///
/// # Safety
/// The caller must be single-threaded: the child continues with a copy of this
/// thread only (as after fork), and must not rely on other threads' locks.
pub unsafe fn fork_with_pid(pid: i32) -> Result<Forked, Errno> {
    // SAFETY: forwarded contract.
    unsafe { fork_with_pids(&[pid], 0) }
}

/// fork(2) with `flags` (e.g. CLONE_NEWPID) and the child's PIDs from its innermost
/// PID namespace outwards (`set_tid`).
///
/// # Safety
/// As for [`fork_with_pid`].
pub unsafe fn fork_with_pids(pids: &[i32], flags: u64) -> Result<Forked, Errno> {
    let args = Clone3Args {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        set_tid: pids.as_ptr() as u64,
        set_tid_size: pids.len() as u64,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM duplicates the address space like fork; `args`
    // and `tid` outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_clone3, &args as *const Clone3Args, std::mem::size_of::<Clone3Args>()) };
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

/// kcmp(2) KCMP_FILE: whether fd `a` of `pid_a` and fd `b` of `pid_b` are one open
/// file description.
pub fn same_file(pid_a: i32, a: i32, pid_b: i32, b: i32) -> Result<bool, Errno> {
    // SAFETY: kcmp takes no pointers for KCMP_FILE.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid_a, pid_b, 0 /* KCMP_FILE */, a, b) };
    Ok(Errno::result(r)? == 0)
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
