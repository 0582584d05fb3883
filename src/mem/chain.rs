//! Page data of one process at restore: its own page image, and for pagemap
//! entries marked `in_parent` the images of the directories before it (the
//! `parent` symlink each dump made with --prev-images-dir points at the one
//! before, as CRIU's do). An entry of a parent may itself be in its parent.

use crate::error::{Error, Result};
use crate::sys::mm::PAGE;
use images_format::pb;
use images_format::{ImageKind, PagesReader, read_entries};
use std::path::{Path, PathBuf};

/// The longest chain followed (a loop of symlinks stops here).
const MAX_DEPTH: usize = 64;

/// One parent directory's images of the process.
struct Parent {
    dir: PathBuf,
    /// Its pagemap entries, in address order.
    entries: Vec<pb::PagemapEntry>,
    reader: PagesReader,
}

pub struct Pages {
    own: PagesReader,
    dir: PathBuf,
    vpid: u32,
    /// Parents loaded so far: [0] is `dir`'s parent, [1] its parent, ...
    parents: Vec<Parent>,
    /// The last parent chunk read: (level, offset, its page data).
    /// The last chunk read in part at each level (this directory's at index 0,
    /// its parent's at 1, ...): its offset and page data. One per level, as a
    /// read walks down the chain and each level would evict the others'.
    cached: Vec<Option<(u64, Vec<u8>)>>,
}

/// The directory `dir/parent` points at (relative to `dir`).
pub fn parent_of(dir: &Path) -> Option<PathBuf> {
    let link = std::fs::read_link(dir.join("parent")).ok()?;
    Some(if link.is_absolute() { link } else { dir.join(link) })
}

impl Pages {
    /// The page image of process `vpid` in `dir`.
    pub fn open(dir: &Path, vpid: u32) -> Result<Pages> {
        Ok(Pages { own: PagesReader::open(dir, vpid)?, dir: dir.to_path_buf(), vpid, parents: Vec::new(), cached: Vec::new() })
    }

    /// Another reader of the same page images (for another process).
    pub fn reopen(&self) -> Result<Pages> {
        Pages::open(&self.dir, self.vpid)
    }

    /// Reads the pages of entry `e` into `dst` (its size).
    pub fn read(&mut self, e: &pb::PagemapEntry, dst: &mut [u8]) -> Result<()> {
        if e.lazy || e.deduped {
            return Err(Error::BadImage {
                file: format!("{}/pagemap-{}.img", self.dir.display(), self.vpid),
                msg: if e.lazy {
                    format!("the pages at {:#x} stayed with the dumped process (dump --lazy-pages): only its page server has them", e.vaddr)
                } else {
                    format!("the pages at {:#x} were removed by crtool dedup (a later dump of the chain has them): restore that dump", e.vaddr)
                },
            });
        }
        if !e.in_parent {
            return Ok(self.own.read_into(e.offset, e.stored_len, e.crc32, dst)?);
        }
        self.read_parent(0, e.vaddr, dst)
    }

    /// Reads `dst.len()` bytes at byte `from` of entry `e`'s pages. Part of an
    /// entry in a parent directory is read alone; part of one of this
    /// directory's (one stored chunk, which may be compressed) comes from the
    /// whole chunk, kept for the next read of the same one.
    pub fn read_part(&mut self, e: &pb::PagemapEntry, from: u64, dst: &mut [u8]) -> Result<()> {
        let whole = e.nr_pages as u64 * PAGE;
        if from == 0 && dst.len() as u64 == whole {
            return self.read(e, dst);
        }
        if e.in_parent {
            return self.read_parent(0, e.vaddr + from, dst);
        }
        if e.lazy || e.deduped {
            return self.read(e, dst);
        }
        let slot = self.slot(0);
        if !matches!(slot, Some((o, _)) if *o == e.offset) {
            let mut buf = slot.take().map(|(_, b)| b).unwrap_or_default();
            buf.resize(whole as usize, 0);
            self.own.read_into(e.offset, e.stored_len, e.crc32, &mut buf)?;
            *self.slot(0) = Some((e.offset, buf));
        }
        if let Some((_, buf)) = self.slot(0) {
            dst.copy_from_slice(&buf[from as usize..from as usize + dst.len()]);
        }
        Ok(())
    }

