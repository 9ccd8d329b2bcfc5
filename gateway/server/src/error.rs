//! The gateway's one error type.
//!
//! Every failure carries *who* caused it ([`Leg`]) and *what* happened
//! ([`ErrorKind`]); retry and breaker decisions read these fields, and
//! [`crate::respond`] is the only place that turns them into HTTP.

use std::fmt;

use baton_protocol::ProtocolError;
use bytes::Bytes;

/// Which party an error is attributed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Leg {
    /// The client sent something wrong.
    Client,
    /// The gateway itself (no worker, internal limits).
    Gateway,
    /// The single worker of aggregated mode.
    Worker,
    Prefill,
    Decode,
}

impl Leg {
    pub fn label(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Gateway => "gateway",
            Self::Worker => "worker",
            Self::Prefill => "prefill",
            Self::Decode => "decode",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed or invalid request (400).
    BadRequest(ProtocolError),
    /// Body above `max_payload_size` (413).
    PayloadTooLarge {
        limit: usize,
    },
    NotFound,
    MethodNotAllowed,
    /// No healthy worker in a pool (503).
    NoWorker,
    /// TCP connect failed or was refused.
    Connect(String),
    /// The connection broke or the engine closed it mid-reply.
    Transport(String),
    /// A timeout expired; the string names which one.
    Timeout(&'static str),
    /// The engine answered with a non-success status.
    Status {
        status: u16,
        body: Bytes,
    },
    /// The engine's reply could not be understood.
    BadReply(String),
    /// Admission control predicted the SLO cannot be met, or a policy plugin
    /// shed the request (429); the client may retry after this long.
    Rejected {
        retry_after: std::time::Duration,
    },
    /// No engine serves the requested model (404, OpenAI's `model_not_found`).
    ModelNotFound(String),
    /// No valid key for this endpoint (401).
    Unauthorized(AuthFailure),
}

/// Why a request was not authenticated (never which key it sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Invalid,
    /// An admin endpoint on the main listener of a gateway with client keys
    /// but no admin key.
    AdminOnly,
}

/// A failure of one request, attributed to a leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    pub kind: ErrorKind,
    pub leg: Leg,
}

impl GatewayError {
    pub fn new(leg: Leg, kind: ErrorKind) -> Self {
        Self { kind, leg }
    }

    pub fn client(e: ProtocolError) -> Self {
        Self::new(Leg::Client, ErrorKind::BadRequest(e))
    }

    /// May the request be sent again to another worker (before any byte
    /// reached the client)? Connect failures, transport failures and
    /// 408/429/5xx are; client errors and timeouts of the total budget are not.
    pub fn retryable(&self) -> bool {
        match &self.kind {
            ErrorKind::Connect(_) | ErrorKind::Transport(_) => true,
            ErrorKind::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
            ErrorKind::Timeout(which) => *which != "request",
            _ => false,
        }
    }

    /// Does this error say the worker itself is failing? Overload answers
    /// (429, 503), client errors (4xx) and timeouts do not: counting them
    /// would open breakers exactly when the fleet is merely busy (a worker
    /// that really hangs is caught by the active health checks).
    pub fn counts_against_worker(&self) -> bool {
        if !matches!(self.leg, Leg::Worker | Leg::Prefill | Leg::Decode) {
            return false;
        }
        match &self.kind {
            ErrorKind::Connect(_) | ErrorKind::Transport(_) | ErrorKind::BadReply(_) => true,
            ErrorKind::Status { status, .. } => *status >= 500 && *status != 503,
            _ => false,
        }
    }

