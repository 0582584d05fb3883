//! ptrace(2) and waitpid(2) on top of nix, plus the requests nix does not wrap
//! (XSAVE regsets, signal masks, rseq configuration).

use libc::{c_void, pid_t, user_regs_struct};
use nix::errno::Errno;
use nix::sys::ptrace;
use nix::unistd::Pid;

pub type Regs = user_regs_struct;

const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
const NT_X86_XSTATE: libc::c_int = 0x202;
pub const PTRACE_EVENT_STOP: i32 = 128;

/// What a waited-for tracee did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// PTRACE_EVENT_STOP (after PTRACE_INTERRUPT, or a group stop).
    Event(i32, i32),
    /// Syscall entry or exit stop (PTRACE_O_TRACESYSGOOD).
    Syscall,
    /// Signal-delivery stop with this signal.
    Signal(i32),
    Exited(i32),
    Killed(i32),
}

/// Waits for one state change of `pid` (any kind of child or tracee).
pub fn wait(pid: Pid, nohang: bool) -> Result<Option<Stop>, Errno> {
    let mut status = 0;
    let flags = libc::__WALL | if nohang { libc::WNOHANG } else { 0 };
    loop {
        // SAFETY: waitpid writes only into `status`.
        let r = unsafe { libc::waitpid(pid.as_raw(), &mut status, flags) };
        if r < 0 {
            let e = Errno::last();
            if e == Errno::EINTR {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Ok(None);
        }
        break;
    }
    Ok(Some(decode(status)))
}

fn decode(status: i32) -> Stop {
    if libc::WIFEXITED(status) {
        Stop::Exited(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Stop::Killed(libc::WTERMSIG(status))
    } else {
        let sig = libc::WSTOPSIG(status);
        let event = status >> 16;
        if sig == (libc::SIGTRAP | 0x80) {
            Stop::Syscall
        } else if event != 0 {
            Stop::Event(event, sig)
        } else {
            Stop::Signal(sig)
        }
    }
}

pub fn seize(pid: Pid, exit_kill: bool) -> Result<(), Errno> {
    let mut opts = ptrace::Options::PTRACE_O_TRACESYSGOOD;
    if exit_kill {
        opts |= ptrace::Options::PTRACE_O_EXITKILL;
    }
    ptrace::seize(pid, opts)
}

/// Makes a seized, stopped tracee die if crtool dies (PTRACE_O_EXITKILL added).
pub fn set_exit_kill(pid: Pid) -> Result<(), Errno> {
    ptrace::setoptions(pid, ptrace::Options::PTRACE_O_TRACESYSGOOD | ptrace::Options::PTRACE_O_EXITKILL)
}

/// Seizes a task so that everything it forks or clones is traced too, and dies if
/// crtool dies (used for the tree being restored).
pub fn seize_tree(pid: Pid) -> Result<(), Errno> {
    use ptrace::Options as O;
    ptrace::seize(pid, O::PTRACE_O_TRACESYSGOOD | O::PTRACE_O_EXITKILL | O::PTRACE_O_TRACEFORK | O::PTRACE_O_TRACECLONE)
}

/// Waits for a state change of any child or tracee; returns who and what. Fails
/// with EINTR once crtool was asked to stop (see `sys::signals`).
pub fn wait_any() -> Result<(Pid, Stop), Errno> {
    wait_for(-1)
}

/// Waits for `pid` (or any, -1) like `wait_any`, EINTR included.
pub fn wait_for(pid: i32) -> Result<(Pid, Stop), Errno> {
    let mut status = 0;
    let r = loop {
        // SAFETY: waitpid writes only into `status`.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if r < 0 && Errno::last() == Errno::EINTR {
            if super::signals::interrupted().is_some() {
                return Err(Errno::EINTR);
            }
            continue;
        }
        break Errno::result(r)?;
    };
    Ok((Pid::from_raw(r), decode(status)))
}

/// Queued signals of a thread (`shared` = the process-wide queue), as raw siginfos.
pub fn peek_siginfo(tid: Pid, shared: bool) -> Result<Vec<[u8; 128]>, Errno> {
    #[repr(C)]
    struct Args {
        off: u64,
        flags: u32,
        nr: i32,
    }
    let mut out = Vec::new();
    loop {
        let mut buf = [[0u8; 128]; 32];
        let mut a = Args { off: out.len() as u64, flags: if shared { 1 } else { 0 }, nr: 32 };
        let n = raw(0x4209 /* PTRACE_PEEKSIGINFO */, tid, (&mut a as *mut Args) as usize, buf.as_mut_ptr().cast())?;
        if n <= 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    Ok(out)
}

pub fn interrupt(pid: Pid) -> Result<(), Errno> {
    ptrace::interrupt(pid)
}
pub fn getregs(pid: Pid) -> Result<Regs, Errno> {
    ptrace::getregs(pid)
}
pub fn setregs(pid: Pid, regs: &Regs) -> Result<(), Errno> {
    ptrace::setregs(pid, *regs)
}
/// Resumes, suppressing whatever signal the tracee stopped with.
pub fn cont(pid: Pid) -> Result<(), Errno> {
    ptrace::cont(pid, None)
}
/// Resumes to the next syscall entry/exit stop.
pub fn cont_syscall(pid: Pid) -> Result<(), Errno> {
    ptrace::syscall(pid, None)
}
pub fn detach(pid: Pid) -> Result<(), Errno> {
    ptrace::detach(pid, None)
}

/// Detaches, delivering `sig` (0: none) as the tracee resumes.
pub fn detach_signal(pid: Pid, sig: i32) -> Result<(), Errno> {
    raw(libc::PTRACE_DETACH, pid, 0, sig as usize as *mut c_void).map(drop)
}

fn raw(req: libc::c_uint, pid: Pid, addr: usize, data: *mut c_void) -> Result<libc::c_long, Errno> {
    // SAFETY: callers pass `data` pointing at a buffer of the size the request needs.
    let r = unsafe { libc::ptrace(req, pid.as_raw() as pid_t, addr as *mut c_void, data) };
    Errno::result(r)
}

/// The task's XSAVE area (standard format), `size` bytes as sized from CPUID.
pub fn get_xstate(pid: Pid, size: usize) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; size];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: size };
    raw(libc::PTRACE_GETREGSET, pid, NT_X86_XSTATE as usize, (&mut iov as *mut libc::iovec).cast())?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

