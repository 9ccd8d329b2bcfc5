//! vLLM PD (NixlConnector pull): prefill to completion, then decode with the
//! prefill's `kv_transfer_params`.

use std::sync::Arc;

use baton_protocol::vllm;
use tokio::time::Instant;

use super::reply::{respond, Answer};
use super::{
    first_byte, pick, transfer_id, AttemptError, AttemptResult, Ctx, ForcedPlacement, Tried,
};
use crate::error::{ErrorKind, GatewayError, Leg};
use crate::lifecycle::Lifecycle;
use crate::pool::Pools;
use crate::state::AppState;
use crate::upstream::{read_body, CallIds, EngineClient};
use crate::worker::Worker;

/// A prefill reply is one token plus params; anything near this is a bug.
const MAX_PREFILL_REPLY: usize = 16 << 20;

pub async fn attempt<E: EngineClient>(
    state: &Arc<AppState>,
    engine: &E,
    ctx: &Ctx,
    tried: &mut Tried,
    placement: ForcedPlacement<'_>,
    life: &mut Option<Lifecycle>,
) -> AttemptResult {
    let Pools::Pd { prefill, decode } = &state.pools else {
        return Err(GatewayError::new(Leg::Gateway, ErrorKind::NoWorker).into());
    };
    let prefill_body = vllm::prefill_body(&ctx.req).map_err(GatewayError::client)?;
    let d = pick(
        decode,
        Leg::Decode,
        ctx,
        &mut tried.decode,
        placement.map(|f| &f.decode),
    )
    .await?;
    let local = placement.is_some_and(|f| f.prefill.is_none());
    // The same fresh id on both legs: vLLM derives the transfer key from it.
    let xfer = transfer_id();
    let path = ctx.req.endpoint.path();
    let slo = ctx.engine_slo();
    let ids = CallIds {
        upstream: &xfer,
        request: &ctx.request_id,
        tenant: &ctx.slo.tenant,
        slo: slo.as_ref(),
    };
    tracing::debug!(
        request_id = %ctx.request_id,
        transfer_id = %xfer,
        decode = %d.url,
        local,
        "vLLM PD attempt"
    );
    let tracker = &state.slo.tracker;
    let stamp = ctx.stamp(tracker);
    let ticket = tracker.start_decode(&d.url, stamp);
    let mut local_prefill = None;
    let params = if local {
        // Conditional disaggregation: the decode worker prefills itself;
        // its queue of such prompts is part of its load.
        state.metrics.slo_local_prefills.inc();
        local_prefill = Some(tracker.start_prefill(&d.url, ctx.prompt_tokens, stamp));
        None
    } else {
        let p = pick(
            prefill,
            Leg::Prefill,
            ctx,
            &mut tried.primary,
            placement.and_then(|f| f.prefill.as_ref()),
        )
        .await?;
        prefill_leg(state, engine, ctx, &p, ids, prefill_body).await?
    };
    let decode_body = vllm::decode_body(&ctx.req, params.as_ref());

    let decode_guard = d.start_request();
    let t1 = Instant::now();
    let send = engine.post(Leg::Decode, &d.url, path, ids, &ctx.headers, decode_body);
    let head = first_byte(state, Leg::Decode, &d, send).await?;
    state
        .metrics
        .decode_first_byte
        .observe(t1.elapsed().as_secs_f64());
    respond(
        state,
        ctx,
        life,
        Answer {
            head,
            leg: Leg::Decode,
            worker: d,
            guards: vec![decode_guard],
            other_leg: None,
            watcher: None,
            ticket,
            prefill: local_prefill,
        },
    )
    .await
}

/// Runs the prefill leg to completion; returns the params for decode.
async fn prefill_leg<E: EngineClient>(
    state: &Arc<AppState>,
    engine: &E,
    ctx: &Ctx,
    p: &Arc<Worker>,
    ids: CallIds<'_>,
    body: bytes::Bytes,
) -> Result<Option<serde_json::Value>, AttemptError> {
    let path = ctx.req.endpoint.path();
    let _guard = p.start_request();
    let tracker = &state.slo.tracker;
    let ticket = tracker.start_prefill(&p.url, ctx.prompt_tokens, ctx.stamp(tracker));
    let t0 = Instant::now();
    let mut reported = None;
    let leg = async {
        let head = engine
            .post(Leg::Prefill, &p.url, path, ids, &ctx.headers, body)
            .await?;
        let status = head.status();
        let report = crate::slo::tracker::parse_report(head.headers());
        let body = read_body(Leg::Prefill, head.into_body(), MAX_PREFILL_REPLY).await?;
        if let Some(r) = report {
            reported = Some(r);
        }
        if !status.is_success() {
            return Err(GatewayError::new(
                Leg::Prefill,
                ErrorKind::Status {
                    status: status.as_u16(),
                    body,
                },
            ));
        }
        Ok(body)
    };
    let reply = tokio::time::timeout(state.prefill_timeout(), leg)
        .await
        .unwrap_or_else(|_| {
            Err(GatewayError::new(
                Leg::Prefill,
                ErrorKind::Timeout("prefill"),
            ))
        })
        .map_err(|e| AttemptError::of(e, Some(p)))?;
    let took = t0.elapsed();
    ticket.finish();
    // Read after the prompt left this replica's count, as the engine's did.
    if let Some(r) = reported {
        tracker.record_report(&p.url, r);
    }
    state.metrics.prefill_leg.observe(took.as_secs_f64());
    let params = vllm::kv_transfer_params(&reply)
        .map_err(|e| GatewayError::new(Leg::Prefill, ErrorKind::BadReply(e.to_string())))
        .map_err(|e| AttemptError::of(e, Some(p)))?;
    p.breaker.record_success();
    if params.is_none() {
        // Prefill stopped on its own (EOS/stop on the first token): decode
        // gets the plain body and prefills by itself.
        state.metrics.local_prefills.inc();
        tracing::debug!(request_id = %ctx.request_id, "prefill returned no kv_transfer_params");
    }
    Ok(params)
}
