//! What one engine step costs, and how much prefill a step may take so that the sequences decoding in it keep their
//! TPOT budgets. Pure: the native engine's scheduler, the gateway's predictions and the virtual-time twin all use
//! these same functions, so what the twin simulates is what the engine does.
//!
//! A step (one forward pass of continuous batching) costs about
//! `fixed + per_seq × sequences + per_prefill_token × prefill tokens + per_kctx × context tokens / 1000`:
//! the fixed part is launch/graph overhead and reading the weights once, sequences pay sampling and per-sequence
//! attention setup, prefill tokens pay the GEMMs, and decode attention reads every decoding sequence's KV.

use serde::{Deserialize, Serialize};

/// Step-time model, all in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepModel {
    pub fixed_ms: f64,
    pub per_seq_ms: f64,
    pub per_prefill_token_ms: f64,
    /// Per 1000 tokens of KV that the step's decoding sequences attend to.
    pub per_kctx_ms: f64,
}

impl Default for StepModel {
    /// A conservative CPU-ish prior; engines replace it with their fit within a few steps.
    fn default() -> Self {
        Self {
            fixed_ms: 5.0,
            per_seq_ms: 0.5,
            per_prefill_token_ms: 0.5,
            per_kctx_ms: 0.05,
        }
    }
}

/// The shape of one step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StepShape {
    /// Sequences in the step (decoding ones and those with a prefill chunk).
    pub seqs: u64,
    /// Prompt tokens computed in the step (all prefill chunks together).
    pub prefill_tokens: u64,
    /// KV tokens the decoding sequences attend to (sum of their context lengths).
    pub context_tokens: u64,
}

impl StepModel {
    pub fn predict_ms(&self, s: &StepShape) -> f64 {
        self.fixed_ms
            + self.per_seq_ms * s.seqs as f64
            + self.per_prefill_token_ms * s.prefill_tokens as f64
            + self.per_kctx_ms * s.context_tokens as f64 / 1000.0
    }

    /// Most prefill tokens a step may add to `decode` (its decoding sequences and their context; one more
    /// sequence is counted for the prefill) and still take at most `limit_ms`. 0 when even that does not fit.
    pub fn prefill_tokens_within(&self, decode: &StepShape, limit_ms: f64) -> u64 {
        let base = StepShape {
            seqs: decode.seqs + 1,
            prefill_tokens: 0,
            context_tokens: decode.context_tokens,
        };
        let left = limit_ms - self.predict_ms(&base);
        // NaN (a broken model) counts as no room.
        if left.is_nan() || left <= 0.0 {
            return 0;
        }
        if self.per_prefill_token_ms <= 0.0 {
            return u64::MAX;
        }
        (left / self.per_prefill_token_ms)
            .floor()
            .min(u64::MAX as f64) as u64
    }

    fn as_vec(&self) -> [f64; 4] {
        [
            self.fixed_ms,
            self.per_seq_ms,
            self.per_prefill_token_ms,
            self.per_kctx_ms,
        ]
    }

    fn from_vec(v: [f64; 4]) -> Self {
        Self {
            fixed_ms: v[0],
            per_seq_ms: v[1],
            per_prefill_token_ms: v[2],
            per_kctx_ms: v[3],
        }
    }

    /// Every coefficient finite and non-negative.
    pub fn is_valid(&self) -> bool {
        self.as_vec().iter().all(|c| c.is_finite() && *c >= 0.0)
    }
}

fn features(s: &StepShape) -> [f64; 4] {
    [
        1.0,
        s.seqs as f64,
        s.prefill_tokens as f64,
        s.context_tokens as f64 / 1000.0,
    ]
}

/// Fits a [`StepModel`] online from measured steps: least squares with exponential forgetting, pulled towards a
/// prior in every direction the data do not determine (an engine that has only decoded keeps the prior's
/// prefill cost until it prefills). Four unknowns, so each update is a 4×4 solve: cheap enough for every step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepFit {
    prior: StepModel,
    decay: f64,
    /// Forgetting-weighted normal equations `A θ = b`.
    a: [[f64; 4]; 4],
    b: [f64; 4],
    current: StepModel,
    steps: u64,
}

