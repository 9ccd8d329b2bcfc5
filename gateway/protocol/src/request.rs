//! Validating a client request at the edge into a [`ClientRequest`].
//!
//! Only the fields the gateway acts on are checked; everything else is kept
//! verbatim in `body` so engines still see parameters Baton does not know.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::{Endpoint, ProtocolError};

/// Upper bound on `n` and batch sizes: larger ones are almost certainly a
/// mistake and would make the gateway build huge SGLang room arrays.
pub const MAX_BATCH: usize = 1024;

/// A validated generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientRequest {
    pub endpoint: Endpoint,
    /// The original JSON object, unknown fields included.
    pub body: Map<String, Value>,
    pub stream: bool,
    /// `stream_options.include_usage` was set.
    pub include_usage: bool,
    pub model: Option<String>,
    /// How many generations one call asks for (list prompts, `n`), which is
    /// the length of SGLang's per-item bootstrap arrays.
    pub batch: usize,
    /// True when the request is a batch in SGLang's sense (arrays needed).
    pub is_batch: bool,
    /// The bytes the client sent, forwarded as they are when nothing needs
    /// rewriting (aggregated mode).
    pub raw: Option<Bytes>,
    /// The client's limit on generated tokens, in its dialect's name:
    /// `max_tokens` (preferred) or `max_completion_tokens` (OpenAI), or
    /// `sampling_params.max_new_tokens` (SGLang `/generate`). `None` leaves
    /// the engine's default. Values past `u32::MAX` saturate (no engine
    /// generates that many).
    pub max_tokens: Option<u32>,
    /// The prompt, read once here for routing and load estimates.
    pub prompt: Prompt,
}

/// What the gateway reads of a request's prompt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prompt {
    /// A stable text rendering for cache-aware routing: `role:content` lines
    /// for chat, the prompt for completions, SGLang's `text` (or
    /// `input_ids`) for `/generate`; lists and token ids as their JSON.
    pub text: Option<String>,
    /// Chat messages (0 for other endpoints); each costs template tokens.
    pub messages: usize,
}

impl ClientRequest {
    /// Parses and validates `bytes` as a request for `endpoint`.
    pub fn parse(endpoint: Endpoint, bytes: &[u8]) -> Result<Self, ProtocolError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| ProtocolError::InvalidJson(e.to_string()))?;
        let Value::Object(mut body) = value else {
            return Err(ProtocolError::NotAnObject);
        };
        let stripped = crate::sanitize::strip_client_fields(&mut body);
        let mut req = Self::from_map(endpoint, body)?;
        if !stripped {
            req.raw = Some(Bytes::copy_from_slice(bytes));
        }
        Ok(req)
    }

    /// Validates a client body; fields only the fleet may set are dropped
    /// first ([`crate::sanitize`]).
    pub fn from_map(
        endpoint: Endpoint,
        mut body: Map<String, Value>,
    ) -> Result<Self, ProtocolError> {
        crate::sanitize::strip_client_fields(&mut body);
        let stream = opt_bool(&body, "stream")?.unwrap_or(false);
        let include_usage = match body.get("stream_options") {
            None | Some(Value::Null) => false,
            Some(Value::Object(o)) => match o.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(invalid("stream_options", "include_usage must be a boolean"))
                }
            },
            Some(_) => return Err(invalid("stream_options", "must be an object")),
        };
        let model = match body.get("model") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(invalid("model", "must be a string")),
        };
        for field in ["min_tokens", "seed"] {
            opt_u64(&body, field)?;
        }
        // Checked here, before any engine work: a prefill computed for a request that decode then refuses is
        // wasted, and the client should hear the gateway name its field.
        let max_tokens = opt_token_limit(&body, "max_tokens")?;
        let max_completion_tokens = opt_token_limit(&body, "max_completion_tokens")?;
        check_sampling(&body, "temperature", "top_p")?;
        for field in ["presence_penalty", "frequency_penalty"] {
            opt_number(&body, field)?;
        }
        // Each dialect's own name: SGLang's `/generate` ignores OpenAI's.
        let max_tokens = if endpoint == Endpoint::Generate {
            validate_sampling_params(&body)?
        } else {
            max_tokens.or(max_completion_tokens)
        }
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        let n = match opt_u64(&body, "n")? {
            None => 1,
            Some(0) => return Err(invalid("n", "must be at least 1")),
            Some(n) if n as usize > MAX_BATCH => {
                return Err(invalid("n", &format!("must be at most {MAX_BATCH}")))
            }
            Some(n) => n as usize,
        };
        let (batch, is_batch) = match endpoint {
            Endpoint::ChatCompletions => {
                validate_messages(&body)?;
                (n, n > 1)
            }
            Endpoint::Completions => {
                let items = prompt_items(body.get("prompt"))?;
                (items.unwrap_or(1), items.is_some())
            }
            Endpoint::Generate => {
                let items = generate_items(&body)?;
                (items.unwrap_or(1), items.is_some())
            }
        };
        if batch == 0 {
            return Err(invalid("prompt", "must not be an empty list"));
        }
        if batch > MAX_BATCH {
            return Err(invalid("prompt", &format!("at most {MAX_BATCH} items")));
        }
        let prompt = read_prompt(endpoint, &body);
        Ok(Self {
            endpoint,
            body,
            stream,
            include_usage,
            model,
            batch,
            is_batch,
            raw: None,
            max_tokens,
            prompt,
        })
    }

    /// Serializes the (possibly modified) body.
    pub fn to_bytes(&self) -> Bytes {
        encode(&self.body)
    }

    /// The client's original bytes (or the serialized body).
    pub fn original_bytes(&self) -> Bytes {
        self.raw.clone().unwrap_or_else(|| self.to_bytes())
    }

    /// `n` as requested (1 when absent).
    pub fn n(&self) -> u64 {
        self.body.get("n").and_then(Value::as_u64).unwrap_or(1)
    }

    /// A stable text rendering of the prompt for cache-aware routing
    /// ([`Prompt::text`]).
    pub fn routing_text(&self) -> Option<&str> {
        self.prompt.text.as_deref()
    }
}

