//! The dump-side parasite: injected into a frozen task, it serves crtool's commands
//! over a SOCK_SEQPACKET socket and reports what only the task itself can see. Every
//! decision stays in crtool; this loop only executes.

#![no_std]
#![no_main]

#[path = "abi.rs"]
mod abi;
mod rt;

use abi::*;
use core::mem::size_of;
use rt::*;

const SOL_SOCKET: i32 = 1;
const SCM_RIGHTS: i32 = 1;

#[repr(C)]
struct MsgHdr {
    name: u64,
    namelen: u32,
    _pad: u32,
    iov: *mut IoVec,
    iovlen: u64,
    control: *mut u8,
    controllen: u64,
    flags: i32,
    _pad2: i32,
}

const CMSG_HDR: usize = 16; // struct cmsghdr: len u64, level i32, type i32
const CMSG_SPACE_MAX: usize = CMSG_HDR + MAX_FDS_PER_MSG * 4;

/// The task's fds the control socket occupies: [the parasite's end, crtool's end
/// until crtool has taken it], -1 once closed (the injected socketpair(2) writes
/// them here). Each is closed exactly once, by whoever swaps it out first: the
/// command loop on its way out, crtool's remote close (`parasite_close_slot`) or a
/// thread's cure path in the stub, should crtool die before. The blob's only static.
#[unsafe(no_mangle)]
pub static parasite_open_fds: [core::sync::atomic::AtomicI32; 2] = [core::sync::atomic::AtomicI32::new(-1), core::sync::atomic::AtomicI32::new(-1)];

/// All other mutable state lives on the stack frame of `serve`.
struct Parasite {
    sock: i32,
    pipe: i32,
    buf: [u8; PARASITE_MSG_MAX],
    cbuf: [u64; CMSG_SPACE_MAX / 8 + 1],
}

/// Entry: crtool sets rip here with rdi = &ParasiteArgs and rsp at the top of the
/// blob's own stack. `parasite_main` returns the address of the thread's cure frame
/// once it is done, and the entry returns through it (rt_sigreturn) to the task's
/// own registers, FPU state and signal mask. That happens only if crtool went away:
/// normally crtool takes the thread back (PTRACE_INTERRUPT) while the parasite waits
/// after its last command, and puts the state back itself. No signal is involved: a
/// trap (int3) would make the kernel reset a blocked or ignored SIGTRAP's
/// disposition to SIG_DFL in the live task.
#[unsafe(naked)]
#[unsafe(no_mangle)]
#[unsafe(link_section = ".text.entry")]
pub unsafe extern "C" fn _start() -> ! {
    core::arch::naked_asm!(
        "and rsp, -16",
        "call {main}",
        "mov rsp, rax",
        "add rsp, 8",
        "mov eax, {sigreturn}",
        "syscall",
        "ud2",
        main = sym parasite_main,
        sigreturn = const NR_RT_SIGRETURN,
    );
}

/// Where crtool makes the remote syscalls it runs in any thread of the task (rip
/// here, rax and the arguments set, r12 = the thread's cure frame). crtool stops the
/// thread at the syscall's exit and puts its registers back; a thread crtool left
/// (crtool died) goes on to return through its cure frame to its own state.
#[unsafe(naked)]
#[unsafe(no_mangle)]
#[unsafe(link_section = ".text.stub")]
pub unsafe extern "C" fn parasite_syscall_stub() -> ! {
    core::arch::naked_asm!(
        "syscall",
        // crtool is gone: close what is left of the control socket, then cure.
        "lea rcx, [rip + {fds}]",
        "mov eax, -1",
        "xchg eax, [rcx]",
        "test eax, eax",
        "js 2f",
        "mov edi, eax",
        "mov eax, {close}",
        "syscall",
        "2:",
        "lea rcx, [rip + {fds}]",
        "mov eax, -1",
        "xchg eax, [rcx + 4]",
        "test eax, eax",
        "js 3f",
        "mov edi, eax",
        "mov eax, {close}",
        "syscall",
        "3:",
        "mov rsp, r12",
        "add rsp, 8",
        "mov eax, {sigreturn}",
        "syscall",
        "ud2",
        fds = sym parasite_open_fds,
        close = const NR_CLOSE,
        sigreturn = const NR_RT_SIGRETURN,
    );
}

