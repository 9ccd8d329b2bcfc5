//! The SLO store: per-request SLO budgets, sliding-window goodput counters and
//! the shared cluster state of several gateway replicas.
//!
//! One trait, [`SloStore`], with three implementations:
//! - [`MemoryStore`]: embedded, the default for a single replica (and the
//!   local mirror used by [`ResilientStore`]);
//! - [`RedisStore`]: state shared by replicas; one Lua script per admission
//!   and per outcome, keys under one hash tag, every key with a TTL; a
//!   plain URL, or the primary Redis Sentinel names, followed across
//!   failovers ([`SentinelConfig`]);
//! - [`ResilientStore`]: what the gateway uses in front of a shared backend:
//!   millisecond timeouts, a breaker, a local mirror that keeps answering
//!   while the backend is down, a bounded outcome backlog, and a background
//!   task that reconnects and resyncs.
//!
//! The same contract test suite (`tests/contract.rs`) runs against all three.

mod error;
mod goodput;
mod memory;
mod redis;
mod resilient;
mod store;
mod types;
mod window;

pub use error::SloStoreError;
pub use goodput::{
    within_budget, GoodputConfig, GoodputCounter, GoodputWindow, Measured, Targets, Verdict,
};
pub use memory::MemoryStore;
pub use redis::{
    key_id, FailoverStats, FailoverStatsSnapshot, RedisConfig, RedisStore, SentinelConfig,
};
pub use resilient::{ResilientConfig, ResilientStats, ResilientStatsSnapshot, ResilientStore};
pub use store::{SloStore, StoreFuture};
pub use types::{AdmissionRecord, GoodputRow, OutcomeRecord, Phase, ReplicaState, WorkerLoad};
pub use window::{SlidingWindow, WindowCounts};
