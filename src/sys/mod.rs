//! Everything that talks to the kernel through raw syscalls or ptrace. Modules above
//! this one see safe functions only.

pub mod cpu;
pub mod fd;
pub mod ipc;
pub mod mm;
pub mod process;
pub mod ptrace;
pub mod signals;
pub mod sock;
pub mod event;
pub mod tty;
pub mod tun;
pub mod uffd;

/// The embedded blobs (built by build.rs from `parasite/`).
pub mod blobs {
    include!(concat!(env!("OUT_DIR"), "/blobs.rs"));

    /// A copy of `image` relocated for loading at `base`.
    pub fn relocated(image: &[u8], relocs: &[(u64, u64)], base: u64) -> Vec<u8> {
        let mut v = image.to_vec();
        for &(off, addend) in relocs {
            let o = off as usize;
            v[o..o + 8].copy_from_slice(&(base + addend).to_le_bytes());
        }
        v
    }
}

/// The parasite/restorer ABI shared with the blobs.
#[path = "../../parasite/src/abi.rs"]
pub mod abi;

// SAFETY: these ABI structs are #[repr(C)] aggregates of integers laid out without
// implicit padding (explicit `_pad` fields where alignment needs them).
unsafe impl abi::Plain for abi::RestorerArgs {}
// SAFETY: as above.
unsafe impl abi::Plain for abi::ThreadArgs {}
// SAFETY: as above.
unsafe impl abi::Plain for abi::TimerArgs {}
// SAFETY: as above.
unsafe impl abi::Plain for abi::VmaMove {}
// SAFETY: as above.
unsafe impl abi::Plain for abi::VmaProtect {}
// SAFETY: an integer.
unsafe impl abi::Plain for u64 {}

