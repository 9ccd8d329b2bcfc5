//! Response bodies: a timed sequence of chunks that owns the request's [`RequestGuard`], so a
//! body dropped before its end (client gone) counts as cancelled.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::time::Instant;

use super::stats::{MockEnding, RequestGuard};

pub(crate) use crate::engine_http::{BoxError, EngineBody as MockBody};

/// One chunk of a timed body, written `gap` after the previous one (or after the headers).
pub(crate) struct Step {
    pub gap: Duration,
    pub data: Bytes,
}

struct State {
    steps: VecDeque<Step>,
    /// When the previous step was due; deadlines accumulate so coarse timers don't drift.
    last: Option<Instant>,
    guard: Option<RequestGuard>,
    abort: bool,
}

/// A body that writes `steps` on schedule, then ends (guard: completed) or, with `abort`, fails
/// so hyper tears the connection down mid-body (guard: failed).
pub(crate) fn timed(steps: Vec<Step>, abort: bool, guard: RequestGuard) -> MockBody {
    let state = State {
        steps: steps.into(),
        last: None,
        guard: Some(guard),
        abort,
    };
    let frames = stream::unfold(state, |mut st| async move {
        let Some(step) = st.steps.pop_front() else {
            let guard = st.guard.take()?;
            if !st.abort {
                // An empty body (a complete one finished with its last step).
                guard.finish(MockEnding::Completed);
                return None;
            }
            // Return Pending once so hyper flushes what was written before the abort.
            tokio::task::yield_now().await;
            guard.finish(MockEnding::Failed);
            let err: BoxError = "injected mid-stream drop".into();
            return Some((Err(err), st));
        };
        let due = st.last.unwrap_or_else(Instant::now) + step.gap;
        if !step.gap.is_zero() {
            tokio::time::sleep_until(due).await;
        }
        st.last = Some(due);
        // Hyper stops polling a body once its content-length is written: finish with the last
        // step rather than at end-of-stream.
        if st.steps.is_empty() && !st.abort {
            if let Some(guard) = st.guard.take() {
                guard.finish(MockEnding::Completed);
            }
        }
        Some((Ok(Frame::data(step.data)), st))
    });
    StreamBody::new(frames).boxed_unsync()
}
