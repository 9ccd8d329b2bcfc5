use rand::Rng;

use crate::random::SharedRng;
use crate::view::{available, nth_available};
use crate::{RequestFeatures, RoutingPolicy, WorkerView};

/// "Power of two choices": samples two distinct available workers and takes
/// the one with fewer requests in flight.
///
/// Nearly as balanced as least-load, but a burst of decisions made on the same
/// (stale) snapshot does not all land on the single least-loaded worker.
#[derive(Debug)]
pub struct PowerOfTwo {
    rng: SharedRng,
}

impl PowerOfTwo {
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

impl Default for PowerOfTwo {
    fn default() -> Self {
        Self::new()
    }
}

impl RoutingPolicy for PowerOfTwo {
    fn name(&self) -> &'static str {
        "power_of_two"
    }

    fn pick(&self, workers: &[WorkerView<'_>], _request: &RequestFeatures<'_>) -> Option<usize> {
        let count = available(workers).count();
        if count <= 1 {
            return nth_available(workers, 0);
        }
        let (a, b) = {
            let mut rng = self.rng.lock();
            let a = rng.random_range(0..count);
            // Draw from the remaining count-1 slots and shift past `a`, so the
            // two are distinct without rejection sampling.
            let b = rng.random_range(0..count - 1);
            (a, if b >= a { b + 1 } else { b })
        };
        let a = nth_available(workers, a)?;
        let b = nth_available(workers, b)?;
        // On a tie keep the first draw, which is itself uniformly random.
        if workers[b].in_flight < workers[a].in_flight {
            Some(b)
        } else {
            Some(a)
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    fn w(url: &str, available: bool, in_flight: u64) -> WorkerView<'_> {
        WorkerView {
            url,
            available,
            in_flight,
        }
    }

    fn pick(p: &PowerOfTwo, ws: &[WorkerView<'_>]) -> Option<usize> {
        p.pick(ws, &RequestFeatures::default())
    }

    #[test]
    fn two_workers_always_lower_load() {
        let p = PowerOfTwo::with_seed(3);
        let ws = [w("a", true, 9), w("b", true, 2)];
        for _ in 0..100 {
            assert_eq!(pick(&p, &ws), Some(1));
        }
    }

    #[test]
    fn never_picks_the_most_loaded_of_many() {
        // The two samples are distinct, so the single busiest worker can only
        // win if both samples were it, which cannot happen.
        let p = PowerOfTwo::with_seed(11);
        let ws = [
            w("a", true, 1),
            w("b", true, 2),
            w("c", true, 100),
            w("d", true, 3),
        ];
        let mut counts = [0usize; 4];
        for _ in 0..2000 {
            counts[pick(&p, &ws).expect("available")] += 1;
        }
        assert_eq!(counts[2], 0);
        // The least loaded wins whenever it is sampled: 3 of the 6 pairs.
        assert!(counts[0] > counts[1] && counts[1] > counts[3], "{counts:?}");
        assert!(counts[0] > 800, "{counts:?}");
    }

    #[test]
    fn skips_unavailable() {
        let p = PowerOfTwo::with_seed(5);
        let ws = [
            w("a", false, 0),
            w("b", true, 7),
            w("c", false, 0),
            w("d", true, 4),
        ];
        for _ in 0..200 {
            assert_eq!(pick(&p, &ws), Some(3));
        }
        let one = [w("a", false, 0), w("b", true, 50)];
        assert_eq!(pick(&p, &one), Some(1));
    }

    #[test]
    fn none_when_nothing_available() {
        let p = PowerOfTwo::with_seed(5);
        assert_eq!(pick(&p, &[]), None);
        assert_eq!(pick(&p, &[w("a", false, 0), w("b", false, 0)]), None);
    }

    #[test]
    fn property_result_is_available_and_not_worse_than_max() {
        // Many random pools: the pick is always available, and it is never the
        // strictly unique maximum when at least two workers are available.
        let p = PowerOfTwo::with_seed(99);
        let mut rng = StdRng::seed_from_u64(1234);
        let urls: Vec<String> = (0..8).map(|i| format!("http://w{i}")).collect();
        for _ in 0..500 {
            let n = rng.random_range(0..=8usize);
            let ws: Vec<WorkerView<'_>> = urls[..n]
                .iter()
                .map(|u| w(u, rng.random_bool(0.7), rng.random_range(0..20)))
                .collect();
            let avail: Vec<usize> = available(&ws).collect();
            match pick(&p, &ws) {
                None => assert!(avail.is_empty()),
                Some(i) => {
                    assert!(ws[i].available);
                    let max = avail.iter().map(|&j| ws[j].in_flight).max();
                    let unique_max = avail.iter().filter(|&&j| Some(ws[j].in_flight) == max);
                    if avail.len() >= 2 && unique_max.count() == 1 {
                        assert_ne!(Some(ws[i].in_flight), max);
                    }
                }
            }
        }
    }
}
