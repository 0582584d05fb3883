//! What the CPU and kernel say about extended (XSAVE) state.

use std::arch::x86_64::__cpuid_count;

/// One XSAVE component: feature bit, offset and size in the standard format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XComponent {
    pub feature: u32,
    pub offset: u32,
    pub size: u32,
}

/// XCR0: the state components the OS enabled (read once: see `xsave_layout`).
pub fn xcr0() -> u64 {
    static XCR0: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *XCR0.get_or_init(|| {
        let (lo, hi): (u32, u32);
        if __cpuid_count(1, 0).ecx & (1 << 27) == 0 {
            return 0;
        }
        // SAFETY: xgetbv with ecx=0 reads XCR0; OSXSAVE (checked above) guarantees it.
        unsafe {
            std::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi, options(nomem, nostack));
        }
        ((hi as u64) << 32) | lo as u64
    })
}

/// Size of the standard-format XSAVE area for every feature in XCR0 (what
/// PTRACE_GETREGSET(NT_X86_XSTATE) uses).
pub fn xsave_size() -> usize {
    // cpuid leaf 0xD, subleaf 0: ebx is the size needed for the features in XCR0.
    let size = __cpuid_count(0xd, 0).ebx as usize;
    size.max(512 + 64)
}

/// Layout of the enabled user components beyond legacy x87/SSE (features 2..=18).
/// Read once per process: CPUID traps to the hypervisor on a VM (3.75 us each
/// on the development VM), and it was read for every thread of every dumped
/// process several times over; XCR0 and CPUID leaf 0xD do not change while
/// crtool runs.
pub fn xsave_layout() -> Vec<XComponent> {
    static LAYOUT: std::sync::OnceLock<Vec<XComponent>> = std::sync::OnceLock::new();
    LAYOUT
        .get_or_init(|| {
            let xcr0 = xcr0();
            (2..64u32)
                .filter(|f| xcr0 & (1 << f) != 0)
                .map(|f| {
                    // cpuid leaf 0xD subleaf f describes enabled component f.
                    let r = __cpuid_count(0xd, f);
                    XComponent { feature: f, offset: r.ebx, size: r.eax }
                })
                .collect()
        })
        .clone()
}

/// The `fx_sw_bytes` the kernel writes into a signal frame for this process: its
/// `xstate_size` and `xfeatures` tell how large an XSAVE area rt_sigreturn accepts
/// (tasks without AMX permission get a smaller one).
#[derive(Debug, Clone, Copy, Default)]
pub struct SigFrameXstate {
    pub xstate_size: u32,
    pub xfeatures: u64,
}

/// Learns the signal-frame XSAVE geometry by taking a signal and reading the frame.
pub fn sigframe_xstate() -> SigFrameXstate {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SIZE: AtomicU64 = AtomicU64::new(0);
    static FEATURES: AtomicU64 = AtomicU64::new(0);

    extern "C" fn handler(_: i32, _: *mut libc::siginfo_t, uc: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid ucontext; fpregs points at the frame's
        // XSAVE area, whose bytes 464.. hold struct _fpx_sw_bytes.
        unsafe {
            let uc = uc as *const libc::ucontext_t;
            let fp = (*uc).uc_mcontext.fpregs as *const u8;
            if fp.is_null() {
                return;
            }
            let sw = fp.add(464);
            let magic = (sw as *const u32).read_unaligned();
            if magic == 0x4650_5853 {
                SIZE.store((sw.add(16) as *const u32).read_unaligned() as u64, Ordering::SeqCst);
                FEATURES.store((sw.add(8) as *const u64).read_unaligned(), Ordering::SeqCst);
            }
        }
    }
    // SAFETY: installs a handler for SIGUSR2 only for the duration of one raise(),
    // then puts the previous disposition back. crtool uses no SIGUSR2 otherwise.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGUSR2, &sa, &mut old);
        libc::raise(libc::SIGUSR2);
        libc::sigaction(libc::SIGUSR2, &old, std::ptr::null_mut());
    }
    SigFrameXstate { xstate_size: SIZE.load(Ordering::SeqCst) as u32, xfeatures: FEATURES.load(Ordering::SeqCst) }
}