/// A remote close of slot `rdi` of `parasite_open_fds` (r12 = the thread's cure
/// frame): the slot is swapped to -1 first, so that the fd is closed exactly once,
/// then the stub makes one syscall (close, or getpid for a slot already closed).
#[unsafe(naked)]
#[unsafe(no_mangle)]
#[unsafe(link_section = ".text.stub")]
pub unsafe extern "C" fn parasite_close_slot() -> ! {
    core::arch::naked_asm!(
        "lea rcx, [rip + {fds}]",
        "mov eax, -1",
        "xchg eax, [rcx + rdi * 4]",
        "test eax, eax",
        "js 2f",
        "mov edi, eax",
        "mov eax, {close}",
        "jmp {stub}",
        "2:",
        "mov eax, {getpid}",
        "jmp {stub}",
        fds = sym parasite_open_fds,
        close = const NR_CLOSE,
        getpid = const 39,
        stub = sym parasite_syscall_stub,
    );
}

extern "C" fn parasite_main(args: *mut ParasiteArgs) -> u64 {
    // SAFETY: crtool passes a pointer to the args block inside the blob mapping.
    let (sock, frame) = unsafe { ((*args).sock, (*args).frame) };
    let mut p = Parasite { sock, pipe: -1, buf: [0; PARASITE_MSG_MAX], cbuf: [0; CMSG_SPACE_MAX / 8 + 1] };
    let finished = p.serve();
    if p.pipe >= 0 {
        // SAFETY: closing an fd this parasite received.
        unsafe { syscall3(NR_CLOSE, p.pipe as usize, 0, 0) };
    }
    if finished {
        // crtool takes the thread back while it waits here; should crtool be gone
        // instead, the socket reads end-of-file and the thread cures itself.
        let mut b = [0u8; 16];
        // SAFETY: a blocking read into a local buffer.
        unsafe { syscall6(NR_RECVFROM, sock as usize, b.as_mut_ptr() as usize, b.len(), 0, 0, 0) };
    }
    // The parasite's end of the control socket, unless closed already.
    let fd = parasite_open_fds[0].swap(-1, core::sync::atomic::Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: closing the fd this slot held, which nobody else will close.
        unsafe { syscall3(NR_CLOSE, fd as usize, 0, 0) };
    }
    let _ = sock;
    frame
}

