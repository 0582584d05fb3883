//! Builds the two position-independent blobs in `parasite/` (the dump-side parasite
//! and the restorer) with the stable toolchain, flattens their loadable segments with
//! goblin, and emits them plus their relocation lists for crtool to embed.

use goblin::elf::{Elf, program_header::PT_LOAD, reloc::R_X86_64_RELATIVE};
use std::{env, fs, path::{Path, PathBuf}, process::Command};

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let src = Path::new("parasite/src");
    for f in ["abi.rs", "rt.rs", "parasite.rs", "restorer.rs"] {
        println!("cargo:rerun-if-changed=parasite/src/{f}");
    }
    println!("cargo:rerun-if-changed=parasite/link.ld");
    let mut code = String::new();
    for name in ["parasite", "restorer"] {
        let elf_path = out.join(format!("{name}.elf"));
        compile_blob(&src.join(format!("{name}.rs")), &elf_path);
        code += &flatten(name, &elf_path, &out);
    }
    fs::write(out.join("blobs.rs"), code).unwrap();
}

fn compile_blob(src: &Path, out: &Path) {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let ld = fs::canonicalize("parasite/link.ld").unwrap();
    let status = Command::new(rustc)
        .args(["--edition", "2024", "--crate-type", "bin", "--crate-name", "blob"])
        .args(["-C", "opt-level=s", "-C", "panic=abort", "-C", "relocation-model=pie"])
        .args(["-C", "codegen-units=1", "-C", "lto=fat", "-C", "debuginfo=0", "-C", "force-frame-pointers=no"])
        .args(["-C", "link-arg=-nostartfiles", "-C", "link-arg=-nostdlib", "-C", "link-arg=-static-pie"])
        .args(["-C", "link-arg=-Wl,--no-dynamic-linker", "-C", "link-arg=-Wl,--build-id=none"])
        .args(["-C", "link-arg=-Wl,-z,norelro"])
        .arg("-C").arg(format!("link-arg=-Wl,-T,{}", ld.display()))
        .arg("-o").arg(out)
        .arg(src)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("running rustc for a blob");
    assert!(status.success(), "building blob {} failed", src.display());
}

/// Lays the PT_LOAD segments out flat from address 0 (bss as zeros) and lists the
/// RELATIVE relocations the injector applies for the load address. Any other
/// relocation type fails the build: the blob must stay self-contained.
fn flatten(name: &str, elf_path: &Path, out: &Path) -> String {
    let bytes = fs::read(elf_path).unwrap();
    let elf = Elf::parse(&bytes).unwrap();
    let mut image = Vec::new();
    for ph in elf.program_headers.iter().filter(|p| p.p_type == PT_LOAD) {
        let end = (ph.p_vaddr + ph.p_memsz) as usize;
        if image.len() < end {
            image.resize(end, 0);
        }
        let file = &bytes[ph.p_offset as usize..(ph.p_offset + ph.p_filesz) as usize];
        image[ph.p_vaddr as usize..ph.p_vaddr as usize + file.len()].copy_from_slice(file);
    }
    let mut relocs = Vec::new();
    for r in elf.dynrelas.iter().chain(elf.dynrels.iter()) {
        assert_eq!(r.r_type, R_X86_64_RELATIVE, "{name}: unexpected relocation type {}", r.r_type);
        relocs.push((r.r_offset, r.r_addend.unwrap_or(0) as u64));
    }
    let entry = elf.entry;
    assert_eq!(entry, 0, "{name}: the entry stub must be the first thing in .text");
    // Exported code addresses besides the entry (e.g. the parasite's syscall stub).
    let mut symbols = String::new();
    for sym in elf.syms.iter() {
        let sym_name = elf.strtab.get_at(sym.st_name).unwrap_or("");
        if let Some(rest) = sym_name.strip_prefix(&format!("{name}_")) {
            symbols += &format!("pub const {}_{}: u64 = {};\n", name.to_uppercase(), rest.to_uppercase(), sym.st_value);
        }
    }
    image.resize(image.len().next_multiple_of(4096), 0);
    let bin = out.join(format!("{name}.bin"));
    fs::write(&bin, &image).unwrap();
    let upper = name.to_uppercase();
    format!(
        "pub const {upper}_IMAGE: &[u8] = include_bytes!({bin:?});\n\
         pub const {upper}_ENTRY: u64 = {entry};\n\
         pub const {upper}_RELOCS: &[(u64, u64)] = &{relocs:?};\n{symbols}"
    )
}
