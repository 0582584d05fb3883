//! `shm`: memory shared between a parent and its child, and private copy-on-write
//! memory they inherited.
//!
//!     shm DIR
//!
//! Before fork: a MAP_SHARED|MAP_ANONYMOUS region (8 pages) and a private anonymous
//! region (16 pages), both filled with a pattern. After fork the parent rewrites
//! private pages 0..4 and shared page 1, the child rewrites private pages 4..8 and
//! shared page 2; pages 8..16 stay the inherited copy-on-write pages in both.
//!
//! On SIGUSR1 (to the parent, which passes it on) each process checks both regions
//! (its own private writes, the inherited pages, both processes' shared writes), then
//! they talk through the shared region both ways (the parent writes a token, the child
//! must see it and answer with another one the parent must see), and the parent
//! writes into an inherited private page, which the child must not see. The child
//! writes DIR/result.child, the parent DIR/result.

#[path = "common.rs"]
mod common;

use common::*;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

const PAGE: usize = 4096;
const SHARED_PAGES: usize = 8;
const PRIVATE_PAGES: usize = 16;
const SEED_SHARED: u64 = 0x5000;
const SEED_PRIVATE: u64 = 0x6000;
const SEED_PARENT: u64 = 0x7000;
const SEED_CHILD: u64 = 0x8000;

struct Regions {
    shared: *mut u8,
    private: *mut u8,
}

impl Regions {
    // The memory is the kernel's mapping, not owned by the struct.
    #[allow(clippy::mut_from_ref)]
    fn page(&self, shared: bool, i: usize) -> &mut [u8] {
        let base = if shared { self.shared } else { self.private };
        // SAFETY: both regions live until exit; callers never hold two views of one page.
        unsafe { std::slice::from_raw_parts_mut(base.add(i * PAGE), PAGE) }
    }
    /// A word in the last shared page used to talk.
    fn slot(&self, i: usize) -> &AtomicU64 {
        // SAFETY: 8-byte aligned words inside the shared region's last page, which is
        // not part of the patterns.
        unsafe { &*(self.shared.add((SHARED_PAGES - 1) * PAGE + i * 8) as *const AtomicU64) }
    }
}

/// What page `i` of a region must hold in the parent (`parent`) or the child.
fn expected_seed(shared: bool, i: usize, parent: bool) -> Option<u64> {
    if shared {
        match i {
            1 => Some(SEED_PARENT + 1),
            2 => Some(SEED_CHILD + 2),
            7 => None, // the talk page
            _ => Some(SEED_SHARED + i as u64),
        }
    } else {
        match i {
            0..4 if parent => Some(SEED_PARENT + 100 + i as u64),
            4..8 if !parent => Some(SEED_CHILD + 100 + i as u64),
            _ => Some(SEED_PRIVATE + i as u64),
        }
    }
}

fn write_own_pages(m: &Regions, parent: bool) {
    if parent {
        fill(m.page(true, 1), SEED_PARENT + 1);
    } else {
        fill(m.page(true, 2), SEED_CHILD + 2);
    }
    for i in 0..PRIVATE_PAGES {
        if let Some(seed) = expected_seed(false, i, parent).filter(|&s| s != SEED_PRIVATE + i as u64) {
            fill(m.page(false, i), seed);
        }
    }
}

fn check_pages(m: &Regions, parent: bool, r: &mut Report) {
    let who = if parent { "parent" } else { "child" };
    for (shared, n) in [(true, SHARED_PAGES), (false, PRIVATE_PAGES)] {
        let bad: Vec<usize> = (0..n)
            .filter(|&i| expected_seed(shared, i, parent).is_some_and(|seed| first_mismatch(m.page(shared, i), seed).is_some()))
            .collect();
        let kind = if shared { "MAP_SHARED|MAP_ANONYMOUS" } else { "private (copy-on-write)" };
        r.expect(bad.is_empty(), || format!("{who}: {kind} pages {bad:?} do not hold what they should"));
    }
}

/// Waits up to 5 s for slot `i` to hold `v`.
fn await_slot(m: &Regions, i: usize, v: u64) -> bool {
    wait_for(5000, || m.slot(i).load(SeqCst) == v)
}

fn main() {
    let (dir, _) = args();
    block_usr1();
    let m = Regions { shared: map_anon(SHARED_PAGES * PAGE, libc::MAP_SHARED), private: map_anon(PRIVATE_PAGES * PAGE, libc::MAP_PRIVATE) };
    for i in 0..SHARED_PAGES - 1 {
        fill(m.page(true, i), SEED_SHARED + i as u64);
    }
    for i in 0..PRIVATE_PAGES {
        fill(m.page(false, i), SEED_PRIVATE + i as u64);
    }

    let child = fork();
    let parent = child != 0;
    write_own_pages(&m, parent);
    m.slot(if parent { 0 } else { 1 }).store(1, SeqCst);
    if !parent {
        wait_usr1();
        let mut r = Report::default();
        check_pages(&m, false, &mut r);
        // Parent → child, then child → parent, through the shared page.
        let heard = await_slot(&m, 2, 0xfeed);
        r.expect(heard, || "child: never saw the parent's write into the shared region".into());
        m.slot(3).store(0xbeef, SeqCst);
        // The parent now writes into inherited private page 12; ours must not change.
        if await_slot(&m, 4, 1) {
            r.expect(first_mismatch(m.page(false, 12), SEED_PRIVATE + 12).is_none(), || "child: the parent's write into a private inherited page shows in the child".into());
        } else {
            r.0.push("child: the parent never said it wrote its private page".into());
        }
        std::process::exit(r.write(&dir.join("result.child")));
    }

    check(wait_for(5000, || m.slot(1).load(SeqCst) == 1), "the child did not start");
    write_file(&dir.join("ready"), &format!("{child}\n"));
    wait_usr1();
    let mut r = Report::default();
    check_pages(&m, true, &mut r);
    // SAFETY: kill(2) of our child.
    unsafe { libc::kill(child, libc::SIGUSR1) };
    m.slot(2).store(0xfeed, SeqCst);
    r.expect(await_slot(&m, 3, 0xbeef), || "parent: never saw the child's write into the shared region".into());
    fill(m.page(false, 12), 0xdead);
    m.slot(4).store(1, SeqCst);
    r.child_verdict(child, &dir.join("result.child"));
    std::process::exit(r.write(&dir.join("result")));
}
