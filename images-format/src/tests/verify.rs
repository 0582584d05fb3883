//! Whole-directory verification, including page data.

use std::fs;

use super::*;
use crate::{ImageError, verify_files};

fn expected_counts() -> Vec<(&'static str, u64)> {
    vec![
        ("core-42.img", 1),
        ("fdinfo-42.img", 3),
        ("files.img", 4),
        ("inventory.img", 1),
        ("mm-42.img", 1),
        ("pagemap-42.img", 2),
        ("pages-42.img", 2),
        ("pipes.img", 2),
        ("pstree.img", 3),
    ]
}

#[test]
fn valid_sets_verify() {
    for compression in [Compression::Raw, Compression::Zstd] {
        let dir = TempDir::new();
        write_image_set(dir.path(), compression);
        let report = verify_files(dir.path()).unwrap();
        let got: Vec<(String, u64)> = report
            .files
            .iter()
            .map(|(p, n)| (p.file_name().unwrap().to_string_lossy().into_owned(), *n))
            .collect();
        let want: Vec<(String, u64)> = expected_counts()
            .into_iter()
            .map(|(n, c)| (n.to_owned(), c))
            .collect();
        assert_eq!(got, want);
    }
}

/// Every single-byte flip and every truncation of the pages file or the pagemap is
/// caught by `verify_dir`.
#[test]
fn page_data_corruption_is_detected() {
    for compression in [Compression::Raw, Compression::Zstd] {
        let dir = TempDir::new();
        let d = dir.path();
        write_entries(d, ImageKind::Inventory, 0, &[inventory()]).unwrap();
        write_pages(d, compression, &[(0x1000, 1), (0x5000, 1)]);
        verify_files(d).unwrap();
        for name in ["pages-42.img", "pagemap-42.img"] {
            let path = d.join(name);
            let good = fs::read(&path).unwrap();
            for i in 0..good.len() {
                let mut bad = good.clone();
                bad[i] ^= 0xff;
                fs::write(&path, &bad).unwrap();
                assert!(
                    verify_files(d).is_err(),
                    "{compression:?} {name}: flip at {i}"
                );
            }
            // Cutting anywhere but at a pagemap entry boundary; those leave a valid
            // shorter pagemap, covered by the cross-check with pstree/inventory upstream.
            let step = if name.starts_with("pages") { 97 } else { 1 };
            for len in (0..good.len()).step_by(step) {
                fs::write(&path, &good[..len]).unwrap();
                let res = verify_files(d);
                let at_boundary = name.starts_with("pagemap") && is_pagemap_boundary(&good, len);
                assert_eq!(
                    res.is_err(),
                    !at_boundary,
                    "{compression:?} {name}: cut at {len}"
                );
            }
            fs::write(&path, &good).unwrap();
        }
        verify_files(d).unwrap();
    }
}

fn is_pagemap_boundary(file: &[u8], len: usize) -> bool {
    let mut at = 8;
    loop {
        if at == len {
            return true;
        }
        if at > len || at + 4 > file.len() {
            return false;
        }
        let l = u32::from_le_bytes(file[at..at + 4].try_into().unwrap()) as usize;
        at += 8 + l;
    }
}

#[test]
fn missing_partner_files_are_reported() {
    let dir = TempDir::new();
    let d = dir.path();
    write_pages(d, Compression::Raw, &[(0x1000, 1)]);
    fs::rename(d.join("pages-42.img"), d.join("pages-43.img")).unwrap();
    let err = verify_files(d).unwrap_err();
    assert!(
        matches!(&err, ImageError::Missing { path } if path.ends_with("pages-42.img")),
        "{err}"
    );
    fs::remove_file(d.join("pagemap-42.img")).unwrap();
    let err = verify_files(d).unwrap_err();
    assert!(
        matches!(&err, ImageError::Missing { path } if path.ends_with("pagemap-43.img")),
        "{err}"
    );
}

#[test]
fn single_entry_kinds_must_have_one_entry() {
    let dir = TempDir::new();
    write_entries(dir.path(), ImageKind::Mm, PID, &[mm(), mm()]).unwrap();
    let err = verify_files(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Count {
                expected: 1,
                found: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn misnamed_files_are_checked_by_magic() {
    let dir = TempDir::new();
    let d = dir.path();
    write_entries(d, ImageKind::Core, PID, &[core()]).unwrap();
    fs::rename(d.join("core-42.img"), d.join("backup.img")).unwrap();
    assert_eq!(verify_files(d).unwrap().files.len(), 1);
    fs::rename(d.join("backup.img"), d.join("mm-42.img")).unwrap();
    let err = verify_files(d).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::BadMagic {
                expected: Some(ImageKind::Mm),
                ..
            }
        ),
        "{err}"
    );
    fs::remove_file(d.join("mm-42.img")).unwrap();
    PagesWriter::create(d, PID, Compression::Raw)
        .unwrap()
        .finish()
        .unwrap();
    fs::rename(d.join("pages-42.img"), d.join("pages.img")).unwrap();
    let err = verify_files(d).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::BadName {
                kind: ImageKind::Pages,
                ..
            }
        ),
        "{err}"
    );
}
