//! Test support: a real `redis-server` child per test, killed on drop, and
//! record builders.
#![allow(dead_code)] // each test binary uses a different subset

use std::time::Duration;

mod port;
mod redis_server;
pub use redis_server::RedisServer;

use baton_slo::{AdmissionRecord, OutcomeRecord, Phase, ReplicaState, WorkerLoad};

pub const TTL: Duration = Duration::from_secs(30);

/// Polls `cond` every 20 ms until it holds (true) or `limit` has passed (false): for a real Redis (or Sentinel)
/// there is no event to await. On a paused clock the polls cost no real time.
pub async fn until_within<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
/// A fixed wall-clock base for goodput buckets.
pub const T0: u64 = 1_700_000_000_000;

pub fn admission(id: &str, replica: &str) -> AdmissionRecord {
    AdmissionRecord {
        request_id: id.into(),
        replica_id: replica.into(),
        class: "chatbot".into(),
        tenant: "acme".into(),
        admitted_at_ms: T0,
        ttft_deadline_ms: Some(T0 + 250),
        tpot_budget_ms: Some(100.0),
        phase: Phase::Queued,
        prefill_worker: Some("http://p0:8000".into()),
        decode_worker: None,
        prompt_tokens: 1234,
        ttl: TTL,
    }
}

pub fn outcome(id: &str, class: &str, tenant: &str, at_ms: u64, good: bool) -> OutcomeRecord {
    OutcomeRecord {
        request_id: id.into(),
        class: class.into(),
        tenant: tenant.into(),
        finished_at_ms: at_ms,
        ttft_ms: Some(120.0),
        tpot_ms: Some(if good { 40.0 } else { 140.0 }),
        ttft_met: true,
        tpot_met: good,
        rejected: false,
        failed: false,
    }
}

pub fn replica_state(id: &str, queued: u64) -> ReplicaState {
    ReplicaState {
        replica_id: id.into(),
        updated_ms: T0,
        workers: vec![
            WorkerLoad {
                url: "http://p0:8000".into(),
                queued_prefill_tokens: queued,
                active_prefills: 2,
                prefill_tokens_per_s: Some(12_345.5),
                ttft_ms_ewma: Some(87.25),
                ..WorkerLoad::default()
            },
            WorkerLoad {
                url: "http://d0:8000".into(),
                active_decodes: 17,
                pending_decodes: 1,
                tpot_ms_ewma: Some(31.5),
                tpot_fit: Some((20.0, 0.75)),
                ..WorkerLoad::default()
            },
        ],
    }
}
