//! The worker API: workers join and leave a running gateway.
//!
//! Shaped like the SGLang model gateway's (`sglang-router`) so its clients
//! work unchanged:
//!
//! - `POST /workers` `{"url", "worker_type" | "role", "bootstrap_port", "model_id" | "model"}`
//!   → 202 `{"status": "accepted", "worker_id": URL, "url", "location", "message"}`;
//! - `GET /workers` → `{"workers": [...], "total", "stats"}`;
//! - `GET /workers/{url}` → one worker (404 if unknown);
//! - `DELETE /workers/{url}` (URL percent-escaped, or as is) → 202; the worker
//!   drains (see [`crate::pool`]).
//!
//! Every call needs the admin key (the rule of `/metrics`: open on a gateway
//! with no keys at all). Bad input gets OpenAI-style error JSON: 400 (URL,
//! role, body), 404 (unknown worker), 409 (already a member).
//!
//! The add and remove here are also what DNS and file discovery use
//! ([`crate::discovery`]).

use std::sync::Arc;
use std::time::Duration;

use baton_protocol::OpenAiError;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::body::GatewayBody;
use crate::config::Mode;
use crate::pool::MembershipError;
use crate::respond::{error_response, json_response};
use crate::state::AppState;
use crate::worker::{Origin, Role, Worker};

/// Largest `POST /workers` body.
const MAX_BODY: usize = 64 << 10;
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `path` belongs to this API.
pub fn handles(path: &str) -> bool {
    path == "/workers" || path.starts_with("/workers/")
}

/// A worker to add, as the API, DNS and file discovery describe it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WorkerSpec {
    pub url: String,
    /// `prefill`, `decode` or `both` (SGLang's `worker_type`: `regular` is `both`).
    #[serde(default, alias = "worker_type")]
    pub role: Option<String>,
    /// SGLang bootstrap port of a prefill worker.
    #[serde(default)]
    pub bootstrap_port: Option<u16>,
    /// The model it serves (until its first health check lists them).
    #[serde(default, alias = "model_id")]
    pub model: Option<String>,
}

/// Why a worker could not be added or removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 400; `param` names the field.
    Invalid {
        param: &'static str,
        message: String,
    },
    /// 404.
    Unknown(String),
    /// 409.
    Duplicate(String),
}

impl ApiError {
    fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            param,
            message: message.into(),
        }
    }

    fn response(&self) -> Response<GatewayBody> {
        let (status, err) = match self {
            Self::Invalid { param, message } => (
                StatusCode::BAD_REQUEST,
                OpenAiError::new(message.clone(), "invalid_request_error")
                    .with_param(Some(param))
                    .with_code(&format!("invalid_{param}")),
            ),
            Self::Unknown(url) => (
                StatusCode::NOT_FOUND,
                OpenAiError::new(format!("no worker {url}"), "invalid_request_error")
                    .with_param(Some("url"))
                    .with_code("worker_not_found"),
            ),
            Self::Duplicate(url) => (
                StatusCode::CONFLICT,
                OpenAiError::new(
                    format!("worker {url} is already registered"),
                    "invalid_request_error",
                )
                .with_param(Some("url"))
                .with_code("worker_exists"),
            ),
        };
        json_response(status, err.to_json())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Invalid { message, .. } => write!(f, "{message}"),
            Self::Unknown(url) => write!(f, "no worker {url}"),
            Self::Duplicate(url) => write!(f, "worker {url} is already registered"),
        }
    }
}

/// The pool role a spec's `role` names in `mode`.
pub fn parse_role(role: Option<&str>, mode: Mode) -> Result<Role, ApiError> {
    let pd = matches!(mode, Mode::Pd(_));
    let role = match role.map(str::to_ascii_lowercase).as_deref() {
        None if pd => {
            return Err(ApiError::invalid(
                "role",
                format!(
                    "the gateway runs in {} mode: role must be prefill or decode",
                    mode.label()
                ),
            ))
        }
        None | Some("both" | "regular" | "unified") => Role::Unified,
        Some("prefill") => Role::Prefill,
        Some("decode") => Role::Decode,
        Some(other) => {
            return Err(ApiError::invalid(
                "role",
                format!("unknown role '{other}' (expected prefill, decode or both)"),
            ))
        }
    };
    if pd == (role == Role::Unified) {
        let want = if pd { "prefill or decode" } else { "both" };
        return Err(ApiError::invalid(
            "role",
            format!(
                "the gateway runs in {} mode: role must be {want}",
                mode.label()
            ),
        ));
    }
    Ok(role)
}