/// Reads a validated body's prompt (see [`Prompt`]).
fn read_prompt(endpoint: Endpoint, body: &Map<String, Value>) -> Prompt {
    match endpoint {
        Endpoint::ChatCompletions => {
            let msgs = body
                .get("messages")
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice);
            let mut out = String::new();
            for m in msgs {
                if let Some(role) = m.get("role").and_then(Value::as_str) {
                    out.push_str(role);
                    out.push(':');
                }
                match m.get("content") {
                    Some(Value::String(s)) => out.push_str(s),
                    Some(other @ Value::Array(_)) => out.push_str(&other.to_string()),
                    _ => {}
                }
                out.push('\n');
            }
            Prompt {
                text: Some(out),
                messages: msgs.len(),
            }
        }
        Endpoint::Completions => Prompt {
            text: body.get("prompt").map(json_text),
            messages: 0,
        },
        Endpoint::Generate => Prompt {
            text: match body.get("text") {
                Some(Value::Null) | None => body.get("input_ids").map(Value::to_string),
                Some(t) => Some(json_text(t)),
            },
            messages: 0,
        },
    }
}

/// A string as itself, anything else as its JSON.
fn json_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(crate) fn encode(body: &Map<String, Value>) -> Bytes {
    // A map of JSON values always serializes.
    Bytes::from(serde_json::to_vec(body).unwrap_or_default())
}

fn invalid(field: &'static str, reason: &str) -> ProtocolError {
    ProtocolError::InvalidField {
        field,
        reason: reason.to_owned(),
    }
}

fn opt_bool(body: &Map<String, Value>, field: &'static str) -> Result<Option<bool>, ProtocolError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(invalid(field, "must be a boolean")),
    }
}

fn opt_u64(body: &Map<String, Value>, field: &'static str) -> Result<Option<u64>, ProtocolError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| invalid(field, "must be a non-negative integer")),
    }
}

/// An optional token limit: a whole number of at least 1 (0 would let a prefill run for nothing).
fn opt_token_limit(
    body: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<u64>, ProtocolError> {
    opt_token_limit_as(body, field, field)
}

/// The token limit under `key`, named `field` in errors.
fn opt_token_limit_as(
    body: &Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<Option<u64>, ProtocolError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Ok(Some(n)),
            _ => Err(invalid(
                field,
                &format!("must be an integer of at least 1, got {v}"),
            )),
        },
    }
}

fn opt_number(
    body: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<f64>, ProtocolError> {
    opt_number_as(body, field, field)
}

/// The number under `key`, named `field` in errors (SGLang's nested `sampling_params.*`).
fn opt_number_as(
    body: &Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<Option<f64>, ProtocolError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| invalid(field, "must be a number")),
    }
}

