use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::{AdmissionRecord, GoodputRow, OutcomeRecord, Phase, ReplicaState, SloStoreError};

/// The boxed future every store method returns (object safe, `Send`).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, SloStoreError>> + Send + 'a>>;

/// Per-request SLO records, goodput counters and replica state, possibly
/// shared by several gateway replicas.
///
/// Calls on the request path (`record_admission`, `record_phase`,
/// `record_outcome`) are one round trip each; never call the store per token.
pub trait SloStore: Send + Sync + std::fmt::Debug + 'static {
    /// Called once at admission, after routing decided the placement: stores
    /// the request's deadline, budgets and phase in one round trip (Redis: one
    /// Lua script). The record expires after `a.ttl` unless an outcome
    /// deletes it first.
    fn record_admission(&self, a: &AdmissionRecord) -> StoreFuture<'_, ()>;

    /// Called on a phase change (e.g. prefill → decode); optional. Refreshes
    /// the record's TTL to `ttl`. A missing (expired or finished) record is
    /// not an error and is not recreated.
    fn record_phase(&self, request_id: &str, phase: Phase, ttl: Duration) -> StoreFuture<'_, ()>;

    /// Called once at completion (or rejection/failure): counts the outcome
    /// in the goodput bucket of `o.finished_at_ms` (per class and tenant) and
    /// deletes the request record, in one round trip. Idempotent per
    /// `request_id` for the store's dedup TTL: a replayed outcome counts once.
    fn record_outcome(&self, o: &OutcomeRecord) -> StoreFuture<'_, ()>;

    /// Several outcomes at once (a backlog flush after an outage); Redis
    /// sends them in one pipeline. Same semantics as `record_outcome` each.
    fn record_outcomes<'a>(&'a self, batch: &'a [OutcomeRecord]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            for o in batch {
                self.record_outcome(o).await?;
            }
            Ok(())
        })
    }

    /// Called periodically (e.g. every 100 ms) by each replica: publishes its
    /// view of worker load as a lease that expires after `ttl`, so a dead
    /// replica's state disappears.
    fn publish_replica_state(&self, s: &ReplicaState, ttl: Duration) -> StoreFuture<'_, ()>;

    /// All live replicas' states, sorted by replica id (the caller
    /// aggregates).
    fn cluster_state(&self) -> StoreFuture<'_, Vec<ReplicaState>>;

    /// Goodput counters over the buckets covering `[now_ms - window, now_ms]`
    /// (clamped to the store's retention), summed across replicas, one row per
    /// (class, tenant), sorted.
    fn goodput(&self, window: Duration, now_ms: u64) -> StoreFuture<'_, Vec<GoodputRow>>;

    /// A request record, if still present (tests, debugging).
    fn admission(&self, request_id: &str) -> StoreFuture<'_, Option<AdmissionRecord>>;

    /// Cheap health probe (Redis: `PING`, and the scripts are loaded), used
    /// by [`ResilientStore`](crate::ResilientStore) to detect recovery.
    fn ping(&self) -> StoreFuture<'_, ()>;
}

macro_rules! forward_store {
    ($($ty:ty),*) => {$(
        impl<S: SloStore + ?Sized> SloStore for $ty {
            fn record_admission(&self, a: &AdmissionRecord) -> StoreFuture<'_, ()> {
                (**self).record_admission(a)
            }
            fn record_phase(&self, request_id: &str, phase: Phase, ttl: Duration) -> StoreFuture<'_, ()> {
                (**self).record_phase(request_id, phase, ttl)
            }
            fn record_outcome(&self, o: &OutcomeRecord) -> StoreFuture<'_, ()> {
                (**self).record_outcome(o)
            }
            fn record_outcomes<'a>(&'a self, batch: &'a [OutcomeRecord]) -> StoreFuture<'a, ()> {
                (**self).record_outcomes(batch)
            }
            fn publish_replica_state(&self, s: &ReplicaState, ttl: Duration) -> StoreFuture<'_, ()> {
                (**self).publish_replica_state(s, ttl)
            }
            fn cluster_state(&self) -> StoreFuture<'_, Vec<ReplicaState>> {
                (**self).cluster_state()
            }
            fn goodput(&self, window: Duration, now_ms: u64) -> StoreFuture<'_, Vec<GoodputRow>> {
                (**self).goodput(window, now_ms)
            }
            fn admission(&self, request_id: &str) -> StoreFuture<'_, Option<AdmissionRecord>> {
                (**self).admission(request_id)
            }
            fn ping(&self) -> StoreFuture<'_, ()> {
                (**self).ping()
            }
        }
    )*};
}

forward_store!(Arc<S>, Box<S>);
