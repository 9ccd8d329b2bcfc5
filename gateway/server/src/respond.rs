//! The one place where errors become HTTP responses.

use baton_protocol::OpenAiError;
use bytes::Bytes;
use http::{header, Response, StatusCode};

use crate::body::{full, GatewayBody};
use crate::error::{ErrorKind, GatewayError, Leg};

/// HTTP status for an error that happened before the response started.
pub fn status_of(e: &GatewayError) -> StatusCode {
    match &e.kind {
        ErrorKind::BadRequest(_) => StatusCode::BAD_REQUEST,
        ErrorKind::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorKind::NoWorker => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Connect(_) => StatusCode::BAD_GATEWAY,
        ErrorKind::Transport(_) | ErrorKind::BadReply(_) => StatusCode::BAD_GATEWAY,
        // The client's own slowness (its body did not arrive in time).
        ErrorKind::Timeout(_) if e.leg == Leg::Client => StatusCode::REQUEST_TIMEOUT,
        ErrorKind::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Rejected { .. } => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::ModelNotFound(_) => StatusCode::NOT_FOUND,
        ErrorKind::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        // An engine's 4xx is the client's problem and keeps its status so
        // SDKs react as they would talking to the engine; an engine's 5xx
        // becomes a gateway-class status.
        ErrorKind::Status { status, .. } => match *status {
            400..=499 => StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST),
            503 => StatusCode::SERVICE_UNAVAILABLE,
            504 => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        },
    }
}

/// The OpenAI error object for `e`.
pub fn openai_error(e: &GatewayError) -> OpenAiError {
    if let ErrorKind::Status {
        status: 400..=499,
        body,
    } = &e.kind
    {
        return engine_client_error(e, body);
    }
    let kind = match (&e.kind, e.leg) {
        (ErrorKind::BadRequest(_), _) | (ErrorKind::PayloadTooLarge { .. }, _) => {
            "invalid_request_error"
        }
        (ErrorKind::NotFound, _)
        | (ErrorKind::MethodNotAllowed, _)
        | (ErrorKind::ModelNotFound(_), _) => "invalid_request_error",
        (ErrorKind::Status { status, .. }, _) if *status < 500 => "invalid_request_error",
        (ErrorKind::Rejected { .. }, _) => "rate_limit_error",
        // What OpenAI answers for a missing or wrong key.
        (ErrorKind::Unauthorized(_), _) => "invalid_request_error",
        (_, Leg::Gateway) => "service_unavailable",
        _ => "upstream_error",
    };
    let param = match &e.kind {
        ErrorKind::BadRequest(p) => p.param(),
        ErrorKind::ModelNotFound(_) => Some("model"),
        _ => None,
    };
    let code = match e.leg {
        Leg::Client => e.kind_label().to_owned(),
        leg => format!("{}_{}", leg.label(), e.kind_label()),
    };
    OpenAiError::new(e.to_string(), kind)
        .with_param(param)
        .with_code(&code)
}

/// An engine's 4xx is the client's problem: its `param` and `code` reach the client as the engine
/// set them (vLLM and SGLang put them under `error` or at the top level; a numeric `code` is no
/// OpenAI code, so the gateway's stands in), its message after the leg that refused.
fn engine_client_error(e: &GatewayError, body: &Bytes) -> OpenAiError {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let obj = match v.get("error") {
        Some(inner) if inner.is_object() => inner,
        _ => &v,
    };
    let text = |key: &str| {
        obj.get(key)
            .and_then(|x| x.as_str())
            .filter(|s| !s.is_empty())
    };
    let code = text("code")
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{}_{}", e.leg.label(), e.kind_label()));
    OpenAiError::new(e.to_string(), "invalid_request_error")
        .with_param(text("param"))
        .with_code(&code)
}

/// A complete JSON error response, with the headers its status calls for.
pub fn error_response(e: &GatewayError) -> Response<GatewayBody> {
    let mut resp = json_response(status_of(e), openai_error(e).to_json());
    match &e.kind {
        ErrorKind::Unauthorized(_) => {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        ErrorKind::Rejected { retry_after } => {
            // Whole seconds, at least one (the header takes no fractions).
            let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        _ => {}
    }
    resp
}

pub fn json_response(status: StatusCode, body: Bytes) -> Response<GatewayBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_protocol::ProtocolError;

    #[test]
    fn statuses() {
        let bad = GatewayError::client(ProtocolError::MissingField("messages"));
        assert_eq!(status_of(&bad), StatusCode::BAD_REQUEST);
        let oe = openai_error(&bad);
        assert_eq!(oe.param.as_deref(), Some("messages"));
        assert_eq!(oe.kind, "invalid_request_error");
        let t = GatewayError::new(Leg::Prefill, ErrorKind::Timeout("prefill"));
        assert_eq!(status_of(&t), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(openai_error(&t).code.as_deref(), Some("prefill_timeout"));
        let s = GatewayError::new(
            Leg::Decode,
            ErrorKind::Status {
                status: 500,
                body: Bytes::new(),
            },
        );
        assert_eq!(status_of(&s), StatusCode::BAD_GATEWAY);
        let auth = GatewayError::new(
            Leg::Client,
            ErrorKind::Unauthorized(crate::error::AuthFailure::Invalid),
        );
        assert_eq!(status_of(&auth), StatusCode::UNAUTHORIZED);
        let oe = openai_error(&auth);
        assert_eq!(
            (oe.kind.as_str(), oe.code.as_deref()),
            ("invalid_request_error", Some("invalid_api_key"))
        );
        assert_eq!(
            error_response(&auth).headers()["www-authenticate"],
            "Bearer"
        );
        let slow = GatewayError::new(Leg::Client, ErrorKind::Timeout("body_read"));
        assert_eq!(status_of(&slow), StatusCode::REQUEST_TIMEOUT);
        let shed = GatewayError::new(
            Leg::Gateway,
            ErrorKind::Rejected {
                retry_after: std::time::Duration::from_millis(1500),
            },
        );
        let resp = error_response(&shed);
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()["retry-after"], "2");
        let nw = GatewayError::new(Leg::Prefill, ErrorKind::NoWorker);
        assert_eq!(status_of(&nw), StatusCode::SERVICE_UNAVAILABLE);
        assert!(openai_error(&nw).message.contains("prefill"));
    }
}
