use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Counters of a [`ResilientStore`](crate::ResilientStore): plain atomics the
/// gateway reads for its metrics.
#[derive(Debug)]
pub struct ResilientStats {
    /// Backend calls that returned an error.
    pub errors: AtomicU64,
    /// Backend calls cut off by the timeout.
    pub timeouts: AtomicU64,
    /// Calls answered from (or only written to) the local mirror.
    pub fallbacks: AtomicU64,
    /// Outcomes waiting to be written to the backend (a gauge).
    pub backlog: AtomicU64,
    /// Outcomes dropped because the backlog was full (oldest first).
    pub backlog_dropped: AtomicU64,
    /// Outcomes written from the backlog.
    pub flushed: AtomicU64,
    /// Recoveries: backend back, state republished, backlog flushed.
    pub resyncs: AtomicU64,
    /// Whether calls currently go to the backend (the breaker is closed).
    pub healthy: AtomicBool,
}

impl Default for ResilientStats {
    fn default() -> Self {
        Self {
            errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            backlog: AtomicU64::new(0),
            backlog_dropped: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
        }
    }
}

/// A copy of [`ResilientStats`] at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResilientStatsSnapshot {
    pub errors: u64,
    pub timeouts: u64,
    pub fallbacks: u64,
    pub backlog: u64,
    pub backlog_dropped: u64,
    pub flushed: u64,
    pub resyncs: u64,
    pub healthy: bool,
}

impl ResilientStats {
    pub fn snapshot(&self) -> ResilientStatsSnapshot {
        ResilientStatsSnapshot {
            errors: self.errors.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            fallbacks: self.fallbacks.load(Relaxed),
            backlog: self.backlog.load(Relaxed),
            backlog_dropped: self.backlog_dropped.load(Relaxed),
            flushed: self.flushed.load(Relaxed),
            resyncs: self.resyncs.load(Relaxed),
            healthy: self.healthy.load(Relaxed),
        }
    }

    pub(super) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}
