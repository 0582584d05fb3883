//! The contract between crtool and its two blobs (the dump-side parasite and the
//! restorer). This one file is compiled into crtool and into both blobs, so the two
//! sides cannot drift apart. Everything here is `#[repr(C)]` plain data.

#![allow(dead_code)]

/// `#[repr(C)]` types made of integers only: their bytes can be viewed directly
/// (implemented in crtool for the ABI structs it writes into the restorer area).
///
/// # Safety
/// Implement only for `#[repr(C)]` types of integers whose every byte is initialised
/// (no implicit padding, or padding the writer zeroes).
pub unsafe trait Plain: Copy {}

/// The bytes of a plain ABI value.
pub fn bytes_of<T: Plain>(v: &T) -> &[u8] {
    // SAFETY: `Plain` types are #[repr(C)] integer aggregates without padding
    // invariants; reading their bytes is sound.
    unsafe { core::slice::from_raw_parts(v as *const T as *const u8, core::mem::size_of::<T>()) }
}

/// Size of the parasite's command/reply buffer (one SOCK_SEQPACKET message).
pub const PARASITE_MSG_MAX: usize = 64 * 1024;
/// Stack the injector gives each blob.
pub const BLOB_STACK_SIZE: usize = 256 * 1024;
/// Most iovecs crtool puts in one `CMD_DUMP_PAGES`.
pub const MAX_IOVS: usize = 1024;
/// Most fds moved by one `CMD_SEND_FDS`.
pub const MAX_FDS_PER_MSG: usize = 64;

/// Parasite commands.
pub const CMD_TAKE_PIPE: u32 = 1;
pub const CMD_DUMP_PAGES: u32 = 2;
pub const CMD_GET_INFO: u32 = 3;
pub const CMD_SEND_FDS: u32 = 4;
pub const CMD_FINI: u32 = 5;
/// Make a userfaultfd from the fd sent with the command (/dev/userfaultfd,
/// opened by crtool): USERFAULTFD_IOC_NEW with flags `arg`. The reply is that
/// of a `CMD_SEND_FDS` of it (or carries a negated errno); the task keeps
/// neither fd.
pub const CMD_NEW_UFFD: u32 = 6;

/// Arguments block the parasite entry receives in `rdi`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ParasiteArgs {
    /// The parasite's end of the control socket.
    pub sock: i32,
    /// Filled by an injected socketpair(2).
    pub socketpair: [i32; 2],
    pub _pad: i32,
    /// The main thread's cure frame: an rt_sigframe holding its own registers, FPU
    /// state and signal mask, which the parasite returns through if crtool goes away.
    pub frame: u64,
}

/// Header of every command; a payload may follow (iovecs for `CMD_DUMP_PAGES`,
/// i32 fds for `CMD_SEND_FDS`). `n` counts payload items.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Cmd {
    pub op: u32,
    pub n: u32,
    pub arg: u64,
}

/// Header of every reply; `ret` is >= 0 on success or a negated errno.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Reply {
    pub op: u32,
    pub n: u32,
    pub ret: i64,
}

/// One iovec, as the kernel's `struct iovec`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IoVec {
    pub base: u64,
    pub len: u64,
}

/// Kernel `struct sigaction` as used by rt_sigaction(2) on x86_64.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KSigaction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// `struct itimerval` (two timevals).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Itimerval {
    pub interval_sec: i64,
    pub interval_usec: i64,
    pub value_sec: i64,
    pub value_usec: i64,
}

/// `stack_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackT {
    pub sp: u64,
    pub flags: i32,
    pub _pad: i32,
    pub size: u64,
}

