//! The HTTP request for one [`RequestSpec`]: path, JSON body (vLLM-benchmark style: streaming with
//! usage, `ignore_eos`, `max_tokens` = the output length) and extra headers.

use serde_json::{json, Map, Value};

use crate::workload::RequestSpec;

/// Which OpenAI API to call.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `/v1/completions` with `prompt`.
    Completions,
    /// `/v1/chat/completions` with one user message.
    Chat,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Self::Completions => "/v1/completions",
            Self::Chat => "/v1/chat/completions",
        }
    }
}

/// What every request of a run shares.
#[derive(Clone, Debug)]
pub struct RequestTemplate {
    pub endpoint: Endpoint,
    pub model: String,
    /// Keep generating past EOS, so the output length is exactly `max_tokens`.
    pub ignore_eos: bool,
    /// Also send `min_tokens` = the output length.
    pub min_tokens: bool,
    pub temperature: f64,
    /// Merged into every body last (may override the fields above).
    pub extra_body: Map<String, Value>,
    /// Sent on every request (`x-slo-class`, `authorization`, ...).
    pub headers: Vec<(String, String)>,
}

impl RequestTemplate {
    pub fn body(&self, spec: &RequestSpec) -> Value {
        let mut body = json!({
            "model": self.model,
            "stream": true,
            "stream_options": {"include_usage": true},
            "temperature": self.temperature,
        });
        let max_key = match self.endpoint {
            Endpoint::Completions => {
                body["prompt"] = json!(spec.prompt);
                "max_tokens"
            }
            Endpoint::Chat => {
                body["messages"] = json!([{"role": "user", "content": spec.prompt}]);
                "max_completion_tokens"
            }
        };
        body[max_key] = json!(spec.output_len);
        if self.ignore_eos {
            body["ignore_eos"] = json!(true);
        }
        if self.min_tokens {
            body["min_tokens"] = json!(spec.output_len);
        }
        if let Value::Object(map) = &mut body {
            map.extend(self.extra_body.clone());
        }
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RequestSpec {
        RequestSpec {
            prompt: "a b".into(),
            prompt_len: 2,
            output_len: 9,
            label: "x".into(),
        }
    }

    fn template(endpoint: Endpoint) -> RequestTemplate {
        RequestTemplate {
            endpoint,
            model: "m".into(),
            ignore_eos: true,
            min_tokens: false,
            temperature: 0.0,
            extra_body: Map::new(),
            headers: vec![],
        }
    }

    #[test]
    fn completions_body() {
        let b = template(Endpoint::Completions).body(&spec());
        assert_eq!(b["prompt"], "a b");
        assert_eq!(b["max_tokens"], 9);
        assert_eq!(b["stream"], true);
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["ignore_eos"], true);
        assert!(b.get("min_tokens").is_none());
    }

    #[test]
    fn chat_body_with_min_tokens_and_extra() {
        let mut t = template(Endpoint::Chat);
        t.min_tokens = true;
        t.extra_body.insert("temperature".into(), json!(0.7));
        let b = t.body(&spec());
        assert_eq!(b["messages"][0]["content"], "a b");
        assert_eq!(b["max_completion_tokens"], 9);
        assert_eq!(b["min_tokens"], 9);
        assert_eq!(b["temperature"], 0.7);
        assert_eq!(Endpoint::Chat.path(), "/v1/chat/completions");
    }
}
