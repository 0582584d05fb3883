//! `bench_mem`: the benchmark workload. Allocates MIB MiB, fills every page with
//! random-ish data that zstd compresses moderately (about 2:1: each byte carries four
//! random bits), writes "ready" to READY_FILE and sleeps until killed.
//!
//!     bench_mem MIB READY_FILE [procs N] [threads N] [fds N] [vmas N] [sockets N] [tcp N] [dirty N]
//!
//! `procs N`: N processes (the first and N-1 children), each with its own MIB MiB of
//! different data. `threads N`: the (first) process has N threads, all asleep.
//! `fds N`: the first process holds N more fds (each a separate open of /dev/null,
//! every fourth a dup of the one before). `vmas N`: it maps N more one-page VMAs
//! (alternately read-only and read-write with data, so that none merge).
//! `sockets N`: it holds N unix sockets: N/2 socketpairs, alternately stream and
//! datagram, each with a 64-byte message queued in both directions. `tcp N`: it
//! holds a TCP listener on 127.0.0.1 and N established connections accepted from
//! it (both ends: 2N sockets), each with 64 bytes queued in both directions (dump
//! with --tcp-established). `dirty N`: once ready, the first process rewrites its
//! memory at N MiB/s, one page after another round and round (a running program
//! for incremental dumps: pre-dump, then dump --prev-images-dir).

use std::io::{Read, Write};
use std::os::fd::FromRawFd;

fn fill(mib: usize, seed: u64) -> Vec<u64> {
    let mut mem: Vec<u64> = Vec::with_capacity(mib << 17);
    let mut x: u64 = 0x2545_F491_4F6C_DD1D ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for _ in 0..(mib << 17) {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        mem.push(x.wrapping_mul(0x2545_F491_4F6C_DD1D) & 0x0F0F_0F0F_0F0F_0F0F);
    }
    std::hint::black_box(&mem);
    mem
}

fn sleep_forever() -> ! {
    loop {
        // SAFETY: pause(2) only sleeps.
        unsafe { libc::pause() };
    }
}

