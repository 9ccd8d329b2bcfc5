//! Aggregated mode: one call to one OpenAI-compatible engine.

use std::sync::Arc;

use super::reply::{respond, Answer};
use super::{first_byte, pick, AttemptResult, Ctx, ForcedPlacement, Tried};
use crate::error::{ErrorKind, GatewayError, Leg};
use crate::lifecycle::Lifecycle;
use crate::pool::Pools;
use crate::state::AppState;
use crate::upstream::{CallIds, EngineClient};

pub async fn attempt<E: EngineClient>(
    state: &Arc<AppState>,
    engine: &E,
    ctx: &Ctx,
    tried: &mut Tried,
    placement: ForcedPlacement<'_>,
    life: &mut Option<Lifecycle>,
) -> AttemptResult {
    let Pools::Aggregated(pool) = &state.pools else {
        return Err(GatewayError::new(Leg::Gateway, ErrorKind::NoWorker).into());
    };
    let worker = pick(
        pool,
        Leg::Worker,
        ctx,
        &mut tried.primary,
        placement.map(|f| &f.decode),
    )
    .await?;
    let guard = worker.start_request();
    let tracker = &state.slo.tracker;
    let stamp = ctx.stamp(tracker);
    let ticket = tracker.start_decode(&worker.url, stamp);
    let prefill_ticket = tracker.start_prefill(&worker.url, ctx.prompt_tokens, stamp);
    let slo = ctx.engine_slo();
    let send = engine.post(
        Leg::Worker,
        &worker.url,
        ctx.req.endpoint.path(),
        CallIds {
            upstream: &ctx.request_id,
            request: &ctx.request_id,
            tenant: &ctx.slo.tenant,
            slo: slo.as_ref(),
        },
        &ctx.headers,
        ctx.req.original_bytes(),
    );
    let head = first_byte(state, Leg::Worker, &worker, send).await?;
    respond(
        state,
        ctx,
        life,
        Answer {
            head,
            leg: Leg::Worker,
            worker,
            guards: vec![guard],
            other_leg: None,
            watcher: None,
            ticket,
            prefill: Some(prefill_ticket),
        },
    )
    .await
}
