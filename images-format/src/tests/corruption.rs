//! Corrupt, truncated and foreign framed files are errors, never panics.

use std::fs;

use super::*;
use crate::{ImageError, ImageReader, decode_to_json, read_entries, read_one, verify_files};

fn small_core() -> pb::TaskCore {
    pb::TaskCore {
        pid: PID,
        comm: "x".into(),
        umask: 0o22,
        ..Default::default()
    }
}

#[test]
fn every_flipped_byte_is_detected() {
    let dir = TempDir::new();
    let d = dir.path();
    write_entries(d, ImageKind::Core, PID, &[small_core()]).unwrap();
    write_entries(d, ImageKind::Pstree, 0, &pstree()).unwrap();
    for (kind, pid) in [(ImageKind::Core, PID), (ImageKind::Pstree, 0)] {
        let path = d.join(kind.file_name(pid));
        let good = fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0xff;
            fs::write(&path, &bad).unwrap();
            let read = match kind {
                ImageKind::Core => read_one::<pb::TaskCore>(d, kind, pid).map(drop),
                _ => read_entries::<pb::PstreeEntry>(d, kind, pid).map(drop),
            };
            assert!(read.is_err(), "{kind}: flip at {i} not detected by read");
            assert!(
                verify_files(d).is_err(),
                "{kind}: flip at {i} not detected by verify"
            );
            assert!(
                decode_to_json(&path).is_err(),
                "{kind}: flip at {i} not detected by json"
            );
        }
        fs::write(&path, &good).unwrap();
    }
    verify_files(d).unwrap();
}

#[test]
fn truncation_is_detected() {
    let dir = TempDir::new();
    let d = dir.path();
    // Single-entry kind: any truncation is an error.
    write_entries(d, ImageKind::Core, PID, &[core()]).unwrap();
    let path = d.join(ImageKind::Core.file_name(PID));
    let good = fs::read(&path).unwrap();
    for len in 0..good.len() {
        fs::write(&path, &good[..len]).unwrap();
        let err = read_one::<pb::TaskCore>(d, ImageKind::Core, PID).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::Truncated { .. } | ImageError::Count { found: 0, .. }
            ),
            "len {len}: {err}"
        );
        assert!(verify_files(d).is_err(), "len {len}");
    }
    fs::remove_file(&path).unwrap();

    // Multi-entry kind: a cut inside an entry is an error; a cut at an entry boundary
    // leaves a valid, shorter file (the format has no trailer), i.e. a strict prefix.
    let all = pstree();
    write_entries(d, ImageKind::Pstree, 0, &all).unwrap();
    let path = d.join(ImageKind::Pstree.file_name(0));
    let good = fs::read(&path).unwrap();
    let mut boundaries = vec![crate::HEADER_LEN as usize];
    for e in &all {
        let last = boundaries[boundaries.len() - 1];
        boundaries.push(last + 8 + prost::Message::encoded_len(e));
    }
    for len in 0..good.len() {
        fs::write(&path, &good[..len]).unwrap();
        let read = read_entries::<pb::PstreeEntry>(d, ImageKind::Pstree, 0);
        match boundaries.iter().position(|b| *b == len) {
            Some(n) => assert_eq!(read.unwrap(), all[..n], "len {len}"),
            None => {
                let err = read.unwrap_err();
                assert!(
                    matches!(err, ImageError::Truncated { .. }),
                    "len {len}: {err}"
                );
            }
        }
    }
}

fn header(kind: ImageKind) -> Vec<u8> {
    let mut h = kind.magic().to_le_bytes().to_vec();
    h.extend_from_slice(&crate::FORMAT_VERSION.to_le_bytes());
    h
}

