//! The pages a lazy-pages daemon still owes one process: runs of pages, keyed by
//! where they are now in the process, each pointing into a pagemap entry of the
//! images. Events of the process edit it (a move shifts runs, an unmap or
//! madvise drops them); a copy takes them out.

use crate::sys::mm::PAGE;
use std::collections::BTreeMap;

/// `pages` pages now at the run's address, whose data is pages `first..` of
/// pagemap entry `entry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub pages: u64,
    pub entry: usize,
    pub first: u64,
}

impl Run {
    fn len(&self) -> u64 {
        self.pages * PAGE
    }
}

/// Pending runs by start address; they never overlap.
#[derive(Debug, Clone, Default)]
pub struct Pending {
    runs: BTreeMap<u64, Run>,
    bytes: u64,
}

impl Pending {
    pub fn insert(&mut self, at: u64, run: Run) {
        if run.pages > 0 {
            self.bytes += run.len();
            self.runs.insert(at, run);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Bytes still owed.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Takes out the run holding `addr`, if any.
    pub fn take_containing(&mut self, addr: u64) -> Option<(u64, Run)> {
        let (&at, &run) = self.runs.range(..=addr).next_back()?;
        if addr >= at + run.len() {
            return None;
        }
        self.runs.remove(&at);
        self.bytes -= run.len();
        Some((at, run))
    }

    /// Takes out the lowest run.
    pub fn take_first(&mut self) -> Option<(u64, Run)> {
        let (at, run) = self.runs.pop_first()?;
        self.bytes -= run.len();
        Some((at, run))
    }

    /// Splits the run crossing `addr` (page-aligned) in two at it.
    fn split_at(&mut self, addr: u64) {
        let Some((&at, &run)) = self.runs.range(..addr).next_back() else { return };
        if addr >= at + run.len() {
            return;
        }
        let head = (addr - at) / PAGE;
        self.runs.insert(at, Run { pages: head, ..run });
        self.runs.insert(addr, Run { pages: run.pages - head, entry: run.entry, first: run.first + head });
    }

    /// Takes out everything in [start, end), in order.
    pub fn take_range(&mut self, start: u64, end: u64) -> Vec<(u64, Run)> {
        let (start, end) = (start & !(PAGE - 1), end.next_multiple_of(PAGE));
        if start >= end {
            return Vec::new();
        }
        self.split_at(start);
        self.split_at(end);
        let keys: Vec<u64> = self.runs.range(start..end).map(|(&k, _)| k).collect();
        keys.into_iter()
            .filter_map(|k| {
                let r = self.runs.remove(&k)?;
                self.bytes -= r.len();
                Some((k, r))
            })
            .collect()
    }

    /// [start, end) was unmapped or emptied: nothing is owed there any more.
    pub fn drop_range(&mut self, start: u64, end: u64) {
        self.take_range(start, end);
    }

    /// [from, from + len) moved to [to, to + len) (mremap): what was owed at the
    /// old place is owed at the new one; what was owed at the new place is gone.
    pub fn shift(&mut self, from: u64, to: u64, len: u64) {
        let moved = self.take_range(from, from.saturating_add(len));
        self.drop_range(to, to.saturating_add(len));
        for (at, run) in moved {
            self.insert(at - from + to, run);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: u64) -> u64 {
        n * PAGE
    }

    fn set() -> Pending {
        let mut s = Pending::default();
        s.insert(p(10), Run { pages: 10, entry: 0, first: 0 });
        s.insert(p(30), Run { pages: 5, entry: 1, first: 2 });
        s
    }

    #[test]
    fn take_containing_finds_the_run_or_nothing() {
        let mut s = set();
        assert_eq!(s.take_containing(p(9)), None);
        assert_eq!(s.take_containing(p(20)), None);
        assert_eq!(s.take_containing(p(15) + 7), Some((p(10), Run { pages: 10, entry: 0, first: 0 })));
        assert_eq!(s.bytes(), p(5));
    }

    #[test]
    fn drop_range_splits_runs_at_both_ends() {
        let mut s = set();
        s.drop_range(p(12), p(14));
        assert_eq!(s.take_first(), Some((p(10), Run { pages: 2, entry: 0, first: 0 })));
        assert_eq!(s.take_first(), Some((p(14), Run { pages: 6, entry: 0, first: 4 })));
        assert_eq!(s.bytes(), p(5));
    }

    #[test]
    fn shift_moves_owed_pages_and_drops_those_at_the_target() {
        let mut s = set();
        // Pages 18..20 of entry 0 move onto 31..33, over entry 1's pages there.
        s.shift(p(18), p(31), p(2));
        let all: Vec<_> = std::iter::from_fn(|| s.take_first()).collect();
        assert_eq!(
            all,
            vec![
                (p(10), Run { pages: 8, entry: 0, first: 0 }),
                (p(30), Run { pages: 1, entry: 1, first: 2 }),
                (p(31), Run { pages: 2, entry: 0, first: 8 }),
                (p(33), Run { pages: 2, entry: 1, first: 5 }),
            ]
        );
    }
}
