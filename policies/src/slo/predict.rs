//! Predicting TTFT/TPOT per placement, checking what it does to the requests already there, and choosing one
//! (the rule is described in the module docs of [`super`]).

use super::{AdmissionMode, Budget, EngineSnapshot, SloPolicyConfig, SloRequest};
use crate::step::{
    prefill_budget, prefill_order_key, tpot_step_limit_ms, StepLoad, StepShape, WaitingPrompt,
};

/// Where a request runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Prefill on `prefill`, decode on `decode` (indices into the two snapshot lists).
    Disaggregated { prefill: usize, decode: usize },
    /// Colocated: the decode engine prefills the prompt itself.
    Local { decode: usize },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// From the request's arrival.
    pub ttft_ms: f64,
    pub tpot_ms: f64,
    /// min over the budget's targets of `(target − predicted) / target`; ≥ 0 means the prediction meets every
    /// target. `+∞` without targets.
    pub slack: f64,
    /// GPU time the placement adds plus the weighted latency it adds to other requests (ms).
    pub cost_ms: f64,
    /// No request already on the touched engines is pushed past its budget.
    pub harmless: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    Admit {
        placement: Placement,
        prediction: Prediction,
    },
    /// No placement is admissible (or none is available).
    Reject {
        retry_after_ms: f64,
        /// The candidate with the most slack, if any.
        best: Option<Prediction>,
    },
}

fn slack(budget: &Budget, ttft_ms: f64, tpot_ms: f64) -> f64 {
    let mut s = f64::INFINITY;
    if let Some(t) = budget.ttft_ms.filter(|t| *t > 0.0) {
        s = s.min((t - ttft_ms) / t);
    }
    if let Some(t) = budget.tpot_ms.filter(|t| *t > 0.0) {
        s = s.min((t - tpot_ms) / t);
    }
    s
}

/// Within `limit` allowing the policy's tolerance.
fn within(value: f64, limit: f64, cfg: &SloPolicyConfig) -> bool {
    value <= limit * (1.0 - cfg.min_slack.min(0.0))
}

impl EngineSnapshot<'_> {
    fn decode_shape(&self) -> StepShape {
        StepShape {
            seqs: self.decoding,
            prefill_tokens: 0,
            context_tokens: self.context_tokens,
        }
    }

    /// Prefill tokens per step while a prompt with `ttft_budget` is being prefilled.
    fn chunk(&self, ttft_budget_ms: Option<f64>) -> u64 {
        let load = if self.slo_aware {
            StepLoad {
                decode: self.decode_shape(),
                tpot_limit_ms: self
                    .tightest_tpot_ms
                    .map(|t| tpot_step_limit_ms(&self.limits, t, 0.0)),
                ttft_budget_ms,
            }
        } else {
            // A fixed token budget per step, whatever it does to the batch.
            StepLoad {
                decode: self.decode_shape(),
                ..StepLoad::default()
            }
        };
        prefill_budget(&self.step, &self.limits, &load)
    }

    fn step_ms(&self, prefill_tokens: u64) -> f64 {
        self.step.predict_ms(&StepShape {
            seqs: self.decoding + u64::from(prefill_tokens > 0),
            prefill_tokens,
            context_tokens: self.context_tokens,
        })
    }

    /// Time to prefill `tokens` in steps of `chunk` (the decoding batch rides along).
    fn prefill_ms(&self, tokens: u64, chunk: u64) -> f64 {
        if tokens == 0 {
            return 0.0;
        }
        if chunk == 0 {
            return f64::INFINITY;
        }
        let (full, rem) = (tokens / chunk, tokens % chunk);
        full as f64 * self.step_ms(chunk) + if rem > 0 { self.step_ms(rem) } else { 0.0 }
    }

    fn steps(tokens: u64, chunk: u64) -> u64 {
        if chunk == 0 {
            0
        } else {
            tokens.div_ceil(chunk)
        }
    }

    /// Average time per output token of this engine's decoding sequences with `extra_seqs` more (their
    /// `extra_ctx` KV) and `extra_prefill` more prompt tokens to prefill while they decode, spread over
    /// `out` tokens. Engines that chunk TPOT-safely keep each step within `limit_tpot_ms`'s step limit.
    fn tpot_ms(
        &self,
        extra_seqs: u64,
        extra_ctx: u64,
        extra_prefill: u64,
        out: u64,
        limit_tpot_ms: Option<f64>,
    ) -> f64 {
        let base = self.step.predict_ms(&StepShape {
            seqs: self.decoding + extra_seqs,
            prefill_tokens: 0,
            context_tokens: self.context_tokens + extra_ctx,
        });
        if self.decoding + extra_seqs == 0 {
            return base;
        }
        let waiting = self.queued_tokens() + extra_prefill;
        let stall = self.step.per_prefill_token_ms * waiting as f64 / out.max(1) as f64;
        let mut t = base + stall;
        // What its decoding steps take now (prefill of the prompts that keep arriving included), plus what the
        // extra sequences add to each.
        if let Some(observed) = self.decode_step_ms.filter(|_| self.decoding > 0) {
            let more = self.step.per_seq_ms * extra_seqs as f64
                + self.step.per_kctx_ms * extra_ctx as f64 / 1000.0;
            let own = self.step.per_prefill_token_ms * extra_prefill as f64 / out.max(1) as f64;
            t = t.max(observed + more + own);
        }
        match (self.slo_aware, limit_tpot_ms) {
            (true, Some(l)) => t.min(base.max(tpot_step_limit_ms(&self.limits, l, 0.0))),
            _ => t,
        }
    }
}

