//! Code already in a task that lets a remote syscall run before the parasite exists
//! (its mmap) or after it is gone (its munmap) and still end in the task's own state
//! should crtool die in the middle.
//!
//! A remote syscall points rip at a `syscall` instruction crtool did not write; if
//! crtool is killed while the task is stopped at that call, the kernel detaches the
//! task and it runs on from there with crtool's registers. So the `syscall` chosen is
//! one that the vdso follows with nothing but register clearing and `ret`
//! (`syscall; xor ...; ret`, as the x86-64 vdso's fallbacks are built), rsp points at
//! an rt_sigframe written below the task's red zone holding the thread's own state,
//! and the frame's return address is a `mov $15, %eax/%rax; syscall` sequence found
//! in the task's own code (glibc's and musl's `__restore_rt`, Go's sigreturn). On its
//! own, the task then returns through rt_sigreturn to exactly where it was frozen,
//! as after a signal handler (kernel: arch/x86/kernel/signal_64.c).

use crate::sys::process::read_remote;
use nix::unistd::Pid;
use std::collections::HashMap;

/// Offset in the vdso of a `syscall` followed only by register clearing and `ret`.
pub fn vdso_syscall_ret(code: &[u8]) -> Option<u64> {
    let mut from = 0;
    while let Some(p) = code[from..].windows(2).position(|w| w == [0x0f, 0x05]) {
        let at = from + p;
        if clears_then_ret(&code[at + 2..]) {
            return Some(at as u64);
        }
        from = at + 1;
    }
    None
}

/// Whether `code` is a run of `xor reg, reg` (32-bit forms, with or without REX.R|B)
/// ending in `ret`.
fn clears_then_ret(code: &[u8]) -> bool {
    let mut i = 0;
    while i < 64 {
        match code.get(i..) {
            Some([0xc3, ..]) => return true,
            // xor r32, r32 (31 /r, mod 11, reg == rm)
            Some([0x31, m, ..]) if m >> 6 == 3 && (m >> 3) & 7 == m & 7 => i += 2,
            // REX.RB (45) or REX.WRB (4d) xor r8d..r15d
            Some([0x45 | 0x4d, 0x31, m, ..]) if m >> 6 == 3 && (m >> 3) & 7 == m & 7 => i += 3,
            _ => return false,
        }
    }
    false
}

/// The rt_sigreturn sequences looked for: `mov $15, %rax; syscall` and
/// `mov $15, %eax; syscall`.
const SIGRETURN: [&[u8]; 2] = [&[0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05], &[0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05]];

/// Where a file's executable mapping (path, offset in the file) has a sigreturn
/// sequence, as an offset from the mapping's start; found once per file.
#[derive(Default)]
pub struct SigreturnCache(HashMap<(String, u64), Option<u64>>);

impl SigreturnCache {
    /// The address of an rt_sigreturn sequence in `pid`'s executable file mappings
    /// (the C library's first), or `None`.
    pub fn find(&mut self, pid: Pid) -> Option<u64> {
        use procfs::process::{MMPermissions, MMapPath};
        let maps = procfs::process::Process::new(pid.as_raw()).ok()?.maps().ok()?;
        let mut exec: Vec<(u64, u64, u64, String)> = maps
            .iter()
            .filter(|m| m.perms.contains(MMPermissions::READ | MMPermissions::EXECUTE))
            .filter_map(|m| match &m.pathname {
                MMapPath::Path(p) => Some((m.address.0, m.address.1, m.offset, p.to_string_lossy().into_owned())),
                _ => None,
            })
            .collect();
        exec.sort_by_key(|m| !m.3.contains("libc"));
        for (start, end, off, path) in exec {
            let found = *self.0.entry((path, off)).or_insert_with(|| {
                let mut code = vec![0u8; (end - start) as usize];
                read_remote(pid, start, &mut code).ok()?;
                SIGRETURN.iter().find_map(|pat| code.windows(pat.len()).position(|w| w == *pat)).map(|p| p as u64)
            });
            if let Some(f) = found {
                return Some(start + f);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_clearing_fallback_not_the_others() {
        // gettimeofday's fallback: syscall; leave; ... (not taken), then clock_getres's.
        let code = [
            0xb8, 0x60, 0, 0, 0, 0x0f, 0x05, 0xc9, 0x31, 0xd2, 0xc3, // syscall; leave; xor; ret
            0xb8, 0xe5, 0, 0, 0, 0x0f, 0x05, 0x31, 0xd2, 0x31, 0xc9, 0x31, 0xf6, 0x31, 0xff, 0x45, 0x31, 0xdb, 0xc3,
        ];
        assert_eq!(vdso_syscall_ret(&code), Some(16));
        assert_eq!(vdso_syscall_ret(&code[..29]), None, "no ret");
        assert!(!clears_then_ret(&[0x31, 0xc8, 0xc3]), "xor eax, ecx is not a clear");
    }

    #[test]
    fn finds_this_process_s_sigreturn() {
        // Rust's std links the C library, whose __restore_rt is a sigreturn sequence.
        let at = SigreturnCache::default().find(Pid::this()).expect("a sigreturn sequence in this process");
        // SAFETY: `at` lies in one of our own executable mappings.
        let code = unsafe { std::slice::from_raw_parts(at as *const u8, 9) };
        assert!(SIGRETURN.iter().any(|p| code.starts_with(p)), "{code:02x?}");
    }
}