pub fn set_xstate(pid: Pid, xstate: &[u8]) -> Result<(), Errno> {
    let mut copy = xstate.to_vec();
    let mut iov = libc::iovec { iov_base: copy.as_mut_ptr().cast(), iov_len: copy.len() };
    raw(libc::PTRACE_SETREGSET, pid, NT_X86_XSTATE as usize, (&mut iov as *mut libc::iovec).cast())?;
    Ok(())
}

pub fn get_sigmask(pid: Pid) -> Result<u64, Errno> {
    let mut m = 0u64;
    raw(PTRACE_GETSIGMASK, pid, 8, (&mut m as *mut u64).cast())?;
    Ok(m)
}

pub fn set_sigmask(pid: Pid, mask: u64) -> Result<(), Errno> {
    let mut m = mask;
    raw(PTRACE_SETSIGMASK, pid, 8, (&mut m as *mut u64).cast())?;
    Ok(())
}

/// `struct ptrace_rseq_configuration`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct RseqConfig {
    pub rseq_abi_pointer: u64,
    pub rseq_abi_size: u32,
    pub signature: u32,
    pub flags: u32,
    pub pad: u32,
}

pub fn get_rseq(pid: Pid) -> Result<RseqConfig, Errno> {
    let mut c = RseqConfig::default();
    raw(PTRACE_GET_RSEQ_CONFIGURATION, pid, std::mem::size_of::<RseqConfig>(), (&mut c as *mut RseqConfig).cast())?;
    Ok(c)
}

/// get_robust_list(2) of another task: (head, len).
pub fn get_robust_list(tid: Pid) -> Result<(u64, u64), Errno> {
    let mut head = 0u64;
    let mut len = 0usize;
    // SAFETY: the kernel writes one pointer and one size_t into our locals.
    let r = unsafe { libc::syscall(libc::SYS_get_robust_list, tid.as_raw(), &mut head as *mut u64, &mut len as *mut usize) };
    Errno::result(r)?;
    Ok((head, len as u64))
}

/// Resumes delivering signal `sig` (used when a signal arrives before our stop).
pub fn cont_signal(pid: Pid, sig: i32) -> Result<(), Errno> {
    raw(libc::PTRACE_CONT, pid, 0, sig as usize as *mut c_void).map(drop)
}

/// Resumes to the next syscall stop, delivering `sig` (a signal-delivery stop).
pub fn syscall_signal(pid: Pid, sig: i32) -> Result<(), Errno> {
    raw(libc::PTRACE_SYSCALL, pid, 0, sig as usize as *mut c_void).map(drop)
}

/// Whether GDT TLS entry `idx` (12..=14 on x86-64) of `tid` holds a segment set with
/// set_thread_area(2) (PTRACE_GET_THREAD_AREA): an empty one has base and limit 0
/// and is marked not present.
pub fn tls_entry_used(tid: Pid, idx: u32) -> bool {
    let mut d = [0u32; 4]; // struct user_desc: entry_number, base_addr, limit, flags
    if raw(25 /* PTRACE_GET_THREAD_AREA */, tid, idx as usize, d.as_mut_ptr().cast()).is_err() {
        return false;
    }
    let not_present = d[3] & (1 << 5) != 0;
    !(d[1] == 0 && d[2] == 0 && not_present)
}