/// OpenAI's ranges: `temperature` in [0, 2], `top_p` in (0, 1]. `temperature` and `top_p` are the names
/// errors give the two keys (top level, or inside SGLang's `sampling_params`).
fn check_sampling(
    body: &Map<String, Value>,
    temperature: &'static str,
    top_p: &'static str,
) -> Result<(), ProtocolError> {
    let key = |name: &'static str| name.rsplit('.').next().unwrap_or(name);
    if let Some(t) = opt_number_as(body, key(temperature), temperature)? {
        if !(0.0..=2.0).contains(&t) {
            return Err(invalid(
                temperature,
                &format!("must be between 0 and 2, got {t}"),
            ));
        }
    }
    if let Some(p) = opt_number_as(body, key(top_p), top_p)? {
        if !(p > 0.0 && p <= 1.0) {
            return Err(invalid(
                top_p,
                &format!("must be greater than 0 and at most 1, got {p}"),
            ));
        }
    }
    Ok(())
}

/// SGLang's `/generate` carries its sampling knobs in `sampling_params`;
/// returns its `max_new_tokens`.
fn validate_sampling_params(body: &Map<String, Value>) -> Result<Option<u64>, ProtocolError> {
    let params = match body.get("sampling_params") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(p)) => p,
        Some(_) => return Err(invalid("sampling_params", "must be an object")),
    };
    let max_new_tokens =
        opt_token_limit_as(params, "max_new_tokens", "sampling_params.max_new_tokens")?;
    check_sampling(
        params,
        "sampling_params.temperature",
        "sampling_params.top_p",
    )?;
    Ok(max_new_tokens)
}

fn validate_messages(body: &Map<String, Value>) -> Result<(), ProtocolError> {
    let msgs = match body.get("messages") {
        None | Some(Value::Null) => return Err(ProtocolError::MissingField("messages")),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(invalid("messages", "must be an array")),
    };
    if msgs.is_empty() {
        return Err(invalid("messages", "must not be empty"));
    }
    for m in msgs {
        let Value::Object(m) = m else {
            return Err(invalid("messages", "each message must be an object"));
        };
        if !matches!(m.get("role"), Some(Value::String(_))) {
            return Err(invalid("messages", "each message needs a string 'role'"));
        }
    }
    Ok(())
}

/// `Some(len)` for list prompts (a batch), `None` for a single prompt.
fn prompt_items(prompt: Option<&Value>) -> Result<Option<usize>, ProtocolError> {
    match prompt {
        None | Some(Value::Null) => Err(ProtocolError::MissingField("prompt")),
        Some(Value::String(_)) => Ok(None),
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(invalid("prompt", "must not be an empty list"));
            }
            if items.iter().all(Value::is_string) {
                Ok(Some(items.len()))
            } else if items.iter().all(|v| v.as_u64().is_some()) {
                // One tokenized prompt.
                Ok(None)
            } else if items.iter().all(|v| {
                v.as_array()
                    .is_some_and(|a| a.iter().all(|t| t.as_u64().is_some()))
            }) {
                Ok(Some(items.len()))
            } else {
                Err(invalid(
                    "prompt",
                    "must be a string, a list of strings, a list of token ids, or a list of token-id lists",
                ))
            }
        }
        Some(_) => Err(invalid("prompt", "must be a string or a list")),
    }
}