impl Parasite {
    /// Serves commands; true once crtool said goodbye (CMD_FINI), false if it went
    /// away (the socket closed) or sent garbage.
    fn serve(&mut self) -> bool {
        loop {
            let (len, fd) = self.recv();
            if len < size_of::<Cmd>() as isize {
                return false;
            }
            // SAFETY: buf holds at least size_of::<Cmd>() received bytes.
            let cmd = unsafe { core::ptr::read_unaligned(self.buf.as_ptr() as *const Cmd) };
            let payload_len = len as usize - size_of::<Cmd>();
            match cmd.op {
                CMD_TAKE_PIPE => {
                    if self.pipe >= 0 {
                        // SAFETY: closing our previous pipe fd.
                        unsafe { syscall3(NR_CLOSE, self.pipe as usize, 0, 0) };
                    }
                    self.pipe = fd;
                    // The fd number, so that crtool can close it should this loop fail.
                    self.reply(cmd.op, 0, if fd >= 0 { fd as i64 } else { -9 }, &[]);
                }
                CMD_DUMP_PAGES => {
                    let n = (cmd.n as usize).min(payload_len / size_of::<IoVec>());
                    let ret = self.dump_pages(n);
                    self.reply(cmd.op, 0, ret, &[]);
                }
                CMD_GET_INFO => {
                    let info = get_info();
                    // SAFETY: ParasiteInfo is plain data; we view it as bytes to send it.
                    let bytes = unsafe {
                        core::slice::from_raw_parts(&info as *const ParasiteInfo as *const u8, size_of::<ParasiteInfo>())
                    };
                    self.reply(cmd.op, 1, 0, bytes);
                }
                CMD_SEND_FDS => {
                    let n = (cmd.n as usize).min(payload_len / 4).min(MAX_FDS_PER_MSG);
                    self.send_fds(n);
                }
                CMD_NEW_UFFD => {
                    // USERFAULTFD_IOC_NEW = _IO(0xAA, 0x00): a userfaultfd of this
                    // task's memory, allowed to whoever could open the device. It
                    // goes to crtool as CMD_SEND_FDS would send it, then is closed
                    // here: nothing of it stays in the task.
                    let r = if fd >= 0 {
                        // SAFETY: an ioctl on the fd crtool sent, then its close.
                        let r = unsafe { syscall3(NR_IOCTL, fd as usize, 0xAA00, cmd.arg as usize) };
                        // SAFETY: closing the fd received with this command.
                        unsafe { syscall3(NR_CLOSE, fd as usize, 0, 0) };
                        r as i64
                    } else {
                        -9
                    };
                    if r >= 0 {
                        // SAFETY: buf has room for a Cmd and one i32 after it.
                        unsafe { core::ptr::write_unaligned((self.buf.as_mut_ptr() as usize + size_of::<Cmd>()) as *mut i32, r as i32) };
                        self.send_fds(1);
                        // SAFETY: closing the userfaultfd made above.
                        unsafe { syscall3(NR_CLOSE, r as usize, 0, 0) };
                    } else {
                        self.reply(CMD_SEND_FDS, 0, r, &[]);
                    }
                }
                CMD_FINI => {
                    // Nothing of ours stays open in the task once crtool has the
                    // answer (it takes the thread back right after).
                    if self.pipe >= 0 {
                        // SAFETY: closing the pipe fd this parasite received.
                        unsafe { syscall3(NR_CLOSE, self.pipe as usize, 0, 0) };
                        self.pipe = -1;
                    }
                    self.reply(cmd.op, 0, 0, &[]);
                    return true;
                }
                _ => self.reply(cmd.op, 0, -22, &[]),
            }
        }
    }

    /// Receives one command into `buf`; returns its length and a passed fd (or -1).
    fn recv(&mut self) -> (isize, i32) {
        let mut iov = IoVec { base: self.buf.as_mut_ptr() as u64, len: self.buf.len() as u64 };
        let mut hdr = MsgHdr {
            name: 0, namelen: 0, _pad: 0, iov: &mut iov, iovlen: 1,
            control: self.cbuf.as_mut_ptr() as *mut u8, controllen: (CMSG_HDR + 8) as u64, flags: 0, _pad2: 0,
        };
        // SAFETY: hdr points at buffers owned by self, sized as declared.
        let n = unsafe { syscall3(NR_RECVMSG, self.sock as usize, &mut hdr as *mut MsgHdr as usize, 0x40000000 /* MSG_CMSG_CLOEXEC */) };
        let mut fd = -1;
        if n > 0 && hdr.controllen as usize >= CMSG_HDR + 4 {
            let c = self.cbuf.as_ptr() as *const u8;
            // SAFETY: the kernel wrote a cmsghdr of controllen bytes into cbuf.
            unsafe {
                let level = core::ptr::read_unaligned(c.add(8) as *const i32);
                let ty = core::ptr::read_unaligned(c.add(12) as *const i32);
                if level == SOL_SOCKET && ty == SCM_RIGHTS {
                    fd = core::ptr::read_unaligned(c.add(CMSG_HDR) as *const i32);
                }
            }
        }
        (n, fd)
    }

