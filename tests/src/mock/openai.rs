//! Request parsing and response rendering for the OpenAI (`/v1/chat/completions`,
//! `/v1/completions`) and SGLang-native (`/generate`) APIs. No I/O: the server turns the rendered
//! chunks into a timed body.

use bytes::Bytes;
use serde_json::{json, Map, Value};

/// Which generation API a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Chat,
    Completions,
    Generate,
}

impl Endpoint {
    pub(crate) fn from_path(path: &str) -> Option<Self> {
        match path {
            "/v1/chat/completions" => Some(Self::Chat),
            "/v1/completions" => Some(Self::Completions),
            "/generate" => Some(Self::Generate),
            _ => None,
        }
    }
}

/// The fields of a generation request the mocks act on.
#[derive(Clone, Debug)]
pub(crate) struct GenRequest {
    pub endpoint: Endpoint,
    pub stream: bool,
    pub include_usage: bool,
    /// `max_completion_tokens` ?? `max_tokens` (`sampling_params.max_new_tokens` on `/generate`).
    pub max_tokens: Option<usize>,
    /// Prompt length in whitespace-separated words (or token ids), one entry per prompt.
    pub prompt_tokens: Vec<usize>,
    /// Whether the prompt was given as a list (a batch), even of one item.
    pub batched: bool,
    pub n: usize,
    pub model: Option<String>,
}

impl GenRequest {
    /// Validates the body like vLLM does for the fields the mocks care about.
    pub(crate) fn parse(endpoint: Endpoint, body: &Value) -> Result<Self, String> {
        let obj = body
            .as_object()
            .ok_or("request body must be a JSON object")?;
        let stream = opt_bool(obj, "stream")?.unwrap_or(false);
        let stream_options = obj.get("stream_options").filter(|v| !v.is_null());
        if stream_options.is_some() && !stream {
            return Err("Stream options can only be defined when `stream=True`.".into());
        }
        let include_usage = stream_options
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let (prompt_tokens, batched, max_tokens, min_tokens) = match endpoint {
            Endpoint::Chat => {
                let max = match opt_count(obj, "max_completion_tokens")? {
                    Some(m) => Some(m),
                    None => opt_count(obj, "max_tokens")?,
                };
                let min = match opt_count(obj, "min_tokens")? {
                    Some(m) => Some(m),
                    None => opt_count(obj, "min_completion_tokens")?,
                };
                (vec![chat_prompt_tokens(obj)?], false, max, min)
            }
            Endpoint::Completions => {
                let (p, batched) = prompt_list(obj.get("prompt"), "prompt")?;
                (
                    p,
                    batched,
                    opt_count(obj, "max_tokens")?,
                    opt_count(obj, "min_tokens")?,
                )
            }
            Endpoint::Generate => {
                let (p, batched) = match obj.get("text").filter(|v| !v.is_null()) {
                    Some(text) => prompt_list(Some(text), "text")?,
                    None => prompt_list(obj.get("input_ids"), "input_ids")?,
                };
                let sampling = obj.get("sampling_params").and_then(Value::as_object);
                let (max, min) = match sampling {
                    Some(s) => (
                        opt_count(s, "max_new_tokens")?,
                        opt_count(s, "min_new_tokens")?,
                    ),
                    None => (None, None),
                };
                (p, batched, max, min)
            }
        };
        if max_tokens == Some(0) {
            return Err("max_tokens must be at least 1, got 0.".into());
        }
        if let (Some(min), Some(max)) = (min_tokens, max_tokens) {
            if min > max {
                return Err(format!(
                    "min_tokens must be less than or equal to max_tokens={max}, got {min}."
                ));
            }
        }
        let n = match endpoint {
            Endpoint::Generate => 1,
            _ => opt_count(obj, "n")?.unwrap_or(1),
        };
        if n == 0 {
            return Err("n must be at least 1, got 0.".into());
        }
        let model = obj.get("model").and_then(Value::as_str).map(str::to_owned);
        Ok(Self {
            endpoint,
            stream,
            include_usage,
            max_tokens,
            prompt_tokens,
            batched,
            n,
            model,
        })
    }

    /// Number of choices (sequences) the request produces: prompts × n.
    pub(crate) fn choices(&self) -> usize {
        self.prompt_tokens.len() * self.n
    }

    pub(crate) fn total_prompt_tokens(&self) -> usize {
        self.prompt_tokens.iter().sum()
    }
}

