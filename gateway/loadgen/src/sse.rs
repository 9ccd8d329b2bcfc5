//! Server-sent events: an incremental parser (bytes in, events out) and the classification of
//! an OpenAI streaming chunk (choices, usage, error, `[DONE]`).

use serde_json::Value;

/// One event: its `event:` field (if any) and its `data:` lines joined by `\n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Splits a byte stream into events; chunks may cut anywhere (even inside a UTF-8 character).
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    /// Feeds bytes; returns the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(nl) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + nl;
            let mut line = &self.buf[start..end];
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            let line = String::from_utf8_lossy(line).into_owned();
            start = end + 1;
            if let Some(ev) = self.line(&line) {
                out.push(ev);
            }
        }
        self.buf.drain(..start);
        out
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            if self.data.is_empty() && self.event.is_none() {
                return None;
            }
            return Some(SseEvent {
                event: self.event.take(),
                data: std::mem::take(&mut self.data).join("\n"),
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => self.data.push(value.to_owned()),
            "event" => self.event = Some(value.to_owned()),
            _ => {}
        }
        None
    }
}

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
    fn parses_across_arbitrary_splits() {
        let stream = "data: {\"a\":1}\r\n\r\n: comment\n\nevent: error\ndata: x\ndata: y\n\ndata: [DONE]\n\n";
        let want = vec![
            data("{\"a\":1}"),
            SseEvent {
                event: Some("error".into()),
                data: "x\ny".into(),
            },
            data("[DONE]"),
        ];
        for split in 1..stream.len() {
            let mut p = SseParser::default();
            let mut got = p.push(&stream.as_bytes()[..split]);
            got.extend(p.push(&stream.as_bytes()[split..]));
            assert_eq!(got, want, "split at {split}");
        }
        // Byte by byte, including a multi-byte character.
        let mut p = SseParser::default();
        let got: Vec<_> = "data: é\n\n".bytes().flat_map(|b| p.push(&[b])).collect();
        assert_eq!(got, vec![data("é")]);
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
