//! SLO-aware placement and admission.
//!
//! Given a request's latency budget and a snapshot of every worker's load,
//! [`decide`] predicts TTFT and TPOT for each possible placement —
//! disaggregated (a prefill worker, then a decode worker) or local (the
//! decode worker prefills the prompt itself: conditional disaggregation) —
//! and admits the request on the placement with the most slack, or rejects it
//! early when none can meet the budget (Mooncake-style early rejection). Like
//! every policy here it is pure: no clock, no I/O.

mod fit;
mod predict;

pub use fit::{Ewma, TpotFit};
pub use predict::{decide, Decision, Placement, Prediction};

use serde::Deserialize;

/// A request's latency budget; `None` means "no target".
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Budget {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
}

/// What the placement decision knows about the request.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SloRequest {
    pub prompt_tokens: u64,
    /// Expected output length (max_tokens), used to spread the cost of a
    /// local prefill over the decode steps it stalls.
    pub output_tokens: u64,
    pub budget: Budget,
}

/// A prefill worker's load as the gateway (and its peers) see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrefillLoad<'a> {
    pub url: &'a str,
    pub available: bool,
    /// Prompt tokens admitted to this worker and not yet prefilled.
    pub queued_tokens: u64,
    /// Measured prefill throughput.
    pub tokens_per_s: f64,
}

/// A decode worker's load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeLoad<'a> {
    pub url: &'a str,
    pub available: bool,
    /// Sequences decoding now.
    pub active: u64,
    /// Sequences in prefill elsewhere that will join this worker's batch:
    /// they count towards the batch a new request will meet (predicting load
    /// at arrival time rather than now avoids admission oscillation).
    pub pending: u64,
    /// TPOT as a function of batch size, fitted online.
    pub tpot: TpotFit,
    /// Throughput of this worker prefilling by itself (aggregated path).
    pub local_prefill_tokens_per_s: f64,
    /// Prompt tokens queued for local prefill on this worker.
    pub local_queued_tokens: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AdmissionMode {
    /// Never reject: always place on the best predicted placement.
    Off,
    /// Reject early (HTTP 429 + Retry-After) when no placement meets the budget.
    #[default]
    Reject,
    /// Hold the request until a placement meets the budget or its TTFT
    /// deadline passes (then reject).
    Queue,
}

/// Tunables of the SLO-aware policy.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SloPolicyConfig {
    pub admission: AdmissionMode,
    /// Consider prefilling on the decode worker (conditional disaggregation).
    pub conditional_disaggregation: bool,
    /// Longest prompt the local path is considered for.
    pub local_prefill_max_tokens: u64,
    /// KV hand-off cost added to disaggregated TTFT.
    pub handoff_ms: f64,
    /// Admit when predicted slack is at least this (negative tolerates
    /// slightly late predictions; predictions are estimates).
    pub min_slack: f64,
    /// Lower bound of a Retry-After hint.
    pub min_retry_after_ms: f64,
}

impl Default for SloPolicyConfig {
    fn default() -> Self {
        Self {
            admission: AdmissionMode::Reject,
            conditional_disaggregation: true,
            local_prefill_max_tokens: 512,
            handoff_ms: 2.0,
            min_slack: -0.05,
            min_retry_after_ms: 100.0,
        }
    }
}
