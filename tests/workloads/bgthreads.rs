//! `bgthreads`: threads that end while a background snapshot (`dump -R`)
//! copies the process's memory.
//!
//!     bgthreads DIR
//!
//! Fills 256 MiB, starts 16 threads each blocked in read() on a pipe, writes
//! DIR/ready. The main thread sleeps 1 ms at a time; the first time a sleep
//! takes more than 8 ms (the process was frozen: a dump), it writes 16 bytes
//! into the pipe, so that every thread returns and exits right after the
//! freeze, while the copy runs: the words the kernel writes when a thread
//! exits (its clear_child_tid, in its stack) are in write-protected memory,
//! and an exiting thread cannot wait for a userfaultfd. Then it joins them all
//! (pthread_join waits for the kernel to clear that word) and writes
//! "gap=MS join=MS" to DIR/joined. Writes PASS to DIR/result on SIGUSR1.

#[path = "common.rs"]
mod common;

use common::*;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

fn main() {
    let (dir, _) = args();
    block_usr1();
    let mut mem = vec![0u8; 256 << 20];
    for (i, b) in mem.iter_mut().enumerate().step_by(4096) {
        *b = (i / 4096) as u8 | 1;
    }
    let mut fds = [0i32; 2];
    // SAFETY: pipe(2) into a local array.
    check(unsafe { libc::pipe(fds.as_mut_ptr()) } == 0, "pipe");
    // SAFETY: the two fds are ours alone from here on.
    let (r, mut w) = unsafe { (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) };
    let r = std::sync::Arc::new(r);
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let r = r.clone();
            std::thread::spawn(move || {
                let mut b = [0u8; 1];
                let _ = (&*r).read(&mut b);
            })
        })
        .collect();
    write_file(&dir.join("ready"), "ready\n");
    let mut last = Instant::now();
    let gap = loop {
        std::thread::sleep(Duration::from_millis(1));
        let now = Instant::now();
        if now - last > Duration::from_millis(8) {
            break now - last;
        }
        last = now;
    };
    w.write_all(&[0u8; 16]).unwrap_or_else(|_| die("writing to the pipe"));
    let t = Instant::now();
    for h in threads {
        h.join().unwrap_or_else(|_| die("a thread panicked"));
    }
    write_file(&dir.join("joined"), &format!("gap={} join={}\n", gap.as_millis(), t.elapsed().as_millis()));
    std::hint::black_box(&mem);
    wait_usr1();
    write_file(&dir.join("result"), "PASS\n");
}