    fn reply(&mut self, op: u32, n: u32, ret: i64, payload: &[u8]) {
        let r = Reply { op, n, ret };
        let mut iov = [
            IoVec { base: &r as *const Reply as u64, len: size_of::<Reply>() as u64 },
            IoVec { base: payload.as_ptr() as u64, len: payload.len() as u64 },
        ];
        let hdr = MsgHdr {
            name: 0, namelen: 0, _pad: 0, iov: iov.as_mut_ptr(), iovlen: 2,
            control: core::ptr::null_mut(), controllen: 0, flags: 0, _pad2: 0,
        };
        // SAFETY: hdr describes live buffers on this stack frame.
        unsafe { syscall3(NR_SENDMSG, self.sock as usize, &hdr as *const MsgHdr as usize, 0x4000 /* MSG_NOSIGNAL */) };
    }

    /// vmsplice()s the iovecs that follow the command into the pipe crtool gave us.
    fn dump_pages(&mut self, n: usize) -> i64 {
        if self.pipe < 0 {
            return -9;
        }
        let iovs = (self.buf.as_mut_ptr() as usize + size_of::<Cmd>()) as *mut IoVec;
        let mut i = 0;
        let mut total: i64 = 0;
        while i < n {
            // SAFETY: iovs[i..n] lie inside buf (checked against the payload length).
            let ret = unsafe { syscall6(NR_VMSPLICE, self.pipe as usize, iovs.add(i) as usize, n - i, 0, 0, 0) };
            if ret < 0 {
                return ret as i64;
            }
            if ret == 0 {
                return -5;
            }
            total += ret as i64;
            // Skip the fully consumed iovecs and trim a partially consumed one.
            let mut left = ret as u64;
            while i < n && left > 0 {
                // SAFETY: i < n, inside buf.
                let v = unsafe { &mut *iovs.add(i) };
                if left >= v.len {
                    left -= v.len;
                    i += 1;
                } else {
                    v.base += left;
                    v.len -= left;
                    left = 0;
                }
            }
        }
        total
    }

    /// Sends the task's fds listed in the command back to crtool with SCM_RIGHTS.
    fn send_fds(&mut self, n: usize) {
        let fds = (self.buf.as_ptr() as usize + size_of::<Cmd>()) as *const u8;
        let c = self.cbuf.as_mut_ptr() as *mut u8;
        let clen = CMSG_HDR + n * 4;
        // SAFETY: cbuf has room for CMSG_SPACE_MAX bytes and n <= MAX_FDS_PER_MSG; fds
        // lies inside buf.
        unsafe {
            core::ptr::write_unaligned(c as *mut u64, clen as u64);
            core::ptr::write_unaligned(c.add(8) as *mut i32, SOL_SOCKET);
            core::ptr::write_unaligned(c.add(12) as *mut i32, SCM_RIGHTS);
            memcpy(c.add(CMSG_HDR), fds, n * 4);
        }
        let r = Reply { op: CMD_SEND_FDS, n: n as u32, ret: 0 };
        let mut iov = IoVec { base: &r as *const Reply as u64, len: size_of::<Reply>() as u64 };
        let hdr = MsgHdr {
            name: 0, namelen: 0, _pad: 0, iov: &mut iov, iovlen: 1,
            control: c, controllen: ((clen + 7) & !7) as u64, flags: 0, _pad2: 0,
        };
        // SAFETY: hdr describes live buffers; a bad fd makes sendmsg fail with EBADF,
        // which crtool sees as a missing reply payload.
        let ret = unsafe { syscall3(NR_SENDMSG, self.sock as usize, &hdr as *const MsgHdr as usize, 0x4000) };
        if ret < 0 {
            self.reply(CMD_SEND_FDS, 0, ret as i64, &[]);
        }
    }
}