#[test]
fn foreign_files_are_rejected() {
    let dir = TempDir::new();
    let d = dir.path();
    let path = d.join("core-42.img");
    for junk in [
        &b"\x7fELF\x02\x01\x01\0\0\0\0\0"[..],
        b"",
        b"CR",
        b"hello world, this is text\n",
    ] {
        fs::write(&path, junk).unwrap();
        let err = read_one::<pb::TaskCore>(d, ImageKind::Core, PID).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::BadMagic { .. } | ImageError::Truncated { .. }
            ),
            "{err}"
        );
        assert!(ImageReader::open_path(&path).is_err());
        assert!(decode_to_json(&path).is_err());
    }
    fs::write(&path, b"\x7fELF\x02\x01\x01\0\0\0\0\0").unwrap();
    let err = ImageReader::open_path(&path).err().unwrap();
    assert!(
        matches!(
            err,
            ImageError::BadMagic {
                found: 0x464c_457f,
                expected: None,
                ..
            }
        ),
        "{err}"
    );

    // A valid image of another kind under this name.
    fs::write(&path, header(ImageKind::Mm)).unwrap();
    let err = read_one::<pb::TaskCore>(d, ImageKind::Core, PID).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::BadMagic {
                expected: Some(ImageKind::Core),
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("core-42.img: bad magic") && msg.contains("core image"),
        "{msg}"
    );
    assert!(matches!(verify_files(d), Err(ImageError::BadMagic { .. })));

    // An unsupported version.
    let other = crate::FORMAT_VERSION + 1;
    let mut h = header(ImageKind::Core);
    h[4..8].copy_from_slice(&other.to_le_bytes());
    fs::write(&path, h).unwrap();
    let err = read_one::<pb::TaskCore>(d, ImageKind::Core, PID).unwrap_err();
    assert!(
        matches!(err, ImageError::BadVersion { found, .. } if found == other),
        "{err}"
    );
}

#[test]
fn unknown_img_files_fail_verify_and_other_files_are_ignored() {
    let dir = TempDir::new();
    let d = dir.path();
    write_image_set(d, Compression::Zstd);
    fs::write(d.join("dump.log"), b"not an image").unwrap();
    fs::create_dir(d.join("sub.img")).unwrap();
    verify_files(d).unwrap();
    fs::write(d.join("zz.img"), b"not an image at all").unwrap();
    let err = verify_files(d).unwrap_err();
    assert!(
        matches!(err, ImageError::BadMagic { expected: None, .. }),
        "{err}"
    );
    assert!(err.path().ends_with("zz.img"));
}

#[test]
fn huge_and_bad_length_prefixes_are_rejected() {
    let dir = TempDir::new();
    let d = dir.path();
    let path = d.join(ImageKind::Fdinfo.file_name(PID));
    let cases: [(u32, usize); 4] = [
        (u32::MAX, 0),
        (crate::MAX_ENTRY_LEN + 1, 16),
        (1000, 10),
        (crate::MAX_ENTRY_LEN, 0),
    ];
    for (len, payload) in cases {
        let mut f = header(ImageKind::Fdinfo);
        f.extend_from_slice(&len.to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes());
        f.resize(f.len() + payload, 0);
        fs::write(&path, &f).unwrap();
        let err = read_entries::<pb::FdEntry>(d, ImageKind::Fdinfo, PID).unwrap_err();
        if len > crate::MAX_ENTRY_LEN {
            assert!(
                matches!(
                    err,
                    ImageError::TooLarge {
                        offset: 8,
                        entry: 0,
                        ..
                    }
                ),
                "{err}"
            );
            assert!(
                err.to_string().contains("entry 0 at offset 8: length"),
                "{err}"
            );
        } else {
            assert!(
                matches!(
                    err,
                    ImageError::Truncated {
                        offset: 8,
                        entry: Some(0),
                        ..
                    }
                ),
                "{err}"
            );
        }
    }
}

#[test]
fn error_messages_read_well() {
    let dir = TempDir::new();
    let d = dir.path();
    write_entries(d, ImageKind::Fdinfo, PID, &fdinfo()).unwrap();
    let path = d.join(ImageKind::Fdinfo.file_name(PID));
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let err = read_entries::<pb::FdEntry>(d, ImageKind::Fdinfo, PID).unwrap_err();
    // Entries are 8 + 2, 8 + 4, 8 + 6 bytes long after the 8-byte header.
    let entry2_offset = 8 + 10 + 12;
    assert_eq!(
        err.to_string(),
        format!(
            "{}: entry 2 at offset {entry2_offset}: CRC mismatch (image corrupt)",
            path.display()
        )
    );

    // A payload with a good CRC that is not the message: a decode error.
    let payload = [0xffu8; 3];
    let mut f = header(ImageKind::Fdinfo);
    f.extend_from_slice(&3u32.to_le_bytes());
    f.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    f.extend_from_slice(&payload);
    fs::write(&path, &f).unwrap();
    let err = read_entries::<pb::FdEntry>(d, ImageKind::Fdinfo, PID).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Decode {
                offset: 8,
                entry: 0,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("entry 0 at offset 8: cannot decode crtool.FdEntry"),
        "{err}"
    );
    assert!(matches!(verify_files(d), Err(ImageError::Decode { .. })));
    assert!(matches!(
        decode_to_json(&path),
        Err(ImageError::Decode { .. })
    ));
}