/// What `CMD_GET_INFO` returns: state only the task itself can read.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ParasiteInfo {
    /// Index i holds signal i+1.
    pub sigactions: [KSigaction; 64],
    pub itimers: [Itimerval; 3],
    pub altstack: StackT,
    pub brk: u64,
    pub clear_child_tid: u64,
    pub umask: u32,
    pub dumpable: i32,
    pub personality: i64,
    pub child_subreaper: i32,
    pub no_new_privs: i32,
    /// PR_GET_THP_DISABLE (0, 1, or 3 = disabled except where advised).
    pub thp_disable: i32,
    /// MEMBARRIER_CMD_GET_REGISTRATIONS (negative: the query failed).
    pub membarrier: i32,
    /// PR_GET_MDWE.
    pub mdwe: i32,
    /// keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_PROCESS_KEYRING, 0): > 0 if one exists.
    pub process_keyring: i32,
    /// The main thread's (the one running the parasite) per-thread state, as
    /// crtool's probe of other threads reads it with remote syscalls:
    /// PR_GET_PDEATHSIG (negative: the errno of its failure).
    pub pdeath_signal: i32,
    /// PR_GET_TSC (negative: the errno of its failure).
    pub tsc: i32,
    /// PR_GET_SECUREBITS (the return value: negative errno on failure).
    pub securebits: i32,
    /// PR_MCE_KILL_GET (the return value: negative errno on failure).
    pub mce_kill: i32,
    /// arch_prctl(ARCH_GET_CPUID) (the return value: negative errno if unsupported).
    pub cpuid: i64,
    /// keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_THREAD_KEYRING, 0) (the return value).
    pub thread_keyring: i64,
}

/// Kernel `struct prctl_mm_map` (PR_SET_MM_MAP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PrctlMmMap {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    pub auxv: u64,
    pub auxv_size: u32,
    pub exe_fd: u32,
}

/// A mapping the restorer moves into place with mremap(2).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VmaMove {
    pub from: u64,
    pub len: u64,
    pub to: u64,
}

/// A protection the restorer applies with mprotect(2) once VMAs are in place.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VmaProtect {
    pub addr: u64,
    pub len: u64,
    pub prot: u64,
}

/// An rseq(2) registration.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RseqReg {
    pub ptr: u64,
    pub len: u32,
    pub sig: u32,
}

pub const MAX_SPECIALS: usize = 4;
/// The kernel's `struct clone_args` (clone3), used by crtool to fork tasks and by
/// the restorer to create threads, both with exact ids (`set_tid`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

/// Size of one raw siginfo.
pub const SIGINFO_SIZE: usize = 128;

/// Per-thread state the restorer sets from inside each thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadArgs {
    pub tid: i32,
    /// Signals queued for this thread only: `nr_pending` siginfos at `pending`.
    pub nr_pending: u32,
    pub pending: u64,
    /// Top of this thread's restorer stack (threads other than the main one).
    pub stack_top: u64,
    pub stack_size: u64,
    /// Its rt_sigframe (registers, FPU, sigmask, altstack).
    pub sigframe: u64,
    pub rseq: RseqReg,
    pub robust_list: u64,
    pub robust_list_len: u64,
    pub clear_child_tid: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    /// The process's RestorerArgs (for credentials).
    pub process: u64,
    /// The thread's name (PR_SET_NAME), NUL-padded.
    pub comm: [u8; 16],
    /// PR_SET_PDEATHSIG after the credentials (0: none).
    pub pdeath_signal: i32,
    /// PR_MCE_KILL policy (PR_MCE_KILL_GET value; 2 = the default, left alone).
    pub mce_kill: i32,
}

/// A POSIX timer to recreate with its id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TimerArgs {
    pub id: i32,
    pub clock: i32,
    pub signo: i32,
    pub notify: i32,
    pub notify_tid: i32,
    /// Its signal was queued and not yet delivered: the restorer makes the timer
    /// itself fire at once (its own queued signal, no duplicate later).
    pub pending: i32,
    pub sigev_value: u64,
    pub interval_sec: i64,
    pub interval_nsec: i64,
    pub value_sec: i64,
    pub value_nsec: i64,
}
pub const MAX_GROUPS: usize = 64;

