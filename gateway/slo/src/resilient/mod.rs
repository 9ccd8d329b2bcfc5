//! The store the gateway uses: a shared backend behind millisecond timeouts
//! and a breaker, with a local mirror that keeps answering while the backend
//! is down, and a background task that reconnects and resyncs.

pub(crate) mod log_limit;
mod stats;

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::task::JoinHandle;

use self::log_limit::LogLimit;
pub use self::stats::{ResilientStats, ResilientStatsSnapshot};
use crate::{
    AdmissionRecord, GoodputConfig, GoodputRow, MemoryStore, OutcomeRecord, Phase, ReplicaState,
    SloStore, SloStoreError, StoreFuture,
};

/// Time bounds and sizes of a [`ResilientStore`].
#[derive(Clone, Debug)]
pub struct ResilientConfig {
    /// Bound on request-path calls: admission, phase, outcome, `admission()`
    /// (default 5 ms).
    pub request_timeout: Duration,
    /// Bound on periodic calls: publish, `cluster_state`, `goodput`
    /// (default 50 ms).
    pub control_timeout: Duration,
    /// Bound on each call of a resync (probe, republish, flush; default 1 s).
    pub resync_timeout: Duration,
    /// How often the resync task probes a down backend or flushes a backlog
    /// (default 250 ms).
    pub probe_interval: Duration,
    /// Consecutive failures that open the breaker (default 3). While open,
    /// no call touches the backend until the resync task sees it back.
    pub failure_threshold: u32,
    /// Outcomes kept for the backend while it is down (default 10 000;
    /// the oldest are dropped when full).
    pub backlog_capacity: usize,
    /// Outcomes per flush round trip (default 500).
    pub flush_batch: usize,
    /// At most one failure log line per interval (default 10 s).
    pub log_interval: Duration,
    /// Bucketing of the local mirror's goodput counters.
    pub goodput: GoodputConfig,
}

impl Default for ResilientConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_millis(5),
            control_timeout: Duration::from_millis(50),
            resync_timeout: Duration::from_secs(1),
            probe_interval: Duration::from_millis(250),
            failure_threshold: 3,
            backlog_capacity: 10_000,
            flush_batch: 500,
            log_interval: Duration::from_secs(10),
            goodput: GoodputConfig::default(),
        }
    }
}

/// Wraps a shared backend `S` (e.g. [`RedisStore`](crate::RedisStore)).
///
/// Every write goes to a local [`MemoryStore`] mirror and then to the
/// backend, bounded by a timeout. Calls never fail and never wait longer than
/// their timeout: on a backend error or timeout they are answered from the
/// mirror (reads: local data only) and failed outcomes are queued in a
/// bounded backlog. After `failure_threshold` consecutive failures the
/// breaker opens and calls skip the backend entirely until the task started
/// by [`spawn_resync`](Self::spawn_resync) sees it back, republishes this
/// replica's live state and flushes the backlog. Replayed outcomes count once
/// (the backend dedups by request id).
///
/// Clones share everything.
pub struct ResilientStore<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for ResilientStore<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<S> {
    backend: S,
    mirror: MemoryStore,
    config: ResilientConfig,
    stats: Arc<ResilientStats>,
    backlog: Mutex<VecDeque<OutcomeRecord>>,
    consecutive_failures: AtomicU32,
    log: LogLimit,
}

impl<S: fmt::Debug> fmt::Debug for ResilientStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResilientStore")
            .field("backend", &self.shared.backend)
            .field("stats", &self.shared.stats.snapshot())
            .finish_non_exhaustive()
    }
}