/// How strongly the prior holds, in steps of evidence at typical feature sizes: weak, so a few real steps
/// override it, yet enough to fix what the data leave undetermined.
const PRIOR_WEIGHT: f64 = 0.01;
/// Typical size of each feature, to weigh the prior evenly across coefficients of very different scales.
const TYPICAL: [f64; 4] = [1.0, 32.0, 1024.0, 32.0];

impl StepFit {
    /// `decay` per observation (0.995: the last ~200 steps dominate).
    pub fn new(prior: StepModel, decay: f64) -> Self {
        Self {
            prior,
            decay: decay.clamp(0.5, 1.0),
            a: [[0.0; 4]; 4],
            b: [0.0; 4],
            current: prior,
            steps: 0,
        }
    }

    pub fn observe(&mut self, s: &StepShape, ms: f64) {
        if !ms.is_finite() || ms < 0.0 {
            return;
        }
        let x = features(s);
        for i in 0..4 {
            for j in 0..4 {
                self.a[i][j] = self.a[i][j] * self.decay + x[i] * x[j];
            }
            self.b[i] = self.b[i] * self.decay + x[i] * ms;
        }
        self.steps += 1;
        self.current = self.solve();
    }

    fn solve(&self) -> StepModel {
        let p = self.prior.as_vec();
        let mut m = self.a;
        let mut r = self.b;
        for i in 0..4 {
            let w = PRIOR_WEIGHT * TYPICAL[i] * TYPICAL[i];
            m[i][i] += w;
            r[i] += w * p[i];
        }
        match solve4(m, r) {
            Some(mut theta) => {
                // A negative cost is noise in a direction the data barely determine: take the prior's there.
                for i in 0..4 {
                    if !(theta[i].is_finite() && theta[i] >= 0.0) {
                        theta[i] = p[i];
                    }
                }
                StepModel::from_vec(theta)
            }
            None => self.prior,
        }
    }

    pub fn model(&self) -> StepModel {
        self.current
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }
}

/// Gaussian elimination with partial pivoting.
fn solve4(mut m: [[f64; 4]; 4], mut r: [f64; 4]) -> Option<[f64; 4]> {
    for c in 0..4 {
        let p = (c..4).max_by(|&i, &j| m[i][c].abs().total_cmp(&m[j][c].abs()))?;
        if m[p][c].abs() < 1e-12 {
            return None;
        }
        m.swap(c, p);
        r.swap(c, p);
        let (pivot, rest) = m.split_at_mut(c + 1);
        let pivot = pivot[c];
        for (k, row) in rest.iter_mut().enumerate() {
            let f = row[c] / pivot[c];
            for (x, p) in row.iter_mut().zip(pivot).skip(c) {
                *x -= f * p;
            }
            r[c + 1 + k] -= f * r[c];
        }
    }
    let mut x = [0.0; 4];
    for i in (0..4).rev() {
        let s: f64 = (i + 1..4).map(|j| m[i][j] * x[j]).sum();
        x[i] = (r[i] - s) / m[i][i];
    }
    Some(x)
}

/// One measured step shape of a [`StepProfile`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfilePoint {
    /// Sequences in the step: the decoding ones, plus one when a prefill chunk is in it.
    pub seqs: u64,
    /// Tokens of the prefill chunk (0: a decode-only step).
    pub prefill_tokens: u64,
    /// KV tokens the decoding sequences attend to (sum of their context lengths).
    pub context_tokens: u64,
    /// Decoding sequences (one token each).
    pub decode_seqs: u64,
    /// Median and 90th percentile of the measured step time.
    pub ms_p50: f64,
    pub ms_p90: f64,
}

impl ProfilePoint {
    pub fn shape(&self) -> StepShape {
        StepShape {
            seqs: self.seqs,
            prefill_tokens: self.prefill_tokens,
            context_tokens: self.context_tokens,
        }
    }
}

