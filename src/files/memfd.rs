//! memfds (memfd_create(2)): open, mapped shared or private, or both, by any number
//! of processes. Dump records each memfd once (name, size, seals, mode and its data
//! without the holes), read through an fd of crtool's (its duplicate of a task's
//! fd, or /proc/PID/map_files of a mapping); restore makes each again in crtool
//! before the tree is forked, which the tasks open and map through
//! /proc/self/fd/N (inherited), sealed as it was.

use crate::error::{Error, Result};
use images_format::pb;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

/// Bytes of memfd data per image entry.
const CHUNK: usize = 1 << 20;

/// The memfds seen so far in the dump, by inode.
#[derive(Default)]
pub struct MemfdTable {
    pub inodes: BTreeMap<u64, pb::MemfdInode>,
    pub chunks: Vec<pb::MemfdChunk>,
}

/// The name of a memfd from its link as `procinfo::file_link` gives it ("/memfd:NAME",
/// the kernel's " (deleted)" already taken off: a name may end in " (deleted)" too).
pub fn name_of(link: &str) -> Option<&str> {
    link.strip_prefix("/memfd:")
}

/// The data of `f` (`size` bytes) in runs of at most 1 MiB, without its holes
/// (lseek SEEK_DATA/SEEK_HOLE). `what` names it in errors.
pub fn extents(pid: i32, what: &str, f: &std::fs::File, size: u64) -> Result<Vec<(u64, Vec<u8>)>> {
    // A description of its own: `f` may share the task's, whose offset lseek would
    // move.
    let own = std::fs::File::open(format!("/proc/self/fd/{}", f.as_raw_fd())).map_err(|e| Error::io(what, e))?;
    let f = &own;
    let mut out = Vec::new();
    let mut at = 0u64;
    while at < size {
        let Some(start) = crate::sys::fd::seek_data(f.as_fd(), at).map_err(|e| Error::sys(format!("pid {pid}: {what}: SEEK_DATA"), e))? else { break };
        let end = crate::sys::fd::seek_hole(f.as_fd(), start).map_err(|e| Error::sys(format!("pid {pid}: {what}: SEEK_HOLE"), e))?.min(size);
        let mut off = start;
        while off < end {
            let len = ((end - off) as usize).min(CHUNK);
            let mut data = vec![0u8; len];
            f.read_exact_at(&mut data, off).map_err(|e| Error::io(what, e))?;
            out.push((off, data));
            off += len as u64;
        }
        at = end.max(start + 1);
    }
    Ok(out)
}

impl MemfdTable {
    /// Records the memfd behind `f` (once per inode). `what` names it in errors.
    pub fn record(&mut self, pid: i32, what: &str, name: &str, f: &std::fs::File) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        let md = f.metadata().map_err(|e| Error::io(what, e))?;
        let ino = md.ino();
        if self.inodes.contains_key(&ino) {
            return Ok(ino);
        }
        let unsupported = |w: String| Error::Unsupported { pid, fd: None, what: w, hint: Some("hugetlb memfds are not supported") };
        if f.as_fd().try_clone_to_owned().and_then(|o| crate::sys::fd::fs_magic(&o)).is_ok_and(|m| m == libc::HUGETLBFS_MAGIC as i64) {
            return Err(unsupported(format!("{what} is a hugetlb memfd")));
        }
        let seals = crate::sys::fd::get_seals(f.as_fd()).map_err(|e| Error::sys(format!("pid {pid}: {what}: F_GET_SEALS"), e))?;
        let size = md.size();
        for (offset, data) in extents(pid, what, f, size)? {
            self.chunks.push(pb::MemfdChunk { inode: ino, offset, data });
        }
        self.inodes.insert(ino, pb::MemfdInode { inode: ino, name: name.to_string(), size, seals, mode: md.mode() & 0o7777, uid: md.uid(), gid: md.gid() });
        Ok(ino)
    }
}

