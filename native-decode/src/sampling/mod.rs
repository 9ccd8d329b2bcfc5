//! Token selection from logits: greedy, temperature, top-k, top-p, seeded; plus log-probabilities.

pub mod rng;

use rng::SplitMix64;

/// How to pick the next token.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 means no limit.
    pub top_k: usize,
    /// 1.0 means no limit.
    pub top_p: f32,
    pub seed: Option<u64>,
    /// Number of top alternatives to report with each token (`None`: no log-probabilities).
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: None,
            logprobs: None,
        }
    }
}

/// A chosen token with its log-probability and, when asked, the top alternatives (all from the raw logits).
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// One step's token choice handed to the backend, so that a GPU can pick on the device: the sampling
/// parameters and the uniform number the request's seeded generator drew for this step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pick {
    /// 0 means greedy (then `u` is unused).
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    /// Uniform in [0, 1).
    pub u: f64,
}

impl Pick {
    pub const GREEDY: Pick = Pick {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        u: 0.0,
    };

    pub fn is_greedy(&self) -> bool {
        self.temperature <= GREEDY_TEMPERATURE
    }
}

/// Temperatures at or below this are greedy.
const GREEDY_TEMPERATURE: f32 = 1e-5;

/// The token [`Pick`] selects from `logits` and its log-probability (from the raw logits) — exactly what
/// [`Sampler::sample`] returns for the same parameters and random draw.
pub fn pick(logits: &[f32], p: &Pick) -> (u32, f32) {
    let token = pick_token(logits, p);
    let (max, log_z) = log_softmax_norm(logits);
    (
        token,
        (f64::from(logits[token as usize] - max) - log_z) as f32,
    )
}

fn pick_token(logits: &[f32], p: &Pick) -> u32 {
    if p.is_greedy() {
        argmax(logits)
    } else {
        sample_with(logits, p.temperature, p.top_k, p.top_p, p.u)
    }
}

/// Probabilities over the candidates temperature, top-k and top-p keep (descending logit order).
pub fn kept_distribution(
    logits: &[f32],
    temperature: f32,
    top_k: usize,
    top_p: f32,
) -> Vec<(u32, f64)> {
    let k = if top_k == 0 {
        logits.len()
    } else {
        top_k.min(logits.len())
    };
    let cand = top_k_indices(logits, k);
    let t = f64::from(temperature);
    let max = f64::from(logits[cand[0] as usize]);
    let mut probs: Vec<f64> = cand
        .iter()
        .map(|&i| ((f64::from(logits[i as usize]) - max) / t).exp())
        .collect();
    let z: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|x| *x /= z);
    let mut keep = probs.len();
    if top_p < 1.0 {
        let mut acc = 0.0;
        for (i, x) in probs.iter().enumerate() {
            acc += x;
            if acc >= f64::from(top_p) {
                keep = i + 1;
                break;
            }
        }
    }
    let total: f64 = probs[..keep].iter().sum();
    cand.into_iter()
        .zip(probs)
        .take(keep)
        .map(|(i, x)| (i, x / total))
        .collect()
}

fn sample_with(logits: &[f32], temperature: f32, top_k: usize, top_p: f32, u: f64) -> u32 {
    let kept = kept_distribution(logits, temperature, top_k, top_p);
    let mut r = u;
    for &(i, x) in &kept {
        r -= x;
        if r <= 0.0 {
            return i;
        }
    }
    kept[kept.len() - 1].0
}

/// Per-request sampler state.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
}

