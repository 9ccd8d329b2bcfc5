//! Building OpenAI response bodies and stream chunks for `/v1/completions` and `/v1/chat/completions`.

use serde_json::{json, Map, Value};

use crate::engine::types::{Finish, StopReason, TokenEvent};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Completion,
    Chat,
}

/// Per-request constants of the response.
#[derive(Debug, Clone)]
pub struct Renderer {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub flavor: Flavor,
    pub logprobs: bool,
    /// `return_tokens_as_token_ids`: name tokens `token_id:N` in log-probabilities.
    pub token_ids: bool,
}

/// Accumulated log-probabilities in the flavor's format.
#[derive(Debug, Default)]
pub struct Logprobs {
    tokens: Vec<Value>,
    token_logprobs: Vec<Value>,
    top: Vec<Value>,
    offsets: Vec<Value>,
    content: Vec<Value>,
    offset: usize,
}

fn usage(f: &Finish) -> Value {
    let mut u = json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
    });
    if f.cached_tokens > 0 {
        u["prompt_tokens_details"] = json!({"cached_tokens": f.cached_tokens});
    }
    u
}

fn stop_reason(f: &Finish) -> Value {
    match &f.stop_reason {
        Some(StopReason::Text(s)) => json!(s),
        Some(StopReason::Token(t)) => json!(t),
        Some(StopReason::Eos) | None => Value::Null,
    }
}

impl Logprobs {
    pub fn push(&mut self, tok: &Tokenizer, ev: &TokenEvent, r: &Renderer) {
        let name = |id: u32| {
            if r.token_ids {
                format!("token_id:{id}")
            } else {
                tok.token_text(id)
            }
        };
        let text = name(ev.token);
        match r.flavor {
            Flavor::Completion => {
                let mut top = Map::new();
                for &(id, lp) in &ev.top {
                    top.insert(name(id), json!(lp));
                }
                self.tokens.push(json!(text));
                self.token_logprobs.push(json!(ev.logprob));
                self.top.push(Value::Object(top));
                self.offsets.push(json!(self.offset));
                self.offset += ev.text.len();
            }
            Flavor::Chat => {
                let entry = |id: u32, lp: f32| json!({"token": name(id), "logprob": lp, "bytes": tok.token_bytes(id)});
                let mut e = entry(ev.token, ev.logprob);
                e["top_logprobs"] =
                    Value::Array(ev.top.iter().map(|&(id, lp)| entry(id, lp)).collect());
                self.content.push(e);
            }
        }
    }

    fn take(&mut self, flavor: Flavor) -> Value {
        match flavor {
            Flavor::Completion => json!({
                "tokens": std::mem::take(&mut self.tokens),
                "token_logprobs": std::mem::take(&mut self.token_logprobs),
                "top_logprobs": std::mem::take(&mut self.top),
                "text_offset": std::mem::take(&mut self.offsets),
            }),
            Flavor::Chat => json!({"content": std::mem::take(&mut self.content)}),
        }
    }
}

impl Renderer {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.flavor, chunk) {
            (Flavor::Completion, _) => "text_completion",
            (Flavor::Chat, false) => "chat.completion",
            (Flavor::Chat, true) => "chat.completion.chunk",
        }
    }

    fn envelope(&self, chunk: bool, choices: Vec<Value>) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    /// The whole (non-streamed) response.
    pub fn response(
        &self,
        text: &str,
        lps: &mut Logprobs,
        fin: &Finish,
        kv_params: Option<Value>,
    ) -> Value {
        let logprobs = if self.logprobs {
            lps.take(self.flavor)
        } else {
            Value::Null
        };
        let choice = match self.flavor {
            Flavor::Completion => json!({
                "index": 0, "text": text, "logprobs": logprobs,
                "finish_reason": fin.reason.as_str(), "stop_reason": stop_reason(fin),
            }),
            Flavor::Chat => json!({
                "index": 0, "message": {"role": "assistant", "content": text},
                "logprobs": logprobs, "finish_reason": fin.reason.as_str(), "stop_reason": stop_reason(fin),
            }),
        };
        let mut v = self.envelope(false, vec![choice]);
        v["usage"] = usage(fin);
        if let Some(p) = kv_params {
            v["kv_transfer_params"] = p;
        }
        v
    }

    /// Chat streams open with the assistant role.
    pub fn role_chunk(&self) -> Value {
        self.envelope(
            true,
            vec![json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null})],
        )
    }

    /// A content chunk; `fin` set on the last one.
    pub fn chunk(&self, text: &str, lps: &mut Logprobs, fin: Option<&Finish>) -> Value {
        let logprobs = if self.logprobs {
            lps.take(self.flavor)
        } else {
            Value::Null
        };
        let reason = fin.map_or(Value::Null, |f| json!(f.reason.as_str()));
        let stop = fin.map_or(Value::Null, stop_reason);
        let choice = match self.flavor {
            Flavor::Completion => json!({
                "index": 0, "text": text, "logprobs": logprobs, "finish_reason": reason, "stop_reason": stop,
            }),
            Flavor::Chat => json!({
                "index": 0, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": reason,
                "stop_reason": stop,
            }),
        };
        self.envelope(true, vec![choice])
    }

    /// The final `stream_options.include_usage` chunk: no choices, just usage.
    pub fn usage_chunk(&self, fin: &Finish) -> Value {
        let mut v = self.envelope(true, Vec::new());
        v["usage"] = usage(fin);
        v
    }
}