/// `url` checked and normalised (no trailing `/`) as pools key workers.
pub fn normalize_url(url: &str) -> Result<String, ApiError> {
    let url = url.trim();
    crate::config::validate_url(url).map_err(|e| ApiError::invalid("url", e.to_string()))?;
    Ok(url.trim_end_matches('/').to_owned())
}

/// Adds a worker to the pool of its role. It gets requests once a health
/// check passes (probed at once, then every 250 ms until it does).
pub fn add(
    state: &Arc<AppState>,
    spec: &WorkerSpec,
    origin: Origin,
) -> Result<Arc<Worker>, ApiError> {
    let url = normalize_url(&spec.url)?;
    let role = parse_role(spec.role.as_deref(), state.mode)?;
    if spec.bootstrap_port.is_some() && role != Role::Prefill {
        return Err(ApiError::invalid(
            "bootstrap_port",
            "bootstrap_port applies to prefill workers only",
        ));
    }
    let pool = state
        .pools
        .for_role(role)
        .ok_or_else(|| ApiError::invalid("role", "no pool for this role"))?;
    let worker = Worker::new(&url, role, spec.bootstrap_port, &state.config.breaker)
        .with_origin(origin)
        .unhealthy_until_checked();
    if let Some(model) = spec.model.as_deref().filter(|m| !m.is_empty()) {
        worker.set_models(Some(vec![model.to_owned()]));
    }
    let worker = Arc::new(worker);
    pool.add(Arc::clone(&worker)).map_err(|e| match e {
        MembershipError::Duplicate(u) | MembershipError::Unknown(u) => ApiError::Duplicate(u),
    })?;
    crate::health::warm_up(Arc::clone(state), Arc::clone(&worker));
    Ok(worker)
}

/// Removes the worker at `url` from whichever pool has it; it drains.
pub fn remove(state: &AppState, url: &str) -> Result<Arc<Worker>, ApiError> {
    let key = url.trim().trim_end_matches('/');
    for pool in state.pools.all() {
        if pool.workers.get(key).is_some() {
            return pool
                .remove(key)
                .map_err(|_| ApiError::Unknown(key.to_owned()));
        }
    }
    Err(ApiError::Unknown(key.to_owned()))
}

/// Serves one request of this API (the caller checked [`handles`]).
pub async fn handle(state: &Arc<AppState>, req: Request<Incoming>) -> Response<GatewayBody> {
    if let Err(e) = state.auth.admin(req.headers()) {
        return error_response(&e);
    }
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let target = path
        .strip_prefix("/workers/")
        .map(|rest| {
            // Clients escape the URL (`http%3A%2F%2Fhost%3A8000`); some don't.
            let raw = match req.uri().query() {
                Some(q) => format!("{rest}?{q}"),
                None => rest.to_owned(),
            };
            percent_decode(&raw)
        })
        .filter(|t| !t.is_empty());
    match (method, target) {
        (Method::GET, None) => list(state),
        (Method::POST, None) => {
            let declared = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<usize>().ok());
            create(state, req.into_body(), declared).await
        }
        (Method::GET, Some(url)) => match find(state, &url) {
            Some((w, status)) => {
                json_response(StatusCode::OK, Bytes::from(info(&w, status).to_string()))
            }
            None => ApiError::Unknown(url).response(),
        },
        (Method::DELETE, Some(url)) => match remove(state, &url) {
            Ok(w) => accepted(&w.url, "worker removed; draining its requests"),
            Err(e) => e.response(),
        },
        _ => error_response(&crate::error::GatewayError::new(
            crate::error::Leg::Client,
            crate::error::ErrorKind::MethodNotAllowed,
        )),
    }
}

async fn create(
    state: &Arc<AppState>,
    body: Incoming,
    expected: Option<usize>,
) -> Response<GatewayBody> {
    let bytes = match crate::body::read_limited(body, MAX_BODY, expected, BODY_TIMEOUT).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::invalid(
                "body",
                format!("unreadable body (at most {MAX_BODY} bytes)"),
            )
            .response()
        }
    };
    let spec: WorkerSpec = match serde_json::from_slice(&bytes) {
        Ok(s) => s,
        Err(e) => {
            return ApiError::invalid("body", format!("expected a JSON worker spec: {e}"))
                .response()
        }
    };
    match add(state, &spec, Origin::Api) {
        Ok(w) => accepted(
            &w.url,
            "worker added; it takes requests once a health check passes",
        ),
        Err(e) => e.response(),
    }
}

