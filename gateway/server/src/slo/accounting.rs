//! Live goodput accounting over a sliding window, per (class, tenant).
//!
//! A request counts once, when it ends: good only if it met every target of
//! its class; rejected and failed requests are misses (DistServe's rule).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// How one request ended, against its targets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verdict {
    pub ttft_met: bool,
    pub tpot_met: bool,
    pub rejected: bool,
    pub failed: bool,
}

impl Verdict {
    pub fn good(&self) -> bool {
        self.ttft_met && self.tpot_met && !self.rejected && !self.failed
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub requests: u64,
    pub good: u64,
    pub ttft_met: u64,
    pub tpot_met: u64,
    pub rejected: u64,
    pub failed: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.good += o.good;
        self.ttft_met += o.ttft_met;
        self.tpot_met += o.tpot_met;
        self.rejected += o.rejected;
        self.failed += o.failed;
    }

    fn record(&mut self, v: &Verdict) {
        self.requests += 1;
        self.good += u64::from(v.good());
        self.ttft_met += u64::from(v.ttft_met && !v.rejected && !v.failed);
        self.tpot_met += u64::from(v.tpot_met && !v.rejected && !v.failed);
        self.rejected += u64::from(v.rejected);
        self.failed += u64::from(v.failed);
    }
}

type Key = (String, String);

#[derive(Debug)]
pub struct Accounting {
    window: Duration,
    origin: Instant,
    buckets: Mutex<VecDeque<(u64, BTreeMap<Key, Counts>)>>,
    /// Since start, never pruned (Prometheus counters).
    totals: Mutex<BTreeMap<Key, Counts>>,
}

impl Accounting {
    pub fn new(window: Duration) -> Self {
        Self {
            window: window.max(Duration::from_secs(1)),
            origin: Instant::now(),
            buckets: Mutex::new(VecDeque::new()),
            totals: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    fn second(&self) -> u64 {
        self.origin.elapsed().as_secs()
    }

    pub fn record(&self, class: &str, tenant: &str, v: &Verdict) {
        let now = self.second();
        let key = (class.to_owned(), tenant.to_owned());
        {
            let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            if b.back().is_none_or(|(s, _)| *s != now) {
                b.push_back((now, BTreeMap::new()));
            }
            if let Some((_, m)) = b.back_mut() {
                m.entry(key.clone()).or_default().record(v);
            }
            let horizon = now.saturating_sub(self.window.as_secs());
            while b.front().is_some_and(|(s, _)| *s < horizon) {
                b.pop_front();
            }
        }
        let mut t = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        t.entry(key).or_default().record(v);
    }

    /// Counts over the window, per (class, tenant).
    pub fn window_counts(&self) -> BTreeMap<Key, Counts> {
        let now = self.second();
        let horizon = now.saturating_sub(self.window.as_secs());
        let b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: BTreeMap<Key, Counts> = BTreeMap::new();
        for (s, m) in b.iter() {
            if *s < horizon {
                continue;
            }
            for (k, c) in m {
                out.entry(k.clone()).or_default().add(c);
            }
        }
        out
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
        let rejected = Verdict {
            rejected: true,
            ..Verdict::default()
        };
        a.record("interactive", "acme", &good);
        a.record("interactive", "acme", &rejected);
        let w = a.window_counts();
        let c = w[&("interactive".into(), "acme".into())];
        assert_eq!((c.requests, c.good, c.rejected, c.ttft_met), (2, 1, 1, 1));
        tokio::time::advance(Duration::from_secs(12)).await;
        a.record("batch", "x", &good);
        let w = a.window_counts();
        assert!(!w.contains_key(&("interactive".into(), "acme".into())));
        assert_eq!(a.totals().len(), 2);
    }
}
