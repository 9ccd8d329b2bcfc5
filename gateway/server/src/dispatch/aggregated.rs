//! Aggregated mode: one call to one OpenAI-compatible engine.

use std::sync::Arc;

use super::reply::{respond, Answer};
use super::{pick, AttemptError, AttemptResult, Ctx, Tried};
use crate::error::{ErrorKind, GatewayError, Leg};
use crate::state::{AppState, Pools};
use crate::upstream::CallIds;

pub async fn attempt(state: &Arc<AppState>, ctx: &Ctx, tried: &mut Tried) -> AttemptResult {
    let Pools::Aggregated(pool) = &state.pools else {
        return Err(GatewayError::new(Leg::Gateway, ErrorKind::NoWorker).into());
    };
    let worker = pick(pool, Leg::Worker, ctx, &mut tried.primary)?;
    let guard = worker.start_request();
    let send = state.upstream.post(
        Leg::Worker,
        &worker.url,
        ctx.req.endpoint.path(),
        CallIds {
            upstream: &ctx.request_id,
            request: &ctx.request_id,
        },
        &ctx.headers,
        ctx.req.to_bytes(),
    );
    let head = tokio::time::timeout(state.first_byte_timeout(), send)
        .await
        .unwrap_or_else(|_| {
            Err(GatewayError::new(
                Leg::Worker,
                ErrorKind::Timeout("first_byte"),
            ))
        })
        .map_err(|e| AttemptError::of(e, Some(&worker)))?;
    respond(
        state,
        ctx,
        Answer {
            head,
            leg: Leg::Worker,
            worker,
            guards: vec![guard],
            other_leg: None,
            watcher: None,
        },
    )
    .await
}
