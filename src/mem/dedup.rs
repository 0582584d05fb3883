//! CRIU's `dedup` and `dump --auto-dedup`: in a chain of incremental dumps
//! (`--prev-images-dir`, the `parent` links), page data of a parent directory
//! that the last dump no longer reads (it has its own copy of those pages, or
//! no pages there at all) is removed: the chunk's range of the pages file is
//! punched out (fallocate(2) FALLOC_FL_PUNCH_HOLE, the file keeps its size) and
//! its pagemap entry marked `deduped`. The chain restores as before and
//! `verify` passes on every directory of it; a parent directory alone can no
//! longer be restored (a restore that reaches such pages says so).
//!
//! A chunk is removed only when none of its pages is read through the chain
//! (chunks carry one CRC). The parent's pagemap is rewritten before anything
//! is punched, its inventory's records of the pagemap and the pages file last:
//! a dedup cut short leaves data that is no longer listed (never a listed chunk
//! without data) and a parent whose `verify` fails until `crtool dedup` runs
//! again, which completes it.

use crate::error::{Error, Result};
use crate::mem::chain::parent_of;
use crate::sys::mm::PAGE;
use images_format::{ImageKind, pb, read_entries, read_one, write_entries};
use std::os::fd::AsFd;
use std::path::Path;

/// What a dedup did.
#[derive(Debug, Default)]
pub struct DedupStats {
    /// Chunks removed, and their bytes in the pages files.
    pub chunks: u64,
    pub bytes: u64,
}

/// Address ranges (start, end), sorted, not overlapping.
type Ranges = Vec<(u64, u64)>;

fn overlaps(r: &Ranges, s: u64, e: u64) -> bool {
    let i = r.partition_point(|x| x.1 <= s);
    r.get(i).is_some_and(|x| x.0 < e)
}

fn intersect(r: &Ranges, s: u64, e: u64, out: &mut Ranges) {
    let mut i = r.partition_point(|x| x.1 <= s);
    while let Some(&(a, b)) = r.get(i).filter(|x| x.0 < e) {
        out.push((a.max(s), b.min(e)));
        i += 1;
    }
}

/// Removes from the parent directories of `dir` the page data the chain from
/// `dir` does not read.
pub fn dedup(dir: &Path) -> Result<DedupStats> {
    let inv: pb::Inventory = read_one(dir, ImageKind::Inventory, 0)?;
    let mut stats = DedupStats::default();
    for &vpid in &inv.pids {
        if !dir.join(ImageKind::Pagemap.file_name(vpid)).exists() {
            continue; // (a zombie)
        }
        let own: Vec<pb::PagemapEntry> = read_entries(dir, ImageKind::Pagemap, vpid)?;
        // What the directory at this level reads from its parent.
        let mut need: Ranges = own.iter().filter(|e| e.in_parent).map(|e| (e.vaddr, e.vaddr + e.nr_pages as u64 * PAGE)).collect();
        let mut level = dir.to_path_buf();
        let mut depth = 0;
        while let Some(parent) = parent_of(&level) {
            depth += 1;
            if depth > 64 || !parent.join(ImageKind::Pagemap.file_name(vpid)).exists() {
                break;
            }
            need.sort();
            let mut entries: Vec<pb::PagemapEntry> = read_entries(&parent, ImageKind::Pagemap, vpid)?;
            let mut next: Ranges = Vec::new();
            let mut punch = Vec::new();
            for e in entries.iter_mut() {
                let (s, end) = (e.vaddr, e.vaddr + e.nr_pages as u64 * PAGE);
                if e.in_parent {
                    intersect(&need, s, end, &mut next);
                } else if !e.deduped && !e.guard && !e.inherited && !e.lazy && !overlaps(&need, s, end) {
                    e.deduped = true;
                    punch.push((e.offset, e.stored_len));
                }
            }
            let path = parent.join(ImageKind::Pages.file_name(vpid));
            let stale = manifest_stale(&parent, &ImageKind::Pagemap.file_name(vpid))?;
            if (!punch.is_empty() || stale) && !path.exists() {
                // (Its pages went to a page server: nothing to free here.)
                log::info!("{}: no {} here: left as it is", parent.display(), path.display());
            } else if !punch.is_empty() || stale {
                let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).map_err(|e| Error::io(&path, e))?;
                let pm = replace(&parent, ImageKind::Pagemap, vpid, &entries)?;
                // Every removed chunk, also of an earlier dedup cut short.
                for e in entries.iter().filter(|e| e.deduped) {
                    use nix::fcntl::{FallocateFlags as F, fallocate};
                    fallocate(f.as_fd(), F::FALLOC_FL_PUNCH_HOLE | F::FALLOC_FL_KEEP_SIZE, e.offset as i64, e.stored_len as i64)
                        .map_err(|err| Error::sys(format!("{}: punching out {} bytes at {}", path.display(), e.stored_len, e.offset), err))?;
                }
                stats.chunks += punch.len() as u64;
                stats.bytes += punch.iter().map(|p| p.1).sum::<u64>();
                record(&parent, &pm, vpid, &path)?;
                log::info!("{}: pid {vpid}: {} chunks ({} KiB) no later dump reads removed", parent.display(), punch.len(), punch.iter().map(|p| p.1).sum::<u64>() >> 10);
            }
            need = next;
            level = parent;
        }
    }
    Ok(stats)
}

/// CRC32 and size of a whole file.
fn file_crc(path: &Path) -> Result<(u32, u64)> {
    let size = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    Ok((images_format::file_crc(path)?, size))
}

/// Whether `dir`'s inventory records file `name` other than it is (a dedup
/// cut short between rewriting it and recording it).
fn manifest_stale(dir: &Path, name: &str) -> Result<bool> {
    let inv: pb::Inventory = read_one(dir, ImageKind::Inventory, 0)?;
    let Some(f) = inv.files.iter().find(|f| f.name == name) else { return Ok(false) };
    let (crc, size) = file_crc(&dir.join(name))?;
    Ok(f.crc32 != crc || f.size != size)
}

/// Replaces `dir`'s image file of `kind` (and `pid`) with one of `entries`:
/// written aside, then renamed into place. Returns its record for the inventory.
fn replace<M: prost::Message>(dir: &Path, kind: ImageKind, pid: u32, entries: &[M]) -> Result<pb::ImageFile> {
    let tmp = dir.join(".crtool-dedup");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let name = kind.file_name(pid);
    let file = write_entries(&tmp, kind, pid, entries)?;
    std::fs::rename(tmp.join(&name), dir.join(&name)).map_err(|e| Error::io(dir.join(&name), e))?;
    let _ = std::fs::remove_dir(&tmp);
    Ok(pb::ImageFile { name, ..file })
}

/// Records in `dir`'s inventory the new pagemap (`pagemap`) and the pages file
/// `pages` as they are now.
fn record(dir: &Path, pagemap: &pb::ImageFile, vpid: u32, pages: &Path) -> Result<()> {
    let mut inv: pb::Inventory = read_one(dir, ImageKind::Inventory, 0)?;
    let pages_name = ImageKind::Pages.file_name(vpid);
    let (crc, size) = file_crc(pages)?;
    for f in inv.files.iter_mut() {
        if f.name == pagemap.name {
            *f = pagemap.clone();
        } else if f.name == pages_name {
            f.crc32 = crc;
            f.size = size;
        }
    }
    replace(dir, ImageKind::Inventory, 0, &[inv]).map(drop)
}
