#![allow(dead_code)]
//! The blobs' minimal runtime: raw syscalls, the mem* functions LLVM expects, and a
//! panic handler. No libc, no allocator, no statics holding pointers.

use core::arch::asm;

pub const NR_READ: usize = 0;
pub const NR_WRITE: usize = 1;
pub const NR_CLOSE: usize = 3;
pub const NR_MPROTECT: usize = 10;
pub const NR_MUNMAP: usize = 11;
pub const NR_BRK: usize = 12;
pub const NR_RT_SIGACTION: usize = 13;
pub const NR_RT_SIGPROCMASK: usize = 14;
pub const NR_MREMAP: usize = 25;
pub const NR_PAUSE: usize = 34;
pub const NR_RECVFROM: usize = 45;
pub const NR_RT_SIGRETURN: usize = 15;
pub const NR_GETITIMER: usize = 36;
pub const NR_SETITIMER: usize = 38;
pub const NR_SENDMSG: usize = 46;
pub const NR_RECVMSG: usize = 47;
pub const NR_EXIT_GROUP: usize = 231;
pub const NR_UMASK: usize = 95;
pub const NR_SIGALTSTACK: usize = 131;
pub const NR_PERSONALITY: usize = 135;
pub const NR_PRCTL: usize = 157;
pub const NR_ARCH_PRCTL: usize = 158;
pub const NR_SETGROUPS: usize = 116;
pub const NR_SETRESUID: usize = 117;
pub const NR_SETRESGID: usize = 119;
pub const NR_SETFSUID: usize = 122;
pub const NR_SETFSGID: usize = 123;
pub const NR_SET_TID_ADDRESS: usize = 218;
pub const NR_SET_ROBUST_LIST: usize = 273;
pub const NR_VMSPLICE: usize = 278;
pub const NR_IOCTL: usize = 16;
pub const NR_RSEQ: usize = 334;
pub const NR_RT_SIGQUEUEINFO: usize = 129;
pub const NR_RT_TGSIGQUEUEINFO: usize = 297;
pub const NR_GETTID: usize = 186;
pub const NR_TIMER_CREATE: usize = 222;
pub const NR_TIMER_SETTIME: usize = 223;
pub const NR_CLOCK_GETTIME: usize = 228;
pub const NR_MLOCKALL: usize = 151;
pub const NR_CLONE3: usize = 435;
pub const NR_MEMBARRIER: usize = 324;
pub const NR_KEYCTL: usize = 250;
pub const NR_CAPSET: usize = 126;

/// # Safety
/// The caller upholds the contract of syscall `nr` for these arguments.
#[inline(always)]
pub unsafe fn syscall6(nr: usize, a: usize, b: usize, c: usize, d: usize, e: usize, f: usize) -> isize {
    let ret: isize;
    // SAFETY: a raw `syscall` instruction; rcx and r11 are clobbered by the CPU, the
    // caller vouches for the arguments.
    unsafe {
        asm!("syscall", inlateout("rax") nr as isize => ret, in("rdi") a, in("rsi") b,
             in("rdx") c, in("r10") d, in("r8") e, in("r9") f,
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// # Safety
/// As for [`syscall6`].
#[inline(always)]
pub unsafe fn syscall3(nr: usize, a: usize, b: usize, c: usize) -> isize {
    // SAFETY: forwarded contract.
    unsafe { syscall6(nr, a, b, c, 0, 0, 0) }
}

pub fn exit_group(code: i32) -> ! {
    loop {
        // SAFETY: exit_group never returns and takes no pointers.
        unsafe { syscall3(NR_EXIT_GROUP, code as usize, 0, 0) };
    }
}

// LLVM lowers copies and zeroing to these symbols; compiler_builtins does not provide
// them for this target, so the blob defines them with string instructions (which LLVM
// cannot turn back into calls to themselves).

/// # Safety
/// Standard memcpy contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: rep movsb copies n bytes from rsi to rdi; the caller guarantees validity.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// Standard memmove contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize) + n {
        // SAFETY: forward copy is safe when dst does not start inside src.
        return unsafe { memcpy(dst, src, n) };
    }
    // SAFETY: backward copy with the direction flag set, restored right after.
    unsafe {
        asm!("std", "rep movsb", "cld", inout("rcx") n => _,
             inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
             options(nostack));
    }
    dst
}

/// # Safety
/// Standard memset contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: rep stosb stores n bytes at rdi; the caller guarantees validity.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
/// Standard memcmp contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n and the caller guarantees both ranges are readable.
        let (x, y) = unsafe { (core::ptr::read_volatile(a.add(i)), core::ptr::read_volatile(b.add(i))) };
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

/// # Safety
/// Standard bcmp contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: forwarded contract.
    unsafe { memcmp(a, b, n) }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // A blob cannot report a panic; die loudly so the injector sees a signal/exit.
    // SAFETY: ud2 raises SIGILL, which crtool's tracer observes.
    unsafe { asm!("ud2", options(noreturn)) }
}
