//! Compiles `proto/*.proto` with protox (no protoc needed), writes the descriptor set to
//! `OUT_DIR/descriptors.bin` and generates the Rust types with prost-build.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::{env, fs};

fn main() -> Result<(), Box<dyn Error>> {
    let proto_dir = Path::new("proto");
    println!("cargo:rerun-if-changed={}", proto_dir.display());

    let mut protos: Vec<PathBuf> = fs::read_dir(proto_dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    protos.retain(|p| p.extension().is_some_and(|e| e == "proto"));
    protos.sort();
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let names: Vec<PathBuf> = protos
        .iter()
        .filter_map(|p| p.file_name().map(PathBuf::from))
        .collect();

    let mut compiler = protox::Compiler::new([proto_dir])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(&names)?;

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR not set")?);
    fs::write(
        out_dir.join("descriptors.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    prost_build::Config::new().compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