fn opt_bool(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(format!("`{key}` must be a boolean, got {other}")),
    }
}

fn opt_count(obj: &Map<String, Value>, key: &str) -> Result<Option<usize>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| format!("`{key}` must be a non-negative integer, got {v}")),
    }
}

/// Whitespace-separated words in a string.
pub(crate) fn words(s: &str) -> usize {
    s.split_whitespace().count()
}

fn chat_prompt_tokens(obj: &Map<String, Value>) -> Result<usize, String> {
    let messages = obj
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or("`messages` must be a non-empty array")?;
    let mut total = 0;
    for m in messages {
        let m = m.as_object().ok_or("each message must be an object")?;
        total += match m.get("content") {
            None | Some(Value::Null) => 0,
            Some(Value::String(s)) => words(s),
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .map(words)
                .sum(),
            Some(other) => return Err(format!("invalid message content {other}")),
        };
    }
    Ok(total)
}

/// One length per prompt: a string, a list of strings, a list of token ids (one prompt) or a list
/// of lists of token ids. Returns whether the prompt was a batch.
fn prompt_list(prompt: Option<&Value>, key: &str) -> Result<(Vec<usize>, bool), String> {
    let bad = || format!("`{key}` must be a string, a list of strings or a list of token-id lists");
    match prompt {
        Some(Value::String(s)) => Ok((vec![words(s)], false)),
        Some(Value::Array(items)) if items.is_empty() => Err(format!("`{key}` must not be empty")),
        Some(Value::Array(items)) if items.iter().all(Value::is_u64) => {
            Ok((vec![items.len()], false))
        }
        Some(Value::Array(items)) => {
            let lens = items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok(words(s)),
                    Value::Array(ids) if ids.iter().all(Value::is_u64) => Ok(ids.len()),
                    _ => Err(bad()),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((lens, true))
        }
        _ => Err(bad()),
    }
}

/// Token `i` of every output: deterministic text.
pub(crate) fn token_text(i: usize) -> String {
    format!("t{i} ")
}

/// The full output text of `tokens` tokens.
pub(crate) fn output_text(tokens: usize) -> String {
    (0..tokens).map(token_text).collect()
}

/// What to answer: how many tokens per choice, why generation stopped, extra top-level fields.
#[derive(Clone, Debug)]
pub(crate) struct Completion {
    pub tokens: usize,
    pub finish_reason: &'static str,
    /// Extra top-level fields of a non-stream answer (vLLM's `kv_transfer_params`).
    pub extra: Map<String, Value>,
}

impl Completion {
    /// `max_tokens` if given (stopping at the length cap), else `default_tokens` ending with a stop.
    pub(crate) fn for_request(req: &GenRequest, default_tokens: usize) -> Self {
        match req.max_tokens {
            Some(max) => Self::length(max),
            None => Self {
                tokens: default_tokens,
                finish_reason: "stop",
                extra: Map::new(),
            },
        }
    }

    /// The first token was EOS.
    pub(crate) fn eos_first() -> Self {
        Self {
            tokens: 1,
            finish_reason: "stop",
            extra: Map::new(),
        }
    }

    pub(crate) fn length(tokens: usize) -> Self {
        Self {
            tokens,
            finish_reason: "length",
            extra: Map::new(),
        }
    }
}

/// One piece of a response body.
#[derive(Clone, Debug)]
pub(crate) struct Chunk {
    pub data: Bytes,
    /// Carries an output token (what `Fault::DropMidStreamNth` counts).
    pub token: bool,
    /// Written one token delay after the previous chunk (a later token position).
    pub paced: bool,
}

/// A rendered answer: its content type and body chunks (one chunk for non-stream answers).
#[derive(Clone, Debug)]
pub(crate) struct Rendered {
    pub content_type: &'static str,
    pub chunks: Vec<Chunk>,
}

/// Renders the answer to `req` in the format of its endpoint.
pub(crate) fn render(req: &GenRequest, c: &Completion, served_model: &str) -> Rendered {
    let model = req.model.as_deref().unwrap_or(served_model);
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let ctx = Ctx {
        req,
        c,
        model,
        created,
        id: random_id(req.endpoint),
    };
    match (req.endpoint, req.stream) {
        (Endpoint::Generate, false) => json_answer(ctx.generate_full()),
        (Endpoint::Generate, true) => sse(ctx.generate_stream()),
        (_, false) => json_answer(ctx.openai_full()),
        (_, true) => sse(ctx.openai_stream()),
    }
}

