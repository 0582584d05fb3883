//! `bgthreads`: threads that end while a background snapshot (`dump -R`)
//! copies the process's memory.
//!
//!     bgthreads DIR
//!
//! Fills 256 MiB, starts 16 threads each blocked in read() on a pipe, writes
//! DIR/ready. The main thread then looks, every millisecond, whether a page of
//! its memory it wrote before is write-protected (PAGEMAP_SCAN does not call it
//! written any more: a background copy is under way), or whether SIGUSR2 came;
//! then it writes 16 bytes into the pipe, so that every thread returns and
//! exits (while the copy runs: the words the kernel writes when a thread
//! exits, its clear_child_tid in its stack, are in write-protected memory, and
//! an exiting thread cannot wait for a userfaultfd), joins them all
//! (pthread_join waits for the kernel to clear that word) and writes "joined
//! after MS ms" to DIR/joined. Writes PASS to DIR/result on SIGUSR1.

#[path = "common.rs"]
mod common;

use common::*;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

static GOT_USR2: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_usr2(_: libc::c_int) {
    GOT_USR2.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Whether PAGEMAP_SCAN calls the page at `addr` written (not write-protected
/// by a userfaultfd).
fn written(pagemap: &std::fs::File, addr: u64) -> bool {
    let mut region = [0u64; 3];
    // struct pm_scan_arg: size, flags, start, end, walk_end, vec, vec_len,
    // max_pages, category_inverted, category_mask, category_anyof_mask,
    // return_mask; PAGE_IS_WRITTEN = 1 << 1.
    let mut arg = [96u64, 0, addr, addr + 4096, 0, region.as_mut_ptr() as u64, 1, 0, 0, 2, 0, 2];
    // SAFETY: PAGEMAP_SCAN reads `arg` and writes at most one region into `region`.
    let n = unsafe { libc::ioctl(pagemap.as_raw_fd(), 0xC060_6610, arg.as_mut_ptr()) };
    check(n >= 0, "PAGEMAP_SCAN");
    n == 1
}

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
    let probe = mem.as_ptr() as u64 / 4096 * 4096 + 4096;
    let pagemap = std::fs::File::open("/proc/self/pagemap").unwrap_or_else(|_| die("opening /proc/self/pagemap"));
    // SAFETY: installing a handler that only sets an atomic flag.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr2 as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        check(libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()) == 0, "sigaction");
    }
    check(written(&pagemap, probe), "the probe page is written before the dump");
    write_file(&dir.join("ready"), "ready\n");
    while written(&pagemap, probe) && !GOT_USR2.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    w.write_all(&[0u8; 16]).unwrap_or_else(|_| die("writing to the pipe"));
    let t = Instant::now();
    for h in threads {
        h.join().unwrap_or_else(|_| die("a thread panicked"));
    }
    write_file(&dir.join("joined"), &format!("joined after {} ms\n", t.elapsed().as_millis()));
    std::hint::black_box(&mem);
    wait_usr1();
    write_file(&dir.join("result"), "PASS\n");
}
