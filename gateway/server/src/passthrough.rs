//! Pass-through endpoints: `POST /tokenize` and `POST /detokenize`, forwarded
//! whole to one healthy worker serving the request's model.
//!
//! Users' tools call them on the server they benchmark (`vllm bench serve`
//! probes `/tokenize`); the engine's tokenizer is the one that counts. The
//! request gets what a generation request gets at the edge — the client key
//! (401), the body limit (413) and time limit (408), a JSON object with an
//! optional string `model` (400), the fleet's model list (404) — and is
//! counted once in `baton_requests_total` (endpoint `tokenize` /
//! `detokenize`), but not in SLO attainment or the latency histograms: it
//! generates nothing. The worker: any available one of any pool (decode or
//! the aggregated pool first, then prefill) that lists the model, least
//! requests in flight first; connect/transport errors, 408/429 and 5xx are
//! retried on another worker as for generation, and the engine's answer —
//! its body and status, 4xx kept, 5xx mapped — goes back unchanged.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::Value;
use tokio::time::Instant;

use crate::body::{full, GatewayBody, ReadError};
use crate::error::{ErrorKind, GatewayError, Leg};
use crate::lifecycle::{EndReport, Ending, Lifecycle};
use crate::request_id::RequestId;
use crate::respond::error_response;
use crate::state::AppState;
use crate::upstream::CallIds;
use crate::worker::Worker;

/// Largest engine answer read (a token list for the largest body the gateway accepts fits).
const MAX_REPLY_BYTES: usize = 64 << 20;
/// The client's body gets this long, as for generation requests.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The `baton_requests_total` endpoint label of a pass-through path.
fn label(path: &str) -> Option<&'static str> {
    match path {
        "/tokenize" => Some("tokenize"),
        "/detokenize" => Some("detokenize"),
        _ => None,
    }
}

/// Whether `path` is served by [`serve`].
pub fn is_passthrough(path: &str) -> bool {
    label(path).is_some()
}

/// Serves `POST /tokenize` or `/detokenize` (see the module docs).
pub async fn serve(state: Arc<AppState>, req: Request<Incoming>) -> Response<GatewayBody> {
    let start = Instant::now();
    let path = req.uri().path().to_owned();
    let Some(endpoint) = label(&path) else {
        return error_response(&GatewayError::new(Leg::Client, ErrorKind::NotFound));
    };
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let unknown = crate::slo::classify::unclassified(&state.config.slo, None);
    let mut life =
        Lifecycle::new(&state, endpoint, &request_id, start, unknown).outside_attainment();
    let caller = match state.auth.client(req.headers()) {
        Ok(c) => c,
        Err(e) => return refuse(life, &e),
    };
    let target = crate::slo::classify::unclassified(&state.config.slo, Some(&caller));
    let tenant = target.tenant.clone();
    life.hold_to(target);
    let (parts, body) = req.into_parts();
    let bytes = match read(&state, &parts.headers, body).await {
        Ok(b) => b,
        Err(e) => return refuse(life, &e),
    };
    let model = match model_of(&bytes) {
        Ok(m) => m,
        Err(e) => return refuse(life, &e),
    };
    if let Err(e) = crate::models::check(state.mode, &state.pools.all(), model.as_deref()) {
        return refuse(life, &e);
    }
    let deadline = start + state.request_timeout();
    let mut tried: Vec<Arc<Worker>> = Vec::new();
    let mut attempt: u32 = 0;
    let error = loop {
        let Some(worker) = choose(&state, model.as_deref(), &tried) else {
            break GatewayError::new(Leg::Worker, ErrorKind::NoWorker);
        };
        tried.push(Arc::clone(&worker));
        let call = forward(
            &state,
            &worker,
            &path,
            &request_id,
            &tenant,
            &parts.headers,
            &bytes,
        );
        let result = match tokio::time::timeout_at(deadline, call).await {
            Ok(r) => r,
            Err(_) => Err(GatewayError::new(
                Leg::Gateway,
                ErrorKind::Timeout("request"),
            )),
        };
        let e = match result {
            Ok((status, content_type, body)) => {
                life.end(EndReport::unserved(Ending::Success, start));
                let mut resp = Response::new(full(body));
                *resp.status_mut() = status;
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, content_type);
                return resp;
            }
            Err(e) => e,
        };
        life.upstream_error(&e);
        if e.counts_against_worker() {
            worker.breaker.record_failure();
        }
        if e.retryable() && attempt < state.config.retry.max_retries {
            let delay = crate::dispatch::backoff(&state.config.retry, attempt);
            if Instant::now() + delay < deadline {
                attempt += 1;
                state.metrics.retries.inc();
                tokio::time::sleep(delay).await;
                continue;
            }
        }
        break e;
    };
    refuse(life, &error)
}

