//! Live goodput accounting over a sliding window, per (class, tenant).
//!
//! A request counts once, when it ends: good only if it met every target of
//! its class; rejected and failed requests are misses (DistServe's rule).
//! The rule and the window are `baton_slo`'s ([`Verdict`],
//! [`GoodputWindow`]), the same the SLO store counts with; here the window
//! runs on tokio's clock so tests can pause it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use baton_slo::{GoodputConfig, GoodputRow, GoodputWindow};
use tokio::time::Instant;

pub use baton_slo::Verdict;

/// Goodput counters of one (class, tenant): the store's row.
pub type Counts = GoodputRow;

type Key = (String, String);

#[derive(Debug)]
pub struct Accounting {
    window: Duration,
    origin: Instant,
    buckets: Mutex<GoodputWindow>,
    /// Since start, never pruned (Prometheus counters).
    totals: Mutex<BTreeMap<Key, Counts>>,
}

impl Accounting {
    pub fn new(window: Duration) -> Self {
        let window = window.max(Duration::from_secs(1));
        // One-second buckets, kept as long as the window reaches back.
        let config = GoodputConfig {
            bucket: Duration::from_secs(1),
            retention: window,
            ..GoodputConfig::default()
        };
        Self {
            window,
            origin: Instant::now(),
            buckets: Mutex::new(GoodputWindow::new(config)),
            totals: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn record(&self, class: &str, tenant: &str, v: &Verdict) {
        let now = self.now_ms();
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(now, class, tenant, v);
        let mut t = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        t.entry((class.to_owned(), tenant.to_owned()))
            .or_default()
            .count(v);
    }

    /// Counts over the window, per (class, tenant).
    pub fn window_counts(&self) -> BTreeMap<Key, Counts> {
        let now = self.now_ms();
        let b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        b.rows(self.window, now)
            .into_iter()
            .map(|r| ((r.class.clone(), r.tenant.clone()), r))
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
