//! `bench_mem`: the benchmark workload. Allocates MIB MiB, fills every page with
//! random-ish data that zstd compresses moderately (about 2:1: each byte carries four
//! random bits), writes "ready" to READY_FILE and sleeps until killed.
//!
//!     bench_mem MIB READY_FILE

use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: bench_mem MIB READY_FILE");
        std::process::exit(2);
    }
    let mib: usize = args[1].parse().unwrap_or_else(|_| {
        eprintln!("bench_mem: MIB must be a number");
        std::process::exit(2)
    });
    let mut mem: Vec<u64> = Vec::with_capacity(mib << 17);
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for _ in 0..(mib << 17) {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        mem.push(x.wrapping_mul(0x2545_F491_4F6C_DD1D) & 0x0F0F_0F0F_0F0F_0F0F);
    }
    std::hint::black_box(&mem);
    let mut f = std::fs::File::create(&args[2]).expect("creating the ready file");
    f.write_all(b"ready\n").expect("writing the ready file");
    drop(f);
    loop {
        // SAFETY: pause(2) only sleeps.
        unsafe { libc::pause() };
    }
}