fn random_id(endpoint: Endpoint) -> String {
    let prefix = match endpoint {
        Endpoint::Chat => "chatcmpl-",
        Endpoint::Completions => "cmpl-",
        Endpoint::Generate => "",
    };
    format!("{prefix}{:032x}", rand::random::<u128>())
}

fn json_answer(v: Value) -> Rendered {
    Rendered {
        content_type: "application/json",
        chunks: vec![Chunk {
            data: Bytes::from(v.to_string()),
            token: false,
            paced: false,
        }],
    }
}

/// An SSE event before rendering: the JSON, whether it carries a token, whether it is paced.
type Event = (Value, bool, bool);

fn sse(events: Vec<Event>) -> Rendered {
    let mut chunks: Vec<Chunk> = events
        .into_iter()
        .map(|(v, token, paced)| Chunk {
            data: Bytes::from(format!("data: {v}\n\n")),
            token,
            paced,
        })
        .collect();
    chunks.push(Chunk {
        data: Bytes::from_static(b"data: [DONE]\n\n"),
        token: false,
        paced: false,
    });
    Rendered {
        content_type: "text/event-stream",
        chunks,
    }
}

/// Formats an OpenAI-style error body.
pub(crate) fn error_body(status: u16, message: &str) -> Value {
    let kind = match status {
        400 => "BadRequestError",
        401 => "AuthenticationError",
        404 => "NotFoundError",
        408 => "TimeoutError",
        429 => "RateLimitError",
        503 => "ServiceUnavailableError",
        s if s >= 500 => "InternalServerError",
        _ => "APIError",
    };
    json!({"error": {"message": message, "type": kind, "param": null, "code": status}})
}

struct Ctx<'a> {
    req: &'a GenRequest,
    c: &'a Completion,
    model: &'a str,
    created: u64,
    id: String,
}