/// The prefill side of a placement on one engine.
#[derive(Debug, Clone, Copy)]
struct PrefillSide {
    /// From now until the prompt is prefilled.
    ms: f64,
    /// Added GPU time.
    gpu_ms: f64,
    /// Latency added to prompts queued behind this one.
    harm_ms: f64,
    /// No prompt behind it that would make its deadline misses it.
    harmless: bool,
}

/// `disaggregated`: the engine only prefills this request, so the stall its prefill adds to the engine's own
/// decoding batch (an engine in both pools) is checked here; colocation checks it on the decode side.
fn prefill_side(
    cfg: &SloPolicyConfig,
    e: &EngineSnapshot<'_>,
    req: &SloRequest,
    now_ms: f64,
    disaggregated: bool,
) -> PrefillSide {
    let remaining_ttft = req.deadline_ms().map(|d| (d - now_ms).max(1.0));
    let chunk = e.chunk(remaining_ttft);
    let me = WaitingPrompt {
        arrival_ms: req.arrival_ms,
        deadline_ms: req.deadline_ms(),
        remaining_tokens: req.prompt_tokens,
    };
    let my_key = prefill_order_key(&e.step, &me, now_ms);
    // FIFO engines put a newcomer last; EDF engines by deadline (lost causes last).
    let ahead_of_me = |p: &WaitingPrompt| {
        if !e.slo_aware {
            return true;
        }
        let k = prefill_order_key(&e.step, p, now_ms);
        k.0.cmp(&my_key.0).then(k.1.total_cmp(&my_key.1)).is_le()
    };
    let ahead: u64 = e
        .queue
        .iter()
        .filter(|p| ahead_of_me(p))
        .map(|p| p.remaining_tokens)
        .sum();
    let ms = e.prefill_ms(ahead + req.prompt_tokens, chunk);
    let own_ms = e.prefill_ms(req.prompt_tokens, chunk);
    // Prompts served after this one: each waits `own_ms` longer.
    let mut harmless = true;
    let mut harm_ms = 0.0;
    let mut before = 0u64;
    for p in &e.queue {
        before += p.remaining_tokens;
        if ahead_of_me(p) {
            continue;
        }
        harm_ms += own_ms;
        let Some(deadline) = p.deadline_ms else {
            continue;
        };
        let left = deadline - now_ms;
        let done_before = e.prefill_ms(before, chunk);
        let done_after = e.prefill_ms(before + req.prompt_tokens, chunk);
        if done_before <= left && !within(done_after, left.max(0.0), cfg) {
            harmless = false;
        }
    }
    if disaggregated && e.decoding > 0 {
        let out = req.output_tokens.max(1);
        let before = e.tpot_ms(0, 0, 0, out, e.tightest_tpot_ms);
        let after = e.tpot_ms(0, 0, req.prompt_tokens, out, e.tightest_tpot_ms);
        harm_ms += e.decoding as f64 * (after - before).max(0.0);
        if let Some(t) = e.tightest_tpot_ms {
            if within(before, t, cfg) && !within(after, t, cfg) {
                harmless = false;
            }
        }
    }
    // GPU time: the steps' cost beyond what the decoding batch would have cost anyway.
    let steps = EngineSnapshot::steps(req.prompt_tokens, chunk) as f64;
    let gpu_ms = if e.decoding > 0 {
        own_ms - steps * e.step_ms(0)
    } else {
        own_ms
    };
    PrefillSide {
        ms,
        gpu_ms,
        harm_ms,
        harmless,
    }
}

