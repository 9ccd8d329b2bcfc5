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
    let token = argmax(logits);
    let (max, log_z) = log_softmax_norm(logits);
    (
        token,
        (f64::from(logits[token as usize] - max) - log_z) as f32,
    )
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

    /// Greedy with no alternatives to report: the token and its log-probability are all a step needs from the
    /// logits, so a GPU backend can pick them on the device instead of copying every logit out.
    pub fn is_plain_greedy(&self) -> bool {
        self.params.temperature <= 1e-5 && self.params.logprobs.is_none_or(|n| n == 0)
    }

    pub fn sample(&mut self, logits: &[f32]) -> Sampled {
        let token = if self.params.temperature <= 1e-5 {
            argmax(logits)
        } else {
            self.sample_random(logits)
        };
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

    fn sample_random(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let k = if p.top_k == 0 {
            logits.len()
        } else {
            p.top_k.min(logits.len())
        };
        // Candidates sorted by logit, descending.
        let cand = top_k_indices(logits, k);
        let t = f64::from(p.temperature);
        let max = f64::from(logits[cand[0] as usize]);
        let mut probs: Vec<f64> = cand
            .iter()
            .map(|&i| ((f64::from(logits[i as usize]) - max) / t).exp())
            .collect();
        let z: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= z);
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, x) in probs.iter().enumerate() {
                acc += x;
                if acc >= f64::from(p.top_p) {
                    keep = i + 1;
                    break;
                }
            }
        }
        let total: f64 = probs[..keep].iter().sum();
        let mut r = self.rng.next_f64() * total;
        for (i, x) in probs[..keep].iter().enumerate() {
            r -= x;
            if r <= 0.0 {
                return cand[i];
            }
        }
        cand[keep - 1]
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
