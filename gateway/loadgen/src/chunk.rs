//! The classification of one OpenAI streaming chunk (choices, usage, error, `[DONE]`) for the
//! measurement. The events come from the protocol crate's SSE decoder
//! ([`baton_protocol::sse::SseDecoder::push_named`]): one SSE reader for the gateway, this load
//! generator and the tests.

pub use baton_protocol::sse::NamedEvent as SseEvent;
use serde_json::Value;

/// Token counts from a `usage` object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

/// What one streamed event means for the measurement.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Chunk {
    /// The chunk's `choices` is non-empty (it counts for TTFT / ITL).
    pub has_choices: bool,
    /// The first choice carries non-empty text (`text` or `delta.content`).
    pub has_content: bool,
    pub usage: Option<Usage>,
    /// An error event (`event: error`, or a JSON `error` object).
    pub error: Option<String>,
    /// `data: [DONE]`.
    pub done: bool,
}

impl Chunk {
    pub fn classify(ev: &SseEvent) -> Self {
        let data = ev.data.trim();
        if data == "[DONE]" {
            return Self {
                done: true,
                ..Self::default()
            };
        }
        let json: Option<Value> = serde_json::from_str(data).ok();
        if ev.event.as_deref() == Some("error") {
            return Self {
                error: Some(error_message(json.as_ref(), data)),
                ..Self::default()
            };
        }
        let Some(v) = json else {
            return Self {
                error: Some(format!("unparseable SSE data: {}", truncate(data, 200))),
                ..Self::default()
            };
        };
        if v.get("error").is_some_and(|e| !e.is_null()) {
            return Self {
                error: Some(error_message(Some(&v), data)),
                ..Self::default()
            };
        }
        let choices = v.get("choices").and_then(Value::as_array);
        let first = choices.and_then(|c| c.first());
        let text = first.and_then(|c| {
            c.get("text")
                .or_else(|| c.get("delta").and_then(|d| d.get("content")))
                .and_then(Value::as_str)
        });
        let usage = v.get("usage").filter(|u| u.is_object()).map(|u| Usage {
            prompt_tokens: u.get("prompt_tokens").and_then(Value::as_u64),
            completion_tokens: u.get("completion_tokens").and_then(Value::as_u64),
        });
        Self {
            has_choices: first.is_some(),
            has_content: text.is_some_and(|t| !t.is_empty()),
            usage,
            error: None,
            done: false,
        }
    }
}

fn error_message(v: Option<&Value>, raw: &str) -> String {
    let e = v.and_then(|v| v.get("error")).unwrap_or(&Value::Null);
    match e.get("message").and_then(Value::as_str).or(e.as_str()) {
        Some(m) => m.to_owned(),
        None => truncate(raw, 200).to_owned(),
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(d: &str) -> SseEvent {
        SseEvent {
            event: None,
            data: d.into(),
        }
    }

    #[test]
    fn classifies_openai_chunks() {
        let role = Chunk::classify(&data(
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}],"usage":null}"#,
        ));
        assert!(role.has_choices && !role.has_content && role.usage.is_none());
        let tok = Chunk::classify(&data(r#"{"choices":[{"index":0,"text":"t1 "}]}"#));
        assert!(tok.has_choices && tok.has_content);
        let usage = Chunk::classify(&data(
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":9,"total_tokens":14}}"#,
        ));
        assert!(!usage.has_choices);
        assert_eq!(
            usage.usage,
            Some(Usage {
                prompt_tokens: Some(5),
                completion_tokens: Some(9)
            })
        );
        assert!(Chunk::classify(&data("[DONE]")).done);
    }

    #[test]
    fn classifies_errors() {
        let e = Chunk::classify(&data(r#"{"error":{"message":"boom","code":500}}"#));
        assert_eq!(e.error.as_deref(), Some("boom"));
        let e = Chunk::classify(&SseEvent {
            event: Some("error".into()),
            data: "upstream died".into(),
        });
        assert_eq!(e.error.as_deref(), Some("upstream died"));
        assert!(Chunk::classify(&data("{not json")).error.is_some());
        assert_eq!(truncate("é", 1), "");
    }
}