/// Everything the restorer needs; crtool fills it in, the restorer never parses images.
/// Pointers point into the restorer area, which stays mapped until the end.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RestorerArgs {
    /// Where the restorer reports a failure (a `RestorerFailure`) before exiting.
    pub status_fd: i32,
    pub exe_fd: i32,
    /// crtool's own rseq registration, dropped before its memory goes away.
    pub self_rseq: RseqReg,
    /// The premap area (premapped VMAs, this blob, its data and stack): kept mapped.
    pub area_start: u64,
    pub area_len: u64,
    /// vdso/vvar mappings moved from where crtool has them to where the task had them,
    /// through `scratch` so that moves never clobber each other.
    pub specials: [VmaMove; MAX_SPECIALS],
    pub nr_specials: u32,
    pub nr_vmas: u32,
    pub scratch: u64,
    pub vmas: u64,
    pub mm: PrctlMmMap,
    pub sigactions: [KSigaction; 64],
    pub itimers: [Itimerval; 3],
    /// The main thread's own state (its sigframe is `sigframe` below).
    pub main: ThreadArgs,
    /// Other threads: `nr_threads` ThreadArgs at `threads`, created with clone3.
    pub threads: u64,
    pub nr_threads: u32,
    /// Process-wide queued signals: `nr_shared_pending` siginfos at `shared_pending`.
    pub nr_shared_pending: u32,
    pub shared_pending: u64,
    /// POSIX timers: `nr_timers` TimerArgs at `timers`.
    pub timers: u64,
    pub nr_timers: u32,
    pub tgid: i32,
    /// XSAVE features to request with ARCH_REQ_XCOMP_PERM (0: none).
    pub xcomp_perm_feature: u64,
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub nr_groups: u32,
    pub dumpable: i32,
    pub groups: [u32; MAX_GROUPS],
    /// Capability sets (bit N = capability N): inheritable, permitted, effective,
    /// bounding, ambient.
    pub caps: [u64; 5],
    /// PR_SET_SECUREBITS value set once the other credentials are in place.
    pub securebits: u32,
    /// /proc/sys/kernel/cap_last_cap: the highest capability this kernel knows.
    pub cap_last: u32,
    /// personality(2), set once every mapping is in place (READ_IMPLIES_EXEC would
    /// add PROT_EXEC to later ones).
    pub personality: u64,
    /// The prepared rt_sigframe; rt_sigreturn runs with rsp = sigframe + 8.
    pub sigframe: u64,
    /// SPARE_SIZE bytes in the area the restorer does not use, for crtool's remote
    /// syscalls after the restorer has finished.
    pub spare: u64,
    /// Protections to apply after the moves: `nr_protects` VmaProtect at `protects`.
    pub protects: u64,
    pub nr_protects: u32,
    /// mlockall(2) flags for future mappings (0: none), set last.
    pub mlockall: u32,
    /// A userfaultfd of this task held by a lazy-pages daemon (-1: none): the
    /// restorer registers the `nr_lazy` ranges (VmaProtect, `prot` unused) at
    /// `lazy` for missing-page faults once every VMA is in place, closes it, and
    /// writes `R` to `lazy_fd` (its connection to the daemon, which supplies no
    /// page before: a copy into an unregistered range would be lost).
    pub uffd: i32,
    pub lazy_fd: i32,
    pub nr_lazy: u32,
    pub _pad: u32,
    pub lazy: u64,
}

pub const SPARE_SIZE: usize = 256;

/// Steps of the restorer, reported with the errno when one fails.
pub const STEP_DROP_RSEQ: u32 = 1;
pub const STEP_UNMAP: u32 = 2;
pub const STEP_SPECIALS: u32 = 3;
pub const STEP_VMAS: u32 = 4;
pub const STEP_MM: u32 = 5;
pub const STEP_XCOMP: u32 = 6;
pub const STEP_SIGACTIONS: u32 = 7;
pub const STEP_ITIMERS: u32 = 8;
pub const STEP_THREAD: u32 = 9;
pub const STEP_CREDS: u32 = 10;
pub const STEP_SIGNALS: u32 = 11;
pub const STEP_THREADS: u32 = 12;
pub const STEP_TIMERS: u32 = 13;
pub const STEP_PROTECT: u32 = 14;
pub const STEP_PERSONALITY: u32 = 15;
pub const STEP_LAZY: u32 = 16;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RestorerFailure {
    pub step: u32,
    pub index: u32,
    pub errno: i64,
}

// Layout checks: the structs crtool views as bytes have no implicit padding.
const _: () = assert!(core::mem::size_of::<ThreadArgs>() == 4 + 4 + 8 * 4 + 16 + 8 * 6 + 16 + 8);
const _: () = assert!(core::mem::size_of::<TimerArgs>() == 6 * 4 + 8 * 5);
const _: () = assert!(core::mem::size_of::<VmaMove>() == 24);
const _: () = assert!(core::mem::size_of::<VmaProtect>() == 24);
