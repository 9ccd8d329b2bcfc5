//! Live goodput accounting over a sliding window, per (class, tenant).
//!
//! A request counts once, when it ends: good only if it met every target of
//! its class; rejected and failed requests are misses (DistServe's rule).
//! The rule and the window are `baton_slo`'s ([`Verdict`],
//! [`baton_slo::SlidingWindow`]), the same the SLO store counts with; here
//! the window runs on tokio's clock ([`LiveWindow`]) so tests can pause it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use baton_slo::{GoodputConfig, GoodputRow, SlidingWindow, WindowCounts};
use tokio::time::Instant;

pub use baton_slo::Verdict;

/// Goodput counters of one (class, tenant): the store's row.
pub type Counts = GoodputRow;

type Key = (String, String);

/// `baton_slo`'s sliding window on tokio's clock (tests can pause it), in
/// one-second buckets kept as long as the window reaches back: for every
/// count this replica keeps per (class, tenant) over its SLO window.
#[derive(Debug)]
pub struct LiveWindow<C> {
    window: Duration,
    origin: Instant,
    buckets: Mutex<SlidingWindow<C>>,
}

impl<C: WindowCounts> LiveWindow<C> {
    pub fn new(window: Duration) -> Self {
        let window = window.max(Duration::from_secs(1));
        let config = GoodputConfig {
            bucket: Duration::from_secs(1),
            retention: window,
            ..GoodputConfig::default()
        };
        Self {
            window,
            origin: Instant::now(),
            buckets: Mutex::new(SlidingWindow::new(config)),
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Updates the counts of (class, tenant) now.
    pub fn add(&self, class: &str, tenant: &str, count: impl FnOnce(&mut C)) {
        let now = self.now_ms();
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(now, class, tenant, count);
    }

    /// Counts over the window, per (class, tenant).
    pub fn counts(&self) -> BTreeMap<Key, C> {
        let now = self.now_ms();
        let b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        b.sum(self.window, now)
    }
}

#[derive(Debug)]
pub struct Accounting {
    live: LiveWindow<Counts>,
    /// Since start, never pruned (Prometheus counters).
    totals: Mutex<BTreeMap<Key, Counts>>,
}

impl Accounting {
    pub fn new(window: Duration) -> Self {
        Self {
            live: LiveWindow::new(window),
            totals: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn window(&self) -> Duration {
        self.live.window()
    }

    pub fn record(&self, class: &str, tenant: &str, v: &Verdict) {
        self.live.add(class, tenant, |row| row.count(v));
        let mut t = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        t.entry((class.to_owned(), tenant.to_owned()))
            .or_default()
            .count(v);
    }

    /// Counts over the window, per (class, tenant).
    pub fn window_counts(&self) -> BTreeMap<Key, Counts> {
        self.live
            .counts()
            .into_iter()
            .map(|((class, tenant), c)| {
                let row = GoodputRow {
                    class: class.clone(),
                    tenant: tenant.clone(),
                    ..c
                };
                ((class, tenant), row)
            })
            .collect()
    }

    pub fn totals(&self) -> BTreeMap<Key, Counts> {
        self.totals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn window_slides_and_totals_do_not() {
        let a = Accounting::new(Duration::from_secs(10));
        let good = Verdict {
            ttft_met: true,
            tpot_met: true,
            ..Verdict::default()
        };
        let rejected = Verdict::unserved(true, false);
        a.record("interactive", "acme", &good);
        a.record("interactive", "acme", &rejected);
        let w = a.window_counts();
        let c = &w[&("interactive".into(), "acme".into())];
        assert_eq!((c.requests, c.good, c.rejected, c.ttft_met), (2, 1, 1, 1));
        tokio::time::advance(Duration::from_secs(12)).await;
        a.record("batch", "x", &good);
        let w = a.window_counts();
        assert!(!w.contains_key(&("interactive".into(), "acme".into())));
        assert_eq!(a.totals().len(), 2);
    }
}
