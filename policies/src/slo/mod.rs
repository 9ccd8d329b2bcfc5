//! SLO-aware placement and admission: the goodput rule (issue #16).
//!
//! # How a caller uses it (the gateway and the virtual-time twin call exactly this)
//!
//! 1. **One view per engine.** For every engine the request could touch, fill an [`EngineView`]: the engine's
//!    latest report ([`EngineReport`], from its `x-baton-load` response header or `GET /load`), the caller's own
//!    counts now and when that report was read ([`CallerCounts`]: sequences it sent there to decode, sequences
//!    headed there whose decode leg is not sent yet, prompt tokens it sent there to prefill), the caller's prompts
//!    in flight there with their deadlines ([`WaitingPrompt`]), the tightest TPOT budget among the caller's
//!    sequences decoding there, and — for engines without reports (vLLM, SGLang) — their `/metrics` load
//!    ([`MetricsLoad`]) and the caller's own step-model estimate (`fallback_step`).
//! 2. **Snapshot.** [`engine_snapshot`]`(&view, now_ms)` turns a view into an [`EngineSnapshot`]: the engine's
//!    reported state plus what the caller changed since the report (its sends not yet reflected, its finished
//!    requests), with its waiting prompts reconciled to the reported backlog. Without a report it falls back to
//!    the caller's counts and estimates. Nothing here is measured from leg durations.
//! 3. **Decide.** [`decide`]`(&cfg, &request, &prefill_snapshots, &decode_snapshots, now_ms)` returns a
//!    [`Decision`]: [`Placement::Local`] (colocated: the decode engine prefills the prompt itself, in TPOT-safe
//!    chunks) or [`Placement::Disaggregated`] (prefill on one engine, decode on another), with the predicted
//!    TTFT/TPOT, or an early rejection with a Retry-After hint. An engine present in both lists (same `url`) is
//!    never paired with itself. In aggregated mode pass no prefill snapshots: every candidate is colocated.
//!
//! All times (`now_ms`, [`SloRequest::arrival_ms`], prompt deadlines) are milliseconds on any one clock the caller
//! keeps; the policy never reads a clock.
//!
//! # The rule
//!
//! For each candidate the policy predicts, from the step model ([`crate::step`]):
//! - **TTFT** = time already spent + the prefill queue ahead of the prompt on its prefill engine (earliest
//!   deadline first on engines that report, FIFO otherwise) + its own prefill, at the rate that engine can prefill
//!   in steps its decoding batch tolerates ([`prefill_budget`] tokens per step ÷ the step's time) + for a
//!   disaggregated placement the KV hand-off and the decode engine's first step.
//! - **TPOT** = the decode engine's step time with its batch plus this request, plus the prefill work it runs
//!   meanwhile spread over the output — at least the engine's reported recent decoding step time
//!   ([`EngineReport::decode_step_ms`], which carries the prefill of the prompts that keep arriving) plus what this
//!   request adds (on engines that report, capped at the step limit their TPOT-safe chunks keep).
//!
//! A placement is **admissible** when the request is predicted to meet its budget (slack ≥ `min_slack`), *and*
//! nothing already on the engines it touches is pushed past its own budget: the touched engines' decoding
//! batches keep their tightest TPOT, and every waiting prompt that was going to meet its deadline still does
//! with this prompt inserted into the queue. Among admissible placements the cheapest wins: GPU time the
//! placement adds (prefill, decode steps, hand-off) plus `harm_weight` × the latency it adds to others (TPOT
//! increase × sequences decoding there, prefill delay × prompts queued behind it) plus `wait_weight` × the
//! request's own predicted wait for its first token (so prompts spread away from engines whose prefill is backed
//! up: on an engine whose TPOT is already capped a newcomer last in the EDF queue harms no one, yet the queue
//! drains slowly); colocation on ties. Only when
//! no placement is admissible is the request rejected early (admission `reject`) — or placed on the one with the
//! most slack (admission `off`). A request with no targets is never rejected.

mod fit;
mod predict;
mod snapshot;

pub use fit::{Ewma, TpotFit};
pub use predict::{decide, Decision, Placement, Prediction};
pub use snapshot::{engine_snapshot, CallerCounts, EngineSnapshot, EngineView, MetricsLoad};

pub use crate::step::{
    prefill_budget, EngineReport, StepLimits, StepModel, StepShape, WaitingPrompt,
};

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
    /// Expected output length (max_tokens): the decode work it adds and what prefill stalls are spread over.
    pub output_tokens: u64,
    pub budget: Budget,
    /// When the request arrived (its TTFT is counted from here), on the caller's clock.
    pub arrival_ms: f64,
}

impl SloRequest {
    /// When its first token is due, if it has a TTFT budget.
    pub fn deadline_ms(&self) -> Option<f64> {
        self.budget.ttft_ms.map(|t| self.arrival_ms + t)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AdmissionMode {
    /// Never reject: place on the cheapest admissible placement, else the one with the most slack.
    Off,
    /// Reject early (HTTP 429 + Retry-After) when no placement is admissible.
    #[default]
    Reject,
    /// Hold the request until a placement is admissible or its TTFT deadline passes (then reject).
    Queue,
}

/// Tunables of the SLO-aware policy.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SloPolicyConfig {
    pub admission: AdmissionMode,
    /// Consider prefilling on the decode worker (colocation) when a prefill pool exists.
    pub conditional_disaggregation: bool,
    /// Longest prompt colocated on an engine that does not report its state (it prefills in whole steps that
    /// stall its decoding batch). Engines that report chunk prefills TPOT-safely and take any length.
    pub local_prefill_max_tokens: u64,
    /// KV hand-off cost added to disaggregated TTFT (and counted as GPU time).
    pub handoff_ms: f64,
    /// Admit when predicted slack is at least this (negative tolerates slightly late predictions); the same
    /// tolerance applies to the budgets of requests already running.
    pub min_slack: f64,
    /// Lower bound of a Retry-After hint.
    pub min_retry_after_ms: f64,
    /// Weight of the latency a placement adds to other requests against the GPU time it costs.
    pub harm_weight: f64,
    /// An engine whose KV cache is fuller than this takes no new sequence (it would preempt).
    pub max_kv_usage: f64,
    /// Weight of the request's own predicted wait for its first token (queue ahead + its prefill, ms) in the
    /// cost: spreads prompts away from engines whose prefill is backed up (their queue is slow to drain even when
    /// every prompt in it still meets its deadline), as a least-loaded rule would.
    pub wait_weight: f64,
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
            harm_weight: 1.0,
            max_kv_usage: 0.97,
            wait_weight: 1.0,
        }
    }
}
