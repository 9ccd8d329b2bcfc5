//! Turning the head of the leg that answers the client into the response.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::oneshot;

use super::{AttemptError, Ctx};
use crate::abort::AbortOnDrop;
use crate::body::{full, GatewayBody};
use crate::error::{ErrorKind, GatewayError, Leg};
use crate::lifecycle::{Ending, Lifecycle};
use crate::relay::{self, LegResult, Observer, RelayBody, StreamLimits};
use crate::slo::tracker::{DecodeTicket, PrefillTicket};
use crate::state::AppState;
use crate::upstream::{read_body, BodyError};
use crate::worker::{LoadGuard, Worker};

/// Largest error or non-streaming reply body the gateway buffers.
const MAX_REPLY_BYTES: usize = 64 << 20;

/// What keeps an answering leg company until the response ends (`B`: the
/// engine's body type).
pub struct Answer<B> {
    pub head: Response<B>,
    pub leg: Leg,
    pub worker: Arc<Worker>,
    pub guards: Vec<LoadGuard>,
    /// The concurrently running other leg (SGLang prefill), if any.
    pub other_leg: Option<oneshot::Receiver<LegResult>>,
    pub watcher: Option<AbortOnDrop>,
    /// The sequence's decode-load ticket (activated here).
    pub ticket: DecodeTicket,
    /// A prefill done by the answering worker itself (aggregated, or the
    /// local path): finished at the first streamed token.
    pub prefill: Option<PrefillTicket>,
}

/// Turns the answering leg's head into the client response. Once the reply
/// is sure to reach the client, the request's lifecycle guard moves from
/// `life` into the response (its body records the end).
pub async fn respond<B>(
    state: &Arc<AppState>,
    ctx: &Ctx,
    life: &mut Option<Lifecycle>,
    answer: Answer<B>,
) -> Result<Response<GatewayBody>, AttemptError>
where
    B: http_body::Body<Data = Bytes, Error = BodyError> + Send + Unpin + 'static,
{
    let Answer {
        head,
        leg,
        worker,
        guards,
        other_leg,
        watcher,
        mut ticket,
        prefill,
    } = answer;
    let status = head.status();
    if !status.is_success() {
        let body = read_body(leg, head.into_body(), MAX_REPLY_BYTES)
            .await
            .unwrap_or_default();
        let e = GatewayError::new(
            leg,
            ErrorKind::Status {
                status: status.as_u16(),
                body,
            },
        );
        return Err(AttemptError::of(e, Some(&worker)));
    }
    ticket.activate();
    // Read after this sequence counts as decoding here, as the engine's report does.
    state
        .slo
        .tracker
        .record_report_header(&worker.url, head.headers());
    let limits = StreamLimits {
        idle: state.idle_timeout(),
        deadline: ctx.deadline,
    };
    let content_type = head
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_static(if ctx.req.stream {
                "text/event-stream"
            } else {
                "application/json"
            })
        });
    let Some(lifecycle) = life.take() else {
        // The guard went into an earlier attempt's response: none returns
        // twice, so this is unreachable; fail the attempt rather than panic.
        return Err(GatewayError::new(Leg::Gateway, ErrorKind::NoWorker).into());
    };
    if ctx.req.stream {
        let observer = Observer::new(lifecycle, Arc::clone(&worker), ticket)
            .with_guards(guards)
            .with_watcher(watcher)
            .with_prefill_ticket(prefill);
        let mut body = RelayBody::new(head.into_body(), leg, limits, other_leg, observer);
        body.prime().await;
        let mut resp = Response::new(body.boxed_unsync());
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, content_type);
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return Ok(resp);
    }
    let collected = relay::collect(head.into_body(), leg, limits, other_leg, MAX_REPLY_BYTES).await;
    let bytes = match collected {
        Ok(b) => b,
        Err(e) => {
            // Not answered yet: the guard stays for the next attempt.
            *life = Some(lifecycle);
            let w = (e.leg == leg).then_some(&worker);
            return Err(AttemptError::of(e, w));
        }
    };
    // The engine's KV endpoint (host, port, engine id) is the fleet's
    // business. Streamed chunks never carry it; whole replies may.
    let bytes = baton_protocol::sanitize::strip_reply_internals(&bytes).unwrap_or(bytes);
    // The engine's end of a whole reply is the request's success.
    let mut observer = Observer::new(lifecycle, worker, ticket)
        .with_guards(guards)
        .with_watcher(watcher);
    observer.observe_complete(completion_tokens(&bytes));
    observer.finish(Ending::Success);
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = if status == StatusCode::OK {
        StatusCode::OK
    } else {
        status
    };
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    Ok(resp)
}

fn completion_tokens(bytes: &Bytes) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    v.pointer("/usage/completion_tokens")
        .or_else(|| v.pointer("/meta_info/completion_tokens"))
        .and_then(serde_json::Value::as_u64)
}
