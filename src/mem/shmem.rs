//! Shared anonymous memory across the tree: at restore crtool creates each shmem
//! object once, fills it from its owner's pages, and every task maps that same object
//! (through /proc/self/map_files of the inherited mapping), so writes are shared again.

use crate::error::{Error, Result};
use crate::sys::mm::{Mapping, PAGE};
use images_format::pb::{self, VmaKind};
use images_format::PagesReader;
use std::collections::BTreeMap;
use std::path::Path;

/// shmid → the object's mapping in crtool (inherited by every forked task); and the
/// memfds of the tree.
#[derive(Default)]
pub struct ShmemObjects(BTreeMap<u64, Mapping>, crate::files::memfd::MemfdObjects, crate::files::ghost::Ghosts);

impl ShmemObjects {
    /// Creates and fills every shmem object the tree uses. `tasks` lists each task's
    /// PID, VMAs and page map.
    pub fn create(dir: &Path, tasks: &[(u32, &pb::Mm, &[pb::PagemapEntry])]) -> Result<ShmemObjects> {
        let mut sizes: BTreeMap<u64, u64> = BTreeMap::new();
        for (_, mm, _) in tasks {
            for v in mm.vmas.iter().filter(|v| v.kind() == VmaKind::VmaAnonShared) {
                let end = v.pgoff + (v.end - v.start);
                let s = sizes.entry(v.shmid).or_default();
                *s = (*s).max(end);
            }
        }
        let mut objs = ShmemObjects::default();
        for (&id, &size) in &sizes {
            let map = Mapping::anywhere(size, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_ANONYMOUS)
                .map_err(|e| Error::sys(format!("creating shared memory object {id} ({size} bytes)"), e))?;
            objs.0.insert(id, map);
        }
        for &(pid, mm, pagemap) in tasks {
            let owned: Vec<&pb::Vma> = mm.vmas.iter().filter(|v| v.kind() == VmaKind::VmaAnonShared && v.shmem_owner).collect();
            if owned.is_empty() {
                continue;
            }
            let mut pages = PagesReader::open(dir, pid)?;
            for e in pagemap {
                let len = e.nr_pages as u64 * PAGE;
                let Some(v) = owned.iter().find(|v| v.start <= e.vaddr && e.vaddr.checked_add(len).is_some_and(|x| x <= v.end)) else { continue };
                let off = v.pgoff + (e.vaddr - v.start);
                let dst = objs.0.get_mut(&v.shmid).and_then(|m| m.bytes_mut(off, len)).ok_or_else(|| Error::BadImage {
                    file: format!("pagemap-{pid}.img"),
                    msg: format!("shared pages at {:#x} lie past the object", e.vaddr),
                })?;
                if e.deduped {
                    return Err(Error::BadImage { file: format!("pagemap-{pid}.img"), msg: format!("the shared pages at {:#x} were removed by crtool dedup (a later dump of the chain has them): restore that dump", e.vaddr) });
                }
                pages.read_into(e.offset, e.stored_len, e.crc32, dst)?;
            }
        }
        Ok(objs)
    }

    /// With the tree's memfds (for their mappings).
    pub fn with_memfds(mut self, m: crate::files::memfd::MemfdObjects) -> Self {
        self.1 = m;
        self
    }

    pub fn memfds(&self) -> &crate::files::memfd::MemfdObjects {
        &self.1
    }

    /// With the tree's ghost files (for their mappings).
    pub fn with_ghosts(mut self, g: crate::files::ghost::Ghosts) -> Self {
        self.2 = g;
        self
    }

    pub fn ghosts(&self) -> &crate::files::ghost::Ghosts {
        &self.2
    }

    /// The path that opens object `id` (valid in crtool and in every task it forks).
    pub fn path(&self, id: u64) -> Option<String> {
        self.0.get(&id).map(|m| format!("/proc/self/map_files/{:x}-{:x}", m.addr(), m.addr() + m.len()))
    }
}