impl Ctx<'_> {
    fn chat(&self) -> bool {
        self.req.endpoint == Endpoint::Chat
    }

    fn usage(&self) -> Value {
        let prompt = self.req.total_prompt_tokens();
        let completion = self.c.tokens * self.req.choices();
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        })
    }

    fn openai_full(&self) -> Value {
        let text = output_text(self.c.tokens);
        let choices: Vec<Value> = (0..self.req.choices())
            .map(|index| {
                if self.chat() {
                    json!({
                        "index": index,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": null,
                        "finish_reason": self.c.finish_reason,
                    })
                } else {
                    json!({
                        "index": index,
                        "text": text,
                        "logprobs": null,
                        "finish_reason": self.c.finish_reason,
                    })
                }
            })
            .collect();
        let object = if self.chat() {
            "chat.completion"
        } else {
            "text_completion"
        };
        let mut v = json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage(),
        });
        if let Value::Object(map) = &mut v {
            map.extend(self.c.extra.clone());
        }
        v
    }

    fn stream_chunk(&self, choices: Vec<Value>) -> Value {
        let object = if self.chat() {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let mut v = json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if self.req.include_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    fn openai_stream(&self) -> Vec<Event> {
        let choices = self.req.choices();
        let mut out = Vec::new();
        if self.chat() {
            for index in 0..choices {
                let delta = json!({"role": "assistant", "content": ""});
                out.push((
                    self.stream_chunk(vec![self.delta(index, delta, None)]),
                    false,
                    false,
                ));
            }
        }
        for t in 0..self.c.tokens {
            for index in 0..choices {
                let choice = if self.chat() {
                    self.delta(index, json!({"content": token_text(t)}), None)
                } else {
                    self.text(index, &token_text(t), None)
                };
                // Tokens at one position arrive together; the first token comes with the head.
                out.push((self.stream_chunk(vec![choice]), true, index == 0 && t > 0));
            }
        }
        for index in 0..choices {
            let finish = Some(self.c.finish_reason);
            let choice = if self.chat() {
                self.delta(index, json!({}), finish)
            } else {
                self.text(index, "", finish)
            };
            out.push((self.stream_chunk(vec![choice]), false, false));
        }
        if self.req.include_usage {
            let mut last = self.stream_chunk(vec![]);
            last["usage"] = self.usage();
            out.push((last, false, false));
        }
        out
    }

    fn delta(&self, index: usize, delta: Value, finish: Option<&str>) -> Value {
        json!({"index": index, "delta": delta, "logprobs": null, "finish_reason": finish})
    }

    fn text(&self, index: usize, text: &str, finish: Option<&str>) -> Value {
        json!({"index": index, "text": text, "logprobs": null, "finish_reason": finish})
    }

    fn sglang_finish(&self) -> Value {
        match self.c.finish_reason {
            "length" => json!({"type": "length", "length": self.c.tokens}),
            _ => json!({"type": "stop", "matched": 0}),
        }
    }

    fn generate_item(&self, item: usize, tokens: usize, done: bool) -> Value {
        let prompt_tokens = self.req.prompt_tokens[item];
        let mut v = json!({
            "text": output_text(tokens),
            "output_ids": (0..tokens).collect::<Vec<_>>(),
            "meta_info": {
                "id": format!("{}-{item}", self.id),
                "finish_reason": if done { self.sglang_finish() } else { Value::Null },
                "prompt_tokens": prompt_tokens,
                "completion_tokens": tokens,
                "cached_tokens": 0,
            },
        });
        if self.req.batched {
            v["index"] = json!(item);
        }
        v
    }

    fn generate_full(&self) -> Value {
        let items: Vec<Value> = (0..self.req.prompt_tokens.len())
            .map(|i| self.generate_item(i, self.c.tokens, true))
            .collect();
        let mut v = if self.req.batched {
            Value::Array(items)
        } else {
            items.into_iter().next().unwrap_or(Value::Null)
        };
        if let Value::Object(map) = &mut v {
            map.extend(self.c.extra.clone());
        }
        v
    }

    /// SGLang streams the cumulative text of each item.
    fn generate_stream(&self) -> Vec<Event> {
        let mut out = Vec::new();
        for t in 1..=self.c.tokens {
            for item in 0..self.req.prompt_tokens.len() {
                let done = t == self.c.tokens;
                out.push((self.generate_item(item, t, done), true, item == 0 && t > 1));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(endpoint: Endpoint, body: Value) -> Result<GenRequest, String> {
        GenRequest::parse(endpoint, &body)
    }

    #[test]
    fn counts_prompt_words_and_batches() {
        let chat = parse(
            Endpoint::Chat,
            json!({"messages": [{"role": "user", "content": "a b  c"},
                                {"role": "user", "content": [{"type": "text", "text": "d e"}]}],
                   "max_completion_tokens": 3, "max_tokens": 9}),
        )
        .unwrap();
        assert_eq!(chat.prompt_tokens, vec![5]);
        assert_eq!(chat.max_tokens, Some(3));
        let batch = parse(Endpoint::Completions, json!({"prompt": ["a b", "c"]})).unwrap();
        assert_eq!((batch.prompt_tokens, batch.batched), (vec![2, 1], true));
        let ids = parse(Endpoint::Completions, json!({"prompt": [1, 2, 3]})).unwrap();
        assert_eq!((ids.prompt_tokens, ids.batched), (vec![3], false));
        let gen = parse(
            Endpoint::Generate,
            json!({"input_ids": [[1], [2, 3]], "sampling_params": {"max_new_tokens": 4}}),
        )
        .unwrap();
        assert_eq!((gen.prompt_tokens, gen.max_tokens), (vec![1, 2], Some(4)));
    }

    #[test]
    fn rejects_like_vllm() {
        let p = |b| parse(Endpoint::Completions, b);
        assert!(p(json!({"prompt": "x", "stream_options": {"include_usage": true}})).is_err());
        assert!(p(json!({"prompt": "x", "max_tokens": 1, "min_tokens": 2})).is_err());
        assert!(p(json!({"prompt": "x", "max_tokens": 0})).is_err());
        assert!(p(json!({"prompt": []})).is_err());
        assert!(p(json!({"stream": "yes", "prompt": "x"})).is_err());
        assert!(parse(Endpoint::Chat, json!({"messages": []})).is_err());
    }

    #[test]
    fn non_stream_generate_carries_meta_info() {
        let req = parse(Endpoint::Generate, json!({"text": "a b c"})).unwrap();
        let r = render(&req, &Completion::for_request(&req, 2), "m");
        let v: Value = serde_json::from_slice(&r.chunks[0].data).unwrap();
        assert_eq!(v["text"], "t0 t1 ");
        assert_eq!(v["meta_info"]["prompt_tokens"], 3);
        assert_eq!(v["meta_info"]["completion_tokens"], 2);
        assert_eq!(v["meta_info"]["finish_reason"]["type"], "stop");
    }
}