/// The memfds of the images, made again in crtool (inherited by the forked tree).
#[derive(Default)]
pub struct MemfdObjects {
    fds: BTreeMap<u64, OwnedFd>,
    seals: BTreeMap<u64, u32>,
}

impl MemfdObjects {
    /// Makes every memfd with its size, mode, data and seals.
    pub fn create(inodes: &[pb::MemfdInode], chunks: &[pb::MemfdChunk]) -> Result<MemfdObjects> {
        let mut objs = MemfdObjects::default();
        for m in inodes {
            let fd = crate::sys::fd::memfd_create(&m.name).map_err(|e| Error::Reported(format!("cannot make memfd {:?}: memfd_create: {e}", m.name)))?;
            let f = std::fs::File::from(fd);
            f.set_len(m.size).map_err(|e| Error::Reported(format!("memfd {:?}: ftruncate: {e}", m.name)))?;
            use std::os::unix::fs::PermissionsExt;
            std::os::unix::fs::fchown(&f, Some(m.uid), Some(m.gid)).map_err(|e| Error::Reported(format!("memfd {:?}: fchown: {e}", m.name)))?;
            f.set_permissions(std::fs::Permissions::from_mode(m.mode)).map_err(|e| Error::Reported(format!("memfd {:?}: fchmod: {e}", m.name)))?;
            objs.fds.insert(m.inode, f.into());
            objs.seals.insert(m.inode, m.seals);
        }
        for c in chunks {
            let fd = objs.fds.get(&c.inode).ok_or_else(|| Error::BadImage { file: "memfdpages.img".into(), msg: format!("data of unknown memfd {}", c.inode) })?;
            let f = std::fs::File::from(fd.try_clone().map_err(|e| Error::io("memfd", e))?);
            f.write_all_at(&c.data, c.offset).map_err(|e| Error::Reported(format!("memfd {}: writing its data: {e}", c.inode)))?;
        }
        // Sealed before any task maps it, as the tasks' mappings were made (a mapping
        // of a write-sealed memfd never may write) — but F_SEAL_FUTURE_WRITE (and a
        // F_SEAL_SEAL after it) once they are mapped: it leaves the writable shared
        // mappings made before it, which it would forbid now.
        objs.seal(false)?;
        Ok(objs)
    }

    /// The path that opens memfd `inode` (in crtool, and in every forked task until
    /// it closes crtool's fds).
    pub fn path(&self, inode: u64) -> Option<String> {
        self.fds.get(&inode).map(|f| format!("/proc/self/fd/{}", f.as_raw_fd()))
    }

    /// A new open file description of memfd `inode` with `flags`, at `pos`.
    pub fn open(&self, m: &pb::MemfdFile) -> std::io::Result<OwnedFd> {
        let path = self.path(m.inode).ok_or_else(|| std::io::Error::other(format!("memfd {} is missing from memfd.img", m.inode)))?;
        let fd = crate::sys::fd::open_at_pos(&path, (m.flags as i32) & (libc::O_ACCMODE | libc::O_APPEND | libc::O_NONBLOCK | libc::O_LARGEFILE), m.pos)?;
        Ok(fd)
    }

    /// Adds each memfd's seals: those that go before the tasks map it, or (`late`)
    /// the rest, once they have (see `create`).
    pub fn seal(&self, late: bool) -> Result<()> {
        const FUTURE_WRITE: u32 = libc::F_SEAL_FUTURE_WRITE as u32;
        for (ino, fd) in &self.fds {
            let all = self.seals.get(ino).copied().unwrap_or(0);
            let deferred = if all & FUTURE_WRITE != 0 { FUTURE_WRITE | libc::F_SEAL_SEAL as u32 } else { 0 };
            let seals = if late { all & deferred } else { all & !deferred };
            if seals != 0 {
                crate::sys::fd::add_seals(fd.as_fd(), seals).map_err(|e| Error::Reported(format!("memfd {ino}: F_ADD_SEALS {seals:#x}: {e}")))?;
            }
        }
        Ok(())
    }
}