impl<S: SloStore> ResilientStore<S> {
    pub fn new(backend: S, config: ResilientConfig) -> Self {
        let shared = Shared {
            backend,
            mirror: MemoryStore::new(config.goodput.clone()),
            stats: Arc::default(),
            backlog: Mutex::default(),
            consecutive_failures: AtomicU32::new(0),
            log: LogLimit::new(config.log_interval),
            config,
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Counters for the gateway's metrics.
    pub fn stats(&self) -> Arc<ResilientStats> {
        self.shared.stats.clone()
    }

    pub fn backend(&self) -> &S {
        &self.shared.backend
    }

    /// The local mirror (this replica's data only).
    pub fn mirror(&self) -> &MemoryStore {
        &self.shared.mirror
    }

    /// Starts the task that probes a down backend every `probe_interval` and,
    /// once it answers, republishes and flushes (see [`resync_once`]). The
    /// task ends when the last clone of the store is dropped.
    ///
    /// [`resync_once`]: Self::resync_once
    pub fn spawn_resync(&self) -> JoinHandle<()> {
        let weak: Weak<Shared<S>> = Arc::downgrade(&self.shared);
        let period = self.shared.config.probe_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                let store = ResilientStore { shared };
                if let Err(e) = store.resync_once().await {
                    store.log_failure("resync", &e);
                }
            }
        })
    }

    /// One resync step, if one is needed (breaker open or backlog not
    /// empty): probe the backend; if it was down, republish this replica's
    /// live admissions and replica state from the mirror; flush the backlog;
    /// close the breaker. Returns whether anything was attempted.
    pub async fn resync_once(&self) -> Result<bool, SloStoreError> {
        let sh = &*self.shared;
        let was_healthy = sh.stats.healthy.load(Relaxed);
        if was_healthy && self.backlog_len() == 0 {
            return Ok(false);
        }
        let bound = sh.config.resync_timeout;
        bounded(bound, sh.backend.ping()).await?;
        let mut republished = 0;
        if !was_healthy {
            for (mut rec, remaining) in sh.mirror.live_admissions() {
                rec.ttl = remaining;
                bounded(bound, sh.backend.record_admission(&rec)).await?;
                republished += 1;
            }
            for (state, remaining) in sh.mirror.live_replica_states() {
                bounded(bound, sh.backend.publish_replica_state(&state, remaining)).await?;
                republished += 1;
            }
        }
        let flushed = self.flush(bound).await?;
        if !was_healthy {
            sh.consecutive_failures.store(0, Relaxed);
            sh.stats.healthy.store(true, Relaxed);
            ResilientStats::bump(&sh.stats.resyncs);
            tracing::info!(
                republished,
                flushed,
                "SLO store backend is back: state republished, backlog flushed"
            );
        }
        Ok(true)
    }

    /// Writes the backlog to the backend in batches; on failure the batch
    /// goes back to the front (the backend dedups replays).
    async fn flush(&self, bound: Duration) -> Result<u64, SloStoreError> {
        let sh = &*self.shared;
        let mut flushed = 0;
        loop {
            let batch: Vec<OutcomeRecord> = {
                let mut q = self.backlog();
                let n = q.len().min(sh.config.flush_batch.max(1));
                q.drain(..n).collect()
            };
            if batch.is_empty() {
                return Ok(flushed);
            }
            if let Err(e) = bounded(bound, sh.backend.record_outcomes(&batch)).await {
                let mut q = self.backlog();
                for o in batch.into_iter().rev() {
                    q.push_front(o);
                }
                self.trim(&mut q);
                return Err(e);
            }
            let n = batch.len() as u64;
            flushed += n;
            sh.stats.flushed.fetch_add(n, Relaxed);
            let q = self.backlog();
            sh.stats.backlog.store(q.len() as u64, Relaxed);
        }
    }

    fn backlog(&self) -> std::sync::MutexGuard<'_, VecDeque<OutcomeRecord>> {
        self.shared
            .backlog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn backlog_len(&self) -> usize {
        self.backlog().len()
    }

    fn enqueue(&self, o: &OutcomeRecord) {
        let mut q = self.backlog();
        q.push_back(o.clone());
        self.trim(&mut q);
    }

    /// Drops the oldest outcomes beyond the capacity; updates the gauge.
    fn trim(&self, q: &mut VecDeque<OutcomeRecord>) {
        let sh = &*self.shared;
        let cap = sh.config.backlog_capacity;
        if q.len() > cap {
            let excess = q.len() - cap;
            q.drain(..excess);
            sh.stats.backlog_dropped.fetch_add(excess as u64, Relaxed);
        }
        sh.stats.backlog.store(q.len() as u64, Relaxed);
    }

    /// Calls the backend if the breaker is closed, bounded by `bound`.
    /// `None` means: answer from the mirror (counted as a fallback).
    async fn call<'a, T>(
        &'a self,
        op: &'static str,
        bound: Duration,
        f: impl FnOnce(&'a S) -> StoreFuture<'a, T>,
    ) -> Option<T> {
        let sh = &*self.shared;
        if !sh.stats.healthy.load(Relaxed) {
            ResilientStats::bump(&sh.stats.fallbacks);
            return None;
        }
        match bounded(bound, f(&sh.backend)).await {
            Ok(v) => {
                sh.consecutive_failures.store(0, Relaxed);
                Some(v)
            }
            Err(e) => {
                let counter = match e {
                    SloStoreError::Timeout => &sh.stats.timeouts,
                    _ => &sh.stats.errors,
                };
                ResilientStats::bump(counter);
                ResilientStats::bump(&sh.stats.fallbacks);
                self.log_failure(op, &e);
                let n = sh.consecutive_failures.fetch_add(1, Relaxed) + 1;
                if n >= sh.config.failure_threshold && sh.stats.healthy.swap(false, Relaxed) {
                    tracing::warn!(
                        error = %e,
                        failures = n,
                        "SLO store backend down: serving local state, buffering outcomes"
                    );
                }
                None
            }
        }
    }

    fn log_failure(&self, op: &'static str, e: &SloStoreError) {
        if let Some(suppressed) = self.shared.log.permit() {
            tracing::warn!(op, error = %e, suppressed, "SLO store call failed");
        }
    }

    async fn admit(&self, a: &AdmissionRecord) {
        let t = self.shared.config.request_timeout;
        let _ = self.shared.mirror.record_admission(a).await;
        self.call("admission", t, |b| b.record_admission(a)).await;
    }

    async fn phase(&self, id: &str, phase: Phase, ttl: Duration) {
        let t = self.shared.config.request_timeout;
        let _ = self.shared.mirror.record_phase(id, phase, ttl).await;
        self.call("phase", t, |b| b.record_phase(id, phase, ttl))
            .await;
    }

    async fn outcome(&self, o: &OutcomeRecord) {
        let t = self.shared.config.request_timeout;
        let _ = self.shared.mirror.record_outcome(o).await;
        if self
            .call("outcome", t, |b| b.record_outcome(o))
            .await
            .is_none()
        {
            self.enqueue(o);
        }
    }

    async fn publish(&self, s: &ReplicaState, ttl: Duration) {
        let t = self.shared.config.control_timeout;
        let _ = self.shared.mirror.publish_replica_state(s, ttl).await;
        self.call("publish", t, |b| b.publish_replica_state(s, ttl))
            .await;
    }

    async fn replicas(&self) -> Result<Vec<ReplicaState>, SloStoreError> {
        let t = self.shared.config.control_timeout;
        match self.call("cluster_state", t, |b| b.cluster_state()).await {
            Some(v) => Ok(v),
            None => self.shared.mirror.cluster_state().await,
        }
    }

    async fn sum(&self, window: Duration, now_ms: u64) -> Result<Vec<GoodputRow>, SloStoreError> {
        let t = self.shared.config.control_timeout;
        match self.call("goodput", t, |b| b.goodput(window, now_ms)).await {
            Some(v) => Ok(v),
            None => self.shared.mirror.goodput(window, now_ms).await,
        }
    }

    async fn get(&self, id: &str) -> Result<Option<AdmissionRecord>, SloStoreError> {
        let t = self.shared.config.request_timeout;
        match self.call("admission_get", t, |b| b.admission(id)).await {
            Some(v) => Ok(v),
            None => self.shared.mirror.admission(id).await,
        }
    }
}

