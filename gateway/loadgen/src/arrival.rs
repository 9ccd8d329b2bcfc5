//! Open-loop arrival times: gamma-distributed inter-arrival gaps with shape = burstiness and
//! mean 1/rate (burstiness 1 is a Poisson process), as `vllm bench serve --burstiness` draws them.
//! An infinite rate sends every request at once.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Gamma};

/// Invalid arrival parameters.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ArrivalError {
    #[error("request rate must be > 0 (or inf), got {0}")]
    Rate(f64),
    #[error("burstiness must be a finite number > 0, got {0}")]
    Burstiness(f64),
}

/// When requests are sent, relative to the start of a run.
#[derive(Clone, Debug)]
pub struct Arrivals {
    rate: f64,
    gamma: Option<Gamma<f64>>,
    rng: StdRng,
    next: f64,
}

impl Arrivals {
    /// `rate` in requests per second (`f64::INFINITY`: all at once); `burstiness` is the gamma
    /// shape (1 = Poisson, < 1 burstier, > 1 more regular).
    pub fn new(rate: f64, burstiness: f64, seed: u64) -> Result<Self, ArrivalError> {
        if rate.is_nan() || rate <= 0.0 {
            return Err(ArrivalError::Rate(rate));
        }
        if !burstiness.is_finite() || burstiness <= 0.0 {
            return Err(ArrivalError::Burstiness(burstiness));
        }
        let gamma = if rate.is_finite() {
            // Mean of Gamma(k, θ) is kθ: θ = 1 / (rate · k) gives mean 1 / rate.
            let theta = 1.0 / (rate * burstiness);
            Some(Gamma::new(burstiness, theta).map_err(|_| ArrivalError::Rate(rate))?)
        } else {
            None
        };
        Ok(Self {
            rate,
            gamma,
            rng: StdRng::seed_from_u64(seed),
            next: 0.0,
        })
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The offsets of the first `n` arrivals.
    pub fn take_n(&mut self, n: usize) -> Vec<Duration> {
        self.by_ref().take(n).collect()
    }
}

impl Iterator for Arrivals {
    type Item = Duration;

    /// The next arrival's offset from the start. The first request is sent at once, then each
    /// waits one gap after the previous (vLLM's generator yields, then sleeps).
    fn next(&mut self) -> Option<Duration> {
        let at = self.next;
        if let Some(g) = &self.gamma {
            self.next += g.sample(&mut self.rng);
        }
        Some(Duration::from_secs_f64(at.min(1e9)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaps(rate: f64, burstiness: f64, n: usize) -> Vec<f64> {
        let t = Arrivals::new(rate, burstiness, 7).unwrap().take_n(n + 1);
        t.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect()
    }

    fn mean_var(xs: &[f64]) -> (f64, f64) {
        let m = xs.iter().sum::<f64>() / xs.len() as f64;
        let v = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64;
        (m, v)
    }

    #[test]
    fn poisson_mean_and_variance() {
        let (m, v) = mean_var(&gaps(4.0, 1.0, 20_000));
        assert!((m - 0.25).abs() < 0.25 * 0.03, "mean {m}");
        // Exponential: variance = mean².
        assert!((v - 0.0625).abs() < 0.0625 * 0.08, "var {v}");
    }

    #[test]
    fn burstiness_keeps_mean_and_scales_variance() {
        // Gamma(k, 1/(rate k)): variance = 1 / (k rate²).
        for k in [0.25, 4.0] {
            let (m, v) = mean_var(&gaps(10.0, k, 40_000));
            assert!((m - 0.1).abs() < 0.1 * 0.05, "k {k}: mean {m}");
            let want = 1.0 / (k * 100.0);
            assert!((v - want).abs() < want * 0.15, "k {k}: var {v} want {want}");
        }
    }

    #[test]
    fn seeded_and_starts_at_zero() {
        let a = Arrivals::new(3.0, 1.0, 42).unwrap().take_n(50);
        let b = Arrivals::new(3.0, 1.0, 42).unwrap().take_n(50);
        let c = Arrivals::new(3.0, 1.0, 43).unwrap().take_n(50);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a[0], Duration::ZERO);
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn infinite_rate_is_all_at_once() {
        let a = Arrivals::new(f64::INFINITY, 1.0, 1).unwrap().take_n(10);
        assert!(a.iter().all(|d| d.is_zero()));
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(Arrivals::new(0.0, 1.0, 1).is_err());
        assert!(Arrivals::new(-1.0, 1.0, 1).is_err());
        assert!(Arrivals::new(f64::NAN, 1.0, 1).is_err());
        assert!(Arrivals::new(1.0, 0.0, 1).is_err());
        assert!(Arrivals::new(1.0, f64::INFINITY, 1).is_err());
    }
}
