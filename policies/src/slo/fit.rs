//! Online estimators fed by observed timings.

use serde::{Deserialize, Serialize};

/// Exponentially weighted moving average.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ewma {
    pub value: Option<f64>,
    pub alpha: f64,
}

impl Ewma {
    pub fn new(alpha: f64) -> Self {
        Self {
            value: None,
            alpha: alpha.clamp(0.0, 1.0),
        }
    }

    pub fn observe(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        self.value = Some(match self.value {
            None => x,
            Some(v) => v + self.alpha * (x - v),
        });
    }

    pub fn get_or(&self, default: f64) -> f64 {
        self.value.unwrap_or(default)
    }
}

/// TPOT ≈ `base_ms + per_seq_ms × batch`, fitted by exponentially forgetting
/// least squares over (batch size, observed TPOT) pairs. Until the data
/// determine a slope it answers with the prior.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TpotFit {
    prior_base_ms: f64,
    prior_per_seq_ms: f64,
    decay: f64,
    n: f64,
    sx: f64,
    sy: f64,
    sxx: f64,
    sxy: f64,
}

impl TpotFit {
    pub fn new(prior_base_ms: f64, prior_per_seq_ms: f64) -> Self {
        Self {
            prior_base_ms,
            prior_per_seq_ms,
            decay: 0.98,
            n: 0.0,
            sx: 0.0,
            sy: 0.0,
            sxx: 0.0,
            sxy: 0.0,
        }
    }

    pub fn observe(&mut self, batch: f64, tpot_ms: f64) {
        if !(batch.is_finite() && tpot_ms.is_finite()) || tpot_ms < 0.0 {
            return;
        }
        let d = self.decay;
        self.n = self.n * d + 1.0;
        self.sx = self.sx * d + batch;
        self.sy = self.sy * d + tpot_ms;
        self.sxx = self.sxx * d + batch * batch;
        self.sxy = self.sxy * d + batch * tpot_ms;
    }

    /// `(base_ms, per_seq_ms)` currently in use.
    pub fn coefficients(&self) -> (f64, f64) {
        if self.n < 1.0 {
            return (self.prior_base_ms, self.prior_per_seq_ms);
        }
        let mean_x = self.sx / self.n;
        let mean_y = self.sy / self.n;
        let var = self.sxx / self.n - mean_x * mean_x;
        if var < 0.25 || self.n < 4.0 {
            // Batch sizes seen so far barely vary: keep the prior slope and
            // fit only the level.
            let slope = self.prior_per_seq_ms;
            return ((mean_y - slope * mean_x).max(0.0), slope);
        }
        let slope = ((self.sxy / self.n - mean_x * mean_y) / var).max(0.0);
        ((mean_y - slope * mean_x).max(0.0), slope)
    }

    pub fn predict(&self, batch: f64) -> f64 {
        let (a, b) = self.coefficients();
        a + b * batch.max(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ewma_tracks() {
        let mut e = Ewma::new(0.5);
        assert_eq!(e.get_or(3.0), 3.0);
        e.observe(10.0);
        e.observe(20.0);
        assert_eq!(e.value, Some(15.0));
        e.observe(f64::NAN);
        assert_eq!(e.value, Some(15.0));
    }

    #[test]
    fn fit_recovers_a_line_and_falls_back_to_the_prior() {
        let mut f = TpotFit::new(20.0, 1.0);
        assert_eq!(f.predict(4.0), 24.0);
        for b in 1..=32 {
            f.observe(b as f64, 10.0 + 2.0 * b as f64);
        }
        let (a, s) = f.coefficients();
        assert!((a - 10.0).abs() < 1e-6 && (s - 2.0).abs() < 1e-6, "{a} {s}");
        assert!((f.predict(64.0) - 138.0).abs() < 1e-6);
        // Constant batch: level is fitted, slope stays the prior.
        let mut g = TpotFit::new(20.0, 1.0);
        for _ in 0..10 {
            g.observe(8.0, 40.0);
        }
        assert!((g.predict(8.0) - 40.0).abs() < 1e-9);
        assert!((g.predict(9.0) - 41.0).abs() < 1e-9);
    }
}
