//! OpenAI request bodies and their validation into an engine request.

use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;
use crate::chat_template::ChatMessage;
use crate::engine::stop::{MAX_STOP_BYTES, MAX_STOP_STRINGS};
use crate::engine::types::GenParams;
use crate::sampling::SamplingParams;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields shared by both endpoints.
#[derive(Debug, Default, Deserialize)]
pub struct CommonParams {
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub seed: Option<u64>,
    pub stop: Option<StopInput>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub ignore_eos: Option<bool>,
    pub n: Option<u32>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub min_tokens: Option<u64>,
    pub skip_special_tokens: Option<bool>,
    pub kv_transfer_params: Option<Value>,
    /// vLLM's switch: log-probability tokens as `token_id:N` (exact ids, e.g. to compare with a reference).
    pub return_tokens_as_token_ids: Option<bool>,
    /// vLLM's prefix-cache isolation key (kept as a value to answer a wrong type with a `cache_salt` error).
    pub cache_salt: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: Option<PromptInput>,
    pub logprobs: Option<u32>,
    pub echo: Option<bool>,
    #[serde(flatten)]
    pub common: CommonParams,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Value>),
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u32>,
    pub max_completion_tokens: Option<u64>,
    pub add_generation_prompt: Option<bool>,
    #[serde(flatten)]
    pub common: CommonParams,
}

impl Message {
    pub fn to_chat(&self) -> Result<ChatMessage, ApiError> {
        let content = match &self.content {
            None => String::new(),
            Some(Content::Text(s)) => s.clone(),
            Some(Content::Parts(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (
                        p.get("type").and_then(Value::as_str),
                        p.get("text").and_then(Value::as_str),
                    ) {
                        (Some("text"), Some(t)) => s.push_str(t),
                        _ => {
                            return Err(ApiError::bad_request(
                                "only text content parts are supported",
                            )
                            .param("messages"))
                        }
                    }
                }
                s
            }
        };
        Ok(ChatMessage {
            role: self.role.clone(),
            content,
        })
    }
}

/// The validated parts of a request the handlers need besides the prompt.
#[derive(Debug)]
pub struct Validated {
    pub params: GenParams,
    pub stream: bool,
    pub include_usage: bool,
    /// Explicit max_tokens (None: fill the context).
    pub max_tokens: Option<usize>,
    pub cache_salt: Option<String>,
}

pub const MAX_LOGPROBS: u32 = 20;
/// Longest `cache_salt`, in characters (the gateway sends 32 hex digits).
pub const MAX_CACHE_SALT_CHARS: usize = 256;

fn cache_salt(v: Option<&Value>) -> Result<Option<String>, ApiError> {
    let bad = |m: &str| Err(ApiError::bad_request(m).param("cache_salt"));
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => bad("cache_salt must be a non-empty string"),
        Some(Value::String(s)) if s.chars().count() > MAX_CACHE_SALT_CHARS => {
            bad("cache_salt is longer than 256 characters")
        }
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => bad("cache_salt must be a string"),
    }
}

fn stop_strings(stop: Option<&StopInput>) -> Result<Vec<String>, ApiError> {
    let stop = match stop {
        None => Vec::new(),
        Some(StopInput::One(s)) => vec![s.clone()],
        Some(StopInput::Many(v)) => v.clone(),
    };
    if stop.len() > MAX_STOP_STRINGS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_STOP_STRINGS} stop strings are allowed, got {}",
            stop.len()
        ))
        .param("stop"));
    }
    if stop.iter().any(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::bad_request(format!(
            "stop strings may be at most {MAX_STOP_BYTES} bytes long"
        ))
        .param("stop"));
    }
    Ok(stop)
}

impl CommonParams {
    pub fn validate(&self, logprobs: Option<u32>) -> Result<Validated, ApiError> {
        if self.n.unwrap_or(1) != 1 {
            return Err(ApiError::bad_request("only n = 1 is supported").param("n"));
        }
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::bad_request("temperature must be in [0, 2]").param("temperature"));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::bad_request("top_p must be in (0, 1]").param("top_p"));
        }
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => 0,
            Some(k) if k > 0 => k as usize,
            Some(_) => {
                return Err(ApiError::bad_request("top_k must be -1 or positive").param("top_k"))
            }
        };
        if let Some(n) = logprobs.filter(|&n| n > MAX_LOGPROBS) {
            return Err(ApiError::bad_request(format!(
                "logprobs {n} exceeds the maximum {MAX_LOGPROBS}"
            ))
            .param("logprobs"));
        }
        if self.max_tokens == Some(0) {
            return Err(ApiError::bad_request("max_tokens must be at least 1").param("max_tokens"));
        }
        let stop = stop_strings(self.stop.as_ref())?;
        let cache_salt = cache_salt(self.cache_salt.as_ref())?;
        Ok(Validated {
            params: GenParams {
                sampling: SamplingParams {
                    temperature,
                    top_k,
                    top_p,
                    seed: self.seed,
                    logprobs: logprobs.map(|n| n as usize),
                },
                max_tokens: 16,
                min_tokens: self.min_tokens.unwrap_or(0) as usize,
                stop,
                stop_token_ids: self.stop_token_ids.clone().unwrap_or_default(),
                ignore_eos: self.ignore_eos.unwrap_or(false),
                skip_special_tokens: self.skip_special_tokens.unwrap_or(true),
            },
            stream: self.stream.unwrap_or(false),
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
            max_tokens: self.max_tokens.map(|m| m.min(u32::MAX as u64) as usize),
            cache_salt,
        })
    }
}

