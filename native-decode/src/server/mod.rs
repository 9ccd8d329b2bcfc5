//! The OpenAI-compatible HTTP front: `/v1/completions`, `/v1/chat/completions`, `/v1/models`, `/health`,
//! `/tokenize`, `/detokenize`, `/metrics`, `/load` (the engine's state as `baton_policies::step::EngineReport`
//! JSON, also sent as `x-baton-load` on every generation response).

pub mod api;
pub mod body;
pub mod conn;
pub mod error;
pub mod fleet;
mod handlers;
pub mod respond;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde_json::json;

use crate::chat_template::ChatTemplate;
use crate::engine::EngineHandle;
use crate::transfer::{KvEndpoint, KvPuller, PullFailurePolicy};
use body::{full, Body};
pub use conn::{serve, serve_until, Limits};
use error::ApiError;
/// The test modules bind their listeners with it (through `super::*`).
#[cfg(test)]
use tokio::net::TcpListener;

/// Which half of a disaggregated deployment this engine serves (plain requests are served by every role).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Honors `do_remote_decode`: keeps prompt KV for a decoder to pull.
    Prefill,
    /// Honors `do_remote_prefill`: pulls prompt KV before decoding.
    Decode,
    Both,
}

pub struct ServerState {
    pub engine: EngineHandle,
    pub model_name: String,
    pub template: Option<ChatTemplate>,
    pub role: Role,
    /// Set when this engine can hold KV for pulls.
    pub kv_endpoint: Option<KvEndpoint>,
    pub puller: Arc<dyn KvPuller>,
    pub pull_failure: PullFailurePolicy,
    /// Body size and connection limits of the HTTP listener.
    pub limits: Limits,
    /// The fleet key: calls it authenticates may use `kv_transfer_params` ([`fleet::Caller`]).
    pub fleet_key: Option<baton_protocol::FleetKey>,
}

fn request_id(req: &Request<Incoming>) -> String {
    let fresh = || {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{:x}{:04x}", n, rand_suffix())
    };
    // Never trust a client id as a unique key: append our own suffix (as vLLM does).
    match req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
    {
        Some(id) if !id.is_empty() && id.len() <= 128 => format!("{id}-{:04x}", rand_suffix()),
        _ => fresh(),
    }
}

fn rand_suffix() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0x1234_5678);
    let x = N.fetch_add(0x9E37_79B9, Ordering::Relaxed);
    (x ^ (x >> 17)) as u16
}

/// Routes one request. Every error becomes an OpenAI error body here.
pub async fn handle(
    state: Arc<ServerState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let result = route(state, req).await;
    Ok(result.unwrap_or_else(ApiError::into_response))
}

async fn read_body(state: &ServerState, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let max = state.limits.max_body;
    let too_large =
        || ApiError::too_large(format!("request body exceeds the limit of {max} bytes"));
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Refuse before reading anything when the client says up front that it is too large.
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    // The connection's idle timer spares a request in flight, so a body that stops arriving has its own
    // deadline (between pieces, not for the whole body).
    let wait = state.limits.idle_timeout;
    let mut body = Limited::new(req.into_body(), max);
    let mut out = bytes::BytesMut::with_capacity(declared.map_or(0, |n| n as usize));
    loop {
        match tokio::time::timeout(wait, body.frame()).await {
            Err(_) => {
                return Err(ApiError::timeout(format!(
                    "the request body stalled for {wait:?}"
                )))
            }
            Ok(None) => return Ok(out.freeze()),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                }
            }
            Ok(Some(Err(e))) if e.is::<LengthLimitError>() => return Err(too_large()),
            Ok(Some(Err(e))) => {
                return Err(ApiError::bad_request(format!(
                    "cannot read request body: {e}"
                )))
            }
        }
    }
}

/// Adds the engine's state (`x-baton-load`) to a generation response's head, answered or refused: the gateway
/// learns this engine's load from every call, with no extra request.
fn with_load(state: &ServerState, mut r: Response<Body>) -> Response<Body> {
    if let Ok(v) = http::HeaderValue::from_str(&state.engine.stats.report_json()) {
        r.headers_mut()
            .insert(baton_protocol::engine_slo::LOAD_HEADER, v);
    }
    r
}

async fn route(
    state: Arc<ServerState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/health") => Ok(Response::new(full(Bytes::new()))),
        (Method::GET, "/metrics") => {
            let mut r = Response::new(full(state.engine.stats.render(&state.model_name)));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            Ok(r)
        }
        (Method::GET, "/v1/models") => Ok(handlers::json_response(&json!({
            "object": "list",
            "data": [{
                "id": state.model_name, "object": "model", "created": 0, "owned_by": "baton",
                "root": state.model_name, "max_model_len": state.engine.context_length,
            }],
        }))),
        // No auth: it is load only (what `/metrics` shows too).
        (Method::GET, "/load") => {
            let mut r = Response::new(full(Bytes::from(state.engine.stats.report_json())));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            Ok(r)
        }
        (Method::POST, "/v1/completions") => {
            let id = request_id(&req);
            let caller = fleet::Caller::of(state.fleet_key.as_ref(), req.headers());
            let slo = handlers::request_slo(&caller, req.headers(), &state.engine.stats);
            let body = read_body(&state, req).await?;
            let r = handlers::completions(state.clone(), body, id, caller, slo).await;
            Ok(with_load(&state, r.unwrap_or_else(ApiError::into_response)))
        }
        (Method::POST, "/v1/chat/completions") => {
            let id = request_id(&req);
            let caller = fleet::Caller::of(state.fleet_key.as_ref(), req.headers());
            let slo = handlers::request_slo(&caller, req.headers(), &state.engine.stats);
            let body = read_body(&state, req).await?;
            let r = handlers::chat(state.clone(), body, id, caller, slo).await;
            Ok(with_load(&state, r.unwrap_or_else(ApiError::into_response)))
        }
        (Method::POST, "/tokenize") => {
            let body = read_body(&state, req).await?;
            handlers::tokenize(state, body).await
        }
        (Method::POST, "/detokenize") => {
            let body = read_body(&state, req).await?;
            handlers::detokenize(state, body).await
        }
        (
            _,
            "/health"
            | "/metrics"
            | "/load"
            | "/v1/models"
            | "/v1/completions"
            | "/v1/chat/completions"
            | "/tokenize"
            | "/detokenize",
        ) => Err(ApiError {
            status: http::StatusCode::METHOD_NOT_ALLOWED,
            kind: "MethodNotAllowed",
            message: "method not allowed".into(),
            param: None,
        }),
        _ => Err(ApiError::not_found(format!("no route for {path}"))),
    }
}

#[cfg(test)]
mod slo_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod transfer_tests;
