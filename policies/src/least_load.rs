use std::sync::atomic::{AtomicUsize, Ordering};

use crate::view::available;
use crate::{RequestFeatures, RoutingPolicy, WorkerView};

/// Picks the available worker with the fewest requests in flight.
///
/// Ties are broken round-robin: with a snapshot where several workers are
/// equally (often: un-) loaded, always taking the first would pile a burst of
/// requests onto one worker before its in-flight count catches up.
#[derive(Debug, Default)]
pub struct LeastLoad {
    tie_breaker: AtomicUsize,
}

impl LeastLoad {
    pub fn new() -> Self {
        Self::default()
    }
}

impl RoutingPolicy for LeastLoad {
    fn name(&self) -> &'static str {
        "least_load"
    }

    fn pick(&self, workers: &[WorkerView<'_>], _request: &RequestFeatures<'_>) -> Option<usize> {
        let min = available(workers).map(|i| workers[i].in_flight).min()?;
        let tied = || available(workers).filter(move |&i| workers[i].in_flight == min);
        let count = tied().count();
        // count >= 1 because `min` came from an available worker; max(1) keeps
        // the modulo panic-free regardless.
        let turn = self.tie_breaker.fetch_add(1, Ordering::Relaxed) % count.max(1);
        tied().nth(turn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(url: &str, available: bool, in_flight: u64) -> WorkerView<'_> {
        WorkerView {
            url,
            available,
            in_flight,
        }
    }

    fn pick(p: &LeastLoad, ws: &[WorkerView<'_>]) -> Option<usize> {
        p.pick(ws, &RequestFeatures::default())
    }

    #[test]
    fn picks_minimum() {
        let p = LeastLoad::new();
        let ws = [w("a", true, 5), w("b", true, 1), w("c", true, 3)];
        for _ in 0..10 {
            assert_eq!(pick(&p, &ws), Some(1));
        }
    }

    #[test]
    fn skips_unavailable_even_if_idle() {
        let p = LeastLoad::new();
        let ws = [w("a", false, 0), w("b", true, 4), w("c", true, 2)];
        assert_eq!(pick(&p, &ws), Some(2));
    }

    #[test]
    fn ties_rotate() {
        let p = LeastLoad::new();
        let ws = [
            w("a", true, 2),
            w("b", true, 0),
            w("c", false, 0),
            w("d", true, 0),
            w("e", true, 0),
        ];
        let got: Vec<_> = (0..6).map(|_| pick(&p, &ws)).collect();
        assert_eq!(got, [1, 3, 4, 1, 3, 4].map(Some));
    }

    #[test]
    fn none_when_nothing_available() {
        let p = LeastLoad::new();
        assert_eq!(pick(&p, &[]), None);
        assert_eq!(pick(&p, &[w("a", false, 0)]), None);
    }

    #[test]
    fn property_simulated_load_stays_balanced() {
        // Route 1000 requests, counting each pick as in flight: least-load
        // keeps every worker within one request of the others.
        let p = LeastLoad::new();
        let urls = ["a", "b", "c", "d", "e"];
        let mut load = [0u64; 5];
        for _ in 0..1000 {
            let ws: Vec<_> = urls.iter().zip(load).map(|(u, l)| w(u, true, l)).collect();
            load[pick(&p, &ws).expect("available")] += 1;
        }
        let (min, max) = (load.iter().min(), load.iter().max());
        assert_eq!(min, max, "{load:?}");
    }
}