    /// Short label for metrics.
    pub fn kind_label(&self) -> &'static str {
        match &self.kind {
            ErrorKind::BadRequest(_) => "bad_request",
            ErrorKind::PayloadTooLarge { .. } => "payload_too_large",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::NoWorker => "no_worker",
            ErrorKind::Connect(_) => "connect",
            ErrorKind::Transport(_) => "transport",
            ErrorKind::Timeout(_) => "timeout",
            ErrorKind::Status { .. } => "status",
            ErrorKind::BadReply(_) => "bad_reply",
            ErrorKind::Rejected { .. } => "rejected",
            ErrorKind::ModelNotFound(_) => "model_not_found",
            ErrorKind::Unauthorized(_) => "invalid_api_key",
        }
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let leg = self.leg.label();
        // "prefill worker", "decode worker"; aggregated mode's is just "worker".
        let who = match self.leg {
            Leg::Worker => "worker".to_owned(),
            other => format!("{} worker", other.label()),
        };
        match &self.kind {
            ErrorKind::BadRequest(e) => write!(f, "{e}"),
            ErrorKind::PayloadTooLarge { limit } => {
                write!(f, "request body exceeds the limit of {limit} bytes")
            }
            ErrorKind::NotFound => write!(f, "no such endpoint"),
            ErrorKind::MethodNotAllowed => write!(f, "method not allowed on this endpoint"),
            ErrorKind::NoWorker => write!(f, "no healthy {who} available"),
            ErrorKind::Connect(e) => write!(f, "{who} unreachable: {e}"),
            ErrorKind::Transport(e) => write!(f, "{who} connection failed: {e}"),
            ErrorKind::Timeout(which) => write!(f, "{leg} leg timed out ({which} timeout)"),
            ErrorKind::Status { status, body } => {
                let detail = upstream_message(body);
                write!(f, "{who} returned HTTP {status}: {detail}")
            }
            ErrorKind::BadReply(e) => write!(f, "{who} sent an invalid reply: {e}"),
            ErrorKind::Rejected { .. } => write!(
                f,
                "no worker can meet this request's latency targets now; retry later"
            ),
            ErrorKind::ModelNotFound(model) => write!(f, "The model `{model}` does not exist."),
            ErrorKind::Unauthorized(AuthFailure::Missing) => write!(
                f,
                "no API key provided: send it as 'Authorization: Bearer <key>'"
            ),
            ErrorKind::Unauthorized(AuthFailure::Invalid) => {
                write!(f, "incorrect API key provided")
            }
            ErrorKind::Unauthorized(AuthFailure::AdminOnly) => write!(
                f,
                "this endpoint needs the admin key (--admin-api-key) or the admin listener (--prometheus-port)"
            ),
        }
    }
}

impl std::error::Error for GatewayError {}

/// The message inside an upstream error body, or the body itself, truncated.
fn upstream_message(body: &Bytes) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        let msg = v
            .pointer("/error/message")
            .or_else(|| v.get("message"))
            .or_else(|| v.get("detail"))
            .or_else(|| v.get("error"));
        if let Some(serde_json::Value::String(s)) = msg {
            return s.clone();
        }
    }
    let text = String::from_utf8_lossy(body);
    let mut s: String = text.chars().take(200).collect();
    if s.is_empty() {
        s.push_str("(empty body)");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(leg: Leg, s: u16) -> GatewayError {
        GatewayError::new(
            leg,
            ErrorKind::Status {
                status: s,
                body: Bytes::from_static(b"{\"error\":{\"message\":\"busy\"}}"),
            },
        )
    }

    #[test]
    fn retry_and_breaker_classification() {
        assert!(status(Leg::Decode, 503).retryable());
        assert!(!status(Leg::Decode, 503).counts_against_worker());
        assert!(status(Leg::Decode, 429).retryable());
        assert!(!status(Leg::Decode, 429).counts_against_worker());
        assert!(!status(Leg::Prefill, 400).retryable());
        assert!(!status(Leg::Prefill, 400).counts_against_worker());
        assert!(status(Leg::Prefill, 500).counts_against_worker());
        assert!(status(Leg::Prefill, 408).retryable());
        let c = GatewayError::new(Leg::Worker, ErrorKind::Connect("refused".into()));
        assert!(c.retryable() && c.counts_against_worker());
        let t = GatewayError::new(Leg::Decode, ErrorKind::Timeout("request"));
        assert!(!t.retryable() && !t.counts_against_worker());
        // A slow (overloaded) prefill is retried elsewhere but opens no breaker.
        let slow = GatewayError::new(Leg::Prefill, ErrorKind::Timeout("prefill"));
        assert!(slow.retryable() && !slow.counts_against_worker());
    }

    #[test]
    fn display_names_the_leg_and_upstream_message() {
        assert_eq!(
            status(Leg::Prefill, 503).to_string(),
            "prefill worker returned HTTP 503: busy"
        );
    }
}
