//! The measurement of one request, as sent and as answered.

use serde::{Deserialize, Serialize};

use crate::client::{Predicted, Sent};
use crate::workload::RequestSpec;

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// Streamed to `[DONE]`.
    Ok,
    /// HTTP 429: load shed by the server.
    Rejected { retry_after: Option<String> },
    /// Any other non-2xx answer.
    HttpError { status: u16, message: String },
    /// The stream broke: an SSE error event, a connection drop, or no `[DONE]`.
    Aborted { reason: String },
    /// No answer could be had at all (connect, send).
    Connect { message: String },
    /// The per-request timeout expired.
    Timeout,
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Ok)
    }

    pub fn is_rejected(&self) -> bool {
        matches!(self, Self::Rejected { .. })
    }
}

/// One request. Times are seconds; `scheduled_s` and `sent_s` are offsets from the run's
/// start, the others are measured from `sent_s` (as `vllm bench serve` does).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub index: usize,
    pub label: String,
    /// When the arrival process scheduled it.
    pub scheduled_s: f64,
    /// When it was sent (later than scheduled only under `--max-concurrency`).
    pub sent_s: f64,
    /// Prompt length the workload intended (tokens).
    pub prompt_len: u32,
    /// `max_tokens` asked for.
    pub output_len: u32,
    pub outcome: Outcome,
    /// Time to the first chunk with non-empty `choices`.
    pub ttft_s: Option<f64>,
    /// Time to the last chunk with non-empty `choices`.
    pub latency_s: Option<f64>,
    /// Gaps between successive chunks with `choices`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub itl_s: Vec<f64>,
    /// From the usage chunk, else the number of chunks with content.
    pub output_tokens: Option<u64>,
    pub prompt_tokens: Option<u64>,
    /// The gateway's predicted TTFT/TPOT (`x-baton-predicted`), when it made one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted: Option<Predicted>,
}

impl RequestRecord {
    /// The record of request `index` (`spec`), scheduled and sent at these offsets from the
    /// run's start (seconds), as [`Sent`] measured it.
    pub fn measured(
        index: usize,
        spec: &RequestSpec,
        scheduled_s: f64,
        sent_s: f64,
        sent: Sent,
    ) -> Self {
        Self {
            index,
            label: spec.label.clone(),
            scheduled_s,
            sent_s,
            prompt_len: spec.prompt_len,
            output_len: spec.output_len,
            outcome: sent.outcome,
            ttft_s: sent.stream.ttft.map(|d| d.as_secs_f64()),
            latency_s: sent.stream.latency.map(|d| d.as_secs_f64()),
            itl_s: sent.stream.itl,
            output_tokens: sent.stream.output_tokens,
            prompt_tokens: sent.stream.prompt_tokens,
            predicted: sent.predicted,
        }
    }

    /// vLLM's TPOT: (latency − TTFT) / (output tokens − 1), for successful requests with more
    /// than one output token.
    pub fn tpot_s(&self) -> Option<f64> {
        if !self.outcome.is_ok() {
            return None;
        }
        let n = self.output_tokens?;
        if n <= 1 {
            return None;
        }
        Some((self.latency_s? - self.ttft_s?) / (n - 1) as f64)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A successful record with these times (seconds) and output tokens.
    pub(crate) fn ok(ttft: f64, latency: f64, tokens: u64) -> RequestRecord {
        RequestRecord {
            index: 0,
            label: "t".into(),
            scheduled_s: 0.0,
            sent_s: 0.0,
            prompt_len: 10,
            output_len: tokens as u32,
            outcome: Outcome::Ok,
            ttft_s: Some(ttft),
            latency_s: Some(latency),
            itl_s: Vec::new(),
            output_tokens: Some(tokens),
            prompt_tokens: Some(10),
            predicted: None,
        }
    }

    pub(crate) fn failed(outcome: Outcome) -> RequestRecord {
        RequestRecord {
            outcome,
            ttft_s: None,
            latency_s: None,
            output_tokens: None,
            ..ok(0.0, 0.0, 0)
        }
    }

    #[test]
    fn tpot_formula() {
        let r = ok(0.1, 1.1, 11);
        assert!((r.tpot_s().unwrap() - 0.1).abs() < 1e-12);
        assert_eq!(ok(0.1, 0.1, 1).tpot_s(), None);
        assert_eq!(failed(Outcome::Timeout).tpot_s(), None);
    }

    #[test]
    fn outcome_json_shape() {
        let v = serde_json::to_value(Outcome::Rejected {
            retry_after: Some("2".into()),
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"kind": "rejected", "retry_after": "2"})
        );
    }
}
