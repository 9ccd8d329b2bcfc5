//! Turns a timed sequence of stream chunks into TTFT, ITL, latency and token counts, exactly as
//! `vllm bench serve` does: TTFT at the first chunk with non-empty `choices` (for chat the
//! role-only chunk counts), ITL = gaps between later such chunks, latency at the last such chunk,
//! output tokens from the usage chunk (else the number of chunks with content).

use std::time::Duration;

use crate::chunk::{Chunk, Usage};

/// Accumulates one stream's timings; time is the offset from sending the request.
#[derive(Clone, Debug, Default)]
pub struct StreamTimer {
    first: Option<Duration>,
    last: Option<Duration>,
    itl: Vec<f64>,
    content_chunks: u64,
    usage: Option<Usage>,
    error: Option<String>,
    done: bool,
}

/// What the stream measured, and how it ended.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamResult {
    pub ttft: Option<Duration>,
    pub latency: Option<Duration>,
    pub itl: Vec<f64>,
    pub output_tokens: Option<u64>,
    pub prompt_tokens: Option<u64>,
    /// `Some` when the stream did not complete properly.
    pub failure: Option<String>,
}

impl StreamTimer {
    /// Records a chunk received at `at`. Returns `true` once the stream is over (`[DONE]` or an
    /// error event): the caller stops reading.
    pub fn on_chunk(&mut self, chunk: &Chunk, at: Duration) -> bool {
        if let Some(e) = &chunk.error {
            self.error = Some(e.clone());
            return true;
        }
        if chunk.done {
            self.done = true;
            return true;
        }
        if chunk.has_choices {
            match self.last {
                None => self.first = Some(at),
                Some(prev) => self.itl.push(at.saturating_sub(prev).as_secs_f64()),
            }
            self.last = Some(at);
            if chunk.has_content {
                self.content_chunks += 1;
            }
        }
        if let Some(u) = chunk.usage {
            self.usage = Some(u);
        }
        false
    }

    /// The measurement; `broken` is the transport's reason if the body ended with an error.
    pub fn finish(self, broken: Option<String>) -> StreamResult {
        let failure = match (self.error, broken) {
            (Some(e), _) => Some(format!("stream error event: {e}")),
            (None, Some(b)) => Some(b),
            (None, None) if self.first.is_none() => {
                Some("stream ended without a chunk carrying choices".to_owned())
            }
            (None, None) if !self.done => Some("stream ended without [DONE]".to_owned()),
            (None, None) => None,
        };
        let counted = (self.content_chunks > 0).then_some(self.content_chunks);
        StreamResult {
            ttft: self.first,
            latency: self.last,
            itl: self.itl,
            output_tokens: self.usage.and_then(|u| u.completion_tokens).or(counted),
            prompt_tokens: self.usage.and_then(|u| u.prompt_tokens),
            failure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
    fn choice(content: bool) -> Chunk {
        Chunk {
            has_choices: true,
            has_content: content,
            ..Chunk::default()
        }
    }

    #[test]
    fn chat_stream_like_vllm() {
        let mut t = StreamTimer::default();
        assert!(!t.on_chunk(&choice(false), ms(100))); // role-only chunk: TTFT
        assert!(!t.on_chunk(&choice(true), ms(110)));
        assert!(!t.on_chunk(&choice(true), ms(130)));
        assert!(!t.on_chunk(&choice(false), ms(131))); // finish_reason chunk
        let usage = Chunk {
            usage: Some(Usage {
                prompt_tokens: Some(7),
                completion_tokens: Some(2),
            }),
            ..Chunk::default()
        };
        assert!(!t.on_chunk(&usage, ms(132)));
        assert!(t.on_chunk(
            &Chunk {
                done: true,
                ..Chunk::default()
            },
            ms(133)
        ));
        let r = t.finish(None);
        assert_eq!(r.failure, None);
        assert_eq!(r.ttft, Some(ms(100)));
        assert_eq!(r.latency, Some(ms(131)));
        assert_eq!(r.output_tokens, Some(2));
        assert_eq!(r.prompt_tokens, Some(7));
        let want = [0.010, 0.020, 0.001];
        assert_eq!(r.itl.len(), 3);
        for (g, w) in r.itl.iter().zip(want) {
            assert!((g - w).abs() < 1e-9);
        }
    }

    #[test]
    fn counts_content_chunks_without_usage_and_flags_missing_done() {
        let mut t = StreamTimer::default();
        for i in 0..4 {
            t.on_chunk(&choice(true), ms(10 * i));
        }
        let r = t.finish(None);
        assert_eq!(r.output_tokens, Some(4));
        assert_eq!(r.failure.as_deref(), Some("stream ended without [DONE]"));
    }

    #[test]
    fn failures() {
        let mut t = StreamTimer::default();
        t.on_chunk(&choice(true), ms(1));
        let err = Chunk {
            error: Some("oom".into()),
            ..Chunk::default()
        };
        assert!(t.on_chunk(&err, ms(2)));
        assert!(t.finish(None).failure.unwrap().contains("oom"));
        let r = StreamTimer::default().finish(Some("connection reset".into()));
        assert_eq!(r.failure.as_deref(), Some("connection reset"));
        assert!(StreamTimer::default().finish(None).failure.is_some());
    }
}
