//! The embedded store: mutex'd maps, TTLs honoured lazily on tokio's clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::goodput::{GoodputConfig, GoodputWindow};
use crate::{
    AdmissionRecord, GoodputRow, OutcomeRecord, Phase, ReplicaState, SloStore, StoreFuture,
};

/// How often expired entries are swept (reads also skip them).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// In-memory [`SloStore`]. Clones share state, so two clones behave like two
/// replicas on one backend. Expiry uses [`tokio::time::Instant`]: tests can
/// pause and advance time. Writes apply when the method is called (the
/// returned future is already complete).
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    config: Arc<GoodputConfig>,
}

#[derive(Debug, Default)]
struct State {
    requests: HashMap<String, Expiring<AdmissionRecord>>,
    /// Finished request ids (outcome dedup).
    done: HashMap<String, Instant>,
    replicas: HashMap<String, Expiring<ReplicaState>>,
    goodput: GoodputWindow,
    last_sweep: Option<Instant>,
}

#[derive(Debug)]
struct Expiring<T> {
    value: T,
    expires: Instant,
}

impl<T> Expiring<T> {
    fn live(&self, now: Instant) -> bool {
        self.expires > now
    }
}

impl MemoryStore {
    pub fn new(config: GoodputConfig) -> Self {
        let state = State {
            goodput: GoodputWindow::new(config.clone()),
            ..State::default()
        };
        Self {
            state: Arc::new(Mutex::new(state)),
            config: Arc::new(config),
        }
    }

    /// Live request records with their remaining TTL (used to resync a
    /// shared backend after an outage).
    pub fn live_admissions(&self) -> Vec<(AdmissionRecord, Duration)> {
        let now = Instant::now();
        let st = self.lock(now);
        st.requests
            .values()
            .filter(|e| e.live(now))
            .map(|e| (e.value.clone(), e.expires - now))
            .collect()
    }

    /// Live replica states with their remaining lease (used to republish
    /// this replica's state after an outage).
    pub fn live_replica_states(&self) -> Vec<(ReplicaState, Duration)> {
        let now = Instant::now();
        let st = self.lock(now);
        st.replicas
            .values()
            .filter(|e| e.live(now))
            .map(|e| (e.value.clone(), e.expires - now))
            .collect()
    }

    /// Number of entries held, expired ones included until the next sweep
    /// (for tests of pruning).
    pub fn len(&self) -> usize {
        let st = self.lock(Instant::now());
        st.requests.len() + st.done.len() + st.replicas.len() + st.goodput.bucket_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Locks the state (a poisoned lock is recovered: every update leaves the
    /// maps consistent) and sweeps expired entries when due.
    fn lock(&self, now: Instant) -> MutexGuard<'_, State> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st
            .last_sweep
            .is_none_or(|t| now.duration_since(t) >= SWEEP_EVERY)
        {
            st.requests.retain(|_, e| e.live(now));
            st.done.retain(|_, exp| *exp > now);
            st.replicas.retain(|_, e| e.live(now));
            st.last_sweep = Some(now);
        }
        st
    }

    fn admit(&self, a: &AdmissionRecord) {
        let now = Instant::now();
        let rec = Expiring {
            value: a.clone(),
            expires: now + a.ttl,
        };
        self.lock(now).requests.insert(a.request_id.clone(), rec);
    }

    fn phase(&self, request_id: &str, phase: Phase, ttl: Duration) {
        let now = Instant::now();
        let mut st = self.lock(now);
        if let Some(e) = st.requests.get_mut(request_id).filter(|e| e.live(now)) {
            e.value.phase = phase;
            e.expires = now + ttl;
        }
    }

    fn outcome(&self, o: &OutcomeRecord) {
        let now = Instant::now();
        let cfg = &*self.config;
        let mut st = self.lock(now);
        st.requests.remove(&o.request_id);
        if st.done.get(&o.request_id).is_some_and(|exp| *exp > now) {
            return;
        }
        st.done.insert(o.request_id.clone(), now + cfg.dedup_ttl);
        st.goodput
            .record(o.finished_at_ms, &o.class, &o.tenant, &o.verdict());
    }

    fn publish(&self, s: &ReplicaState, ttl: Duration) {
        let now = Instant::now();
        let lease = Expiring {
            value: s.clone(),
            expires: now + ttl,
        };
        self.lock(now).replicas.insert(s.replica_id.clone(), lease);
    }

    fn replicas(&self) -> Vec<ReplicaState> {
        let now = Instant::now();
        let st = self.lock(now);
        let mut out: Vec<_> = st
            .replicas
            .values()
            .filter(|e| e.live(now))
            .map(|e| e.value.clone())
            .collect();
        out.sort_by(|a, b| a.replica_id.cmp(&b.replica_id));
        out
    }

    fn sum(&self, window: Duration, now_ms: u64) -> Vec<GoodputRow> {
        self.lock(Instant::now()).goodput.rows(window, now_ms)
    }

    fn get(&self, request_id: &str) -> Option<AdmissionRecord> {
        let now = Instant::now();
        let st = self.lock(now);
        st.requests
            .get(request_id)
            .filter(|e| e.live(now))
            .map(|e| e.value.clone())
    }
}

impl SloStore for MemoryStore {
    fn record_admission(&self, a: &AdmissionRecord) -> StoreFuture<'_, ()> {
        self.admit(a);
        Box::pin(std::future::ready(Ok(())))
    }

