use std::sync::atomic::{AtomicUsize, Ordering};

use crate::view::{available, nth_available};
use crate::{RequestFeatures, RoutingPolicy, WorkerView};

/// Cycles through the available workers.
///
/// The counter selects the k-th *available* worker rather than the k-th
/// worker, so an unavailable worker does not hand its turns to its neighbour
/// (which would give that neighbour double load while the other is down).
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new() -> Self {
        Self::default()
    }
}

impl RoutingPolicy for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn pick(&self, workers: &[WorkerView<'_>], _request: &RequestFeatures<'_>) -> Option<usize> {
        let count = available(workers).count();
        if count == 0 {
            return None;
        }
        // fetch_add wraps on overflow, so the counter never panics.
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        nth_available(workers, turn % count)
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

    fn picks(policy: &RoundRobin, workers: &[WorkerView<'_>], n: usize) -> Vec<Option<usize>> {
        (0..n)
            .map(|_| policy.pick(workers, &RequestFeatures::default()))
            .collect()
    }

    #[test]
    fn cycles_in_order() {
        let rr = RoundRobin::new();
        let ws = [w("a", true), w("b", true), w("c", true)];
        let got = picks(&rr, &ws, 6);
        assert_eq!(got, [0, 1, 2, 0, 1, 2].map(Some));
    }

    #[test]
    fn skips_unavailable_and_spreads_evenly() {
        let rr = RoundRobin::new();
        let ws = [w("a", true), w("b", false), w("c", true), w("d", true)];
        let mut counts = [0usize; 4];
        for p in picks(&rr, &ws, 300) {
            counts[p.expect("some available")] += 1;
        }
        assert_eq!(counts, [100, 0, 100, 100]);
    }

    #[test]
    fn none_when_nothing_available() {
        let rr = RoundRobin::new();
        assert_eq!(picks(&rr, &[], 2), [None, None]);
        let ws = [w("a", false), w("b", false)];
        assert_eq!(picks(&rr, &ws, 2), [None, None]);
    }

    #[test]
    fn survives_counter_wraparound() {
        let rr = RoundRobin {
            next: AtomicUsize::new(usize::MAX),
        };
        let ws = [w("a", true), w("b", true), w("c", true)];
        for p in picks(&rr, &ws, 4) {
            assert!(p.is_some_and(|i| i < 3));
        }
    }
}