/// Measured step times of one engine over a grid of shapes (`baton-engine profile`'s JSON) and the
/// [`StepModel`] fitted to them: engines (`--step-model FILE`), the gateway and the twin read `fit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepProfile {
    /// The engine and its version (`baton-native 0.1.0`).
    #[serde(default)]
    pub engine: String,
    /// The GPU's name, or `cpu (N threads)`.
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub model: String,
    /// When it was measured (RFC 3339, UTC).
    #[serde(default)]
    pub created: String,
    /// The command line that measured it.
    #[serde(default)]
    pub command: String,
    /// True when the points were measured on the engine (false: a profile derived from other numbers).
    #[serde(default)]
    pub measured: bool,
    /// KV cache of the measured engine: its capacity in tokens, and bytes per token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_capacity_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_bytes_per_token: Option<u64>,
    #[serde(default)]
    pub points: Vec<ProfilePoint>,
    pub fit: StepModel,
    /// Median and largest `|predicted - p50| / p50` of `fit` over `points`.
    #[serde(default)]
    pub fit_median_rel_error: f64,
    #[serde(default)]
    pub fit_max_rel_error: f64,
}

/// The [`StepModel`] with non-negative coefficients that best fits the points' median times in relative terms
/// (least squares on `(predicted - p50) / p50`): a 5 ms decode step counts as much as a 500 ms prefill, so the fit
/// holds at both ends of the grid. Exact non-negative least squares: with four coefficients, every subset of them
/// is solved and the best one whose coefficients are all non-negative kept. `None` when no point is usable
/// (positive, finite time).
pub fn fit_points(points: &[ProfilePoint]) -> Option<StepModel> {
    let rows: Vec<([f64; 4], f64)> = points
        .iter()
        .filter(|p| p.ms_p50.is_finite() && p.ms_p50 > 0.0)
        .map(|p| {
            let w = 1.0 / p.ms_p50;
            (features(&p.shape()).map(|x| x * w), 1.0)
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    let mut best: Option<([f64; 4], f64)> = None;
    for mask in 1u32..16 {
        let idx: Vec<usize> = (0..4).filter(|i| mask & (1 << i) != 0).collect();
        let n = idx.len();
        // Normal equations of the chosen columns, padded to 4×4 with identity rows for the others (solved as 0).
        let mut m = [[0.0; 4]; 4];
        let mut r = [0.0; 4];
        for (x, y) in &rows {
            for a in 0..n {
                for b in 0..n {
                    m[a][b] += x[idx[a]] * x[idx[b]];
                }
                r[a] += x[idx[a]] * y;
            }
        }
        for (k, row) in m.iter_mut().enumerate().skip(n) {
            row[k] = 1.0;
        }
        let Some(sol) = solve4(m, r) else {
            continue;
        };
        let mut theta = [0.0; 4];
        for (a, &i) in idx.iter().enumerate() {
            theta[i] = sol[a];
        }
        if !theta.iter().all(|c| c.is_finite() && *c >= 0.0) {
            continue;
        }
        let sse: f64 = rows
            .iter()
            .map(|(x, y)| {
                let pred: f64 = x.iter().zip(&theta).map(|(a, b)| a * b).sum();
                (pred - y).powi(2)
            })
            .sum();
        if best.is_none_or(|(_, b)| sse < b) {
            best = Some((theta, sse));
        }
    }
    best.map(|(theta, _)| StepModel::from_vec(theta))
}

/// Median and largest relative error of `model` over the points with a positive time (0, 0 when none).
pub fn fit_rel_errors(model: &StepModel, points: &[ProfilePoint]) -> (f64, f64) {
    let mut errs: Vec<f64> = points
        .iter()
        .filter(|p| p.ms_p50.is_finite() && p.ms_p50 > 0.0)
        .map(|p| (model.predict_ms(&p.shape()) - p.ms_p50).abs() / p.ms_p50)
        .collect();
    if errs.is_empty() {
        return (0.0, 0.0);
    }
    errs.sort_by(f64::total_cmp);
    let n = errs.len();
    let median = if n % 2 == 1 {
        errs[n / 2]
    } else {
        (errs[n / 2 - 1] + errs[n / 2]) / 2.0
    };
    (median, errs[n - 1])
}

/// How an engine sizes its steps when requests carry budgets.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StepLimits {
    /// Hard cap on tokens per step (`--max-num-batched-tokens`).
    pub max_tokens: u64,
    /// A step always takes at least this many prefill tokens when a prompt waits, so prefill progresses even when
    /// decoding alone fills the TPOT budget (overload: the gateway should be sending less).
    pub min_prefill_tokens: u64,
    /// Fraction of the tightest TPOT limit a step may take (the model's error margin).
    pub tpot_headroom: f64,
    /// A step may take at most this fraction of the tightest TTFT budget of the prompts it prefills, so a prompt
    /// arriving mid-step is not held up by one long step.
    pub ttft_share: f64,
    /// Fraction of a sequence's banked TPOT time (ahead of its budget) that one step may spend.
    pub bank_spend: f64,
}

impl Default for StepLimits {
    fn default() -> Self {
        Self {
            max_tokens: 8192,
            min_prefill_tokens: 16,
            tpot_headroom: 0.9,
            ttft_share: 0.25,
            bank_spend: 0.5,
        }
    }
}

/// The longest step a decoding sequence tolerates: its TPOT budget plus part of the time it is ahead of it.
/// `bank_ms` = budget × tokens since its first − time since its first token (negative when behind).
pub fn tpot_step_limit_ms(limits: &StepLimits, tpot_ms: f64, bank_ms: f64) -> f64 {
    tpot_ms * limits.tpot_headroom + bank_ms.max(0.0) * limits.bank_spend
}

/// What constrains the next step.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepLoad {
    /// Decoding sequences of the step and their context (no prefill tokens).
    pub decode: StepShape,
    /// Tightest [`tpot_step_limit_ms`] among the decoding sequences that have a TPOT budget.
    pub tpot_limit_ms: Option<f64>,
    /// Tightest TTFT budget among the prompts this step would prefill.
    pub ttft_budget_ms: Option<f64>,
}

