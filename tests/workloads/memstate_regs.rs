//! memstate's vector registers: patterns held in ymm8..15 (and zmm16..23, k1..k7
//! with AVX-512) across a dump and restore, inside one asm block each.

use super::{GOT_USR1, Report, fill};

pub const YMM_BYTES: usize = 8 * 32;
pub const ZMM_BYTES: usize = 8 * 64;

/// Loads ymm8..ymm15 from `pattern`, sleeps in rt_sigsuspend(`mask`) until SIGUSR1
/// was handled, and stores ymm8..ymm15 into `out`, all in one asm block so that no
/// compiled code can touch those registers in between.
///
/// # Safety
/// The CPU must support AVX; `mask` must point to a kernel sigset (8 bytes).
#[target_feature(enable = "avx")]
pub unsafe fn wait_holding_ymm(pattern: &[u8; YMM_BYTES], out: &mut [u8; YMM_BYTES], mask: *const u64) {
    let flag = GOT_USR1.as_ptr() as *const u8;
    // SAFETY: the asm only reads `pattern`, `mask` and `flag`, writes `out`, and
    // declares every register it changes.
    unsafe {
        std::arch::asm!(
            "vmovdqu ymm8,  [{p}]",
            "vmovdqu ymm9,  [{p} + 32]",
            "vmovdqu ymm10, [{p} + 64]",
            "vmovdqu ymm11, [{p} + 96]",
            "vmovdqu ymm12, [{p} + 128]",
            "vmovdqu ymm13, [{p} + 160]",
            "vmovdqu ymm14, [{p} + 192]",
            "vmovdqu ymm15, [{p} + 224]",
            "2:",
            "mov eax, {nr}",
            "mov rdi, {m}",
            "mov esi, 8",
            "syscall",
            "cmp byte ptr [{f}], 0",
            "je 2b",
            "vmovdqu [{o}],       ymm8",
            "vmovdqu [{o} + 32],  ymm9",
            "vmovdqu [{o} + 64],  ymm10",
            "vmovdqu [{o} + 96],  ymm11",
            "vmovdqu [{o} + 128], ymm12",
            "vmovdqu [{o} + 160], ymm13",
            "vmovdqu [{o} + 192], ymm14",
            "vmovdqu [{o} + 224], ymm15",
            "vzeroupper",
            p = in(reg) pattern.as_ptr(),
            o = in(reg) out.as_mut_ptr(),
            m = in(reg) mask,
            f = in(reg) flag,
            nr = const libc::SYS_rt_sigsuspend,
            out("rax") _, out("rdi") _, out("rsi") _, out("rcx") _, out("r11") _,
            out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
        );
    }
}

