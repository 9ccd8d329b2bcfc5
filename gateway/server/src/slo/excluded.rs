//! Requests counted apart from attainment, over the same sliding window:
//! those refused as invalid (client errors: the fleet was not asked to
//! serve them) and those whose client left before the end (cancelled: as
//! vLLM's benchmark, a request nobody waited for is no miss).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use baton_slo::{GoodputConfig, SlidingWindow, WindowCounts};
use tokio::time::Instant;

/// Why a request is left out of attainment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Excluded {
    ClientError,
    Cancelled,
}

/// Counts of one (class, tenant).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExcludedCounts {
    pub client_errors: u64,
    pub cancelled: u64,
}

impl WindowCounts for ExcludedCounts {
    fn merge(&mut self, other: &Self) {
        self.client_errors += other.client_errors;
        self.cancelled += other.cancelled;
    }
}

type Key = (String, String);

/// The goodput window's buckets and clock (`baton_slo`'s one window, on
/// tokio's clock so tests can pause it).
#[derive(Debug)]
pub struct ExcludedWindow {
    window: Duration,
    origin: Instant,
    buckets: Mutex<SlidingWindow<ExcludedCounts>>,
}

impl ExcludedWindow {
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

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn record(&self, class: &str, tenant: &str, why: Excluded) {
        let now = self.now_ms();
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        b.add(now, class, tenant, |c| match why {
            Excluded::ClientError => c.client_errors += 1,
            Excluded::Cancelled => c.cancelled += 1,
        });
    }

    /// Counts over the window, per (class, tenant).
    pub fn counts(&self) -> BTreeMap<Key, ExcludedCounts> {
        let now = self.now_ms();
        let b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        b.sum(self.window, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn counts_slide_out_of_the_window() {
        let w = ExcludedWindow::new(Duration::from_secs(10));
        w.record("standard", "acme", Excluded::ClientError);
        w.record("standard", "acme", Excluded::Cancelled);
        w.record("standard", "acme", Excluded::Cancelled);
        let key = ("standard".to_owned(), "acme".to_owned());
        assert_eq!(
            w.counts()[&key],
            ExcludedCounts {
                client_errors: 1,
                cancelled: 2
            }
        );
        tokio::time::advance(Duration::from_secs(12)).await;
        w.record("batch", "x", Excluded::ClientError);
        let c = w.counts();
        assert!(!c.contains_key(&key));
        assert_eq!(c.len(), 1);
    }
}