fn get_info() -> ParasiteInfo {
    let mut info = ParasiteInfo {
        sigactions: [KSigaction::default(); 64],
        itimers: [Itimerval::default(); 3],
        altstack: StackT::default(),
        brk: 0,
        clear_child_tid: 0,
        umask: 0,
        dumpable: 0,
        personality: 0,
        child_subreaper: 0,
        no_new_privs: 0,
        thp_disable: 0,
        membarrier: 0,
        mdwe: 0,
        process_keyring: 0,
        pdeath_signal: 0,
        tsc: 0,
        securebits: 0,
        mce_kill: 0,
        cpuid: 0,
        thread_keyring: 0,
    };
    // SAFETY: every call below writes only into `info`, with the kernel's layouts.
    unsafe {
        for sig in 1..=64usize {
            syscall6(NR_RT_SIGACTION, sig, 0, &mut info.sigactions[sig - 1] as *mut KSigaction as usize, 8, 0, 0);
        }
        for which in 0..3usize {
            syscall3(NR_GETITIMER, which, &mut info.itimers[which] as *mut Itimerval as usize, 0);
        }
        syscall3(NR_SIGALTSTACK, 0, &mut info.altstack as *mut StackT as usize, 0);
        info.brk = syscall3(NR_BRK, 0, 0, 0) as u64;
        let old = syscall3(NR_UMASK, 0, 0, 0);
        syscall3(NR_UMASK, old as usize, 0, 0);
        info.umask = old as u32;
        syscall6(NR_PRCTL, 40 /* PR_GET_TID_ADDRESS */, &mut info.clear_child_tid as *mut u64 as usize, 0, 0, 0, 0);
        info.dumpable = syscall6(NR_PRCTL, 3 /* PR_GET_DUMPABLE */, 0, 0, 0, 0, 0) as i32;
        info.personality = syscall3(NR_PERSONALITY, 0xffffffff, 0, 0) as i64;
        syscall6(NR_PRCTL, 37 /* PR_GET_CHILD_SUBREAPER */, &mut info.child_subreaper as *mut i32 as usize, 0, 0, 0, 0);
        info.no_new_privs = syscall6(NR_PRCTL, 39 /* PR_GET_NO_NEW_PRIVS */, 0, 0, 0, 0, 0) as i32;
        info.thp_disable = syscall6(NR_PRCTL, 42 /* PR_GET_THP_DISABLE */, 0, 0, 0, 0, 0) as i32;
        info.membarrier = syscall3(NR_MEMBARRIER, 1 << 9 /* MEMBARRIER_CMD_GET_REGISTRATIONS */, 0, 0) as i32;
        info.mdwe = syscall6(NR_PRCTL, 66 /* PR_GET_MDWE */, 0, 0, 0, 0, 0) as i32;
        info.process_keyring = syscall3(NR_KEYCTL, 0 /* KEYCTL_GET_KEYRING_ID */, -2isize as usize /* KEY_SPEC_PROCESS_KEYRING */, 0) as i32;
        // (A failure leaves the negative errno: both values are >= 0 otherwise.)
        let r = syscall6(NR_PRCTL, 2 /* PR_GET_PDEATHSIG */, &mut info.pdeath_signal as *mut i32 as usize, 0, 0, 0, 0);
        if r < 0 {
            info.pdeath_signal = r as i32;
        }
        let r = syscall6(NR_PRCTL, 25 /* PR_GET_TSC */, &mut info.tsc as *mut i32 as usize, 0, 0, 0, 0);
        if r < 0 {
            info.tsc = r as i32;
        }
        info.securebits = syscall6(NR_PRCTL, 27 /* PR_GET_SECUREBITS */, 0, 0, 0, 0, 0) as i32;
        info.mce_kill = syscall6(NR_PRCTL, 34 /* PR_MCE_KILL_GET */, 0, 0, 0, 0, 0) as i32;
        info.cpuid = syscall3(NR_ARCH_PRCTL, 0x1011 /* ARCH_GET_CPUID */, 0, 0) as i64;
        info.thread_keyring = syscall3(NR_KEYCTL, 0 /* KEYCTL_GET_KEYRING_ID */, -1isize as usize /* KEY_SPEC_THREAD_KEYRING */, 0) as i64;
    }
    info
}