/// As `wait_holding_ymm`, and also holds zmm16..zmm23 (AVX-512 only registers) and
/// the opmask registers k1..k7.
///
/// # Safety
/// The CPU and kernel must support AVX-512F; `mask` as above.
#[target_feature(enable = "avx512f")]
pub unsafe fn wait_holding_zmm(
    pattern: &[u8; YMM_BYTES],
    out: &mut [u8; YMM_BYTES],
    zpattern: &[u8; ZMM_BYTES],
    zout: &mut [u8; ZMM_BYTES],
    kpattern: &[u16; 7],
    kout: &mut [u16; 7],
    mask: *const u64,
) {
    let flag = GOT_USR1.as_ptr() as *const u8;
    // SAFETY: as in wait_holding_ymm; every register changed is declared.
    unsafe {
        std::arch::asm!(
            "vmovdqu ymm8,  [{p}]",
            "vmovdqu ymm9,  [{p} + 32]",
            "vmovdqu ymm10, [{p} + 64]",
            "vmovdqu ymm11, [{p} + 96]",
            "vmovdqu ymm12, [{p} + 128]",
            "vmovdqu ymm13, [{p} + 160]",
            "vmovdqu ymm14, [{p} + 192]",
            "vmovdqu ymm15, [{p} + 224]",
            "vmovdqu64 zmm16, [{zp}]",
            "vmovdqu64 zmm17, [{zp} + 64]",
            "vmovdqu64 zmm18, [{zp} + 128]",
            "vmovdqu64 zmm19, [{zp} + 192]",
            "vmovdqu64 zmm20, [{zp} + 256]",
            "vmovdqu64 zmm21, [{zp} + 320]",
            "vmovdqu64 zmm22, [{zp} + 384]",
            "vmovdqu64 zmm23, [{zp} + 448]",
            "kmovw k1, word ptr [{kp}]",
            "kmovw k2, word ptr [{kp} + 2]",
            "kmovw k3, word ptr [{kp} + 4]",
            "kmovw k4, word ptr [{kp} + 6]",
            "kmovw k5, word ptr [{kp} + 8]",
            "kmovw k6, word ptr [{kp} + 10]",
            "kmovw k7, word ptr [{kp} + 12]",
            "2:",
            "mov eax, {nr}",
            "mov rdi, {m}",
            "mov esi, 8",
            "syscall",
            "cmp byte ptr [{f}], 0",
            "je 2b",
            "vmovdqu [{o}],       ymm8",
            "vmovdqu [{o} + 32],  ymm9",
            "vmovdqu [{o} + 64],  ymm10",
            "vmovdqu [{o} + 96],  ymm11",
            "vmovdqu [{o} + 128], ymm12",
            "vmovdqu [{o} + 160], ymm13",
            "vmovdqu [{o} + 192], ymm14",
            "vmovdqu [{o} + 224], ymm15",
            "vmovdqu64 [{zo}],       zmm16",
            "vmovdqu64 [{zo} + 64],  zmm17",
            "vmovdqu64 [{zo} + 128], zmm18",
            "vmovdqu64 [{zo} + 192], zmm19",
            "vmovdqu64 [{zo} + 256], zmm20",
            "vmovdqu64 [{zo} + 320], zmm21",
            "vmovdqu64 [{zo} + 384], zmm22",
            "vmovdqu64 [{zo} + 448], zmm23",
            "kmovw word ptr [{ko}],      k1",
            "kmovw word ptr [{ko} + 2],  k2",
            "kmovw word ptr [{ko} + 4],  k3",
            "kmovw word ptr [{ko} + 6],  k4",
            "kmovw word ptr [{ko} + 8],  k5",
            "kmovw word ptr [{ko} + 10], k6",
            "kmovw word ptr [{ko} + 12], k7",
            "vzeroupper",
            p = in(reg) pattern.as_ptr(),
            o = in(reg) out.as_mut_ptr(),
            zp = in(reg) zpattern.as_ptr(),
            zo = in(reg) zout.as_mut_ptr(),
            kp = in(reg) kpattern.as_ptr(),
            ko = in(reg) kout.as_mut_ptr(),
            m = in(reg) mask,
            f = in(reg) flag,
            nr = const libc::SYS_rt_sigsuspend,
            out("rax") _, out("rdi") _, out("rsi") _, out("rcx") _, out("r11") _,
            out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
            out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
            out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
            out("k1") _, out("k2") _, out("k3") _, out("k4") _, out("k5") _, out("k6") _, out("k7") _,
        );
    }
}

pub fn bytes_pattern<const N: usize>(seed: u64) -> [u8; N] {
    let mut b = [0u8; N];
    fill(&mut b, seed);
    b
}

pub fn diff_regs(report: &mut Report, name: &str, width: usize, want: &[u8], got: &[u8], first: usize) {
    for (i, (w, g)) in want.chunks(width).zip(got.chunks(width)).enumerate() {
        if w != g {
            let lanes: Vec<usize> = w.chunks(8).zip(g.chunks(8)).enumerate().filter(|(_, (a, b))| a != b).map(|(j, _)| j).collect();
            report.0.push(format!("{name}{} differs in qwords {lanes:?}", first + i));
        }
    }
}
