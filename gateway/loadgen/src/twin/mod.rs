//! The calibrated twin (`baton-bench twin`): a discrete-event simulation, in virtual time, of a fleet of engines
//! behind the gateway, driven by a measured step-time profile.
//!
//! - **Engines** ([`engine`]) are the native engine's scheduler loop — decode first, then chunked prefill in FIFO
//!   order under a fixed token budget, or (SLO scheduling) in `policies::step::prefill_order_key` order under
//!   `policies::step::prefill_budget` — with the step's duration from the profile's `StepModel`.
//! - **The gateway** ([`fleet`]) routes with the real policy code of `baton-policies`: `least_load` on the same
//!   `WorkerView` snapshot (requests in flight per worker) for colocated serving, each pool's policy for
//!   disaggregated serving, and `baton_policies::slo` placement and admission for the SLO setup ([`placement`]);
//!   `pipeline:FILE` routes the colocated engines with a plugin pipeline from a gateway config instead (its
//!   admission, then its pick, through `RoutingPolicy`; fallbacks counted).
//! - **Workloads, arrivals and judging** are the load generator's own: the same `Arrivals` and workload `Sampler`
//!   (so a seed draws the very requests `baton-bench sweep` sends), records judged by `baton-slo`'s `Verdict`
//!   through [`crate::slo::Slo`], DistServe goodput by [`crate::sweep`], reports in the [`crate::report::Report`]
//!   shape (so `baton-bench plot` draws twin runs like real ones).
//!
//! No clock, no threads, no I/O in the simulation: the same inputs give the same records, whatever the machine's
//! load. One event heap ordered by (virtual time, insertion number).

pub mod engine;
pub mod fleet;
pub mod placement;
pub mod profile;
pub mod replay;
pub mod run;

use serde::{Deserialize, Serialize};

pub use fleet::{simulate, FleetConfig, PluginCounts, PluginSetup, Setup, SimOutput, TwinRequest};
pub use profile::{Handoff, Profile};
pub use run::{sweep, Cell, SweepPlan, Tier, Tokens, WorkloadRun};

/// What `baton-bench twin --out` writes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TwinReport {
    pub profile: Profile,
    pub handoff: Handoff,
    /// Step tokens: colocated, prefill, decode, SLO-scheduled engines; max sequences; client overhead (ms).
    pub colocated_tokens: u64,
    pub prefill_tokens: u64,
    pub decode_tokens: u64,
    pub slo_tokens: u64,
    pub max_num_seqs: usize,
    pub overhead_ms: f64,
    pub tokens: Tokens,
    pub duration_s: f64,
    pub cells: Vec<Cell>,
}
