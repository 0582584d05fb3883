//! Image kinds: magics and names.

use std::collections::HashSet;

use crate::ImageKind;

#[test]
fn magics_are_distinct_and_invertible() {
    let magics: HashSet<u32> = ImageKind::all().iter().map(|k| k.magic()).collect();
    assert_eq!(magics.len(), ImageKind::all().len());
    for &k in ImageKind::all() {
        assert_eq!(ImageKind::from_magic(k.magic()), Some(k));
        assert_eq!(&k.magic().to_le_bytes()[..3], b"CRT");
    }
    assert_eq!(ImageKind::from_magic(0), None);
    assert_eq!(ImageKind::from_magic(0x7f45_4c46), None);
}

#[test]
fn file_names() {
    assert_eq!(ImageKind::Inventory.file_name(5), "inventory.img");
    assert_eq!(ImageKind::Pstree.file_name(5), "pstree.img");
    assert_eq!(ImageKind::Files.file_name(5), "files.img");
    assert_eq!(ImageKind::Core.file_name(42), "core-42.img");
    assert_eq!(ImageKind::Mm.file_name(42), "mm-42.img");
    assert_eq!(ImageKind::Pagemap.file_name(42), "pagemap-42.img");
    assert_eq!(ImageKind::Fdinfo.file_name(42), "fdinfo-42.img");
    assert_eq!(ImageKind::Pages.file_name(42), "pages-42.img");
    for &k in ImageKind::all() {
        let pid = if k.per_task() { 4_000_000 } else { 0 };
        assert_eq!(
            ImageKind::parse_file_name(&k.file_name(pid)),
            Some((k, pid))
        );
    }
    for bad in [
        "core-042.img",
        "core-.img",
        "core-+1.img",
        "core-1",
        "core.img",
        "foo.img",
        "pages-99999999999.img",
        "inventory-1.img",
        "mm-1x.img",
    ] {
        assert_eq!(ImageKind::parse_file_name(bad), None, "{bad}");
    }
}

#[test]
fn message_names_resolve_in_the_descriptor_pool() {
    let pool = crate::descriptor_pool().expect("pool");
    for &k in ImageKind::all() {
        match k.message_name() {
            Some(name) => assert!(pool.get_message_by_name(name).is_some(), "{name}"),
            None => assert_eq!(k, ImageKind::Pages),
        }
    }
}