async fn bounded<T>(
    bound: Duration,
    f: impl Future<Output = Result<T, SloStoreError>>,
) -> Result<T, SloStoreError> {
    tokio::time::timeout(bound, f).await?
}

impl<S: SloStore> SloStore for ResilientStore<S> {
    fn record_admission(&self, a: &AdmissionRecord) -> StoreFuture<'_, ()> {
        let a = a.clone();
        Box::pin(async move {
            self.admit(&a).await;
            Ok(())
        })
    }

    fn record_phase(&self, request_id: &str, phase: Phase, ttl: Duration) -> StoreFuture<'_, ()> {
        let id = request_id.to_owned();
        Box::pin(async move {
            self.phase(&id, phase, ttl).await;
            Ok(())
        })
    }

    fn record_outcome(&self, o: &OutcomeRecord) -> StoreFuture<'_, ()> {
        let o = o.clone();
        Box::pin(async move {
            self.outcome(&o).await;
            Ok(())
        })
    }

    fn publish_replica_state(&self, s: &ReplicaState, ttl: Duration) -> StoreFuture<'_, ()> {
        let s = s.clone();
        Box::pin(async move {
            self.publish(&s, ttl).await;
            Ok(())
        })
    }

    fn cluster_state(&self) -> StoreFuture<'_, Vec<ReplicaState>> {
        Box::pin(self.replicas())
    }

    fn goodput(&self, window: Duration, now_ms: u64) -> StoreFuture<'_, Vec<GoodputRow>> {
        Box::pin(self.sum(window, now_ms))
    }

    fn admission(&self, request_id: &str) -> StoreFuture<'_, Option<AdmissionRecord>> {
        let id = request_id.to_owned();
        Box::pin(async move { self.get(&id).await })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(bounded(
            self.shared.config.request_timeout,
            self.shared.backend.ping(),
        ))
    }
}
