//! The one sliding window: counters in time buckets per (class, tenant),
//! pruned past a retention. Goodput rows ([`crate::GoodputWindow`]) are one
//! kind of counters it holds; anything that adds up ([`WindowCounts`]) can
//! use it (the gateway's counts of requests left out of attainment, say).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::goodput::GoodputConfig;

/// Counters a window adds up across buckets.
pub trait WindowCounts: Default + Clone {
    /// Adds `other` into `self`.
    fn merge(&mut self, other: &Self);
}

/// Counters `C` in time buckets, per (class, tenant). Times are
/// milliseconds on any clock the caller keeps monotonic enough (wall clock
/// in the store, tokio's in the gateway); the bucket width and retention
/// are the config's.
#[derive(Debug, Default)]
pub struct SlidingWindow<C> {
    config: GoodputConfig,
    /// bucket → (class, tenant) → counters.
    buckets: BTreeMap<u64, HashMap<(String, String), C>>,
}

impl<C: WindowCounts> SlidingWindow<C> {
    pub fn new(config: GoodputConfig) -> Self {
        Self {
            config,
            buckets: BTreeMap::new(),
        }
    }

    /// Updates the counters of (class, tenant) in the bucket of `at_ms` with
    /// `count`; drops buckets past the retention.
    pub fn add(&mut self, at_ms: u64, class: &str, tenant: &str, count: impl FnOnce(&mut C)) {
        count(
            self.buckets
                .entry(self.config.bucket_of(at_ms))
                .or_default()
                .entry((class.to_owned(), tenant.to_owned()))
                .or_default(),
        );
        if let Some(&newest) = self.buckets.keys().next_back() {
            let keep_from = self.config.oldest_kept(newest);
            self.buckets = self.buckets.split_off(&keep_from);
        }
    }

    /// The counters over `[now_ms - window, now_ms]` (the window rounded out
    /// to whole buckets, clamped to the retention), per (class, tenant).
    pub fn sum(&self, window: Duration, now_ms: u64) -> BTreeMap<(String, String), C> {
        let mut out: BTreeMap<(String, String), C> = BTreeMap::new();
        let range = self.config.bucket_range(window, now_ms);
        for counters in self.buckets.range(range).map(|(_, m)| m) {
            for (key, c) in counters {
                out.entry(key.clone()).or_default().merge(c);
            }
        }
        out
    }

    /// Buckets held (for tests of pruning).
    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// The newest bucket held.
    pub fn newest_bucket(&self) -> Option<u64> {
        self.buckets.keys().next_back().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, Default, PartialEq)]
    struct Hits(u64);

    impl WindowCounts for Hits {
        fn merge(&mut self, other: &Self) {
            self.0 += other.0;
        }
    }

    #[test]
    fn sums_the_buckets_in_the_window_and_prunes_past_the_retention() {
        let mut w = SlidingWindow::<Hits>::new(GoodputConfig {
            retention: Duration::from_secs(10),
            ..GoodputConfig::default()
        });
        for s in 0..30u64 {
            w.add(s * 1000, "c", "t", |h| h.0 += 1);
        }
        w.add(29_500, "c", "u", |h| h.0 += 5);
        let key = |t: &str| ("c".to_owned(), t.to_owned());
        let last5 = w.sum(Duration::from_secs(4), 29_000);
        assert_eq!(last5[&key("t")], Hits(5));
        assert_eq!(last5[&key("u")], Hits(5));
        // Past the retention: at most the retention's buckets answer.
        let all = w.sum(Duration::from_secs(3600), 29_000);
        assert_eq!(all[&key("t")], Hits(11));
        assert!(w.bucket_count() <= 12, "{}", w.bucket_count());
        assert_eq!(w.newest_bucket(), Some(29));
    }
}
