//! Counters, request recording and the RAII guard that classifies each generation request.

use std::sync::{Arc, Mutex};

/// A snapshot of a mock's counters.
///
/// Every generation request (`/v1/chat/completions`, `/v1/completions`, `/generate`) increments
/// `requests` and `active` on arrival and ends in exactly one of `completed`, `failed` or `cancelled`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MockStats {
    /// Generation requests received.
    pub requests: u64,
    /// Generation requests answered with a 2xx whose body was produced to the end.
    pub completed: u64,
    /// Generation requests whose client went away before the mock finished (handler or body dropped).
    pub cancelled: u64,
    /// Generation requests in progress (waiting, generating or streaming).
    pub active: u64,
    /// `GET /health` calls (answered 200 or 503).
    pub health_checks: u64,
    /// vLLM decode requests without `kv_transfer_params` (the decoder had to prefill itself).
    pub local_prefills: u64,
    /// vLLM decode requests rejected because their `kv_transfer_params` matched no issued entry.
    pub rejected_params: u64,
    /// Generation requests that ended in an error answer, an injected fault or an aborted stream.
    pub failed: u64,
    /// `POST /tokenize` and `/detokenize` calls (not generation requests: counted here only).
    pub tokenize_calls: u64,
}

/// One generation request as the mock received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub path: String,
    pub headers: http::HeaderMap,
    /// The parsed JSON body, or `Value::Null` when the body was not valid JSON.
    pub body: serde_json::Value,
}

/// The mock's counters, awaitable.
pub(crate) type StatsCell = crate::engine_http::StatsCell<MockStats>;

/// Requests recorded in arrival order.
#[derive(Default)]
pub(crate) struct Recorder {
    requests: Mutex<Vec<RecordedRequest>>,
}

impl Recorder {
    pub(crate) fn push(&self, req: RecordedRequest) {
        lock(&self.requests).push(req);
    }

    pub(crate) fn all(&self) -> Vec<RecordedRequest> {
        lock(&self.requests).clone()
    }
}

/// How a generation request ended, when the mock itself ended it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum MockEnding {
    Completed,
    Failed,
}

/// Tracks one generation request: counted `active` while alive; dropped without
/// [`RequestGuard::finish`] means the client went away (`cancelled`).
pub(crate) struct RequestGuard {
    stats: Arc<StatsCell>,
    finished: bool,
}

impl RequestGuard {
    pub(crate) fn start(stats: Arc<StatsCell>) -> Self {
        stats.update(|s| {
            s.requests += 1;
            s.active += 1;
        });
        Self {
            stats,
            finished: false,
        }
    }

    pub(crate) fn finish(mut self, outcome: MockEnding) {
        self.finished = true;
        self.stats.update(|s| {
            s.active -= 1;
            match outcome {
                MockEnding::Completed => s.completed += 1,
                MockEnding::Failed => s.failed += 1,
            }
        });
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.stats.update(|s| {
                s.active -= 1;
                s.cancelled += 1;
            });
        }
    }
}

/// Locks a mutex, ignoring poisoning (a panicking test must not cascade into every other one).
pub(crate) use crate::engine_http::lock;
