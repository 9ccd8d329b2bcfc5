//! Executing a request's upstream plan, with retries.
//!
//! One *attempt* picks workers, runs the mode's legs ([`aggregated`],
//! [`vllm`], [`sglang`]) and either returns the client response (whose body
//! may still be streaming) or an [`AttemptError`]. This module owns the
//! retry loop: an attempt that failed before any byte reached the client is
//! retried on freshly chosen workers with jittered backoff.

mod aggregated;
mod reply;
mod sglang;
mod vllm;

use std::sync::Arc;
use std::time::Duration;

use baton_protocol::ClientRequest;
use http::{HeaderMap, Response};
use rand::Rng;
use tokio::time::Instant;

use crate::body::GatewayBody;
use crate::config::{Mode, PdProtocol, RetryConfig};
use crate::error::{ErrorKind, GatewayError, Leg};
use crate::lifecycle::{EndReport, Ending, Lifecycle};
use crate::respond::error_response;
use crate::slo::classify::SloTarget;
use crate::slo::{Admission, Forced};
use crate::state::AppState;
use crate::upstream::EngineClient;
use crate::worker::Worker;

/// One client request, validated.
#[derive(Debug)]
pub struct Ctx {
    pub req: ClientRequest,
    /// The client's headers (only tracing/organization ones are forwarded).
    pub headers: HeaderMap,
    /// The gateway's id of this request (the client's `x-request-id` or a
    /// generated one); sent to engines as `x-baton-request-id`.
    pub request_id: String,
    pub start: Instant,
    pub deadline: Instant,
    /// The SLO this request is held to.
    pub slo: SloTarget,
    /// Estimated prompt tokens (for load tracking and placement).
    pub prompt_tokens: u64,
}

impl Ctx {
    /// What this request's load tickets know of its SLO.
    pub fn stamp(&self, tracker: &crate::slo::tracker::LoadTracker) -> crate::slo::tracker::Stamp {
        let arrival_ms = tracker.ms_at(self.start);
        crate::slo::tracker::Stamp {
            arrival_ms,
            deadline_ms: self.slo.budget.ttft_ms.map(|t| arrival_ms + t),
            tpot_ms: self.slo.budget.tpot_ms,
        }
    }

    /// `x-baton-slo` for this request's engine calls (both legs); `None`
    /// without a budget.
    pub fn engine_slo(&self) -> Option<http::HeaderValue> {
        crate::slo::engine_slo_header(self.start, self.slo.budget)
    }
}

/// Workers already used by this request, per pool.
#[derive(Debug, Default)]
pub struct Tried {
    pub primary: Vec<Arc<Worker>>,
    pub decode: Vec<Arc<Worker>>,
}

/// A failed attempt and the worker whose breaker should hear of it (none
/// when the failure was already recorded, or was nobody's fault).
#[derive(Debug)]
pub struct AttemptError {
    pub error: GatewayError,
    pub worker: Option<Arc<Worker>>,
}

impl AttemptError {
    pub fn of(error: GatewayError, worker: Option<&Arc<Worker>>) -> Self {
        Self {
            error,
            worker: worker.cloned(),
        }
    }
}

impl From<GatewayError> for AttemptError {
    fn from(error: GatewayError) -> Self {
        Self {
            error,
            worker: None,
        }
    }
}

type AttemptResult = Result<Response<GatewayBody>, AttemptError>;

/// The SLO policy's placement for an attempt, if any.
pub type ForcedPlacement<'a> = Option<&'a Forced>;

/// Serves one request to completion of its head (the body may stream on).
/// The request's lifecycle guard ends here on a refusal or error, or moves
/// into the response of the attempt that answers.
pub async fn dispatch(state: &Arc<AppState>, ctx: Ctx, life: Lifecycle) -> Response<GatewayBody> {
    dispatch_with(state, &state.upstream, ctx, life).await
}

