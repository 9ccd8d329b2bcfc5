//! Stages that ship with Baton.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Admission, Admit, Filter, Picker, PluginError, Scorer};
use crate::{RequestFeatures, WorkerView};

/// Keeps available workers (the pipeline already skips unavailable ones;
/// this makes the intent explicit in configs).
#[derive(Debug, Default)]
pub struct Available;

impl Filter for Available {
    fn name(&self) -> &str {
        "available"
    }
    fn keep(&self, w: &WorkerView<'_>, _: &RequestFeatures<'_>) -> Result<bool, PluginError> {
        Ok(w.available)
    }
}

/// Drops workers with `max` or more requests in flight.
#[derive(Debug)]
pub struct MaxInFlight {
    pub max: u64,
}

impl Filter for MaxInFlight {
    fn name(&self) -> &str {
        "max_in_flight"
    }
    fn keep(&self, w: &WorkerView<'_>, _: &RequestFeatures<'_>) -> Result<bool, PluginError> {
        Ok(w.in_flight < self.max)
    }
}

/// Fewer requests in flight scores higher.
#[derive(Debug, Default)]
pub struct LeastLoadScorer;

impl Scorer for LeastLoadScorer {
    fn name(&self) -> &str {
        "least_load"
    }
    fn score(
        &self,
        c: &[WorkerView<'_>],
        _: &RequestFeatures<'_>,
    ) -> Result<Vec<f64>, PluginError> {
        Ok(c.iter().map(|w| -(w.in_flight as f64)).collect())
    }
}

/// Highest score wins; ties rotate so equal workers share load.
#[derive(Debug, Default)]
pub struct MaxScorePicker {
    turn: AtomicUsize,
}

impl Picker for MaxScorePicker {
    fn pick(&self, scored: &[(usize, f64)]) -> Option<usize> {
        let best = scored
            .iter()
            .map(|(_, s)| *s)
            .fold(f64::NEG_INFINITY, f64::max);
        let top: Vec<usize> = scored
            .iter()
            .filter(|(_, s)| (*s - best).abs() <= 1e-9)
            .map(|(i, _)| *i)
            .collect();
        if top.is_empty() {
            return None;
        }
        let t = self.turn.fetch_add(1, Ordering::Relaxed);
        Some(top[t % top.len()])
    }
}

/// Picks at random with probability proportional to score (plus a floor so
/// the lowest-scored worker still gets a little traffic).
#[derive(Debug)]
pub struct WeightedRandomPicker {
    rng: Mutex<StdRng>,
}

impl WeightedRandomPicker {
    pub fn with_seed(seed: u64) -> Self {
        Self {
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        }
    }
}

impl Default for WeightedRandomPicker {
    fn default() -> Self {
        Self {
            rng: Mutex::new(StdRng::from_os_rng()),
        }
    }
}

impl Picker for WeightedRandomPicker {
    fn pick(&self, scored: &[(usize, f64)]) -> Option<usize> {
        let floor = 0.05;
        let total: f64 = scored.iter().map(|(_, s)| s.max(0.0) + floor).sum();
        if scored.is_empty() || total <= 0.0 {
            return None;
        }
        let mut x = self
            .rng
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .random_range(0.0..total);
        for (i, s) in scored {
            x -= s.max(0.0) + floor;
            if x < 0.0 {
                return Some(*i);
            }
        }
        scored.last().map(|(i, _)| *i)
    }
}

/// Sheds load when every available worker already has `max_in_flight`.
#[derive(Debug)]
pub struct QueueCap {
    pub max_in_flight: u64,
    pub retry_after_ms: u64,
}

impl Admission for QueueCap {
    fn name(&self) -> &str {
        "queue_cap"
    }
    fn admit(
        &self,
        workers: &[WorkerView<'_>],
        _: &RequestFeatures<'_>,
    ) -> Result<Admit, PluginError> {
        let room = workers
            .iter()
            .any(|w| w.available && w.in_flight < self.max_in_flight);
        Ok(if room {
            Admit::Yes
        } else {
            Admit::Reject {
                retry_after_ms: self.retry_after_ms,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pickers() {
        let p = MaxScorePicker::default();
        assert_eq!(p.pick(&[]), None);
        let tie = [(3, 1.0), (5, 1.0), (7, 0.2)];
        let a = p.pick(&tie).unwrap();
        let b = p.pick(&tie).unwrap();
        assert_ne!(a, b);
        assert!([3, 5].contains(&a) && [3, 5].contains(&b));
        let r = WeightedRandomPicker::with_seed(1);
        let mut hits = [0u32; 2];
        for _ in 0..1000 {
            match r.pick(&[(0, 1.0), (1, 0.0)]) {
                Some(0) => hits[0] += 1,
                Some(1) => hits[1] += 1,
                other => panic!("{other:?}"),
            }
        }
        assert!(hits[0] > 900 && hits[1] > 10, "{hits:?}");
    }
}
