//! Registers and FPU state: conversions between ptrace and image, the CPU
//! compatibility check, and the rt_sigframe the restorer returns through.

use crate::error::{Error, Result};
use crate::sys::cpu::{self, SigFrameXstate};
use crate::sys::ptrace::Regs;
use images_format::pb;

pub fn to_image(r: &Regs) -> pb::Regs {
    pb::Regs {
        r15: r.r15, r14: r.r14, r13: r.r13, r12: r.r12, rbp: r.rbp, rbx: r.rbx, r11: r.r11, r10: r.r10,
        r9: r.r9, r8: r.r8, rax: r.rax, rcx: r.rcx, rdx: r.rdx, rsi: r.rsi, rdi: r.rdi, orig_rax: r.orig_rax,
        rip: r.rip, cs: r.cs, eflags: r.eflags, rsp: r.rsp, ss: r.ss, fs_base: r.fs_base, gs_base: r.gs_base,
        ds: r.ds, es: r.es, fs: r.fs, gs: r.gs,
    }
}

pub fn fpu_to_image(mut xsave: Vec<u8>) -> pb::Fpu {
    // SSE (bit 1: xmm0-15) and AVX (bit 2: upper ymm halves) marked in use while all
    // zero are their initial state: whether the CPU still flags them depends on its
    // history (a cure's XRSTOR clears it), so images say "init" for both.
    for (bit, at, len) in [(1u64, 160usize, 256usize), (2, 576, 256)] {
        let bv = xstate_bv(&xsave);
        if bv & (1 << bit) != 0 && xsave.get(at..at + len).is_some_and(|b| b.iter().all(|&x| x == 0)) {
            xsave[XSTATE_BV..XSTATE_BV + 8].copy_from_slice(&(bv & !(1 << bit)).to_le_bytes());
        }
    }
    let layout = cpu::xsave_layout()
        .into_iter()
        .map(|c| pb::XsaveComponent { feature: c.feature, offset: c.offset, size: c.size })
        .collect();
    pb::Fpu { xsave, xcr0: cpu::xcr0(), layout }
}

const XSTATE_BV: usize = 512;
const SW_BYTES: usize = 464;
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
const XFEATURE_XTILEDATA: u64 = 18;

/// The features whose state the image actually holds (XSAVE header xstate_bv).
fn xstate_bv(x: &[u8]) -> u64 {
    x.get(XSTATE_BV..XSTATE_BV + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap())).unwrap_or(0)
}

/// Fails unless this CPU can hold every state component the image uses, at the same
/// place in the XSAVE area.
pub fn check_cpu(pid: i32, fpu: &pb::Fpu) -> Result<()> {
    let used = xstate_bv(&fpu.xsave);
    let here = cpu::xcr0();
    let missing = used & !here;
    if missing != 0 {
        return Err(Error::Cpu { pid, msg: format!("lacks XSAVE features {missing:#x} the image uses (image xcr0 {:#x}, here {here:#x})", fpu.xcr0) });
    }
    let layout = cpu::xsave_layout();
    for c in &fpu.layout {
        if used & (1 << c.feature) == 0 {
            continue;
        }
        let same = layout.iter().any(|l| l.feature == c.feature && l.offset == c.offset && l.size == c.size);
        if !same {
            return Err(Error::Cpu { pid, msg: format!("lays out XSAVE feature {} differently from the dumping CPU", c.feature) });
        }
    }
    if fpu.xsave.len() < 576 {
        return Err(Error::BadImage { file: format!("core-{pid}.img"), msg: format!("XSAVE area of {} bytes is too short", fpu.xsave.len()) });
    }
    Ok(())
}

/// Whether the task had AMX tile data enabled (needs ARCH_REQ_XCOMP_PERM first).
pub fn needs_amx(fpu: &pb::Fpu) -> bool {
    xstate_bv(&fpu.xsave) & (1 << XFEATURE_XTILEDATA) != 0
}

