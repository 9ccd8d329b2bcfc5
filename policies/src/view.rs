/// What a policy may know about one worker at the moment of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerView<'a> {
    /// The worker's base URL; stable identity across snapshots.
    pub url: &'a str,
    /// False when the worker is unhealthy, its breaker is open, or it was
    /// already tried for this request.
    pub available: bool,
    /// Requests the gateway currently has in flight on this worker.
    pub in_flight: u64,
}

/// What a policy may know about the request being routed.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestFeatures<'a> {
    /// The prompt text (or a stable rendering of chat messages), used by
    /// cache-aware routing. `None` when the request has no textual prompt.
    pub text: Option<&'a str>,
}

/// Indices of the available workers, in snapshot order.
pub(crate) fn available<'a>(workers: &'a [WorkerView<'_>]) -> impl Iterator<Item = usize> + 'a {
    workers
        .iter()
        .enumerate()
        .filter(|(_, w)| w.available)
        .map(|(i, _)| i)
}

/// Index of the `n`-th available worker (0-based), if there are that many.
pub(crate) fn nth_available(workers: &[WorkerView<'_>], n: usize) -> Option<usize> {
    available(workers).nth(n)
}

/// Index of the available worker with the fewest requests in flight; the first
/// one in snapshot order wins ties.
pub(crate) fn least_in_flight(workers: &[WorkerView<'_>]) -> Option<usize> {
    available(workers).min_by_key(|&i| workers[i].in_flight)
}