/// A request ended before or without an answer: counted, then answered.
fn refuse(mut life: Lifecycle, e: &GatewayError) -> Response<GatewayBody> {
    life.end(EndReport::unserved(Ending::of(e), life.start()));
    error_response(e)
}

/// The client's body, under the gateway's size and time limits.
async fn read(
    state: &AppState,
    headers: &http::HeaderMap,
    body: Incoming,
) -> Result<Bytes, GatewayError> {
    let limit = state.config.max_payload_size;
    let too_large = GatewayError::new(Leg::Client, ErrorKind::PayloadTooLarge { limit });
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().parse::<u64>().unwrap_or(u64::MAX));
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large);
    }
    let expected = declared.map(|len| len as usize);
    match crate::body::read_limited(body, limit, expected, BODY_READ_TIMEOUT).await {
        Ok(b) => Ok(b),
        Err(ReadError::TooLarge) => Err(too_large),
        Err(ReadError::Broken(e)) => Err(GatewayError::client(
            baton_protocol::ProtocolError::InvalidJson(format!("could not read request body: {e}")),
        )),
        Err(ReadError::Timeout) => Err(GatewayError::new(
            Leg::Client,
            ErrorKind::Timeout("body_read"),
        )),
    }
}

/// The request's `model`, if any; the body must be a JSON object.
fn model_of(bytes: &[u8]) -> Result<Option<String>, GatewayError> {
    let invalid = |m: String| GatewayError::client(baton_protocol::ProtocolError::InvalidJson(m));
    let v: Value = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    let Some(obj) = v.as_object() else {
        return Err(invalid("the request body must be a JSON object".into()));
    };
    match obj.get("model") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid("model must be a string".into())),
    }
}

/// An available, untried worker serving `model` (or not yet known not to):
/// the decode or aggregated pool first, then prefill; fewest in flight.
fn choose(state: &AppState, model: Option<&str>, tried: &[Arc<Worker>]) -> Option<Arc<Worker>> {
    let serves = |w: &Worker| match (model, w.models()) {
        (Some(m), Some(ids)) => ids.iter().any(|id| id == m),
        _ => true,
    };
    let pools = state.pools.all();
    let mut best: Option<Arc<Worker>> = None;
    for pool in pools.iter().rev() {
        for w in pool.workers.iter().map(owned) {
            if !w.is_available() || !serves(&w) || tried.iter().any(|t| Arc::ptr_eq(t, &w)) {
                continue;
            }
            if best.as_ref().is_none_or(|b| w.in_flight() < b.in_flight()) {
                best = Some(w);
            }
        }
        if best.is_some() {
            break;
        }
    }
    best
}

/// A pool member as an owned handle (whether the pool lists them owned or borrowed).
fn owned<W: std::borrow::Borrow<Arc<Worker>>>(w: W) -> Arc<Worker> {
    Arc::clone(w.borrow())
}

/// One call: the engine's 2xx status, content type and whole body, or the error.
async fn forward(
    state: &AppState,
    worker: &Arc<Worker>,
    path: &str,
    request_id: &str,
    tenant: &str,
    headers: &http::HeaderMap,
    body: &Bytes,
) -> Result<(StatusCode, HeaderValue, Bytes), GatewayError> {
    let _load = worker.start_request();
    let ids = CallIds {
        upstream: request_id,
        request: request_id,
        tenant,
        slo: None,
    };
    let send = state
        .upstream
        .post(Leg::Worker, &worker.url, path, ids, headers, body.clone());
    let head = tokio::time::timeout(state.first_byte_timeout(), send)
        .await
        .unwrap_or_else(|_| {
            Err(GatewayError::new(
                Leg::Worker,
                ErrorKind::Timeout("first_byte"),
            ))
        })?;
    let status = head.status();
    let content_type = head
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("application/json"));
    let bytes = crate::upstream::read_body(Leg::Worker, head.into_body(), MAX_REPLY_BYTES).await;
    if !status.is_success() {
        let body = bytes.unwrap_or_default();
        return Err(GatewayError::new(
            Leg::Worker,
            ErrorKind::Status {
                status: status.as_u16(),
                body,
            },
        ));
    }
    Ok((status, content_type, bytes?))
}