fn accepted(url: &str, message: &str) -> Response<GatewayBody> {
    let location = format!("/workers/{}", percent_encode(url));
    let body = json!({
        "status": "accepted",
        "worker_id": url,
        "url": url,
        "location": location,
        "message": message,
    });
    let mut resp = json_response(StatusCode::ACCEPTED, Bytes::from(body.to_string()));
    if let Ok(v) = header::HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// A member or draining worker, with its status.
fn find(state: &AppState, url: &str) -> Option<(Arc<Worker>, &'static str)> {
    let key = url.trim().trim_end_matches('/');
    state.pools.all().into_iter().find_map(|p| {
        p.workers.get(key).map(|w| (w, "active")).or_else(|| {
            p.draining()
                .into_iter()
                .find(|w| w.url == key)
                .map(|w| (w, "draining"))
        })
    })
}

fn list(state: &AppState) -> Response<GatewayBody> {
    let mut workers = Vec::new();
    let (mut healthy, mut draining) = (0, 0);
    let mut by_type = [0usize; 3];
    for pool in state.pools.all() {
        for w in &pool.workers {
            healthy += usize::from(w.is_healthy());
            by_type[type_index(w.role)] += 1;
            workers.push(info(&w, "active"));
        }
        for w in pool.draining() {
            draining += 1;
            workers.push(info(&w, "draining"));
        }
    }
    let body = json!({
        "total": workers.len(),
        "stats": {
            "total_workers": workers.len(),
            "healthy_workers": healthy,
            "draining_workers": draining,
            "by_type": {"regular": by_type[0], "prefill": by_type[1], "decode": by_type[2]},
        },
        "workers": workers,
    });
    json_response(StatusCode::OK, Bytes::from(body.to_string()))
}

fn type_index(role: Role) -> usize {
    match role {
        Role::Unified => 0,
        Role::Prefill => 1,
        Role::Decode => 2,
    }
}

/// SGLang's worker info fields, plus Baton's `role`, `status`, `source`, `in_flight`.
fn info(w: &Worker, status: &str) -> Value {
    let (worker_type, role) = match w.role {
        Role::Unified => ("regular", "both"),
        Role::Prefill => ("prefill", "prefill"),
        Role::Decode => ("decode", "decode"),
    };
    let models = w.models();
    let model_id = models
        .as_deref()
        .and_then(|m| m.first().cloned())
        .unwrap_or_else(|| "unknown".to_owned());
    json!({
        "id": w.url,
        "url": w.url,
        "model_id": model_id,
        "worker_type": worker_type,
        "role": role,
        "is_healthy": w.is_healthy(),
        "load": w.in_flight(),
        "in_flight": w.in_flight(),
        "connection_mode": "http",
        "bootstrap_port": w.bootstrap_port,
        "status": status,
        "source": w.origin.label(),
    })
}

/// `%XX` escapes decoded (invalid ones kept as they are).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Escapes everything but unreserved characters (for a path segment).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PdProtocol;

    #[test]
    fn roles_follow_the_mode() {
        let pd = Mode::Pd(PdProtocol::Vllm);
        assert_eq!(parse_role(Some("prefill"), pd), Ok(Role::Prefill));
        assert_eq!(parse_role(Some("Decode"), pd), Ok(Role::Decode));
        assert!(parse_role(None, pd).is_err());
        assert!(parse_role(Some("both"), pd).is_err());
        assert_eq!(parse_role(None, Mode::Aggregated), Ok(Role::Unified));
        assert_eq!(
            parse_role(Some("regular"), Mode::Aggregated),
            Ok(Role::Unified)
        );
        assert!(parse_role(Some("prefill"), Mode::Aggregated).is_err());
        assert!(parse_role(Some("leader"), Mode::Aggregated).is_err());
    }

    #[test]
    fn urls_escape_both_ways() {
        let url = "http://10.0.0.7:8000";
        assert_eq!(percent_encode(url), "http%3A%2F%2F10.0.0.7%3A8000");
        assert_eq!(percent_decode(&percent_encode(url)), url);
        assert_eq!(percent_decode("http://a:1"), "http://a:1");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(normalize_url(" http://a:1/ ").unwrap(), "http://a:1");
        assert!(normalize_url("a:1").is_err());
        assert!(normalize_url("https://a:1").is_err());
    }

    #[test]
    fn sglang_field_names_are_accepted() {
        let s: WorkerSpec = serde_json::from_str(
            r#"{"url":"http://p:1","worker_type":"prefill","bootstrap_port":8998,
                "model_id":"m","priority":50,"labels":{}}"#,
        )
        .unwrap();
        assert_eq!(s.role.as_deref(), Some("prefill"));
        assert_eq!(s.bootstrap_port, Some(8998));
        assert_eq!(s.model.as_deref(), Some("m"));
    }
}