/// Applies the context limit: vLLM's 400 when prompt + max_tokens exceeds the model's context.
pub fn fit_max_tokens(
    prompt_len: usize,
    requested: Option<usize>,
    default: Option<usize>,
    context: usize,
) -> Result<usize, ApiError> {
    if prompt_len >= context {
        return Err(ApiError::bad_request(format!(
            "This model's maximum context length is {context} tokens. However, your prompt has {prompt_len} tokens."
        ))
        .param("prompt"));
    }
    match requested {
        Some(m) if prompt_len + m > context => Err(ApiError::bad_request(format!(
            "This model's maximum context length is {context} tokens. However, you requested {} tokens ({prompt_len} in \
             the messages, {m} in the completion). Please reduce the length of the messages or completion.",
            prompt_len + m
        ))
        .param("max_tokens")),
        Some(m) => Ok(m),
        None => Ok(default.unwrap_or(context - prompt_len).min(context - prompt_len)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prompt_shapes_and_rejects_bad_params() {
        let r: CompletionRequest =
            serde_json::from_str(r#"{"prompt":[1,2],"max_tokens":3,"extra":1}"#).unwrap();
        assert!(matches!(r.prompt, Some(PromptInput::Ids(_))));
        let r: CompletionRequest = serde_json::from_str(r#"{"prompt":"hi","n":2}"#).unwrap();
        assert_eq!(r.common.validate(None).unwrap_err().param, Some("n"));
        let r: CompletionRequest =
            serde_json::from_str(r#"{"prompt":"hi","temperature":3}"#).unwrap();
        assert!(r.common.validate(None).is_err());
        let r: CompletionRequest =
            serde_json::from_str(r#"{"prompt":"hi","stop":"x","top_k":-1}"#).unwrap();
        assert_eq!(r.common.validate(Some(2)).unwrap().params.stop, vec!["x"]);
    }

    #[test]
    fn bounds_stop_strings_and_cache_salt() {
        let parse = |body: Value| {
            serde_json::from_value::<CompletionRequest>(body)
                .unwrap()
                .common
                .validate(None)
        };
        let many: Vec<String> = (0..=MAX_STOP_STRINGS).map(|i| i.to_string()).collect();
        let err = parse(serde_json::json!({"prompt": "x", "stop": many})).unwrap_err();
        assert_eq!((err.status.as_u16(), err.param), (400, Some("stop")));
        let long = "s".repeat(MAX_STOP_BYTES + 1);
        let err = parse(serde_json::json!({"prompt": "x", "stop": long})).unwrap_err();
        assert_eq!(err.param, Some("stop"));
        let most = vec!["a"; MAX_STOP_STRINGS];
        let ok = parse(serde_json::json!({"prompt": "x", "stop": most})).unwrap();
        assert_eq!(ok.params.stop.len(), MAX_STOP_STRINGS);

        for bad in [
            serde_json::json!(5),
            serde_json::json!(""),
            serde_json::json!("é".repeat(MAX_CACHE_SALT_CHARS + 1)),
        ] {
            let err = parse(serde_json::json!({"prompt": "x", "cache_salt": bad})).unwrap_err();
            assert_eq!((err.status.as_u16(), err.param), (400, Some("cache_salt")));
        }
        let salt = "é".repeat(MAX_CACHE_SALT_CHARS);
        let ok = parse(serde_json::json!({"prompt": "x", "cache_salt": salt})).unwrap();
        assert_eq!(ok.cache_salt, Some(salt));
        assert_eq!(
            parse(serde_json::json!({"prompt": "x"}))
                .unwrap()
                .cache_salt,
            None
        );
    }

    #[test]
    fn context_limit() {
        assert!(fit_max_tokens(10, Some(5), None, 12).is_err());
        assert!(fit_max_tokens(12, None, None, 12).is_err());
        assert_eq!(fit_max_tokens(10, None, None, 12).unwrap(), 2);
        assert_eq!(fit_max_tokens(2, None, Some(16), 100).unwrap(), 16);
    }
}
