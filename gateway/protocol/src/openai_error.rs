use bytes::Bytes;
use serde::Serialize;

/// The OpenAI error object: `{"error": {"message", "type", "param", "code"}}`.
///
/// SDKs key off `type` and the HTTP status, so both are always set.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OpenAiError {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: &'a OpenAiError,
}

impl OpenAiError {
    pub fn new(message: impl Into<String>, kind: &str) -> Self {
        Self {
            message: message.into(),
            kind: kind.to_owned(),
            param: None,
            code: None,
        }
    }

    pub fn with_param(mut self, param: Option<&str>) -> Self {
        self.param = param.map(str::to_owned);
        self
    }

    pub fn with_code(mut self, code: &str) -> Self {
        self.code = Some(code.to_owned());
        self
    }

    /// The JSON body of a non-streaming error response.
    pub fn to_json(&self) -> Bytes {
        // Serializing plain strings cannot fail.
        Bytes::from(serde_json::to_vec(&Envelope { error: self }).unwrap_or_default())
    }

    /// The same error as one SSE event, for streams that already started.
    pub fn to_sse_event(&self) -> Bytes {
        let mut out = b"data: ".to_vec();
        out.extend_from_slice(&self.to_json());
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_matches_openai() {
        let e = OpenAiError::new("boom", "invalid_request_error").with_param(Some("max_tokens"));
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["error"]["message"], "boom");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "max_tokens");
        assert!(v["error"]["code"].is_null());
        let sse = e.to_sse_event();
        assert!(sse.starts_with(b"data: {\"error\""));
        assert!(sse.ends_with(b"\n\n"));
    }
}
