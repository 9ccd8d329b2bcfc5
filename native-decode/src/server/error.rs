//! API errors and their one mapping to HTTP: OpenAI-style `{"error": {message, type, param, code}}`, built by the
//! protocol crate's [`OpenAiError`] (the gateway's builder too) with vLLM's numeric `code` (the HTTP status).

use baton_protocol::OpenAiError;
use http::{Response, StatusCode};

use super::body::{full, Body};
use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<&'static str>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "BadRequestError",
            message: message.into(),
            param: None,
        }
    }

    pub fn param(mut self, p: &'static str) -> Self {
        self.param = Some(p);
        self
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "NotFoundError",
            message: message.into(),
            param: None,
        }
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "RequestTooLargeError",
            message: message.into(),
            param: None,
        }
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::REQUEST_TIMEOUT,
            kind: "RequestTimeoutError",
            message: message.into(),
            param: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "InternalServerError",
            message: message.into(),
            param: None,
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "ServiceUnavailableError",
            message: message.into(),
            param: None,
        }
    }

    /// The error object, for a whole response or as an SSE event of a stream that already started.
    pub fn openai(&self) -> OpenAiError {
        OpenAiError::new(self.message.as_str(), self.kind)
            .with_param(self.param)
            .with_numeric_code(self.status.as_u16())
    }

    pub fn into_response(self) -> Response<Body> {
        let mut r = Response::new(full(self.openai().to_json()));
        *r.status_mut() = self.status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidRequest(_)
            | Error::ContextOverflow { .. }
            | Error::Tokenizer(_)
            | Error::Template(_) => Self::bad_request(e.to_string()),
            Error::Transfer(_) => Self {
                status: StatusCode::BAD_GATEWAY,
                kind: "KVTransferError",
                message: e.to_string(),
                param: Some("kv_transfer_params"),
            },
            Error::Shutdown => Self::unavailable(e.to_string()),
            other => Self::internal(other.to_string()),
        }
    }
}
