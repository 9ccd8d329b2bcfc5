//! The OpenAI-compatible HTTP front: `/v1/completions`, `/v1/chat/completions`, `/v1/models`, `/health`,
//! `/tokenize`, `/detokenize`, `/metrics`.

pub mod api;
pub mod body;
pub mod error;
mod handlers;
pub mod respond;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;

use crate::chat_template::ChatTemplate;
use crate::engine::EngineHandle;
use crate::transfer::{KvEndpoint, KvPuller, PullFailurePolicy};
use body::{full, Body};
use error::ApiError;

/// Which half of a disaggregated deployment this engine serves (plain requests are served by every role).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Honors `do_remote_decode`: keeps prompt KV for a decoder to pull.
    Prefill,
    /// Honors `do_remote_prefill`: pulls prompt KV before decoding.
    Decode,
    Both,
}

/// Largest request body accepted.
pub const MAX_BODY: usize = 32 * 1024 * 1024;

pub struct ServerState {
    pub engine: EngineHandle,
    pub model_name: String,
    pub template: Option<ChatTemplate>,
    pub role: Role,
    /// Set when this engine can hold KV for pulls.
    pub kv_endpoint: Option<KvEndpoint>,
    pub puller: Arc<dyn KvPuller>,
    pub pull_failure: PullFailurePolicy,
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

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| ApiError::bad_request(format!("cannot read request body: {e}")))
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
        (Method::POST, "/v1/completions") => {
            let id = request_id(&req);
            handlers::completions(state, read_body(req).await?, id).await
        }
        (Method::POST, "/v1/chat/completions") => {
            let id = request_id(&req);
            handlers::chat(state, read_body(req).await?, id).await
        }
        (Method::POST, "/tokenize") => handlers::tokenize(state, read_body(req).await?).await,
        (Method::POST, "/detokenize") => handlers::detokenize(state, read_body(req).await?).await,
        (
            _,
            "/health"
            | "/metrics"
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

/// Serves HTTP/1.1 and HTTP/2 on `listener` until the process ends.
pub async fn serve(listener: TcpListener, state: Arc<ServerState>) {
    loop {
        let (sock, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(sock), svc).await {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests;
