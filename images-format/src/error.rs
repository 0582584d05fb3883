//! The error type shared by every image reader and writer.

use std::io;
use std::path::{Path, PathBuf};

use crate::kinds::ImageKind;

/// Everything that can go wrong reading, writing or checking an image file.
///
/// Every variant names the file; entry-level variants also carry the byte offset of the
/// entry's frame header and its index (0-based) within the file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },

    #[error("{}: image file missing", path.display())]
    Missing { path: PathBuf },

    #[error("{}: no inventory.img: not a complete dump (an interrupted or failed dump, or not an image directory)", dir.display())]
    NoDump { dir: PathBuf },

    #[error("{}: {found} bytes, but inventory.img says the dump wrote {expected} (image {}, or the two are from different dumps)", path.display(), if found < expected { "truncated" } else { "extended" })]
    FileSize { path: PathBuf, expected: u64, found: u64 },

    #[error("{}: contents differ from what the dump wrote (CRC {found:#010x}, inventory.img says {expected:#010x}): changed, corrupt, or it and inventory.img are from different dumps", path.display())]
    FileCrc { path: PathBuf, expected: u32, found: u32 },

    #[error("{}: not part of this dump (the inventory does not list it); remove it or restore from a clean directory", path.display())]
    Extra { path: PathBuf },

    #[error("{}: bad magic {found:#010x}, {} (not a crtool image of the expected kind)",
            path.display(), describe_expected(*expected))]
    BadMagic {
        path: PathBuf,
        found: u32,
        expected: Option<ImageKind>,
    },

    #[error("{}: unsupported image format version {found} (this build reads version {})",
            path.display(), crate::FORMAT_VERSION)]
    BadVersion { path: PathBuf, found: u32 },

    #[error("{}: {} at offset {offset}: unexpected end of file (image truncated)",
            path.display(), describe_entry(*entry))]
    Truncated {
        path: PathBuf,
        offset: u64,
        entry: Option<u64>,
    },

    #[error("{}: entry {entry} at offset {offset}: length {len} exceeds the {} byte limit (image corrupt)",
            path.display(), crate::frame::MAX_ENTRY_LEN)]
    TooLarge {
        path: PathBuf,
        offset: u64,
        entry: u64,
        len: u64,
    },

    #[error("{}: entry {entry} at offset {offset}: CRC mismatch (image corrupt)", path.display())]
    Crc {
        path: PathBuf,
        offset: u64,
        entry: u64,
    },

    #[error("{}: entry {entry} at offset {offset}: cannot decode {message}: {source}", path.display())]
    Decode {
        path: PathBuf,
        offset: u64,
        entry: u64,
        message: String,
        source: prost::DecodeError,
    },

    #[error("{}: expected {expected} entries, found {found}", path.display())]
    Count {
        path: PathBuf,
        expected: u64,
        found: u64,
    },

    #[error("{}: chunk at offset {offset}: holds {found} bytes of page data, expected {expected}",
            path.display())]
    PageSize {
        path: PathBuf,
        offset: u64,
        expected: u64,
        found: u64,
    },

    #[error("{}: chunk at offset {offset}, {len} bytes long, lies outside the page data (file size {file_len})",
            path.display())]
    ChunkRange {
        path: PathBuf,
        offset: u64,
        len: u64,
        file_len: u64,
    },

    #[error("{}: chunk at offset {offset}: CRC mismatch (page data corrupt)", path.display())]
    ChunkCrc { path: PathBuf, offset: u64 },

    #[error("{}: chunk at offset {offset}: zstd decompression failed: {source}", path.display())]
    Decompress {
        path: PathBuf,
        offset: u64,
        source: io::Error,
    },

    #[error("{}: unknown page compression {found}", path.display())]
    Compression { path: PathBuf, found: u32 },

    #[error("{}: reserved header byte at offset {offset} is not zero (image corrupt)", path.display())]
    Reserved { path: PathBuf, offset: u64 },

    #[error("{}: {kind} images hold raw page data, not framed entries", path.display())]
    NotFramed { path: PathBuf, kind: ImageKind },

    #[error("{}: file name does not follow the crtool naming scheme for {kind} images", path.display())]
    BadName { path: PathBuf, kind: ImageKind },

    #[error("{}: schema error: {message}", path.display())]
    Schema { path: PathBuf, message: String },

    #[error("{}: entry {entry} at offset {offset}: cannot convert to JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        offset: u64,
        entry: u64,
        source: serde_json::Error,
    },
}

impl ImageError {
    /// The image file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::Io { path, .. }
            | Self::Missing { path }
            | Self::NoDump { dir: path }
            | Self::FileSize { path, .. }
            | Self::FileCrc { path, .. }
            | Self::Extra { path }
            | Self::BadMagic { path, .. }
            | Self::BadVersion { path, .. }
            | Self::Truncated { path, .. }
            | Self::TooLarge { path, .. }
            | Self::Crc { path, .. }
            | Self::Decode { path, .. }
            | Self::Count { path, .. }
            | Self::PageSize { path, .. }
            | Self::ChunkRange { path, .. }
            | Self::ChunkCrc { path, .. }
            | Self::Decompress { path, .. }
            | Self::Compression { path, .. }
            | Self::Reserved { path, .. }
            | Self::NotFramed { path, .. }
            | Self::BadName { path, .. }
            | Self::Schema { path, .. }
            | Self::Json { path, .. } => path,
        }
    }

    /// Maps an I/O error on `path`: "not found" becomes [`ImageError::Missing`], an
    /// unexpected EOF at `offset` becomes [`ImageError::Truncated`].
    pub(crate) fn io(path: &Path, offset: u64, entry: Option<u64>, source: io::Error) -> Self {
        let path = path.to_path_buf();
        match source.kind() {
            io::ErrorKind::NotFound => Self::Missing { path },
            io::ErrorKind::UnexpectedEof => Self::Truncated {
                path,
                offset,
                entry,
            },
            _ => Self::Io { path, source },
        }
    }
}

fn describe_expected(expected: Option<ImageKind>) -> String {
    match expected {
        Some(kind) => format!("expected {:#010x} ({kind} image)", kind.magic()),
        None => "unknown image kind".to_owned(),
    }
}

fn describe_entry(entry: Option<u64>) -> String {
    entry.map_or_else(|| "header".to_owned(), |e| format!("entry {e}"))
}