/// The decode side of a placement on engine `d`, with `extra_prefill` prompt tokens prefilled there too
/// (colocation).
#[derive(Debug, Clone, Copy)]
struct DecodeSide {
    tpot_ms: f64,
    /// One step of the batch this request joins (the first token of a disaggregated request).
    step_ms: f64,
    gpu_ms: f64,
    harm_ms: f64,
    harmless: bool,
}

fn decode_side(
    cfg: &SloPolicyConfig,
    d: &EngineSnapshot<'_>,
    req: &SloRequest,
    extra_prefill: u64,
) -> DecodeSide {
    let out = req.output_tokens.max(1);
    let ctx = req.prompt_tokens + out / 2;
    let limit = match (d.tightest_tpot_ms, req.budget.tpot_ms) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let before = d.tpot_ms(0, 0, 0, out, d.tightest_tpot_ms);
    let after = d.tpot_ms(1, ctx, extra_prefill, out, limit);
    let mut harmless = true;
    if d.decoding > 0 {
        if let Some(t) = d.tightest_tpot_ms {
            if within(before, t, cfg) && !within(after, t, cfg) {
                harmless = false;
            }
        }
    }
    if d.kv_usage.is_some_and(|u| u >= cfg.max_kv_usage) {
        harmless = false;
    }
    let alone = d.step.predict_ms(&StepShape {
        seqs: 1,
        prefill_tokens: 0,
        context_tokens: ctx,
    });
    let marginal = if d.decoding > 0 {
        d.step.per_seq_ms + d.step.per_kctx_ms * ctx as f64 / 1000.0
    } else {
        alone
    };
    DecodeSide {
        tpot_ms: after,
        step_ms: d.step.predict_ms(&StepShape {
            seqs: d.decoding + 1,
            prefill_tokens: 0,
            context_tokens: d.context_tokens + ctx,
        }),
        gpu_ms: marginal * out as f64,
        harm_ms: d.decoding as f64 * (after - before).max(0.0),
        harmless,
    }
}