    fn slot(&mut self, level: usize) -> &mut Option<(u64, Vec<u8>)> {
        if self.cached.len() <= level {
            self.cached.resize_with(level + 1, || None);
        }
        &mut self.cached[level]
    }

    fn load(&mut self, level: usize) -> Result<()> {
        while self.parents.len() <= level {
            let child = self.parents.last().map_or(self.dir.clone(), |p| p.dir.clone());
            let bad = |msg: String| Error::BadImage { file: format!("{}/pagemap-{}.img", child.display(), self.vpid), msg };
            if self.parents.len() >= MAX_DEPTH {
                return Err(bad(format!("its chain of parent directories is longer than {MAX_DEPTH}")));
            }
            let dir = parent_of(&child).ok_or_else(|| bad("pages are in the parent directory, but there is no `parent` link".into()))?;
            if !dir.is_dir() {
                return Err(bad(format!("pages are in the parent directory {}, which is missing", dir.display())));
            }
            let entries: Vec<pb::PagemapEntry> = read_entries(&dir, ImageKind::Pagemap, self.vpid)?;
            let reader = PagesReader::open(&dir, self.vpid)?;
            self.parents.push(Parent { dir, entries, reader });
        }
        Ok(())
    }

    /// Reads [vaddr, vaddr + dst.len()) from the parent at `level`.
    fn read_parent(&mut self, level: usize, vaddr: u64, dst: &mut [u8]) -> Result<()> {
        self.load(level)?;
        let end = vaddr + dst.len() as u64;
        let mut at = vaddr;
        while at < end {
            let p = &self.parents[level];
            let i = p.entries.partition_point(|x| x.vaddr + x.nr_pages as u64 * PAGE <= at);
            let e = p.entries.get(i).filter(|x| x.vaddr <= at && !x.inherited && !x.guard && !x.deduped).cloned().ok_or_else(|| Error::BadImage {
                file: format!("{}/pagemap-{}.img", p.dir.display(), self.vpid),
                msg: format!("no page data at {at:#x}, which a later dump says is here (removed by a dedup of another chain?)"),
            })?;
            let e_end = e.vaddr + e.nr_pages as u64 * PAGE;
            let piece_end = end.min(e_end);
            let part = &mut dst[(at - vaddr) as usize..(piece_end - vaddr) as usize];
            if e.in_parent {
                self.read_parent(level + 1, at, part)?;
            } else if at == e.vaddr && piece_end == e_end {
                log::trace!("parent {level}: whole chunk {:#x} +{}", e.vaddr, part.len());
                // The whole chunk: straight into place.
                self.parents[level].reader.read_into(e.offset, e.stored_len, e.crc32, part)?;
            } else {
                log::trace!("parent {level}: part of chunk {:#x}: {:#x} +{}", e.vaddr, at, part.len());
                // (Slot 0 is this directory's; a parent at `level` has slot level + 1.)
                let slot = self.slot(level + 1);
                if !matches!(slot, Some((o, _)) if *o == e.offset) {
                    // (The buffer is reused: fresh ones would fault on every page.)
                    let mut buf = slot.take().map(|(_, b)| b).unwrap_or_default();
                    buf.resize((e_end - e.vaddr) as usize, 0);
                    self.parents[level].reader.read_into(e.offset, e.stored_len, e.crc32, &mut buf)?;
                    *self.slot(level + 1) = Some((e.offset, buf));
                }
                if let Some((_, buf)) = self.slot(level + 1) {
                    let from = (at - e.vaddr) as usize;
                    part.copy_from_slice(&buf[from..from + part.len()]);
                }
            }
            at = piece_end;
        }
        Ok(())
    }
}