fn usage() -> ! {
    eprintln!("usage: bench_mem MIB READY_FILE [procs N] [threads N] [fds N] [vmas N] [sockets N] [tcp N] [dirty N]");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 || args.len().is_multiple_of(2) {
        usage();
    }
    let num = |s: &str| s.parse::<usize>().unwrap_or_else(|_| usage());
    let mib = num(&args[1]);
    let (mut procs, mut threads, mut nfds, mut vmas, mut socks, mut tcp, mut dirty) = (1, 1, 0, 0, 0, 0, 0);
    for kv in args[3..].chunks(2) {
        match kv[0].as_str() {
            "procs" => procs = num(&kv[1]).max(1),
            "threads" => threads = num(&kv[1]).max(1),
            "fds" => nfds = num(&kv[1]),
            "vmas" => vmas = num(&kv[1]),
            "sockets" => socks = num(&kv[1]),
            "tcp" => tcp = num(&kv[1]),
            "dirty" => dirty = num(&kv[1]),
            _ => usage(),
        }
    }
    // Children report through a pipe once their memory is filled.
    let mut fds = [0i32; 2];
    // SAFETY: pipe(2) into a local array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    for i in 1..procs {
        // SAFETY: single-threaded here; the child only fills memory and sleeps.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // SAFETY: closing our copy of the read end.
            unsafe { libc::close(fds[0]) };
            let _mem = fill(mib, i as u64);
            // SAFETY: the write end is ours alone in this process.
            let mut w = unsafe { std::fs::File::from_raw_fd(fds[1]) };
            w.write_all(b"x").expect("reporting to the parent");
            drop(w);
            sleep_forever();
        }
    }
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(fds[1]) };
    let mut mem = fill(mib, 0);
    // SAFETY: the read end is ours alone in this process.
    let mut r = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    let mut got = vec![0u8; procs - 1];
    r.read_exact(&mut got).expect("waiting for the children");
    drop(r);
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 1..threads {
        let tx = tx.clone();
        std::thread::spawn(move || {
            tx.send(()).unwrap();
            sleep_forever()
        });
    }
    for _ in 1..threads {
        rx.recv().unwrap();
    }
    open_fds(nfds);
    map_vmas(vmas);
    open_sockets(socks);
    let _conns = open_tcp(tcp);
    let mut f = std::fs::File::create(&args[2]).expect("creating the ready file");
    f.write_all(b"ready\n").expect("writing the ready file");
    drop(f);
    if dirty == 0 {
        sleep_forever()
    }
    // `dirty` MiB/s: a page (512 u64) every 4096 / (dirty MiB) s, in steps of 1 ms.
    let pages_per_ms = (dirty * 256).div_ceil(1000).max(1);
    let mut at = 0usize;
    let mut n: u64 = 0;
    loop {
        for _ in 0..pages_per_ms {
            n += 1;
            mem[at] = n;
            at = (at + 512) % mem.len();
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn open_tcp(n: usize) -> Vec<std::net::TcpStream> {
    if n == 0 {
        return Vec::new();
    }
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: get/setrlimit with a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max.min(2 * n as u64 + 64).max(lim.rlim_cur);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let lis = std::net::TcpListener::bind("127.0.0.1:0").expect("listening");
    let at = lis.local_addr().expect("listener address");
    let mut conns = Vec::with_capacity(2 * n);
    let msg = [0x5au8; 64];
    for i in 0..n {
        let mut c = std::net::TcpStream::connect(at).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        let (mut s, _) = lis.accept().expect("accepting");
        c.write_all(&msg).expect("sending");
        s.write_all(&msg).expect("sending");
        conns.push(c);
        conns.push(s);
    }
    std::mem::forget(lis);
    conns
}

fn open_sockets(n: usize) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: get/setrlimit with a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max.min(n as u64 + 64).max(lim.rlim_cur);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let msg = [0x5au8; 64];
    for i in 0..n / 2 {
        let ty = if i % 2 == 0 { libc::SOCK_STREAM } else { libc::SOCK_DGRAM };
        let mut sv = [0i32; 2];
        // SAFETY: socketpair into a local array; the sockets stay open for the
        // process's life; each send writes from a local buffer.
        unsafe {
            assert_eq!(libc::socketpair(libc::AF_UNIX, ty, 0, sv.as_mut_ptr()), 0, "socketpair {i}: {}", std::io::Error::last_os_error());
            libc::send(sv[0], msg.as_ptr().cast(), msg.len(), 0);
            libc::send(sv[1], msg.as_ptr().cast(), msg.len(), 0);
        }
    }
}

fn open_fds(n: usize) {
    if n == 0 {
        return;
    }
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: get/setrlimit with a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max.min(n as u64 + 64).max(lim.rlim_cur);
        lim.rlim_max = lim.rlim_max.max(lim.rlim_cur);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let mut last = -1;
    for i in 0..n {
        // SAFETY: open/dup of /dev/null; the fds stay open for the process's life.
        let fd = unsafe { if i % 4 == 3 { libc::dup(last) } else { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) } };
        assert!(fd >= 0, "opening fd {i} of {n}: {}", std::io::Error::last_os_error());
        last = fd;
    }
}

fn map_vmas(n: usize) {
    if n == 0 {
        return;
    }
    // One reservation, then every page remapped with its own protection.
    // SAFETY: a fresh anonymous mapping, owned by this process for its life.
    let base = unsafe { libc::mmap(std::ptr::null_mut(), n * 4096, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
    assert!(base != libc::MAP_FAILED, "mmap of {n} pages");
    for i in 0..n {
        let page = (base as usize + i * 4096) as *mut u8;
        if i % 2 == 0 {
            // SAFETY: the page is inside the mapping made above and writable.
            unsafe { page.write_volatile(i as u8 | 1) };
        } else {
            // SAFETY: changes only the protection of a page of our own mapping.
            assert_eq!(unsafe { libc::mprotect(page.cast(), 4096, libc::PROT_READ) }, 0, "mprotect");
        }
    }
}
