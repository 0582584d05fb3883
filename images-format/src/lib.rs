//! crtool image files: protobuf schemas, framing, integrity checks and decoding.
//!
//! Every image kind but pages is a framed file: an 8-byte header (magic and
//! [`FORMAT_VERSION`], little endian) followed by entries, each a payload length (u32 LE),
//! the CRC32 of the payload (u32 LE) and the payload, one protobuf message. Page data
//! lives in `pages-PID.img` (see [`PagesWriter`]), located by the pagemap entries.

#![forbid(unsafe_code)]

mod error;
mod frame;
mod json;
mod kinds;
mod pages;
mod verify;

#[cfg(test)]
mod tests;

/// Generated protobuf types (package `crtool`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/crtool.rs"));
}

/// Version of the image format written and accepted by this build.
pub const FORMAT_VERSION: u32 = 2;

/// Encoded `FileDescriptorSet` of every image schema.
pub static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

pub use error::ImageError;
pub use frame::{
    FRAME_HEADER_LEN, HEADER_LEN, ImageReader, ImageWriter, MAX_ENTRY_LEN, read_entries, read_one,
    write_entries,
};
pub use json::{decode_to_json, descriptor_pool};
pub use kinds::ImageKind;
pub use pages::{
    ChunkCompressor, Compression, DEFAULT_ZSTD_LEVEL, PAGE_SIZE, PAGES_HEADER_LEN, PagesReader, PagesWriter,
    RemoteSink, StoredChunk,
};
pub use verify::{VerifyReport, check_manifest, file_crc, verify_dir, verify_files};
