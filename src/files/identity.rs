//! Recognising a file again at restore. Device and inode numbers do not survive a
//! copy to another machine, so a file is known by its size, its modification time
//! and, for what crtool maps back into memory, its content: the GNU build-id of an
//! ELF file (what `file` and debuggers use to tell builds apart), or a CRC32 of the
//! mapped bytes for anything else. A mapped file that changed between dump and
//! restore — an executable rebuilt in place, a library upgraded, a file moved over
//! the old name — would otherwise come back as a program running code or data that
//! is not its own.

use images_format::pb;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};

const NT_GNU_BUILD_ID: u32 = 3;
/// Most bytes of ELF headers read to find the notes.
const HEADER_BYTES: usize = 64 * 1024;

/// How strictly restore compares files with what was dumped (`--file-validation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Validation {
    /// Mapped files: size and build-id (ELF) or content CRC; opened files: nothing.
    #[default]
    BuildId,
    /// Every regular file, mapped or opened: its size only (CRIU's "filesize").
    FileSize,
    /// No comparison.
    None,
}

impl std::str::FromStr for Validation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "buildid" => Ok(Validation::BuildId),
            "filesize" => Ok(Validation::FileSize),
            "none" => Ok(Validation::None),
            _ => Err(format!("unknown file validation {s:?} (buildid, filesize or none)")),
        }
    }
}

/// The GNU build-id of an ELF file, if it is one and has one.
fn build_id(f: &File) -> Option<Vec<u8>> {
    let mut head = vec![0u8; HEADER_BYTES];
    let n = f.read_at(&mut head, 0).ok()?;
    head.truncate(n);
    let header = goblin::elf::Elf::parse_header(&head).ok()?;
    let ctx = goblin::container::Ctx::new(header.container().ok()?, header.endianness().ok()?);
    let phdrs = goblin::elf::ProgramHeader::parse(&head, header.e_phoff as usize, header.e_phnum as usize, ctx).ok()?;
    for ph in phdrs.iter().filter(|p| p.p_type == goblin::elf::program_header::PT_NOTE) {
        let mut notes = vec![0u8; (ph.p_filesz as usize).min(HEADER_BYTES)];
        f.read_exact_at(&mut notes, ph.p_offset).ok()?;
        let mut at = 0usize;
        let word = |b: &[u8], i: usize| b.get(i..i + 4).map(|w| u32::from_le_bytes(w.try_into().unwrap()) as usize);
        while let (Some(namesz), Some(descsz), Some(ty)) = (word(&notes, at), word(&notes, at + 4), word(&notes, at + 8)) {
            let name_at = at + 12;
            let desc_at = name_at + namesz.next_multiple_of(4);
            let next = desc_at + descsz.next_multiple_of(4);
            if ty as u32 == NT_GNU_BUILD_ID && notes.get(name_at..name_at + namesz) == Some(b"GNU\0") {
                return notes.get(desc_at..desc_at + descsz).map(<[u8]>::to_vec);
            }
            if next <= at || next > notes.len() {
                break;
            }
            at = next;
        }
    }
    None
}

