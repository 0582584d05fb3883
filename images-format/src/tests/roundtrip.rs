//! Round trips and determinism of framed images.

use std::fmt::Debug;

use super::*;
use crate::{ImageReader, ImageWriter, read_entries, read_one};

fn roundtrip<M: prost::Message + Default + PartialEq + Debug>(kind: ImageKind, entries: &[M]) {
    let dir = TempDir::new();
    write_entries(dir.path(), kind, PID, entries).unwrap();
    let back: Vec<M> = read_entries(dir.path(), kind, PID).unwrap();
    assert_eq!(back, entries, "{kind}");
    if let [one] = entries {
        assert_eq!(&read_one::<M>(dir.path(), kind, PID).unwrap(), one);
    }
    // open_path finds the kind from the magic.
    let (mut r, found) = ImageReader::open_path(&dir.path().join(kind.file_name(PID))).unwrap();
    assert_eq!(found, kind);
    assert_eq!(r.next::<M>().unwrap().as_ref(), entries.first());
}

#[test]
fn every_kind_round_trips() {
    roundtrip(ImageKind::Inventory, &[inventory()]);
    roundtrip(ImageKind::Pstree, &pstree());
    roundtrip(ImageKind::Core, &[core()]);
    roundtrip(ImageKind::Mm, &[mm()]);
    roundtrip(ImageKind::Fdinfo, &fdinfo());
    roundtrip(ImageKind::Files, &files());
    roundtrip(ImageKind::Pipes, &pipes());
    let map = vec![
        pb::PagemapEntry {
            vaddr: 0x1000,
            nr_pages: 3,
            offset: 4096,
            stored_len: 12288,
            crc32: 7,
            ..Default::default()
        },
        pb::PagemapEntry { vaddr: 0x4000, nr_pages: 2, inherited: true, ..Default::default() },
        pb::PagemapEntry { vaddr: 0x6000, nr_pages: 1, guard: true, ..Default::default() },
        pb::PagemapEntry {
            vaddr: 0x9000,
            nr_pages: 1,
            offset: 16384,
            stored_len: 4096,
            crc32: 9,
            ..Default::default()
        },
    ];
    roundtrip(ImageKind::Pagemap, &map);
    // Zero entries and empty (all-default) messages are fine too.
    roundtrip::<pb::FdEntry>(ImageKind::Fdinfo, &[]);
    roundtrip(
        ImageKind::Fdinfo,
        &[pb::FdEntry::default(), pb::FdEntry::default()],
    );
}

#[test]
fn writer_streams_and_raw_entries_match() {
    let dir = TempDir::new();
    let mut w = ImageWriter::create(dir.path(), ImageKind::Fdinfo, PID).unwrap();
    for e in fdinfo() {
        w.write(&e).unwrap();
    }
    assert_eq!(w.entries(), 3);
    w.finish_sync().unwrap();

    let mut r = ImageReader::open(dir.path(), ImageKind::Fdinfo, PID).unwrap();
    let mut offset = crate::HEADER_LEN;
    for e in fdinfo() {
        let (at, raw) = r.next_raw().unwrap().unwrap();
        assert_eq!(at, offset);
        assert_eq!(raw, prost::Message::encode_to_vec(&e));
        offset += crate::FRAME_HEADER_LEN + raw.len() as u64;
    }
    assert!(r.next_raw().unwrap().is_none());
    assert!(r.next::<pb::FdEntry>().unwrap().is_none());
}

#[test]
fn read_one_wants_exactly_one_entry() {
    let dir = TempDir::new();
    write_entries(dir.path(), ImageKind::Core, PID, &[core(), core()]).unwrap();
    let err = read_one::<pb::TaskCore>(dir.path(), ImageKind::Core, PID).unwrap_err();
    assert!(
        matches!(
            err,
            crate::ImageError::Count {
                expected: 1,
                found: 2,
                ..
            }
        ),
        "{err}"
    );
    write_entries::<pb::TaskCore>(dir.path(), ImageKind::Core, PID, &[]).unwrap();
    let err = read_one::<pb::TaskCore>(dir.path(), ImageKind::Core, PID).unwrap_err();
    assert!(
        matches!(
            err,
            crate::ImageError::Count {
                expected: 1,
                found: 0,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn missing_file_and_pages_kind_are_errors() {
    let dir = TempDir::new();
    let err = read_one::<pb::Mm>(dir.path(), ImageKind::Mm, 7).unwrap_err();
    assert!(matches!(err, crate::ImageError::Missing { .. }), "{err}");
    assert!(
        err.to_string().ends_with("mm-7.img: image file missing"),
        "{err}"
    );
    assert!(err.path().ends_with("mm-7.img"));
    assert!(matches!(
        ImageWriter::create(dir.path(), ImageKind::Pages, PID),
        Err(crate::ImageError::NotFramed { .. })
    ));
    assert!(matches!(
        ImageReader::open(dir.path(), ImageKind::Pages, PID),
        Err(crate::ImageError::NotFramed { .. })
    ));
}

#[test]
fn writing_is_deterministic() {
    for compression in [Compression::Raw, Compression::Zstd] {
        let (a, b) = (TempDir::new(), TempDir::new());
        write_image_set(a.path(), compression);
        write_image_set(b.path(), compression);
        let mut names: Vec<_> = std::fs::read_dir(a.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names.len(), 9);
        for name in names {
            let x = std::fs::read(a.path().join(&name)).unwrap();
            let y = std::fs::read(b.path().join(&name)).unwrap();
            assert_eq!(x, y, "{name:?} differs");
        }
    }
}
