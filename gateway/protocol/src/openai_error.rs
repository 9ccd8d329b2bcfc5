use bytes::Bytes;
use serde::Serialize;

/// The OpenAI error object: `{"error": {"message", "type", "param", "code"}}`. The one builder of it for the
/// gateway and the engine (`baton-native`).
///
/// SDKs key off `type` and the HTTP status, so both are always set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAiError {
    pub message: String,
    pub kind: String,
    pub param: Option<String>,
    /// OpenAI's machine-readable code, a string such as `"context_length_exceeded"`.
    pub code: Option<String>,
    /// vLLM puts the HTTP status in `code` as a number instead (the engine does the same); written only when `code`
    /// is `None`.
    pub numeric_code: Option<u16>,
}

/// The JSON form of `code`: OpenAI's string or vLLM's number.
#[derive(Serialize)]
#[serde(untagged)]
enum Code<'a> {
    Text(&'a str),
    Number(u16),
}

#[derive(Serialize)]
struct Fields<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<Code<'a>>,
}

impl Serialize for OpenAiError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let code = match (&self.code, self.numeric_code) {
            (Some(c), _) => Some(Code::Text(c)),
            (None, Some(n)) => Some(Code::Number(n)),
            (None, None) => None,
        };
        Fields {
            message: &self.message,
            kind: &self.kind,
            param: self.param.as_deref(),
            code,
        }
        .serialize(s)
    }
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
            numeric_code: None,
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

    /// `code` as a number (vLLM's style: the HTTP status), unless a string code is set.
    pub fn with_numeric_code(mut self, code: u16) -> Self {
        self.numeric_code = Some(code);
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

    #[test]
    fn code_is_the_string_when_set_else_the_number() {
        let numeric = OpenAiError::new("too big", "RequestTooLargeError").with_numeric_code(413);
        let v: serde_json::Value = serde_json::from_slice(&numeric.to_json()).unwrap();
        assert_eq!(v["error"]["code"], 413);
        assert_eq!(v["error"].as_object().unwrap().len(), 4, "{v}");
        let both = numeric.with_code("payload_too_large");
        let v: serde_json::Value = serde_json::from_slice(&both.to_json()).unwrap();
        assert_eq!(v["error"]["code"], "payload_too_large");
    }
}
