//! How long a thread frozen in a timed wait had left, from the kernel's own timer.
//!
//! A timed sleep or wait (nanosleep, futex, poll, ... and `restart_syscall`
//! continuing one) sleeps on an `hrtimer_sleeper` whose function is
//! `hrtimer_wakeup`; /proc/timer_list (root only, kernel/time/timer_list.c) lists
//! every active one with its expiry relative to the moment of reading ("[in X to Y
//! nsecs]", X the soft expiry), keyed by a hashed but stable pointer. Freezing the
//! thread cancels its timer, so the one entry that vanishes between a reading just
//! before the thread is interrupted and one just after, while it still had time to
//! run, is the thread's own, and what it had left is X of the first reading (the
//! interrupt came after: never less than what was left, by microseconds). This is
//! exact where `se.exec_start` (see `syscall::probe`) only bounds the time asleep
//! since the thread last slept, which for a wait that was already resumed once
//! (restart_syscall after an earlier restore) is not the time since it began.

use std::collections::HashMap;
use std::time::Instant;

/// The `hrtimer_wakeup` timers of one reading: pointer → ns until soft expiry.
pub struct Snapshot {
    at: Instant,
    sleepers: HashMap<String, i64>,
}

impl Snapshot {
    /// Reads /proc/timer_list; `None` if it cannot be read (not root, no
    /// CONFIG_TIMER_LIST... then the caller falls back to its estimate).
    pub fn take() -> Option<Snapshot> {
        let text = std::fs::read_to_string("/proc/timer_list").ok()?;
        let at = Instant::now();
        Some(Snapshot { at, sleepers: parse(&text) })
    }

    /// The time left (ns) of the one sleeper that vanished between `self` and
    /// `after` before its expiry; `None` if there was not exactly one.
    pub fn vanished(&self, after: &Snapshot) -> Option<u64> {
        self.vanished_in(after, None)
    }

    /// As `vanished`; where several did, another reading a little later tells
    /// them apart: a busy program's timer (a sleep loop) comes back, armed again
    /// at the same stack address, while the frozen thread's stays gone. Under a
    /// load of other programs sleeping and waking, a single pair of readings
    /// often sees more than one vanish.
    pub fn vanished_confirmed(&self, after: &Snapshot) -> Option<u64> {
        self.vanished(after).or_else(|| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let later = Snapshot::take()?;
            self.vanished_in(after, Some(&later))
        })
    }

    fn vanished_in(&self, after: &Snapshot, later: Option<&Snapshot>) -> Option<u64> {
        let gap = after.at.duration_since(self.at).as_nanos() as i64;
        let mut gone = self.sleepers.iter().filter(|(k, left)| {
            !after.sleepers.contains_key(*k) && **left > gap && later.is_none_or(|l| !l.sleepers.contains_key(*k))
        });
        let (_, &left) = gone.next()?;
        if gone.next().is_some() {
            return None;
        }
        Some(left as u64)
    }
}

/// The `hrtimer_wakeup` entries of a timer_list text: " #N: <ptr>, hrtimer_wakeup,
/// S:01" followed by " # expires at A-B nsecs [in X to Y nsecs]".
fn parse(text: &str) -> HashMap<String, i64> {
    let mut out = HashMap::new();
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if !l.contains(", hrtimer_wakeup,") {
            continue;
        }
        let Some(ptr) = l.split_once('<').and_then(|(_, r)| r.split_once('>')).map(|(p, _)| p.to_string()) else { continue };
        let Some(next) = lines.next() else { break };
        let left = next.split_once("[in ").and_then(|(_, r)| r.split_whitespace().next()).and_then(|x| x.parse::<i64>().ok());
        if let Some(left) = left {
            out.insert(ptr, left);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = " #0: <000000003adb1ea0>, tick_nohz_handler, S:01
 # expires at 5372812000000-5372812000000 nsecs [in 3843231 to 3843231 nsecs]
 #1: <000000002d73c5d6>, hrtimer_wakeup, S:01
 # expires at 5372852066601-5372852116601 nsecs [in 43909832 to 43959832 nsecs]
 #2: <0000000046b5dc88>, hrtimer_wakeup, S:01
 # expires at 5372964101022-5372964263021 nsecs [in -5 to 156106252 nsecs]
";

    #[test]
    fn a_timer_that_comes_back_is_not_the_frozen_threads() {
        let at = Instant::now();
        let snap = |keys: &[(&str, i64)]| Snapshot { at, sleepers: keys.iter().map(|(k, v)| (k.to_string(), *v)).collect() };
        let before = snap(&[("frozen", 4_000_000_000), ("loop", 40_000_000)]);
        let after = snap(&[]);
        // Both vanished: ambiguous, until the loop's timer is seen again.
        assert_eq!(before.vanished(&after), None);
        assert_eq!(before.vanished_in(&after, Some(&snap(&[("loop", 45_000_000)]))), Some(4_000_000_000));
        assert_eq!(before.vanished_in(&after, Some(&snap(&[]))), None);
    }

    #[test]
    fn parses_sleepers_only() {
        let m = parse(LIST);
        assert_eq!(m.len(), 2);
        assert_eq!(m["000000002d73c5d6"], 43909832);
        assert_eq!(m["0000000046b5dc88"], -5);
    }

    #[test]
    fn one_vanished_sleeper_is_attributed_and_expired_ones_are_not() {
        let at = Instant::now();
        let before = Snapshot { at, sleepers: parse(LIST) };
        let mut rest = parse(LIST);
        rest.remove("000000002d73c5d6");
        rest.remove("0000000046b5dc88"); // expired by itself
        let after = Snapshot { at, sleepers: rest };
        assert_eq!(before.vanished(&after), Some(43909832));
        let same = Snapshot { at, sleepers: parse(LIST) };
        assert_eq!(before.vanished(&same), None);
    }
}
