//! The SLO setup's placement: the gateway's pure policy (`baton_policies::slo`), called the way the gateway calls
//! it — one `EngineView` per engine (its `EngineReport`, as the `x-baton-load` header carries it, plus the gateway's
//! own counts and prompts there), `engine_snapshot` for each, then `decide`.
//!
//! The twin reads each engine's report at the moment of the decision (the gateway reads the one that came with the
//! latest response from that engine): the gateway's counts at the report and now are therefore the same, except
//! for decode legs still on their way (prefilled elsewhere, not yet sent), which it adds as `pending_decodes`.

use baton_policies::slo::{
    decide, engine_snapshot, CallerCounts, Decision, EngineReport, EngineView, Placement,
    Prediction, SloPolicyConfig, SloRequest, StepLimits, StepModel, WaitingPrompt,
};

/// Where the policy put a request (indices into the fleet's engines).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Placed {
    Local(usize, Prediction),
    Disaggregated {
        prefill: usize,
        decode: usize,
        prediction: Prediction,
    },
    Rejected,
}

/// What the gateway knows of one engine at a decision.
#[derive(Clone, Debug)]
pub struct EngineState {
    pub report: EngineReport,
    /// Prompts waiting there (and mid-prefill), with their deadlines.
    pub prompts: Vec<WaitingPrompt>,
    /// Decode legs headed there, not sent yet.
    pub pending_decodes: u64,
    /// Tightest TPOT budget of those.
    pub pending_tpot_ms: Option<f64>,
}

/// One decision at `now_ms`; every engine is in both pools (`urls[i]` names engine `i`).
pub fn place(
    cfg: &SloPolicyConfig,
    req: &SloRequest,
    engines: &[EngineState],
    urls: &[String],
    model: &StepModel,
    limits: &StepLimits,
    now_ms: f64,
) -> Placed {
    let views: Vec<EngineView<'_>> = engines
        .iter()
        .zip(urls)
        .map(|(e, url)| {
            let counts = CallerCounts {
                decoding: 0,
                pending_decodes: e.pending_decodes,
                prefill_tokens: 0,
            };
            EngineView {
                url,
                available: true,
                report: Some(&e.report),
                at_report: CallerCounts {
                    pending_decodes: 0,
                    ..counts
                },
                now: counts,
                prompts: &e.prompts,
                tightest_tpot_ms: e.pending_tpot_ms,
                metrics: None,
                fallback_step: *model,
                limits: *limits,
            }
        })
        .collect();
    let snaps: Vec<_> = views.iter().map(|v| engine_snapshot(v, now_ms)).collect();
    match decide(cfg, req, &snaps, &snaps, now_ms) {
        Decision::Admit {
            placement,
            prediction,
        } => match placement {
            Placement::Local { decode } => Placed::Local(decode, prediction),
            Placement::Disaggregated { prefill, decode } => Placed::Disaggregated {
                prefill,
                decode,
                prediction,
            },
        },
        Decision::Reject { .. } => Placed::Rejected,
    }
}
