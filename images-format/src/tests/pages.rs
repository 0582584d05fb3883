//! Pages files: round trips through `read_into` and chunk-level errors.

use std::fs;

use super::*;
use crate::{ImageError, PAGES_HEADER_LEN, PagesReader, StoredChunk};

fn round_trip(compression: Compression) {
    let dir = TempDir::new();
    let runs: Vec<Vec<u8>> = vec![
        page_data(1, 1),
        page_data(5, 2),
        vec![0; 3 * 4096],
        page_data(2, 3),
    ];
    let mut w = PagesWriter::with_level(dir.path(), PID, compression, 3).unwrap();
    let chunks: Vec<StoredChunk> = runs.iter().map(|r| w.append(r).unwrap()).collect();
    let end = w.offset();
    w.finish().unwrap();

    assert_eq!(chunks[0].offset, PAGES_HEADER_LEN);
    for pair in chunks.windows(2) {
        assert_eq!(
            pair[0].offset + pair[0].stored_len,
            pair[1].offset,
            "back to back"
        );
    }
    let last = chunks[chunks.len() - 1];
    assert_eq!(last.offset + last.stored_len, end);
    assert_eq!(
        fs::metadata(dir.path().join("pages-42.img")).unwrap().len(),
        end
    );
    if compression == Compression::Zstd {
        assert!(chunks[2].stored_len < 200, "zeros compress");
    } else {
        assert!(
            chunks
                .iter()
                .zip(&runs)
                .all(|(c, r)| c.stored_len == r.len() as u64)
        );
    }

    let mut r = PagesReader::open(dir.path(), PID).unwrap();
    assert_eq!(r.compression(), compression);
    assert_eq!(r.data_len(), end - PAGES_HEADER_LEN);
    // Out of order, with one reused destination per size.
    for i in [3, 0, 2, 1, 0] {
        let c = chunks[i];
        let mut dst = vec![0xaau8; runs[i].len()];
        r.read_into(c.offset, c.stored_len, c.crc32, &mut dst)
            .unwrap();
        assert_eq!(dst, runs[i], "chunk {i}");
        r.verify_chunk(c.offset, c.stored_len, c.crc32, runs[i].len() as u64)
            .unwrap();
    }

    let c = chunks[1];
    let mut dst = vec![0u8; runs[1].len()];
    let err = r
        .read_into(c.offset, c.stored_len, c.crc32 ^ 1, &mut dst)
        .unwrap_err();
    assert!(matches!(err, ImageError::ChunkCrc { .. }), "{err}");
    assert!(
        err.to_string().contains("CRC mismatch (page data corrupt)"),
        "{err}"
    );
    let mut short = vec![0u8; runs[1].len() - 4096];
    let err = r
        .read_into(c.offset, c.stored_len, c.crc32, &mut short)
        .unwrap_err();
    assert!(matches!(err, ImageError::PageSize { .. }), "{err}");
    let mut long = vec![0u8; runs[1].len() + 4096];
    let err = r
        .read_into(c.offset, c.stored_len, c.crc32, &mut long)
        .unwrap_err();
    assert!(matches!(err, ImageError::PageSize { .. }), "{err}");
    let err = r
        .verify_chunk(c.offset, c.stored_len, c.crc32, 4096)
        .unwrap_err();
    assert!(matches!(err, ImageError::PageSize { .. }), "{err}");

    for (offset, len) in [
        (end - 1, 2),
        (0, 4096),
        (100, 10),
        (u64::MAX - 1, 10),
        (end, u64::MAX),
    ] {
        let mut dst = vec![0u8; 16];
        let err = r.read_into(offset, len, 0, &mut dst).unwrap_err();
        assert!(matches!(err, ImageError::ChunkRange { .. }), "{err}");
        let err = r.verify_chunk(offset, len, 0, u64::MAX).unwrap_err();
        assert!(matches!(err, ImageError::ChunkRange { .. }), "{err}");
    }
}

#[test]
fn raw_round_trip() {
    round_trip(Compression::Raw);
}

#[test]
fn zstd_round_trip() {
    round_trip(Compression::Zstd);
}

#[test]
fn header_is_checked() {
    let dir = TempDir::new();
    write_pages(dir.path(), Compression::Zstd, &[(0, 1)]);
    let path = dir.path().join("pages-42.img");
    let good = fs::read(&path).unwrap();
    assert_eq!(&good[8..12], &1u32.to_le_bytes());
    assert!(good[12..4096].iter().all(|b| *b == 0));
    let cases: [(usize, fn(&ImageError) -> bool); 4] = [
        (0, |e| matches!(e, ImageError::BadMagic { .. })),
        (5, |e| matches!(e, ImageError::BadVersion { .. })),
        (8, |e| {
            matches!(e, ImageError::Compression { found: 0xfe, .. })
        }),
        (4000, |e| {
            matches!(e, ImageError::Reserved { offset: 4000, .. })
        }),
    ];
    for (at, check) in cases {
        let mut bad = good.clone();
        bad[at] ^= 0xff;
        fs::write(&path, &bad).unwrap();
        let err = PagesReader::open(dir.path(), PID).err().unwrap();
        assert!(check(&err), "byte {at}: {err}");
    }
    fs::write(&path, &good[..100]).unwrap();
    let err = PagesReader::open(dir.path(), PID).err().unwrap();
    assert!(
        matches!(
            err,
            ImageError::Truncated {
                offset: 0,
                entry: None,
                ..
            }
        ),
        "{err}"
    );
    fs::write(&path, &good[..4096]).unwrap();
    assert_eq!(PagesReader::open(dir.path(), PID).unwrap().data_len(), 0);
}

#[test]
fn corrupt_zstd_frame_with_matching_crc_is_a_decompress_error() {
    let dir = TempDir::new();
    let w = PagesWriter::create(dir.path(), PID, Compression::Zstd).unwrap();
    w.finish().unwrap();
    // Append garbage as a "frame" and record its CRC, as a buggy writer might.
    let path = dir.path().join("pages-42.img");
    let mut bytes = fs::read(&path).unwrap();
    let garbage = [0x28u8, 0xb5, 0x2f, 0xfd, 0xff, 0xff, 0xff, 0xff, 1, 2, 3];
    bytes.extend_from_slice(&garbage);
    fs::write(&path, &bytes).unwrap();
    let crc = crc32fast::hash(&garbage);
    let mut r = PagesReader::open(dir.path(), PID).unwrap();
    let mut dst = vec![0u8; 4096];
    let err = r
        .read_into(4096, garbage.len() as u64, crc, &mut dst)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Decompress { .. } | ImageError::PageSize { .. }
        ),
        "{err}"
    );
    let err = r
        .verify_chunk(4096, garbage.len() as u64, crc, 4096)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Decompress { .. } | ImageError::PageSize { .. }
        ),
        "{err}"
    );
}
