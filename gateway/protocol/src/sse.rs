//! Server-sent events: an incremental decoder and a chunk inspector.
//!
//! The gateway forwards upstream bytes untouched; it only *watches* them
//! through [`SseDecoder`] to measure TTFT/TPOT and to know whether a stream
//! ended properly.

use serde_json::Value;

/// Bound on one buffered event: a larger one is an upstream bug, and holding
/// it would let an engine grow the gateway's memory without limit.
pub const MAX_EVENT_BYTES: usize = 4 << 20;

/// One event's `data` field (multi-line data joined with `\n`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub data: String,
}

/// Splits a byte stream into events, across arbitrary chunk boundaries.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for an event end (keeps scanning
    /// linear when a big event arrives in many small chunks).
    scanned: usize,
    overflowed: bool,
}

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns the events completed by them.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        self.buf.extend_from_slice(chunk);
        while let Some((end, sep)) = find_event_end(&self.buf, self.scanned.saturating_sub(3)) {
            let raw: Vec<u8> = self.buf.drain(..end + sep).collect();
            self.scanned = 0;
            if let Some(ev) = parse_event(&raw[..end]) {
                events.push(ev);
            }
        }
        self.scanned = self.buf.len();
        if self.buf.len() > MAX_EVENT_BYTES {
            self.buf.clear();
            self.scanned = 0;
            self.overflowed = true;
        }
        events
    }

    /// True if an event larger than [`MAX_EVENT_BYTES`] was dropped.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }
}

fn find_event_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' && buf[i + 1] == b'\n' {
            return Some((i, 2));
        }
        if buf[i] == b'\r' && buf[i + 1] == b'\n' && buf.get(i + 2..i + 4) == Some(b"\r\n") {
            return Some((i, 4));
        }
        i += 1;
    }
    None
}

fn parse_event(raw: &[u8]) -> Option<SseEvent> {
    let text = String::from_utf8_lossy(raw);
    let mut data: Option<String> = None;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some(rest) = line.strip_prefix("data:") {
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(rest);
                }
                None => data = Some(rest.to_owned()),
            }
        }
    }
    data.map(|data| SseEvent { data })
}

/// What one event means for latency accounting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkInfo {
    /// The `[DONE]` sentinel.
    pub done: bool,
    /// Carries generated output (non-empty `choices`, or SGLang `text`):
    /// the first such chunk is the client's first token.
    pub has_output: bool,
    /// `usage.completion_tokens` (or SGLang `meta_info.completion_tokens`).
    pub completion_tokens: Option<u64>,
    /// An error object inside the stream.
    pub is_error: bool,
}

/// Classifies one event's data.
pub fn inspect(data: &str) -> ChunkInfo {
    let data = data.trim();
    if data == "[DONE]" {
        return ChunkInfo {
            done: true,
            ..ChunkInfo::default()
        };
    }
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(data) else {
        return ChunkInfo::default();
    };
    let mut info = ChunkInfo {
        is_error: obj.contains_key("error"),
        ..ChunkInfo::default()
    };
    if let Some(Value::Array(choices)) = obj.get("choices") {
        info.has_output = !choices.is_empty();
    }
    if let Some(tokens) = obj
        .get("usage")
        .and_then(|u| u.get("completion_tokens"))
        .and_then(Value::as_u64)
    {
        info.completion_tokens = Some(tokens);
    }
    if let Some(meta) = obj.get("meta_info") {
        info.has_output = true;
        info.completion_tokens = meta.get("completion_tokens").and_then(Value::as_u64);
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_across_any_split() {
        let stream = b"data: {\"choices\":[{\"text\":\"a\"}]}\n\ndata: [DONE]\n\n";
        for split in 0..stream.len() {
            let mut d = SseDecoder::new();
            let mut evs = d.push(&stream[..split]);
            evs.extend(d.push(&stream[split..]));
            assert_eq!(evs.len(), 2, "split at {split}");
            assert!(inspect(&evs[0].data).has_output);
            assert!(inspect(&evs[1].data).done);
        }
    }

    #[test]
    fn crlf_comments_and_multiline_data() {
        let mut d = SseDecoder::new();
        let evs = d.push(b": keepalive\r\n\r\ndata: a\r\ndata: b\r\n\r\n");
        assert_eq!(
            evs,
            vec![SseEvent {
                data: "a\nb".into()
            }]
        );
    }

    #[test]
    fn usage_and_role_chunks() {
        let role = r#"{"choices":[{"delta":{"role":"assistant"},"index":0}]}"#;
        assert!(inspect(role).has_output);
        let usage = r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":64}}"#;
        let u = inspect(usage);
        assert!(!u.has_output);
        assert_eq!(u.completion_tokens, Some(64));
        assert!(inspect(r#"{"error":{"message":"x"}}"#).is_error);
        let sg = inspect(r#"{"text":"hi","meta_info":{"completion_tokens":2}}"#);
        assert!(sg.has_output);
        assert_eq!(sg.completion_tokens, Some(2));
        assert_eq!(inspect("garbage"), ChunkInfo::default());
    }

    #[test]
    fn oversized_event_is_dropped_not_buffered() {
        let mut d = SseDecoder::new();
        let big = vec![b'x'; MAX_EVENT_BYTES + 1];
        assert!(d.push(&big).is_empty());
        assert!(d.overflowed());
        assert_eq!(d.push(b"data: ok\n\n").len(), 1);
    }
}