/// The XSAVE size and features the frame carries: what rt_sigreturn accepts for this
/// process (the full area, with AMX tile data, if the task had AMX enabled).
fn frame_xstate(fpu: &pb::Fpu, geometry: SigFrameXstate) -> (usize, u64) {
    let (size, features) = if needs_amx(fpu) {
        (fpu.xsave.len(), geometry.xfeatures | (1 << XFEATURE_XTILEDATA))
    } else {
        (geometry.xstate_size as usize, geometry.xfeatures)
    };
    (size.min(fpu.xsave.len()).max(576), features)
}

/// Length of the frame `build_sigframe` makes for `t`.
pub fn sigframe_len(t: &pb::ThreadCore, geometry: SigFrameXstate) -> usize {
    FRAME_FPSTATE + t.fpu.as_ref().map_or(576, |f| frame_xstate(f, geometry).0) + 4
}

/// Offsets inside the frame buffer `build_sigframe` returns.
pub const FRAME_FPSTATE: usize = 448;

/// Builds the rt_sigframe for the task's saved registers, sigaltstack and XSAVE
/// state, to be placed at `addr` (64-byte aligned). rt_sigreturn then restores all
/// of them at once. The frame's signal mask blocks every signal: crtool sets the
/// task's own mask (PTRACE_SETSIGMASK) when it lets the thread go, so that nothing
/// is delivered while it finishes the tree. The registers are exactly the dumped
/// ones, also for a thread stopped inside a system call: the kernel then restarts
/// the call (or not) as it would have, once the thread is let go.
pub fn build_sigframe(t: &pb::ThreadCore, addr: u64, geometry: SigFrameXstate) -> Vec<u8> {
    sigframe(t, addr, geometry, !0)
}

/// A frame that returns a live thread to its own state (registers, FPU state,
/// signal `mask`): what the parasite returns through if crtool dies while it holds
/// the thread. rt_sigreturn does not restart system calls, so a call the thread was
/// interrupted in is set up to run again (a restart-block call continues through
/// restart_syscall). The altstack field holds invalid flags: sigreturn's attempt to
/// set it fails quietly and the thread keeps its own.
pub fn cure_frame(regs: &Regs, xstate: &[u8], mask: u64, addr: u64, geometry: SigFrameXstate) -> Vec<u8> {
    let mut r = to_image(regs);
    if (r.orig_rax as i64) >= 0 {
        match -(r.rax as i64) {
            512..=514 => (r.rax, r.rip) = (r.orig_rax, r.rip.wrapping_sub(2)),
            516 => (r.rax, r.rip) = (219 /* restart_syscall */, r.rip.wrapping_sub(2)),
            _ => {}
        }
    }
    let t = pb::ThreadCore {
        regs: Some(r),
        fpu: Some(fpu_to_image(xstate.to_vec())),
        altstack: Some(pb::SigAltStack { sp: 0, flags: 0x7fff_0000, size: 0 }),
        ..Default::default()
    };
    sigframe(&t, addr, geometry, mask)
}

/// Length of the frame `cure_frame` makes for a thread with `xstate`.
pub fn cure_frame_len(xstate: &[u8], geometry: SigFrameXstate) -> usize {
    let t = pb::ThreadCore { fpu: Some(fpu_to_image(xstate.to_vec())), ..Default::default() };
    sigframe_len(&t, geometry)
}