/// Prefill tokens the next step may take: as many as keep it within every limit, at least
/// `min_prefill_tokens`, at most `max_tokens` minus the decode tokens. Without any budget: `max_tokens` minus
/// decode tokens, as a fixed-budget engine does.
pub fn prefill_budget(model: &StepModel, limits: &StepLimits, load: &StepLoad) -> u64 {
    let cap = limits.max_tokens.saturating_sub(load.decode.seqs);
    let limit = [
        load.tpot_limit_ms,
        load.ttft_budget_ms.map(|t| t * limits.ttft_share),
    ]
    .into_iter()
    .flatten()
    .reduce(f64::min);
    let Some(limit) = limit else {
        return cap;
    };
    model
        .prefill_tokens_within(&load.decode, limit)
        .max(limits.min_prefill_tokens)
        .min(cap)
}

/// A prompt waiting for (more of) its prefill.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WaitingPrompt {
    /// On any clock shared with `now_ms`.
    pub arrival_ms: f64,
    /// When its first token is due, if it has a TTFT budget.
    pub deadline_ms: Option<f64>,
    /// Prompt tokens still to compute.
    pub remaining_tokens: u64,
}

/// Prompts without a budget are due this long after arrival: FIFO among themselves, never starved by budgets.
pub const NO_DEADLINE_MS: f64 = 10_000.0;

/// Sort key of waiting prompts (ascending = served first): earliest deadline first, except that prompts that can
/// no longer make their deadline even if served alone now go after every prompt that still can — serving a lost
/// cause first would make others late too (goodput counts requests that meet their budget).
pub fn prefill_order_key(model: &StepModel, p: &WaitingPrompt, now_ms: f64) -> (bool, f64) {
    let due = p.deadline_ms.unwrap_or(p.arrival_ms + NO_DEADLINE_MS);
    let alone = model.predict_ms(&StepShape {
        seqs: 1,
        prefill_tokens: p.remaining_tokens,
        context_tokens: 0,
    });
    let late = p.deadline_ms.is_some() && now_ms + alone > due;
    (late, due)
}

