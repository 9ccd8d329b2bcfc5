//! A per-worker circuit breaker.
//!
//! Closed → Open after `failure_threshold` consecutive failures of *this*
//! worker; Open → HalfOpen after `open_for`; HalfOpen → Closed after
//! `success_threshold` successes, or back to Open on any failure. Uses tokio's
//! clock so tests drive it with paused time.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::BreakerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// Gauge value: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

#[derive(Debug)]
pub struct Breaker {
    enabled: bool,
    failure_threshold: u32,
    success_threshold: u32,
    open_for: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    failures: u32,
    successes: u32,
    opened_at: Option<Instant>,
}

impl Breaker {
    pub fn new(cfg: &BreakerConfig) -> Self {
        Self {
            enabled: cfg.enabled,
            failure_threshold: cfg.failure_threshold.max(1),
            success_threshold: cfg.success_threshold.max(1),
            open_for: crate::config::secs(cfg.open_secs),
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                failures: 0,
                successes: 0,
                opened_at: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state is a few counters; a panic elsewhere cannot leave it
        // inconsistent, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Current state, moving Open → HalfOpen once the open period is over.
    pub fn state(&self) -> BreakerState {
        let mut g = self.lock();
        if g.state == BreakerState::Open
            && g.opened_at.is_some_and(|t| t.elapsed() >= self.open_for)
        {
            g.state = BreakerState::HalfOpen;
            g.successes = 0;
        }
        g.state
    }

    /// May a request be sent to this worker now?
    pub fn allows(&self) -> bool {
        !self.enabled || self.state() != BreakerState::Open
    }

    pub fn record_success(&self) {
        let mut g = self.lock();
        g.failures = 0;
        if g.state == BreakerState::HalfOpen {
            g.successes += 1;
            if g.successes >= self.success_threshold {
                g.state = BreakerState::Closed;
                g.opened_at = None;
            }
        }
    }

    pub fn record_failure(&self) {
        let mut g = self.lock();
        g.successes = 0;
        g.failures = g.failures.saturating_add(1);
        let trip = match g.state {
            BreakerState::Closed => g.failures >= self.failure_threshold,
            BreakerState::HalfOpen => true,
            BreakerState::Open => false,
        };
        if trip {
            g.state = BreakerState::Open;
            g.opened_at = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(&BreakerConfig {
            enabled: true,
            failure_threshold: 3,
            success_threshold: 2,
            open_secs: 10.0,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_recovers() {
        let b = breaker();
        b.record_failure();
        b.record_failure();
        b.record_success(); // resets the streak
        b.record_failure();
        b.record_failure();
        assert!(b.allows());
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allows());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!b.allows());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.record_success();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.record_success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_failure_reopens() {
        let b = breaker();
        for _ in 0..3 {
            b.record_failure();
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn disabled_breaker_always_allows() {
        let b = Breaker::new(&BreakerConfig {
            enabled: false,
            ..BreakerConfig::default()
        });
        for _ in 0..100 {
            b.record_failure();
        }
        assert!(b.allows());
    }
}