fn sigframe(t: &pb::ThreadCore, addr: u64, geometry: SigFrameXstate, mask: u64) -> Vec<u8> {
    let r = t.regs.unwrap_or_default();
    let fpu = t.fpu.clone().unwrap_or_default();
    let (rax, rip, rdi, rdx) = (r.rax, r.rip, r.rdi, r.rdx);
    let (size, features) = frame_xstate(&fpu, geometry);
    let mut f = vec![0u8; FRAME_FPSTATE + size + 4];
    let put = |f: &mut Vec<u8>, off: usize, v: u64| f[off..off + 8].copy_from_slice(&v.to_le_bytes());
    // struct rt_sigframe { pretcode; struct ucontext uc; struct siginfo info; }
    let uc = 8;
    put(&mut f, uc, 0x7); // UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS
    let st = t.altstack.unwrap_or_default();
    put(&mut f, uc + 16, st.sp);
    f[uc + 24..uc + 28].copy_from_slice(&st.flags.to_le_bytes());
    put(&mut f, uc + 32, st.size);
    let sc = uc + 40; // struct sigcontext
    for (i, v) in [r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, rdi, r.rsi, r.rbp, r.rbx, rdx, rax, r.rcx, r.rsp, rip, r.eflags]
        .into_iter()
        .enumerate()
    {
        put(&mut f, sc + i * 8, v);
    }
    // cs, gs, fs, ss (16 bits each)
    let segs = [r.cs as u16, 0, 0, r.ss as u16];
    for (i, s) in segs.into_iter().enumerate() {
        f[sc + 144 + i * 2..sc + 146 + i * 2].copy_from_slice(&s.to_le_bytes());
    }
    put(&mut f, sc + 184, addr + FRAME_FPSTATE as u64); // fpstate pointer
    put(&mut f, uc + 40 + 256, mask); // uc_sigmask

    let fp = FRAME_FPSTATE;
    f[fp..fp + size].copy_from_slice(&fpu.xsave[..size]);
    // struct _fpx_sw_bytes in the reserved bytes of the legacy area.
    f[fp + SW_BYTES..fp + 512].fill(0);
    f[fp + SW_BYTES..fp + SW_BYTES + 4].copy_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
    f[fp + SW_BYTES + 4..fp + SW_BYTES + 8].copy_from_slice(&(size as u32 + 4).to_le_bytes());
    put(&mut f, fp + SW_BYTES + 8, features);
    f[fp + SW_BYTES + 16..fp + SW_BYTES + 20].copy_from_slice(&(size as u32).to_le_bytes());
    let bv = xstate_bv(&f[fp..]) & features;
    put(&mut f, fp + XSTATE_BV, bv);
    put(&mut f, fp + XSTATE_BV + 8, 0); // xcomp_bv: standard format
    f[fp + size..fp + size + 4].copy_from_slice(&FP_XSTATE_MAGIC2.to_le_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigframe_carries_registers_and_xstate_magic() {
        let mut xsave = vec![0u8; 1024];
        xsave[XSTATE_BV..XSTATE_BV + 8].copy_from_slice(&0x7u64.to_le_bytes());
        let t = pb::ThreadCore {
            regs: Some(pb::Regs { rip: 0x4000, rsp: 0x7000, rax: 3, orig_rax: u64::MAX, cs: 0x33, ss: 0x2b, ..Default::default() }),
            fpu: Some(pb::Fpu { xsave, ..Default::default() }),
            blocked: 0x200,
            ..Default::default()
        };
        let geometry = SigFrameXstate { xstate_size: 832, xfeatures: 0x7 };
        let f = build_sigframe(&t, 0x10_0000, geometry);
        let q = |o: usize| u64::from_le_bytes(f[o..o + 8].try_into().unwrap());
        let sc = 8 + 40;
        assert_eq!(q(sc + 16 * 8), 0x4000, "rip");
        assert_eq!(q(sc + 15 * 8), 0x7000, "rsp");
        assert_eq!(q(sc + 13 * 8), 3, "rax");
        assert_eq!(q(sc + 184), 0x10_0000 + FRAME_FPSTATE as u64, "fpstate pointer");
        assert_eq!(q(8 + 40 + 256), !0, "uc_sigmask blocks everything");
        let fp = FRAME_FPSTATE;
        assert_eq!(u32::from_le_bytes(f[fp + SW_BYTES..fp + SW_BYTES + 4].try_into().unwrap()), FP_XSTATE_MAGIC1);
        assert_eq!(u32::from_le_bytes(f[fp + 832..fp + 836].try_into().unwrap()), FP_XSTATE_MAGIC2);
        assert_eq!(f.len(), fp + 832 + 4);
    }
}
