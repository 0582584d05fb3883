//! Work spread over crtool's threads while a tree is frozen.

/// `f` over `items` on up to `width` threads (interleaved: item i on thread
/// i % width); the results in `items`' order. On failure, the error of the
/// first failing item in that order (as a loop over `items` would report it;
/// items after it may have been processed).
pub fn map<T: Sync, R: Send, E: Send>(items: &[T], width: usize, f: impl Fn(&T) -> Result<R, E> + Sync) -> Result<Vec<R>, E> {
    let width = width.clamp(1, items.len().max(1));
    if width == 1 {
        return items.iter().map(&f).collect();
    }
    let f = &f;
    let mut slots: Vec<Option<Result<R, E>>> = (0..items.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..width)
            .map(|k| s.spawn(move || items.iter().enumerate().skip(k).step_by(width).map(|(i, t)| (i, f(t))).collect::<Vec<_>>()))
            .collect();
        for h in handles {
            // (A panic in `f` is crtool's bug: it goes on as a panic.)
            for (i, r) in h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)) {
                slots[i] = Some(r);
            }
        }
    });
    slots.into_iter().map(|r| r.expect("every item is mapped")).collect()
}

/// Threads for work over a frozen tree: one per CPU (counted once per crtool
/// process: std reads the affinity mask and the cgroup's CPU quota files for
/// it, and it is asked several times per dumped process).
pub fn width() -> usize {
    static WIDTH: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *WIDTH.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_order_and_first_error() {
        let v: Vec<u32> = (0..100).collect();
        assert_eq!(super::map(&v, 3, |x| Ok::<_, ()>(x * 2)).unwrap(), v.iter().map(|x| x * 2).collect::<Vec<_>>());
        let r = super::map(&v, 4, |&x| if x % 7 == 5 { Err(x) } else { Ok(x) });
        assert_eq!(r, Err(5));
        assert_eq!(super::map(&[] as &[u32], 4, |&x| Ok::<_, ()>(x)).unwrap(), Vec::<u32>::new());
    }
}
