//! The inventory's manifest: a directory is a dump only as a whole.

use std::fs;

use super::*;
use crate::{ImageError, check_manifest, read_one, verify_dir};

fn set(compression: Compression) -> TempDir {
    let dir = TempDir::new();
    write_image_set(dir.path(), compression);
    verify_dir(dir.path()).unwrap();
    dir
}

#[test]
fn a_directory_without_inventory_is_not_a_dump() {
    let dir = TempDir::new();
    let err = verify_dir(dir.path()).unwrap_err();
    assert!(matches!(err, ImageError::NoDump { .. }), "{err}");
    assert!(err.to_string().contains("not a complete dump"), "{err}");
    // A set whose inventory is gone (a dump interrupted before it was written).
    let dir = set(Compression::Raw);
    fs::remove_file(dir.path().join("inventory.img")).unwrap();
    assert!(matches!(verify_dir(dir.path()), Err(ImageError::NoDump { .. })));
}

/// Cutting any file at any length (entry boundaries included, which the framing
/// alone cannot see) is an error naming the file.
#[test]
fn every_cut_of_every_file_is_detected() {
    let dir = set(Compression::Zstd);
    let d = dir.path();
    for name in manifest_of(d).into_iter().map(|f| f.name) {
        let path = d.join(&name);
        let good = fs::read(&path).unwrap();
        for len in 0..good.len() {
            fs::write(&path, &good[..len]).unwrap();
            let err = verify_dir(d).unwrap_err();
            assert!(matches!(&err, ImageError::FileSize { path: p, expected, found } if p.ends_with(&name) && *expected == good.len() as u64 && *found == len as u64), "{name} cut at {len}: {err}");
        }
        fs::write(&path, &good).unwrap();
    }
    verify_dir(d).unwrap();
}

/// Any flipped byte of any file (the inventory's own framing catches its own).
#[test]
fn every_flipped_byte_of_every_file_is_detected() {
    let dir = set(Compression::Raw);
    let d = dir.path();
    let mut names: Vec<String> = manifest_of(d).into_iter().map(|f| f.name).collect();
    names.push("inventory.img".into());
    for name in names {
        let path = d.join(&name);
        let good = fs::read(&path).unwrap();
        for i in (0..good.len()).step_by(if good.len() > 8192 { 13 } else { 1 }) {
            let mut bad = good.clone();
            bad[i] ^= 0x5a;
            fs::write(&path, &bad).unwrap();
            assert!(verify_dir(d).is_err(), "{name}: flip at {i}");
        }
        fs::write(&path, &good).unwrap();
    }
    verify_dir(d).unwrap();
}

#[test]
fn missing_extra_and_swapped_files_are_named() {
    let dir = set(Compression::Raw);
    let d = dir.path();
    let inv: pb::Inventory = read_one(d, ImageKind::Inventory, 0).unwrap();

    fs::rename(d.join("fdinfo-42.img"), d.join("fdinfo-42.away")).unwrap();
    let err = check_manifest(d, &inv, true).unwrap_err();
    assert!(matches!(&err, ImageError::Missing { path } if path.ends_with("fdinfo-42.img")), "{err}");
    fs::rename(d.join("fdinfo-42.away"), d.join("fdinfo-42.img")).unwrap();

    fs::copy(d.join("core-42.img"), d.join("core-43.img")).unwrap();
    let err = verify_dir(d).unwrap_err();
    assert!(matches!(&err, ImageError::Extra { path } if path.ends_with("core-43.img")), "{err}");
    assert!(err.to_string().contains("not part of this dump"), "{err}");
    fs::remove_file(d.join("core-43.img")).unwrap();

    // Two files of the same size swapped: only the content tells.
    write_entries(d, ImageKind::Pstree, 0, &pstree()).unwrap();
    let a = fs::read(d.join("core-42.img")).unwrap();
    let mut b = a.clone();
    let last = b.len() - 1;
    b[last] ^= 1;
    fs::write(d.join("core-42.img"), &b).unwrap();
    let err = verify_dir(d).unwrap_err();
    assert!(matches!(&err, ImageError::FileCrc { path, .. } if path.ends_with("core-42.img")), "{err}");
    fs::write(d.join("core-42.img"), &a).unwrap();
    verify_dir(d).unwrap();

    // Restore checks pages files by size only (their chunks carry CRCs of their own).
    let p = d.join("pages-42.img");
    let mut pages = fs::read(&p).unwrap();
    let mid = pages.len() - 100;
    pages[mid] ^= 1;
    fs::write(&p, &pages).unwrap();
    check_manifest(d, &inv, false).unwrap();
    assert!(matches!(check_manifest(d, &inv, true), Err(ImageError::FileCrc { .. })));
}