/// CRC32 of `len` bytes at `off` (clipped to the end of the file).
fn crc_of(f: &File, off: u64, len: u64) -> std::io::Result<u32> {
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = off;
    let end = off.saturating_add(len);
    while at < end {
        let want = ((end - at) as usize).min(buf.len());
        let n = f.read_at(&mut buf[..want], at)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(h.finalize())
}

/// Identities of mapped files, computed once per file (by device and inode) for
/// the whole dump.
#[derive(Default)]
pub struct Cache(BTreeMap<(u64, u64), (u64, i64, Option<Vec<u8>>)>);

impl Cache {
    /// The identity of the file behind `f` as mapped at `pgoff` for `len` bytes: its
    /// size and mtime, its build-id if it is an ELF file, otherwise (for private
    /// mappings, whose clean pages are read from the file again at restore) the CRC32
    /// of the mapped bytes.
    pub fn identify(&mut self, f: &File, pgoff: u64, len: u64, private: bool) -> std::io::Result<pb::FileIdentity> {
        let md = f.metadata()?;
        let key = (md.dev(), md.ino());
        let (size, mtime_ns, id) = self
            .0
            .entry(key)
            .or_insert_with(|| (md.size(), md.mtime() * 1_000_000_000 + md.mtime_nsec(), build_id(f)))
            .clone();
        let crc32 = if id.is_none() && private { Some(crc_of(f, pgoff, len)?) } else { None };
        Ok(pb::FileIdentity { size, mtime_ns, build_id: id.unwrap_or_default(), crc32 })
    }
}

/// Compares the file at `path` (open as `f`) with the identity recorded at dump for
/// the range `pgoff..pgoff+len`; `Err` says what changed.
pub fn compare(f: &File, want: &pb::FileIdentity, pgoff: u64, len: u64, how: Validation) -> Result<(), String> {
    if how == Validation::None {
        return Ok(());
    }
    let md = f.metadata().map_err(|e| e.to_string())?;
    let mtime_ns = md.mtime() * 1_000_000_000 + md.mtime_nsec();
    let when = if mtime_ns != want.mtime_ns { ", modified or replaced since the dump" } else { "" };
    if md.size() != want.size {
        return Err(format!("its size is {} bytes, it was {} bytes when dumped{when}", md.size(), want.size));
    }
    if how == Validation::FileSize {
        return Ok(());
    }
    if !want.build_id.is_empty() {
        let now = build_id(f).unwrap_or_default();
        if now != want.build_id {
            return Err(format!("its ELF build-id is {}, it was {} when dumped{when}", hex(&now), hex(&want.build_id)));
        }
    }
    if let Some(crc) = want.crc32 {
        let now = crc_of(f, pgoff, len).map_err(|e| e.to_string())?;
        if now != crc {
            return Err(format!("the mapped bytes {pgoff:#x}..{:#x} differ from the dumped ones{when}", pgoff + len));
        }
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    if b.is_empty() {
        return "none".into();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crtool_itself_has_a_build_id_and_a_text_file_has_none() {
        // cargo builds with a build-id by default (the linker's --build-id).
        let exe = File::open(std::env::current_exe().unwrap()).unwrap();
        let id = build_id(&exe);
        assert!(id.as_ref().is_some_and(|v| v.len() >= 8), "no build-id in the test binary: {id:?}");
        let txt = File::open(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
        assert!(build_id(&txt).is_none());
    }

    #[test]
    fn a_changed_file_is_named_for_what_changed() {
        let dir = std::env::temp_dir().join(format!("crtool-identity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("data");
        std::fs::write(&p, vec![7u8; 10000]).unwrap();
        let f = File::open(&p).unwrap();
        let id = Cache::default().identify(&f, 4096, 4096, true).unwrap();
        assert_eq!(id.size, 10000);
        assert!(id.crc32.is_some() && id.build_id.is_empty());
        assert!(compare(&f, &id, 4096, 4096, Validation::BuildId).is_ok());
        // Same size, other bytes in the mapped range.
        let mut bytes = vec![7u8; 10000];
        bytes[5000] = 8;
        std::fs::write(&p, &bytes).unwrap();
        let f = File::open(&p).unwrap();
        let e = compare(&f, &id, 4096, 4096, Validation::BuildId).unwrap_err();
        assert!(e.contains("mapped bytes"), "{e}");
        assert!(compare(&f, &id, 4096, 4096, Validation::FileSize).is_ok());
        assert!(compare(&f, &id, 4096, 4096, Validation::None).is_ok());
        std::fs::write(&p, vec![7u8; 20000]).unwrap();
        let f = File::open(&p).unwrap();
        let e = compare(&f, &id, 4096, 4096, Validation::FileSize).unwrap_err();
        assert!(e.contains("size is 20000 bytes, it was 10000"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