fn generate_items(body: &Map<String, Value>) -> Result<Option<usize>, ProtocolError> {
    match (body.get("text"), body.get("input_ids")) {
        (Some(Value::String(_)), _) => Ok(None),
        (Some(Value::Array(a)), _) if a.iter().all(Value::is_string) => Ok(Some(a.len())),
        (Some(v), _) if !v.is_null() => {
            Err(invalid("text", "must be a string or a list of strings"))
        }
        (_, Some(Value::Array(a))) => {
            if a.iter().all(|v| v.as_u64().is_some()) {
                Ok(None)
            } else if a.iter().all(Value::is_array) {
                Ok(Some(a.len()))
            } else {
                Err(invalid(
                    "input_ids",
                    "must be a list of ids or a list of lists",
                ))
            }
        }
        (_, Some(v)) if !v.is_null() => Err(invalid("input_ids", "must be a list")),
        _ => Err(ProtocolError::MissingField("text")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(ep: Endpoint, s: &str) -> Result<ClientRequest, ProtocolError> {
        ClientRequest::parse(ep, s.as_bytes())
    }

    #[test]
    fn chat_request_keeps_unknown_fields() {
        let r = parse(
            Endpoint::ChatCompletions,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,
               "stream_options":{"include_usage":true},"vendor_knob":{"a":1}}"#,
        )
        .unwrap();
        assert!(r.stream && r.include_usage);
        assert_eq!(r.model.as_deref(), Some("m"));
        assert_eq!(r.body["vendor_knob"]["a"], 1);
        assert_eq!((r.batch, r.is_batch), (1, false));
        assert_eq!(r.routing_text().unwrap(), "user:hi\n");
        assert_eq!(r.prompt.messages, 1);
        assert_eq!(r.max_tokens, None);
    }

    #[test]
    fn max_tokens_is_read_from_every_dialect() {
        let cases = [
            (
                Endpoint::Completions,
                r#"{"prompt":"a","max_tokens":7}"#,
                Some(7),
            ),
            (
                Endpoint::ChatCompletions,
                r#"{"messages":[{"role":"user"}],"max_completion_tokens":9}"#,
                Some(9),
            ),
            // Both named: `max_tokens` wins, as in baton-engine.
            (
                Endpoint::ChatCompletions,
                r#"{"messages":[{"role":"user"}],"max_tokens":3,"max_completion_tokens":9}"#,
                Some(3),
            ),
            (
                Endpoint::Generate,
                r#"{"text":"a","sampling_params":{"max_new_tokens":5}}"#,
                Some(5),
            ),
            (
                Endpoint::Generate,
                r#"{"text":"a","sampling_params":{}}"#,
                None,
            ),
            // OpenAI's names mean nothing to SGLang's /generate.
            (Endpoint::Generate, r#"{"text":"a","max_tokens":4}"#, None),
            (
                Endpoint::Completions,
                r#"{"prompt":"a","max_tokens":null}"#,
                None,
            ),
            (
                Endpoint::Completions,
                r#"{"prompt":"a","max_tokens":99999999999}"#,
                Some(u32::MAX),
            ),
        ];
        for (ep, body, want) in cases {
            assert_eq!(parse(ep, body).unwrap().max_tokens, want, "{body}");
        }
    }

    #[test]
    fn prompt_is_read_once_per_endpoint() {
        let r = parse(
            Endpoint::ChatCompletions,
            r#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"t"}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            r.prompt,
            Prompt {
                text: Some("system:s\nuser:[{\"type\":\"text\",\"text\":\"t\"}]\n".into()),
                messages: 2,
            }
        );
        let r = parse(Endpoint::Completions, r#"{"prompt":["a","b"]}"#).unwrap();
        assert_eq!(r.routing_text(), Some(r#"["a","b"]"#));
        assert_eq!(r.prompt.messages, 0);
        let r = parse(Endpoint::Generate, r#"{"text":"hello"}"#).unwrap();
        assert_eq!(r.routing_text(), Some("hello"));
        let r = parse(Endpoint::Generate, r#"{"input_ids":[1,2]}"#).unwrap();
        assert_eq!(r.routing_text(), Some("[1,2]"));
    }

    #[test]
    fn rejects_bad_input_with_field_names() {
        let cases = [
            (Endpoint::ChatCompletions, "{", None),
            (Endpoint::ChatCompletions, "[1]", None),
            (
                Endpoint::ChatCompletions,
                r#"{"model":"m"}"#,
                Some("messages"),
            ),
            (
                Endpoint::ChatCompletions,
                r#"{"messages":[]}"#,
                Some("messages"),
            ),
            (
                Endpoint::ChatCompletions,
                r#"{"messages":[1]}"#,
                Some("messages"),
            ),
            (
                Endpoint::Completions,
                r#"{"prompt":"a","max_tokens":-1}"#,
                Some("max_tokens"),
            ),
            (
                Endpoint::Completions,
                r#"{"prompt":"a","max_tokens":"9"}"#,
                Some("max_tokens"),
            ),
            (
                Endpoint::Completions,
                r#"{"prompt":"a","max_tokens":0}"#,
                Some("max_tokens"),
            ),
            (
                Endpoint::ChatCompletions,
                r#"{"messages":[{"role":"user"}],"max_completion_tokens":0}"#,
                Some("max_completion_tokens"),
            ),
            (
                Endpoint::Completions,
                r#"{"prompt":"a","max_tokens":1.5}"#,
                Some("max_tokens"),
            ),
            (
                Endpoint::Completions,
                r#"{"prompt":"a","temperature":-0.1}"#,
                Some("temperature"),
            ),
            (
                Endpoint::Completions,
                r#"{"prompt":"a","temperature":2.5}"#,
                Some("temperature"),
            ),
            (
                Endpoint::Completions,
                r#"{"prompt":"a","top_p":0}"#,
                Some("top_p"),
            ),
            (
                Endpoint::Completions,
                r#"{"prompt":"a","top_p":1.01}"#,
                Some("top_p"),
            ),
            (
                Endpoint::Generate,
                r#"{"text":"a","sampling_params":{"max_new_tokens":0}}"#,
                Some("sampling_params.max_new_tokens"),
            ),
            (
                Endpoint::Generate,
                r#"{"text":"a","sampling_params":{"temperature":3}}"#,
                Some("sampling_params.temperature"),
            ),
            (
                Endpoint::Generate,
                r#"{"text":"a","sampling_params":{"top_p":-1}}"#,
                Some("sampling_params.top_p"),
            ),
            (
                Endpoint::Generate,
                r#"{"text":"a","sampling_params":[1]}"#,
                Some("sampling_params"),
            ),
            (
                Endpoint::Completions,
                r#"{"prompt":"a","stream":"yes"}"#,
                Some("stream"),
            ),
            (Endpoint::Completions, r#"{"prompt":"a","n":0}"#, Some("n")),
            (
                Endpoint::Completions,
                r#"{"prompt":"a","temperature":"hot"}"#,
                Some("temperature"),
            ),
            (
                Endpoint::Completions,
                r#"{"prompt":[{"x":1}]}"#,
                Some("prompt"),
            ),
            (Endpoint::Completions, r#"{"prompt":[]}"#, Some("prompt")),
            (Endpoint::Completions, r#"{}"#, Some("prompt")),
            (
                Endpoint::Generate,
                r#"{"sampling_params":{}}"#,
                Some("text"),
            ),
            (Endpoint::Generate, r#"{"text":5}"#, Some("text")),
            (
                Endpoint::Completions,
                r#"{"prompt":"a","stream_options":3}"#,
                Some("stream_options"),
            ),
            (
                Endpoint::Completions,
                r#"{"prompt":"a","model":3}"#,
                Some("model"),
            ),
        ];
        for (ep, body, param) in cases {
            let err = parse(ep, body).expect_err(body);
            assert_eq!(err.param(), param, "{body}: {err}");
        }
    }

    #[test]
    fn accepts_the_edges_of_each_range() {
        for body in [
            r#"{"prompt":"a","max_tokens":1,"temperature":0,"top_p":1}"#,
            r#"{"prompt":"a","max_tokens":null,"temperature":2,"top_p":0.01}"#,
            r#"{"prompt":"a","max_completion_tokens":1,"presence_penalty":-2}"#,
        ] {
            parse(Endpoint::Completions, body).expect(body);
        }
        let body =
            r#"{"text":"a","sampling_params":{"max_new_tokens":1,"temperature":0,"top_p":1}}"#;
        parse(Endpoint::Generate, body).expect(body);
    }

    #[test]
    fn batch_sizes() {
        let r = parse(Endpoint::Completions, r#"{"prompt":["a","b","c"]}"#).unwrap();
        assert_eq!((r.batch, r.is_batch), (3, true));
        let r = parse(Endpoint::Completions, r#"{"prompt":[1,2,3]}"#).unwrap();
        assert_eq!((r.batch, r.is_batch), (1, false));
        let r = parse(Endpoint::Completions, r#"{"prompt":[[1],[2]]}"#).unwrap();
        assert_eq!((r.batch, r.is_batch), (2, true));
        let r = parse(
            Endpoint::ChatCompletions,
            r#"{"messages":[{"role":"user","content":"x"}],"n":4}"#,
        )
        .unwrap();
        assert_eq!((r.batch, r.is_batch), (4, true));
        let r = parse(Endpoint::Generate, r#"{"input_ids":[[1,2],[3]]}"#).unwrap();
        assert_eq!((r.batch, r.is_batch), (2, true));
        let r = parse(Endpoint::Generate, r#"{"text":"hello"}"#).unwrap();
        assert_eq!((r.batch, r.is_batch), (1, false));
    }
}