/// What an engine reports of its own state (the `x-baton-load` header and `GET /load`): the gateway predicts from
/// this, not from how long its own calls took. Missing fields read as zero/none, so an engine of another
/// version (with fewer or more fields) still reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineReport {
    /// Sequences with KV in the engine (decoding or mid-prefill).
    pub running: u64,
    /// Requests not yet admitted.
    pub waiting: u64,
    /// Prompt tokens not yet computed (waiting and mid-prefill).
    pub waiting_prefill_tokens: u64,
    /// KV tokens of the decoding sequences.
    pub context_tokens: u64,
    /// Fraction of KV blocks in use.
    pub kv_usage: f64,
    /// Tightest TPOT budget among decoding sequences, if any has one.
    pub tightest_tpot_ms: Option<f64>,
    /// The engine's fitted step-time model.
    pub step: Option<StepModel>,
    /// Recent duration of its steps that decoded (exponential average, [`DECODE_STEP_ALPHA`] per step): the time
    /// per output token its batch sees now, prefill interference at the current arrival rate included (which a
    /// snapshot of the queue cannot show).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_step_ms: Option<f64>,
}

/// Weight of the newest step in [`EngineReport::decode_step_ms`] (about the last 20 steps count).
pub const DECODE_STEP_ALPHA: f64 = 0.02;