fn log_softmax_norm(logits: &[f32]) -> (f32, f64) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    (max, sum.ln())
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The greedy token and its log-probability, computed exactly as [`Sampler::sample`] does for greedy requests.
pub fn greedy(logits: &[f32]) -> (u32, f32) {
    pick(logits, &Pick::GREEDY)
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
pub fn top_k_indices(values: &[f32], k: usize) -> Vec<u32> {
    let k = k.min(values.len());
    let mut idx: Vec<u32> = (0..values.len() as u32).collect();
    let cmp = |a: &u32, b: &u32| {
        values[*b as usize]
            .total_cmp(&values[*a as usize])
            .then(a.cmp(b))
    };
    if k < idx.len() && k > 0 {
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx.truncate(k);
    idx
}

impl Sampler {
    pub fn new(params: SamplingParams, fallback_seed: u64) -> Self {
        let seed = params.seed.unwrap_or(fallback_seed);
        Self {
            params,
            rng: SplitMix64::new(seed),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// No alternatives to report: the token and its log-probability are all a step needs from the logits, so
    /// a GPU backend can pick them on the device instead of copying every logit out.
    pub fn can_pick(&self) -> bool {
        self.params.logprobs.is_none_or(|n| n == 0)
    }

    /// This step's [`Pick`] (draws from the generator exactly as [`Sampler::sample`] would).
    pub fn next_pick(&mut self) -> Pick {
        let p = &self.params;
        if p.temperature <= GREEDY_TEMPERATURE {
            return Pick::GREEDY;
        }
        Pick {
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            u: self.rng.next_f64(),
        }
    }

    pub fn sample(&mut self, logits: &[f32]) -> Sampled {
        let token = pick_token(logits, &self.next_pick());
        let (max, log_z) = log_softmax_norm(logits);
        let lp = |i: u32| (f64::from(logits[i as usize] - max) - log_z) as f32;
        let top = match self.params.logprobs {
            Some(n) if n > 0 => top_k_indices(logits, n)
                .into_iter()
                .map(|i| (i, lp(i)))
                .collect(),
            _ => Vec::new(),
        };
        Sampled {
            token,
            logprob: lp(token),
            top,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_argmax_and_reports_logprobs() {
        let mut s = Sampler::new(
            SamplingParams {
                temperature: 0.0,
                logprobs: Some(2),
                ..Default::default()
            },
            0,
        );
        let out = s.sample(&[0.0, 2.0, 1.0]);
        assert_eq!(out.token, 1);
        assert_eq!(out.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        let z = (0f64.exp() + 2f64.exp() + 1f64.exp()).ln();
        assert!((f64::from(out.logprob) - (2.0 - z)).abs() < 1e-6);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_respects_top_k() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32).collect();
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 3,
            seed: Some(42),
            ..Default::default()
        };
        let allowed = top_k_indices(&logits, 3);
        let run = || {
            let mut s = Sampler::new(params.clone(), 0);
            (0..20).map(|_| s.sample(&logits).token).collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        assert!(a.iter().all(|t| allowed.contains(t)));
    }

    #[test]
    fn a_pick_chooses_what_the_sampler_would() {
        let logits: Vec<f32> = (0..300).map(|i| ((i * 37) % 101) as f32 / 9.0).collect();
        for (temperature, top_k, top_p) in
            [(0.0, 0, 1.0), (0.7, 0, 0.9), (1.0, 40, 1.0), (1.3, 20, 0.8)]
        {
            let params = SamplingParams {
                temperature,
                top_k,
                top_p,
                seed: Some(5),
                ..Default::default()
            };
            let (mut a, mut b) = (Sampler::new(params.clone(), 0), Sampler::new(params, 0));
            assert!(a.can_pick());
            for _ in 0..50 {
                let want = b.sample(&logits);
                let (token, logprob) = pick(&logits, &a.next_pick());
                assert_eq!((token, logprob), (want.token, want.logprob));
            }
        }
    }

    #[test]
    fn kept_distribution_applies_top_k_then_top_p() {
        let logits = [0.0f32, 3.0, 2.0, 1.0];
        let d = kept_distribution(&logits, 1.0, 3, 0.7);
        // top-3 = {1, 2, 3}; their softmax is 0.665, 0.245, 0.090: 1 alone misses 0.7, so {1, 2} are kept.
        assert_eq!(d.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!((d.iter().map(|x| x.1).sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((d[0].1 - 3f64.exp() / (3f64.exp() + 2f64.exp())).abs() < 1e-12);
    }

    #[test]
    fn tiny_top_p_is_greedy() {
        let mut s = Sampler::new(
            SamplingParams {
                temperature: 1.0,
                top_p: 0.01,
                ..Default::default()
            },
            7,
        );
        for _ in 0..10 {
            assert_eq!(s.sample(&[0.0, 5.0, 1.0]).token, 1);
        }
    }
}