/// [`dispatch`] with the engine calls made by `engine` (the unit tests'
/// scripted engine; [`crate::upstream::Upstream`] in production).
pub async fn dispatch_with<E: EngineClient>(
    state: &Arc<AppState>,
    engine: &E,
    ctx: Ctx,
    life: Lifecycle,
) -> Response<GatewayBody> {
    let mut life = Some(life);
    // Policy plugins may shed load before anything is sent.
    for pool in state.pools.all() {
        if let baton_policies::pipeline::Admit::Reject { retry_after_ms } =
            pool.admit(ctx.req.routing_text()).await
        {
            return reject(life, Duration::from_millis(retry_after_ms));
        }
    }
    let mut forced = None;
    if state.slo.config.routing {
        let req = crate::slo::slo_request(&ctx.req, ctx.prompt_tokens, ctx.slo.budget);
        let admission = tokio::time::timeout_at(
            ctx.deadline,
            state.slo.admit(state.mode, &state.pools, &req, ctx.start),
        )
        .await
        .unwrap_or(Admission::Reject {
            retry_after: Duration::from_secs(1),
        });
        match admission {
            Admission::Admit(f) => forced = f,
            Admission::Reject { retry_after } => return reject(life, retry_after),
        }
    }
    state.slo.record_admission(
        &ctx.request_id,
        &ctx.slo,
        ctx.prompt_tokens,
        ctx.deadline.saturating_duration_since(ctx.start),
        forced.as_ref(),
    );
    let mut tried = Tried::default();
    let mut attempt: u32 = 0;
    let error = loop {
        // The SLO placement holds for the first attempt; retries re-pick.
        let placement = if attempt == 0 { forced.as_ref() } else { None };
        let fut = async {
            match state.mode {
                Mode::Aggregated => {
                    aggregated::attempt(state, engine, &ctx, &mut tried, placement, &mut life).await
                }
                Mode::Pd(PdProtocol::Vllm) => {
                    vllm::attempt(state, engine, &ctx, &mut tried, placement, &mut life).await
                }
                Mode::Pd(PdProtocol::Sglang) => {
                    sglang::attempt(state, engine, &ctx, &mut tried, placement, &mut life).await
                }
            }
        };
        let result = match tokio::time::timeout_at(ctx.deadline, fut).await {
            Ok(r) => r,
            Err(_) => Err(GatewayError::new(Leg::Gateway, ErrorKind::Timeout("request")).into()),
        };
        let failure = match result {
            Ok(mut resp) => {
                // The SLO engine's prediction, where it placed this attempt.
                if let Some(v) = placement.and_then(Forced::predicted_header) {
                    resp.headers_mut().insert(crate::slo::PREDICTED_HEADER, v);
                }
                return resp;
            }
            Err(f) => f,
        };
        let e = failure.error;
        if let (Some(l), false) = (&life, e.leg == Leg::Client) {
            l.upstream_error(&e);
        }
        if let Some(w) = &failure.worker {
            if e.counts_against_worker() {
                w.breaker.record_failure();
            }
        }
        if e.retryable() && attempt < state.config.retry.max_retries {
            let delay = backoff(&state.config.retry, attempt);
            if Instant::now() + delay < ctx.deadline {
                tracing::info!(request_id = %ctx.request_id, attempt, error = %e, ?delay, "retrying");
                attempt += 1;
                state.metrics.retries.inc();
                tokio::time::sleep(delay).await;
                continue;
            }
        }
        break e;
    };
    if error.leg != Leg::Client {
        tracing::warn!(request_id = %ctx.request_id, error = %error, "request failed");
    }
    if let Some(mut l) = life {
        // Each attempt's worker already heard its failure (above).
        l.end(EndReport::unserved(Ending::of(&error), l.start()));
    }
    error_response(&error)
}

/// Early rejection: 429 with `Retry-After`, counted as a miss.
fn reject(life: Option<Lifecycle>, retry_after: Duration) -> Response<GatewayBody> {
    let e = GatewayError::new(Leg::Gateway, ErrorKind::Rejected { retry_after });
    if let Some(mut l) = life {
        l.end(EndReport::unserved(Ending::Rejected, l.start()));
    }
    error_response(&e)
}

/// `initial × multiplier^attempt`, capped, ± jitter.
pub fn backoff(cfg: &RetryConfig, attempt: u32) -> Duration {
    let base = cfg.initial_backoff_ms as f64 * cfg.backoff_multiplier.max(1.0).powi(attempt as i32);
    let base = base.min(cfg.max_backoff_ms as f64);
    let jitter = cfg.jitter_factor.clamp(0.0, 1.0);
    let factor = if jitter > 0.0 {
        rand::rng().random_range(1.0 - jitter..=1.0 + jitter)
    } else {
        1.0
    };
    Duration::from_secs_f64((base * factor).max(0.0) / 1000.0)
}

/// A fresh id for one attempt's KV transfer (never the client's id: clients
/// such as `vllm bench serve` reuse theirs).
pub fn transfer_id() -> String {
    let mut rng = rand::rng();
    format!(
        "baton-{:016x}{:016x}",
        rng.random::<u64>(),
        rng.random::<u64>()
    )
}

/// Waits for a leg's response head within the first-byte timeout; a failure
/// is charged to `worker`.
pub async fn first_byte<B>(
    state: &AppState,
    leg: Leg,
    worker: &Arc<Worker>,
    send: impl std::future::Future<Output = Result<Response<B>, GatewayError>>,
) -> Result<Response<B>, AttemptError> {
    tokio::time::timeout(state.first_byte_timeout(), send)
        .await
        .unwrap_or_else(|_| Err(GatewayError::new(leg, ErrorKind::Timeout("first_byte"))))
        .map_err(|e| AttemptError::of(e, Some(worker)))
}

/// Picks from a pool (or takes the SLO policy's choice) or fails with "no
/// healthy worker" for that leg.
pub async fn pick(
    pool: &crate::pool::Pool,
    leg: Leg,
    ctx: &Ctx,
    tried: &mut Vec<Arc<Worker>>,
    forced: Option<&Arc<Worker>>,
) -> Result<Arc<Worker>, AttemptError> {
    let w = match forced {
        Some(w) => Arc::clone(w),
        None => pool
            .pick(ctx.req.routing_text(), tried)
            .await
            .ok_or_else(|| GatewayError::new(leg, ErrorKind::NoWorker))?,
    };
    tried.push(Arc::clone(&w));
    Ok(w)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod backoff_tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let cfg = RetryConfig {
            max_retries: 5,
            initial_backoff_ms: 100,
            max_backoff_ms: 300,
            backoff_multiplier: 2.0,
            jitter_factor: 0.0,
        };
        assert_eq!(backoff(&cfg, 0), Duration::from_millis(100));
        assert_eq!(backoff(&cfg, 1), Duration::from_millis(200));
        assert_eq!(backoff(&cfg, 5), Duration::from_millis(300));
        let jittered = RetryConfig {
            jitter_factor: 0.2,
            ..cfg
        };
        for _ in 0..100 {
            let d = backoff(&jittered, 0).as_secs_f64();
            assert!((0.08..=0.12).contains(&d), "{d}");
        }
        assert_ne!(transfer_id(), transfer_id());
    }
}