/// [`EngineReport::decode_step_ms`] after a step that decoded and took `ms`.
pub fn decode_step_average(prev: Option<f64>, ms: f64) -> Option<f64> {
    if !(ms.is_finite() && ms >= 0.0) {
        return prev;
    }
    Some(match prev {
        Some(p) => p + DECODE_STEP_ALPHA * (ms - p),
        None => ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn truth() -> StepModel {
        StepModel {
            fixed_ms: 6.0,
            per_seq_ms: 0.04,
            per_prefill_token_ms: 0.03,
            per_kctx_ms: 0.01,
        }
    }

    #[test]
    fn fit_recovers_the_model_from_varied_steps() {
        let t = truth();
        let mut f = StepFit::new(StepModel::default(), 0.999);
        let mut x: u64 = 7;
        for _ in 0..2000 {
            // Deterministic pseudo-random shapes.
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let s = StepShape {
                seqs: 1 + (x >> 33) % 128,
                prefill_tokens: if (x >> 20).is_multiple_of(3) {
                    (x >> 40) % 4096
                } else {
                    0
                },
                context_tokens: (x >> 13) % 200_000,
            };
            f.observe(&s, t.predict_ms(&s));
        }
        let m = f.model();
        for (a, b) in m.as_vec().iter().zip(t.as_vec()) {
            assert!((a - b).abs() <= 0.02 * b.max(0.01), "{m:?} vs {t:?}");
        }
    }

    #[test]
    fn unseen_directions_keep_the_prior() {
        // Decode-only steps say nothing about prefill cost: the prior's stays.
        let prior = StepModel::default();
        let mut f = StepFit::new(prior, 0.995);
        for b in 1..200u64 {
            let s = StepShape {
                seqs: 1 + b % 64,
                prefill_tokens: 0,
                context_tokens: (b % 64) * 1000,
            };
            f.observe(&s, truth().predict_ms(&s));
        }
        let m = f.model();
        assert!((m.per_prefill_token_ms - prior.per_prefill_token_ms).abs() < 1e-9);
        assert!((m.fixed_ms - 6.0).abs() < 0.5, "{m:?}");
        // Garbage is ignored.
        f.observe(&StepShape::default(), f64::NAN);
        f.observe(&StepShape::default(), -1.0);
        assert_eq!(f.model(), m);
    }

    #[test]
    fn prefill_budget_keeps_the_step_within_the_tightest_limit() {
        let m = truth();
        let limits = StepLimits::default();
        let decode = StepShape {
            seqs: 40,
            prefill_tokens: 0,
            context_tokens: 80_000,
        };
        let limit = tpot_step_limit_ms(&limits, 30.0, 0.0);
        let n = prefill_budget(
            &m,
            &limits,
            &StepLoad {
                decode,
                tpot_limit_ms: Some(limit),
                ttft_budget_ms: None,
            },
        );
        let step = m.predict_ms(&StepShape {
            seqs: 41,
            prefill_tokens: n,
            ..decode
        });
        assert!(
            step <= limit + 1e-9 && step > limit - m.per_prefill_token_ms - 1e-9,
            "{n} {step}"
        );
        // Without budgets: the fixed cap, less the decode tokens.
        let free = prefill_budget(
            &m,
            &limits,
            &StepLoad {
                decode,
                ..Default::default()
            },
        );
        assert_eq!(free, 8192 - 40);
        // Decoding alone over the limit: still the minimum, so prefill progresses.
        let over = prefill_budget(
            &m,
            &limits,
            &StepLoad {
                decode,
                tpot_limit_ms: Some(1.0),
                ttft_budget_ms: None,
            },
        );
        assert_eq!(over, limits.min_prefill_tokens);
        // A TTFT budget shortens a prefill-only step.
        let p = prefill_budget(
            &m,
            &limits,
            &StepLoad {
                decode: StepShape::default(),
                tpot_limit_ms: None,
                ttft_budget_ms: Some(200.0),
            },
        );
        assert_eq!(p, ((50.0 - 6.04) / 0.03f64).floor() as u64);
    }

    #[test]
    fn banked_time_lengthens_the_limit_only_when_ahead() {
        let l = StepLimits::default();
        assert_eq!(tpot_step_limit_ms(&l, 20.0, -50.0), 18.0);
        assert_eq!(tpot_step_limit_ms(&l, 20.0, 10.0), 23.0);
    }

    #[test]
    fn edf_puts_lost_causes_last_and_unbudgeted_prompts_in_arrival_order() {
        let m = truth();
        let now = 1000.0;
        let p = |arrival, deadline, tokens| WaitingPrompt {
            arrival_ms: arrival,
            deadline_ms: deadline,
            remaining_tokens: tokens,
        };
        let mut v = [
            p(0.0, None, 100),            // due 10 000
            p(900.0, Some(1500.0), 1000), // on time (36 ms alone), due 1500
            p(950.0, Some(1010.0), 4000), // cannot make it (126 ms alone)
            p(10.0, Some(1200.0), 100),   // on time, due 1200
        ];
        v.sort_by(|a, b| {
            let (ka, kb) = (prefill_order_key(&m, a, now), prefill_order_key(&m, b, now));
            ka.0.cmp(&kb.0).then(ka.1.total_cmp(&kb.1))
        });
        let order: Vec<f64> = v.iter().map(|p| p.arrival_ms).collect();
        assert_eq!(order, [10.0, 900.0, 0.0, 950.0]);
    }

    #[test]
    fn fit_points_recovers_a_grid_and_stays_non_negative() {
        let t = truth();
        let mut points = Vec::new();
        for b in [0u64, 1, 4, 16, 64] {
            for c in [256u64, 4096] {
                for p in [0u64, 512, 4096] {
                    if b == 0 && p == 0 {
                        continue;
                    }
                    let mut pt = ProfilePoint {
                        seqs: b + u64::from(p > 0),
                        prefill_tokens: p,
                        context_tokens: b * c,
                        decode_seqs: b,
                        ..Default::default()
                    };
                    pt.ms_p50 = t.predict_ms(&pt.shape());
                    pt.ms_p90 = pt.ms_p50;
                    points.push(pt);
                }
            }
        }
        let m = fit_points(&points).unwrap();
        for (a, b) in m.as_vec().iter().zip(t.as_vec()) {
            assert!((a - b).abs() <= 1e-6 * b.max(1.0), "{m:?} vs {t:?}");
        }
        let (med, max) = fit_rel_errors(&m, &points);
        assert!(med < 1e-9 && max < 1e-9, "{med} {max}");
        // Time falling with batch would need a negative per-sequence cost: clamped to 0 instead.
        let falling: Vec<ProfilePoint> = (1..=8u64)
            .map(|b| ProfilePoint {
                seqs: b,
                decode_seqs: b,
                context_tokens: b * 100,
                ms_p50: 20.0 - b as f64,
                ms_p90: 20.0,
                ..Default::default()
            })
            .collect();
        let m = fit_points(&falling).unwrap();
        assert!(m.is_valid(), "{m:?}");
        assert!(fit_points(&[]).is_none());
        // The JSON round-trips, and a file with only a fit loads.
        let prof = StepProfile {
            engine: "baton-native 0".into(),
            device: "cpu (2 threads)".into(),
            model: "m".into(),
            created: "2025-01-01T00:00:00Z".into(),
            command: "baton-engine profile".into(),
            measured: true,
            kv_capacity_tokens: Some(1000),
            kv_bytes_per_token: None,
            points: points.clone(),
            fit: t,
            fit_median_rel_error: 0.0,
            fit_max_rel_error: 0.0,
        };
        // (serde_json's default float parsing may differ from the written value in the last bit.)
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1.0);
        let back: StepProfile =
            serde_json::from_str(&serde_json::to_string(&prof).unwrap()).unwrap();
        assert_eq!(
            (back.engine.as_str(), back.points.len()),
            ("baton-native 0", points.len())
        );
        assert_eq!(
            (
                back.measured,
                back.kv_capacity_tokens,
                back.kv_bytes_per_token
            ),
            (true, Some(1000), None)
        );
        for (a, b) in back.points.iter().zip(&points) {
            assert_eq!((a.seqs, a.prefill_tokens), (b.seqs, b.prefill_tokens));
            assert!(close(a.ms_p50, b.ms_p50) && close(a.ms_p90, b.ms_p90));
        }
        let only_fit = format!(r#"{{"fit": {}}}"#, serde_json::to_string(&t).unwrap());
        let f = serde_json::from_str::<StepProfile>(&only_fit).unwrap().fit;
        assert!(f.as_vec().iter().zip(t.as_vec()).all(|(a, b)| close(*a, b)));
    }

    #[test]
    fn report_round_trips_as_json() {
        let r = EngineReport {
            running: 3,
            waiting: 1,
            waiting_prefill_tokens: 2048,
            context_tokens: 9000,
            kv_usage: 0.25,
            tightest_tpot_ms: Some(30.0),
            step: Some(truth()),
            decode_step_ms: Some(12.5),
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<EngineReport>(&s).unwrap(), r);
        // A report without the average (an older engine) still reads.
        let old = EngineReport {
            decode_step_ms: None,
            ..r
        };
        let s = serde_json::to_string(&old).unwrap();
        assert!(!s.contains("decode_step_ms"));
        assert_eq!(serde_json::from_str::<EngineReport>(&s).unwrap(), old);
    }

    #[test]
    fn decode_step_average_follows_recent_steps() {
        assert_eq!(decode_step_average(None, 10.0), Some(10.0));
        let a = decode_step_average(Some(10.0), 30.0).unwrap();
        assert!((a - (10.0 + DECODE_STEP_ALPHA * 20.0)).abs() < 1e-12);
        assert_eq!(decode_step_average(Some(10.0), f64::NAN), Some(10.0));
        let mut x = Some(10.0);
        for _ in 0..2000 {
            x = decode_step_average(x, 20.0);
        }
        assert!((x.unwrap() - 20.0).abs() < 1e-6);
        let partial: EngineReport = serde_json::from_str(r#"{"running":2,"future":1}"#).unwrap();
        assert_eq!((partial.running, partial.step), (2, None));
    }
}