/// Chooses a placement for `req` among `prefills` × `decodes` (disaggregated) and `decodes` alone (colocated),
/// or rejects it. See the module docs of [`super`] for the rule.
pub fn decide(
    cfg: &SloPolicyConfig,
    req: &SloRequest,
    prefills: &[EngineSnapshot<'_>],
    decodes: &[EngineSnapshot<'_>],
    now_ms: f64,
) -> Decision {
    let elapsed = (now_ms - req.arrival_ms).max(0.0);
    let psides: Vec<Option<PrefillSide>> = prefills
        .iter()
        .map(|p| p.available.then(|| prefill_side(cfg, p, req, now_ms, true)))
        .collect();
    let any_prefill = prefills.iter().any(|p| p.available);
    // Cheapest admissible, and the one with most slack (for `off` and the Retry-After hint).
    let mut cheapest: Option<(Placement, Prediction)> = None;
    let mut most_slack: Option<(Placement, Prediction)> = None;
    let mut consider = |placement: Placement, p: Prediction| {
        let colocated = matches!(placement, Placement::Local { .. });
        if p.harmless && p.slack >= cfg.min_slack {
            let better = match &cheapest {
                None => true,
                Some((bp, b)) => {
                    let b_colocated = matches!(bp, Placement::Local { .. });
                    p.cost_ms < b.cost_ms
                        || (p.cost_ms == b.cost_ms && colocated && !b_colocated)
                        || (p.cost_ms == b.cost_ms && colocated == b_colocated && p.slack > b.slack)
                }
            };
            if better {
                cheapest = Some((placement, p));
            }
        }
        // Least bad: harmless first, then slack, then cost.
        let better = match &most_slack {
            None => true,
            Some((_, b)) => {
                (p.harmless && !b.harmless)
                    || (p.harmless == b.harmless
                        && (p.slack > b.slack || (p.slack == b.slack && p.cost_ms < b.cost_ms)))
            }
        };
        if better {
            most_slack = Some((placement, p));
        }
    };
    for (di, d) in decodes.iter().enumerate().filter(|(_, d)| d.available) {
        let dside = decode_side(cfg, d, req, 0);
        // A worker listed in both pools never hands off to itself: that is colocation plus a copy.
        for (pi, p) in prefills.iter().enumerate() {
            let Some(ps) = psides[pi].filter(|_| p.url != d.url) else {
                continue;
            };
            let ttft = elapsed + ps.ms + cfg.handoff_ms + dside.step_ms;
            consider(
                Placement::Disaggregated {
                    prefill: pi,
                    decode: di,
                },
                Prediction {
                    ttft_ms: ttft,
                    tpot_ms: dside.tpot_ms,
                    slack: slack(&req.budget, ttft, dside.tpot_ms),
                    cost_ms: ps.gpu_ms
                        + dside.gpu_ms
                        + cfg.handoff_ms
                        + cfg.harm_weight * (ps.harm_ms + dside.harm_ms)
                        + cfg.wait_weight * (ttft - elapsed),
                    harmless: ps.harmless && dside.harmless,
                },
            );
        }
        let colocate = cfg.conditional_disaggregation || !any_prefill;
        let short_enough = d.slo_aware || req.prompt_tokens <= cfg.local_prefill_max_tokens;
        if colocate && (short_enough || !any_prefill) {
            let ps = prefill_side(cfg, d, req, now_ms, false);
            let ds = decode_side(cfg, d, req, req.prompt_tokens);
            let ttft = elapsed + ps.ms;
            consider(
                Placement::Local { decode: di },
                Prediction {
                    ttft_ms: ttft,
                    tpot_ms: ds.tpot_ms,
                    slack: slack(&req.budget, ttft, ds.tpot_ms),
                    cost_ms: ps.gpu_ms
                        + ds.gpu_ms
                        + cfg.harm_weight * (ps.harm_ms + ds.harm_ms)
                        + cfg.wait_weight * ps.ms,
                    harmless: ps.harmless && ds.harmless,
                },
            );
        }
    }
    let no_targets = req.budget.ttft_ms.is_none() && req.budget.tpot_ms.is_none();
    if let Some((placement, prediction)) = cheapest {
        return Decision::Admit {
            placement,
            prediction,
        };
    }
    match most_slack {
        None => Decision::Reject {
            retry_after_ms: cfg.min_retry_after_ms,
            best: None,
        },
        Some((placement, prediction)) if cfg.admission == AdmissionMode::Off || no_targets => {
            Decision::Admit {
                placement,
                prediction,
            }
        }
        Some((_, prediction)) => {
            // How late the best placement is predicted to be is a fair estimate of how long the backlog needs
            // to drain.
            let late = req
                .budget
                .ttft_ms
                .map_or(0.0, |t| (prediction.ttft_ms - t).max(0.0));
            let late = if late.is_finite() { late } else { 0.0 };
            Decision::Reject {
                retry_after_ms: late.max(cfg.min_retry_after_ms),
                best: Some(prediction),
            }
        }
    }
}

#[cfg(test)]
mod tests;
