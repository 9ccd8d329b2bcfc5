use std::sync::{Mutex, MutexGuard};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::view::{available, nth_available};
use crate::{RequestFeatures, RoutingPolicy, WorkerView};

/// A seedable RNG shared by the randomised policies.
///
/// Behind a `Mutex` because `pick` takes `&self`; the critical section is a
/// single draw, so contention is negligible.
#[derive(Debug)]
pub(crate) struct SharedRng(Mutex<StdRng>);

impl SharedRng {
    pub(crate) fn from_os() -> Self {
        Self(Mutex::new(StdRng::from_os_rng()))
    }

    pub(crate) fn seeded(seed: u64) -> Self {
        Self(Mutex::new(StdRng::seed_from_u64(seed)))
    }

    /// Locks the RNG. A poisoned lock is still usable: an RNG has no invariant
    /// that a panicking holder could break.
    pub(crate) fn lock(&self) -> MutexGuard<'_, StdRng> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Picks uniformly among the available workers.
#[derive(Debug)]
pub struct Random {
    rng: SharedRng,
}

impl Random {
    /// Seeded from the operating system.
    pub fn new() -> Self {
        Self {
            rng: SharedRng::from_os(),
        }
    }

    /// Deterministic sequence, for tests and reproducible simulations.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            rng: SharedRng::seeded(seed),
        }
    }
}

impl Default for Random {
    fn default() -> Self {
        Self::new()
    }
}

impl RoutingPolicy for Random {
    fn name(&self) -> &'static str {
        "random"
    }

    fn pick(&self, workers: &[WorkerView<'_>], _request: &RequestFeatures<'_>) -> Option<usize> {
        let count = available(workers).count();
        if count == 0 {
            return None;
        }
        let n = self.rng.lock().random_range(0..count);
        nth_available(workers, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(url: &str, available: bool) -> WorkerView<'_> {
        WorkerView {
            url,
            available,
            in_flight: 0,
        }
    }

    #[test]
    fn only_picks_available_and_covers_them_all() {
        let r = Random::with_seed(7);
        let ws = [w("a", false), w("b", true), w("c", false), w("d", true)];
        let mut counts = [0usize; 4];
        for _ in 0..1000 {
            let i = r.pick(&ws, &RequestFeatures::default()).expect("available");
            counts[i] += 1;
        }
        assert_eq!(counts[0] + counts[2], 0);
        // Uniform: each of the two gets about half.
        assert!(counts[1] > 400 && counts[3] > 400, "{counts:?}");
    }

    #[test]
    fn none_when_nothing_available() {
        let r = Random::with_seed(1);
        assert_eq!(r.pick(&[], &RequestFeatures::default()), None);
        assert_eq!(r.pick(&[w("a", false)], &RequestFeatures::default()), None);
    }

    #[test]
    fn same_seed_same_sequence() {
        let ws = [w("a", true), w("b", true), w("c", true), w("d", true)];
        let run = |seed| {
            let r = Random::with_seed(seed);
            (0..50)
                .map(|_| r.pick(&ws, &RequestFeatures::default()))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
    }
}
