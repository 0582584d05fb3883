//! Whole-directory integrity check of an image set.

use std::fs;
use std::path::{Path, PathBuf};

use crate::json::{decode_dynamic, message_descriptor};
use crate::pb::PagemapEntry;
use crate::{ImageError, ImageKind, ImageReader, PAGE_SIZE, PagesReader, read_entries};

/// What [`verify_dir`] checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Every image file, sorted by path, with its number of entries (framed kinds) or
    /// chunks (pages).
    pub files: Vec<(PathBuf, u64)>,
}

/// Checks every `*.img` file of `dir`, in sorted order: framing and CRC of every
/// entry, that every entry decodes as its kind's message, that single-entry kinds
/// (inventory, core, mm) hold exactly one entry, and for every `pages-PID.img` that
/// each chunk of `pagemap-PID.img` lies within the file, matches its CRC and holds
/// `nr_pages * 4096` bytes of page data. Files not ending in `.img` are ignored; an
/// `.img` file with an unknown magic is a [`ImageError::BadMagic`] error.
///
/// First of all the directory must hold a complete dump: an inventory whose manifest
/// lists every other image file with its size and CRC32 ([`check_manifest`]).
pub fn verify_dir(dir: &Path) -> Result<VerifyReport, ImageError> {
    let inv: crate::pb::Inventory = match crate::read_one(dir, ImageKind::Inventory, 0) {
        Err(ImageError::Missing { .. }) => return Err(ImageError::NoDump { dir: dir.to_path_buf() }),
        r => r?,
    };
    check_manifest(dir, &inv, true)?;
    verify_paths(dir, true)
}

/// The per-file part of [`verify_dir`], without the manifest: framing, CRCs and
/// decoding of every `*.img` file of `dir`, page data against its pagemap.
pub fn verify_files(dir: &Path) -> Result<VerifyReport, ImageError> {
    verify_paths(dir, false)
}

/// `verify_files`; with `ours_only`, files not named as crtool names its images
/// (a user's `disk.img`) are left alone.
fn verify_paths(dir: &Path, ours_only: bool) -> Result<VerifyReport, ImageError> {
    let io_err = |source| ImageError::Io {
        path: dir.to_path_buf(),
        source,
    };
    // (A dump whose page images went to a page server has none here.)
    let remote_pages = crate::read_one::<crate::pb::Inventory>(dir, ImageKind::Inventory, 0).is_ok_and(|i| i.remote_pages);
    let mut paths = Vec::new();
    for dent in fs::read_dir(dir).map_err(io_err)? {
        let path = dent.map_err(io_err)?.path();
        let is_img = path.extension().is_some_and(|e| e == "img");
        let ours = path.file_name().and_then(|n| n.to_str()).and_then(ImageKind::parse_file_name).is_some();
        if is_img && (ours || !ours_only) && fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            paths.push(path);
        }
    }
    paths.sort();

    let mut report = VerifyReport::default();
    for path in paths {
        let parsed = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(ImageKind::parse_file_name);
        let count = match parsed {
            Some((ImageKind::Pages, pid)) => verify_pages(dir, pid, &path)?,
            Some((kind, pid)) => {
                let reader = ImageReader::open(dir, kind, pid)?;
                verify_framed(dir, Some(pid), reader, remote_pages)?
            }
            // Not a canonical name: go by the magic (pages need the PID from the name).
            None => match ImageReader::open_path(&path) {
                Ok((reader, _)) => verify_framed(dir, None, reader, remote_pages)?,
                Err(ImageError::NotFramed { path, kind }) => {
                    return Err(ImageError::BadName { path, kind });
                }
                Err(e) => return Err(e),
            },
        };
        report.files.push((path, count));
    }
    Ok(report)
}