    fn record_phase(&self, request_id: &str, phase: Phase, ttl: Duration) -> StoreFuture<'_, ()> {
        self.phase(request_id, phase, ttl);
        Box::pin(std::future::ready(Ok(())))
    }

    fn record_outcome(&self, o: &OutcomeRecord) -> StoreFuture<'_, ()> {
        self.outcome(o);
        Box::pin(std::future::ready(Ok(())))
    }

    fn publish_replica_state(&self, s: &ReplicaState, ttl: Duration) -> StoreFuture<'_, ()> {
        self.publish(s, ttl);
        Box::pin(std::future::ready(Ok(())))
    }

    fn cluster_state(&self) -> StoreFuture<'_, Vec<ReplicaState>> {
        Box::pin(std::future::ready(Ok(self.replicas())))
    }

    fn goodput(&self, window: Duration, now_ms: u64) -> StoreFuture<'_, Vec<GoodputRow>> {
        Box::pin(std::future::ready(Ok(self.sum(window, now_ms))))
    }

    fn admission(&self, request_id: &str) -> StoreFuture<'_, Option<AdmissionRecord>> {
        Box::pin(std::future::ready(Ok(self.get(request_id))))
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(id: &str, at_ms: u64) -> OutcomeRecord {
        OutcomeRecord {
            request_id: id.into(),
            class: "c".into(),
            tenant: "t".into(),
            finished_at_ms: at_ms,
            ttft_ms: None,
            tpot_ms: None,
            ttft_met: true,
            tpot_met: true,
            rejected: false,
            failed: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn buckets_are_pruned_to_the_retention() {
        let store = MemoryStore::new(GoodputConfig {
            retention: Duration::from_secs(10),
            ..GoodputConfig::default()
        });
        for i in 0..100u64 {
            store.outcome(&outcome(&format!("r{i}"), i * 1000));
        }
        let st = store.lock(Instant::now());
        let held = st.goodput.bucket_count();
        assert!(held <= 12, "{held} buckets");
        assert_eq!(st.goodput.newest_bucket(), Some(99));
    }

    #[tokio::test(start_paused = true)]
    async fn expired_entries_are_swept() {
        let store = MemoryStore::default();
        for i in 0..10 {
            store.outcome(&outcome(&format!("r{i}"), 0));
        }
        assert_eq!(store.len(), 11);
        tokio::time::advance(GoodputConfig::default().dedup_ttl + SWEEP_EVERY).await;
        assert_eq!(store.len(), 1, "only the goodput bucket is left");
    }
}
