//! SGLang PD: the same body, with a fresh bootstrap room, to prefill and
//! decode at once.
//!
//! Unlike the reference gateway, the client stream starts as soon as
//! decode's head is 2xx; prefill is watched beside it, and a failure of
//! either leg cancels the other at once.

use std::sync::Arc;

use baton_protocol::sglang::{self, Bootstrap};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::reply::{respond, Answer};
use super::{first_byte, pick, transfer_id, AttemptResult, Ctx, ForcedPlacement, Tried};
use crate::abort::AbortOnDrop;
use crate::error::{ErrorKind, GatewayError, Leg};
use crate::lifecycle::Lifecycle;
use crate::pool::Pools;
use crate::relay::LegResult;
use crate::state::AppState;
use crate::upstream::{read_body, CallIds, EngineClient};

const MAX_PREFILL_REPLY: usize = 64 << 20;

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
    let p = pick(
        prefill,
        Leg::Prefill,
        ctx,
        &mut tried.primary,
        placement.and_then(|f| f.prefill.as_ref()),
    )
    .await?;
    let d = pick(
        decode,
        Leg::Decode,
        ctx,
        &mut tried.decode,
        placement.map(|f| &f.decode),
    )
    .await?;
    let stamp = ctx.stamp(&state.slo.tracker);
    let slo = ctx.engine_slo();
    let ticket = state.slo.tracker.start_decode(&d.url, stamp);
    let rooms = sglang::fresh_rooms(&mut rand::rng(), ctx.req.batch);
    let bootstrap = Bootstrap {
        host: sglang::host_of(&p.url),
        port: p.bootstrap_port,
    };
    let body = sglang::pd_body(&ctx.req, &bootstrap, &rooms);
    let xfer = transfer_id();
    let path = ctx.req.endpoint.path();

    // Prefill runs in its own task so it keeps being driven while the
    // client stream is relayed; dropping `watcher` aborts it.
    let (tx, rx) = oneshot::channel::<LegResult>();
    let prefill_task = {
        let state = Arc::clone(state);
        let engine = engine.clone();
        let p = Arc::clone(&p);
        let headers = ctx.headers.clone();
        let body = body.clone();
        let xfer = xfer.clone();
        let request_id = ctx.request_id.clone();
        let tenant = ctx.slo.tenant.clone();
        let guard = p.start_request();
        let prefill_ticket = state
            .slo
            .tracker
            .start_prefill(&p.url, ctx.prompt_tokens, stamp);
        let prefill_slo = slo.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let t0 = Instant::now();
            let leg = async {
                let head = engine
                    .post(
                        Leg::Prefill,
                        &p.url,
                        path,
                        CallIds {
                            upstream: &xfer,
                            request: &request_id,
                            tenant: &tenant,
                            slo: prefill_slo.as_ref(),
                        },
                        &headers,
                        body,
                    )
                    .await?;
                let status = head.status();
                let report = crate::slo::tracker::parse_report(head.headers());
                let body = read_body(Leg::Prefill, head.into_body(), MAX_PREFILL_REPLY).await?;
                if status.is_success() {
                    Ok(report)
                } else {
                    Err(GatewayError::new(
                        Leg::Prefill,
                        ErrorKind::Status {
                            status: status.as_u16(),
                            body,
                        },
                    ))
                }
            };
            let result = tokio::time::timeout(state.prefill_timeout(), leg)
                .await
                .unwrap_or_else(|_| {
                    Err(GatewayError::new(
                        Leg::Prefill,
                        ErrorKind::Timeout("prefill"),
                    ))
                });
            let took = t0.elapsed();
            state.metrics.prefill_leg.observe(took.as_secs_f64());
            if let Ok(report) = &result {
                prefill_ticket.finish();
                // Read after the prompt left this replica's count, as the engine's did.
                if let Some(r) = report {
                    state.slo.tracker.record_report(&p.url, *r);
                }
            } else {
                drop(prefill_ticket);
            }
            let result = result.map(|_| ());
            match &result {
                Ok(()) => p.breaker.record_success(),
                Err(e) if e.counts_against_worker() => p.breaker.record_failure(),
                Err(_) => {}
            }
            let _ = tx.send(result);
        })
    };
    let watcher = AbortOnDrop(prefill_task);

    let decode_guard = d.start_request();
    let decode_url = d.url.clone();
    let t1 = Instant::now();
    let send = engine.post(
        Leg::Decode,
        &decode_url,
        path,
        CallIds {
            upstream: &xfer,
            request: &ctx.request_id,
            tenant: &ctx.slo.tenant,
            slo: slo.as_ref(),
        },
        &ctx.headers,
        body,
    );
    let decode_worker = Arc::clone(&d);
    let decode_head = first_byte(state, Leg::Decode, &decode_worker, send);
    tokio::pin!(decode_head);
    let mut other_leg = Some(rx);
    let head = loop {
        tokio::select! {
            head = &mut decode_head => break head,
            res = async {
                match other_leg.as_mut() {
                    Some(rx) => rx.await,
                    None => std::future::pending().await,
                }
            }, if other_leg.is_some() => {
                match res {
                    // Prefill failed first: returning drops the decode call
                    // (cancelling it) and reports the prefill's error.
                    Ok(Err(e)) => return Err(e.into()),
                    Ok(Ok(())) => other_leg = None,
                    Err(_) => {
                        return Err(GatewayError::new(
                            Leg::Prefill,
                            ErrorKind::Transport("prefill task ended unexpectedly".into()),
                        )
                        .into())
                    }
                }
            }
        }
    };
    let head = head?;
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
            other_leg,
            watcher: Some(watcher),
            ticket,
            prefill: None,
        },
    )
    .await
}