/// Reads every entry of a framed file, decoding it with the schema; returns the count.
/// `pid` comes from a canonical file name and locates the pages file of a pagemap.
fn verify_framed(dir: &Path, pid: Option<u32>, mut reader: ImageReader, remote_pages: bool) -> Result<u64, ImageError> {
    let kind = reader.kind();
    let path = reader.path().to_path_buf();
    let desc = message_descriptor(&path, kind)?;
    while let Some((offset, payload)) = reader.next_raw()? {
        let entry = reader.entries_read() - 1;
        decode_dynamic(&path, &desc, offset, entry, &payload)?;
    }
    let found = reader.entries_read();
    if matches!(kind, ImageKind::Inventory | ImageKind::Core | ImageKind::Mm) && found != 1 {
        return Err(ImageError::Count {
            path,
            expected: 1,
            found,
        });
    }
    if let (ImageKind::Pagemap, Some(pid), 1..) = (kind, pid, found) {
        let pages = dir.join(ImageKind::Pages.file_name(pid));
        if !pages.is_file() && !remote_pages {
            return Err(ImageError::Missing { path: pages });
        }
    }
    Ok(found)
}

/// Checks the image files of `dir` against the inventory's manifest: each listed
/// file exists with its size and (framed files always, pages files with `full`)
/// the CRC32 of its whole contents, and no other `*.img` file is there. Pages files
/// are large and their chunks carry CRCs of their own, checked as they are read.
pub fn check_manifest(dir: &Path, inv: &crate::pb::Inventory, full: bool) -> Result<(), ImageError> {
    let inventory = ImageKind::Inventory.file_name(0);
    for f in &inv.files {
        let path = dir.join(&f.name);
        let sane = f.name.ends_with(".img") && !f.name.contains('/') && f.name != inventory;
        if !sane {
            return Err(ImageError::BadName { path, kind: ImageKind::Inventory });
        }
        if inv.remote_pages && f.name.starts_with("pages-") && !path.exists() {
            continue; // (at the page server)
        }
        let md = fs::metadata(&path).map_err(|e| ImageError::io(&path, 0, None, e))?;
        if md.len() != f.size {
            return Err(ImageError::FileSize { path, expected: f.size, found: md.len() });
        }
        let pages = f.name.starts_with("pages-");
        if full || !pages {
            let found = file_crc(&path)?;
            if found != f.crc32 {
                return Err(ImageError::FileCrc { path, expected: f.crc32, found });
            }
        }
    }
    let io_err = |source| ImageError::Io { path: dir.to_path_buf(), source };
    for dent in fs::read_dir(dir).map_err(io_err)? {
        let dent = dent.map_err(io_err)?;
        let name = dent.file_name().to_string_lossy().into_owned();
        // Other files are not crtool's business (a user's disk.img, say).
        let ours = ImageKind::parse_file_name(&name).is_some();
        if ours && name != inventory && !inv.files.iter().any(|f| f.name == name) {
            return Err(ImageError::Extra { path: dent.path() });
        }
    }
    Ok(())
}

/// CRC32 of a whole file (as the inventory's manifest records it).
pub fn file_crc(path: &Path) -> Result<u32, ImageError> {
    use std::io::Read;
    let mut f = fs::File::open(path).map_err(|e| ImageError::io(path, 0, None, e))?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| ImageError::io(path, 0, None, e))?;
        if n == 0 {
            return Ok(h.finalize());
        }
        h.update(&buf[..n]);
    }
}

/// Checks every chunk of a pages file against its pagemap; returns the chunk count.
fn verify_pages(dir: &Path, pid: u32, path: &Path) -> Result<u64, ImageError> {
    let mut pages = PagesReader::open_path(path)?;
    let map: Vec<PagemapEntry> = read_entries(dir, ImageKind::Pagemap, pid)?;
    for e in map.iter().filter(|e| !e.inherited && !e.guard && !e.in_parent && !e.lazy && !e.deduped) {
        let data_len = u64::from(e.nr_pages) * PAGE_SIZE;
        pages.verify_chunk(e.offset, e.stored_len, e.crc32, data_len)?;
    }
    Ok(map.len() as u64)
}
