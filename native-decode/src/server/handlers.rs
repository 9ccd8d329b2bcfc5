//! Request handlers: parse, validate, run through the engine, answer in JSON or SSE.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::api::{fit_max_tokens, ChatRequest, CompletionRequest, PromptInput, Validated};
use super::body::{channel, full, Body};
use super::error::ApiError;
use super::fleet::Caller;
use super::respond::{Flavor, Logprobs, Renderer};
use super::{Role, ServerState};
use crate::engine::types::{Event, Finish, GenerateRequest, ImportedKv, SeqSlo};
use crate::metrics::Stats;
use crate::transfer::{PullBounds, PullFailurePolicy, RemoteKv};

/// The fleet's budgets for this call (`x-baton-slo`), read when its head arrives. Honoured only on
/// fleet-authenticated calls, like `kv_transfer_params`: anyone else could put their request ahead of everyone
/// else's with a tight deadline, or shrink every step with a tiny TPOT. A client's header is ignored (counted in
/// `baton:slo_headers_ignored_total`); a malformed one from the fleet is no budget.
pub fn request_slo(caller: &Caller, headers: &http::HeaderMap, stats: &Stats) -> SeqSlo {
    use baton_protocol::engine_slo::{EngineSlo, SLO_HEADER};
    let Some(v) = headers.get(SLO_HEADER) else {
        return SeqSlo::default();
    };
    if !caller.fleet {
        stats.slo_headers_ignored.fetch_add(1, Ordering::Relaxed);
        return SeqSlo::default();
    }
    let Some(h) = v.to_str().ok().and_then(EngineSlo::parse) else {
        return SeqSlo::default();
    };
    let now_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let slo = SeqSlo::from_header(&h, std::time::Instant::now(), now_unix_ms);
    if !slo.is_empty() {
        stats.slo_requests.fetch_add(1, Ordering::Relaxed);
    }
    slo
}

pub fn json_response(v: &Value) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(v.to_string())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

fn check_model(state: &ServerState, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if m != state.model_name => {
            Err(ApiError::not_found(format!("The model `{m}` does not exist.")).param("model"))
        }
        _ => Ok(()),
    }
}

/// Counts a request in `num_preparing` while it exists.
struct Preparing(Arc<crate::metrics::Stats>);

impl Preparing {
    fn new(stats: &Arc<crate::metrics::Stats>) -> Self {
        stats.num_preparing.fetch_add(1, Ordering::Relaxed);
        Self(stats.clone())
    }
}

impl Drop for Preparing {
    fn drop(&mut self) {
        self.0.num_preparing.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs request preparation (JSON parsing, chat-template rendering, tokenization: CPU work that grows with the
/// body, up to the body limit) on the blocking pool, so that a huge prompt never stalls the async workers, and
/// `/health` and other requests with them.
async fn prepare<T, F>(state: &Arc<ServerState>, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&ServerState) -> Result<T, ApiError> + Send + 'static,
{
    let st = state.clone();
    // Moved into the task: the gauge covers the work even if the client leaves meanwhile.
    let busy = Preparing::new(&state.engine.stats);
    tokio::task::spawn_blocking(move || {
        let _busy = busy;
        f(&st)
    })
    .await
    .map_err(|e| ApiError::internal(format!("request preparation failed: {e}")))?
}

/// Tokenizes a prompt; text too long for the context whatever its tokens is refused without tokenizing it (a
/// token stands for at most `max_token_bytes` of text), so a huge prompt costs no tokenizer time.
fn encode_prompt(
    state: &ServerState,
    text: &str,
    add_special: bool,
    param: &'static str,
) -> Result<Vec<u32>, ApiError> {
    let tok = &state.engine.tokenizer;
    let ctx = state.engine.context_length;
    let at_least = text.len() / tok.max_token_bytes();
    if at_least >= ctx {
        return Err(ApiError::bad_request(format!(
            "This model's maximum context length is {ctx} tokens. However, your prompt has at least {at_least} \
             tokens."
        ))
        .param(param));
    }
    Ok(tok.encode(text, add_special)?)
}

pub async fn completions(
    state: Arc<ServerState>,
    body: Bytes,
    request_id: String,
    caller: Caller,
    slo: SeqSlo,
) -> Result<Response<Body>, ApiError> {
    let (req, prompt, echo) = prepare(&state, move |state| {
        let mut req: CompletionRequest = parse(&body)?;
        check_model(state, req.common.model.as_deref())?;
        let echo = req.echo.unwrap_or(false);
        // Prompt log-probabilities need the logits of every prompt position; the engine's forward pass keeps only
        // the last one's. Refused rather than answered without them.
        if echo && req.logprobs.is_some() {
            return Err(ApiError::bad_request(
                "echo with logprobs (prompt log-probabilities) is not supported by this engine; use echo without \
                 logprobs, or logprobs without echo",
            )
            .param("echo"));
        }
        let (prompt, text) = match req.prompt.take() {
            None => return Err(ApiError::bad_request("prompt is required").param("prompt")),
            Some(PromptInput::Text(s)) => (encode_prompt(state, &s, true, "prompt")?, Some(s)),
            Some(PromptInput::Texts(mut v)) if v.len() == 1 => {
                let s = v.remove(0);
                (encode_prompt(state, &s, true, "prompt")?, Some(s))
            }
            Some(PromptInput::Ids(ids)) => (ids, None),
            Some(PromptInput::IdLists(mut v)) if v.len() == 1 => (v.remove(0), None),
            Some(_) => {
                return Err(
                    ApiError::bad_request("batched prompts are not supported").param("prompt")
                )
            }
        };
        // vLLM echoes the prompt's text: as sent, or its token ids decoded.
        let echo = echo.then(|| text.unwrap_or_else(|| state.engine.tokenizer.decode(&prompt, false)));
        Ok((req, prompt, echo))
    })
    .await?;
    let v = req.common.validate(req.logprobs)?;
    let r = Renderer {
        id: format!("cmpl-{request_id}"),
        created: now_secs(),
        model: state.model_name.clone(),
        flavor: Flavor::Completion,
        logprobs: req.logprobs.is_some(),
        token_ids: req.common.return_tokens_as_token_ids.unwrap_or(false),
    };
    let call = Generation {
        renderer: r,
        prompt,
        validated: v,
        default_max: Some(16),
        kv_params: req.common.kv_transfer_params,
        request_id,
        caller,
        slo,
        echo,
    };
    generate(state, call).await
}

pub async fn chat(
    state: Arc<ServerState>,
    body: Bytes,
    request_id: String,
    caller: Caller,
    slo: SeqSlo,
) -> Result<Response<Body>, ApiError> {
    let (req, prompt) = prepare(&state, move |state| {
        let req: ChatRequest = parse(&body)?;
        check_model(state, req.common.model.as_deref())?;
        let template = state
            .template
            .as_ref()
            .ok_or_else(|| ApiError::bad_request("this model has no chat template"))?;
        let messages = req
            .messages
            .iter()
            .map(|m| m.to_chat())
            .collect::<Result<Vec<_>, _>>()?;
        let text = template.render(&messages, req.add_generation_prompt.unwrap_or(true))?;
        let prompt = encode_prompt(state, &text, false, "messages")?;
        Ok((req, prompt))
    })
    .await?;
    let logprobs = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (true, n) => Some(n.unwrap_or(0)),
        (false, Some(n)) if n > 0 => {
            return Err(
                ApiError::bad_request("top_logprobs requires logprobs = true")
                    .param("top_logprobs"),
            )
        }
        _ => None,
    };
    let mut v = req.common.validate(logprobs)?;
    if v.max_tokens.is_none() {
        v.max_tokens = req.max_completion_tokens.map(|m| m as usize);
    }
    let r = Renderer {
        id: format!("chatcmpl-{request_id}"),
        created: now_secs(),
        model: state.model_name.clone(),
        flavor: Flavor::Chat,
        logprobs: logprobs.is_some(),
        token_ids: req.common.return_tokens_as_token_ids.unwrap_or(false),
    };
    let call = Generation {
        renderer: r,
        prompt,
        validated: v,
        default_max: None,
        kv_params: req.common.kv_transfer_params,
        request_id,
        caller,
        slo,
        echo: None,
    };
    generate(state, call).await
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Pulls remote KV for a decode request, applying the failure policy. `prompt_tokens` (the request's own prompt)
/// bounds what the holder may send.
async fn pull_kv(
    state: &ServerState,
    params: &Value,
    prompt_tokens: usize,
) -> Result<Option<ImportedKv>, ApiError> {
    if !matches!(state.role, Role::Decode | Role::Both) {
        return Ok(None);
    }
    let Some(remote) = RemoteKv::from_params(params)? else {
        return Ok(None);
    };
    let engine = &state.engine;
    let bounds = PullBounds {
        prompt_tokens,
        pool_blocks: engine.num_blocks,
        block_size: engine.block_size,
        floats_per_token: engine.kv_floats_per_token,
    };
    let stats = &engine.stats;
    match state.puller.pull(&remote, bounds).await {
        Ok(kv) => {
            stats.kv_pulls.fetch_add(1, Ordering::Relaxed);
            Ok(Some(kv))
        }
        Err(e) => {
            stats.kv_pull_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(transfer_id = %remote.transfer_id, "KV pull failed: {e}");
            match state.pull_failure {
                PullFailurePolicy::Recompute => {
                    stats.kv_pull_recomputes.fetch_add(1, Ordering::Relaxed);
                    Ok(None)
                }
                PullFailurePolicy::Error => Err(e.into()),
            }
        }
    }
}

/// Everything one generation needs, after parsing and validation.
struct Generation {
    renderer: Renderer,
    prompt: Vec<u32>,
    validated: Validated,
    /// max_tokens when the request gives none (`None`: fill the context, as chat does).
    default_max: Option<usize>,
    kv_params: Option<Value>,
    request_id: String,
    caller: Caller,
    slo: SeqSlo,
    /// `/v1/completions` with `echo`: the prompt's text, put before the output.
    echo: Option<String>,
}

async fn generate(state: Arc<ServerState>, call: Generation) -> Result<Response<Body>, ApiError> {
    let Generation {
        renderer: r,
        prompt,
        validated: v,
        default_max,
        kv_params,
        request_id,
        caller,
        slo,
        echo,
    } = call;
    // Only the fleet steers KV transfer; a client's params are dropped and the request is served plainly.
    let kv_params = kv_params.filter(|_| caller.fleet);
    let ctx = state.engine.context_length;
    let mut params = v.params;
    params.max_tokens = fit_max_tokens(prompt.len(), v.max_tokens, default_max, ctx)?;
    let remote_decode = matches!(state.role, Role::Prefill | Role::Both)
        && kv_params
            .as_ref()
            .and_then(|p| p.get("do_remote_decode"))
            .and_then(Value::as_bool)
            == Some(true);
    let imported = match &kv_params {
        Some(p) => pull_kv(&state, p, prompt.len()).await?,
        None => None,
    };
    let (guard, mut rx) = state.engine.submit_with(
        GenerateRequest {
            request_id,
            prompt,
            params,
            remote_decode,
            imported,
            cache_salt: v.cache_salt,
            tenant: caller.tenant,
        },
        slo,
    )?;
    // Wait for the first event so that engine-side rejections become proper HTTP errors.
    let first = rx
        .recv()
        .await
        .ok_or_else(|| ApiError::unavailable("engine stopped"))?;
    if let Event::Error(e) = first {
        return Err(ApiError::bad_request(e));
    }
    let tok = state.engine.tokenizer.clone();
    if !v.stream {
        let mut text = echo.unwrap_or_default();
        let mut lps = Logprobs::default();
        let mut ev = Some(first);
        loop {
            let e = match ev.take() {
                Some(e) => e,
                None => rx
                    .recv()
                    .await
                    .ok_or_else(|| ApiError::unavailable("engine stopped"))?,
            };
            match e {
                Event::Token(t) => {
                    text.push_str(&t.text);
                    if r.logprobs {
                        lps.push(&tok, &t, &r);
                    }
                }
                Event::Done(f) => {
                    text.push_str(&f.tail_text);
                    let kv = f
                        .kv_lease
                        .as_ref()
                        .zip(state.kv_endpoint.as_ref())
                        .map(|(l, ep)| ep.params(l, f.cached_tokens));
                    drop(guard);
                    return Ok(json_response(&r.response(&text, &mut lps, &f, kv)));
                }
                Event::Error(e) => return Err(ApiError::internal(e)),
            }
        }
    }
    let (tx, body_rx) = mpsc::channel::<Bytes>(64);
    let include_usage = v.include_usage;
    tokio::spawn(async move {
        let _guard = guard;
        let send = |v: Value| {
            let tx = tx.clone();
            async move { tx.send(Bytes::from(format!("data: {v}\n\n"))).await.is_ok() }
        };
        if r.flavor == Flavor::Chat && !send(r.role_chunk()).await {
            return;
        }
        let mut lps = Logprobs::default();
        if let Some(e) = echo.filter(|e| !e.is_empty()) {
            if !send(r.chunk(&e, &mut lps, None)).await {
                return;
            }
        }
        let mut ev = Some(first);
        loop {
            let e = match ev.take() {
                Some(e) => e,
                None => match rx.recv().await {
                    Some(e) => e,
                    None => return,
                },
            };
            match e {
                Event::Token(t) => {
                    if r.logprobs {
                        lps.push(&tok, &t, &r);
                    }
                    if (!t.text.is_empty() || r.logprobs)
                        && !send(r.chunk(&t.text, &mut lps, None)).await
                    {
                        return;
                    }
                }
                Event::Done(f) => {
                    finish_stream(&r, &f, &mut lps, include_usage, &send).await;
                    let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
                    return;
                }
                Event::Error(e) => {
                    let _ = tx.send(ApiError::internal(e).openai().to_sse_event()).await;
                    return;
                }
            }
        }
    });
    let mut resp = Response::new(channel(body_rx));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

async fn finish_stream<F, Fut>(
    r: &Renderer,
    f: &Finish,
    lps: &mut Logprobs,
    include_usage: bool,
    send: &F,
) where
    F: Fn(Value) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    if !send(r.chunk(&f.tail_text, lps, Some(f))).await {
        return;
    }
    if include_usage {
        send(r.usage_chunk(f)).await;
    }
}

/// Most token ids one `/detokenize` call may send (a bound of its own besides the body limit: the decoded text
/// grows with it).
pub const MAX_DETOKENIZE_TOKENS: usize = 1 << 20;

/// vLLM's `/tokenize`: a `prompt` (special tokens added unless `add_special_tokens: false`) or chat `messages`
/// (rendered with the chat template; special tokens only with `add_special_tokens: true`), answered
/// `{count, max_model_len, tokens}` plus `token_strs` (each token's text) with `return_token_strs: true`. The
/// prompt is bounded by the body limit alone (no context check: counting a too-long prompt is a use of it), and
/// tokenized on the blocking pool in linear time.
pub async fn tokenize(state: Arc<ServerState>, body: Bytes) -> Result<Response<Body>, ApiError> {
    #[derive(serde::Deserialize)]
    struct Req {
        model: Option<String>,
        prompt: Option<String>,
        messages: Option<Vec<super::api::Message>>,
        add_special_tokens: Option<bool>,
        add_generation_prompt: Option<bool>,
        return_token_strs: Option<bool>,
    }
    let (tokens, strs) = prepare(&state, move |state| {
        let req: Req = parse(&body)?;
        check_model(state, req.model.as_deref())?;
        let tok = &state.engine.tokenizer;
        let tokens = match (req.prompt, req.messages) {
            (Some(p), _) => tok.encode(&p, req.add_special_tokens.unwrap_or(true))?,
            (None, Some(msgs)) => {
                let t = state
                    .template
                    .as_ref()
                    .ok_or_else(|| ApiError::bad_request("this model has no chat template"))?;
                let msgs = msgs
                    .iter()
                    .map(|m| m.to_chat())
                    .collect::<Result<Vec<_>, _>>()?;
                tok.encode(
                    &t.render(&msgs, req.add_generation_prompt.unwrap_or(true))?,
                    req.add_special_tokens.unwrap_or(false),
                )?
            }
            (None, None) => {
                return Err(ApiError::bad_request("prompt or messages is required").param("prompt"))
            }
        };
        let strs = (req.return_token_strs == Some(true)).then(|| {
            tokens
                .iter()
                .map(|&t| tok.decode(&[t], false))
                .collect::<Vec<_>>()
        });
        Ok((tokens, strs))
    })
    .await?;
    let mut out = json!({
        "count": tokens.len(),
        "max_model_len": state.engine.context_length,
        "tokens": tokens,
    });
    if let Some(strs) = strs {
        out["token_strs"] = json!(strs);
    }
    Ok(json_response(&out))
}

/// vLLM's `/detokenize`: `{tokens}` → `{prompt}`; ids outside the vocabulary, or more than
/// [`MAX_DETOKENIZE_TOKENS`], are a 400 naming `tokens`.
pub async fn detokenize(state: Arc<ServerState>, body: Bytes) -> Result<Response<Body>, ApiError> {
    #[derive(serde::Deserialize)]
    struct Req {
        model: Option<String>,
        tokens: Vec<u32>,
    }
    let text = prepare(&state, move |state| {
        let req: Req = parse(&body)?;
        check_model(state, req.model.as_deref())?;
        let tok = &state.engine.tokenizer;
        if req.tokens.len() > MAX_DETOKENIZE_TOKENS {
            return Err(ApiError::bad_request(format!(
                "at most {MAX_DETOKENIZE_TOKENS} tokens may be detokenized at once"
            ))
            .param("tokens"));
        }
        if let Some(bad) = req.tokens.iter().find(|&&t| t as usize >= tok.vocab_size()) {
            return Err(ApiError::bad_request(format!(
                "token id {bad} is out of vocabulary (size {})",
                tok.vocab_size()
            ))
            .param("tokens"));
        }
        Ok(tok.decode(&req.tokens, false))
    })
    .await?;
    Ok(json_response(&json!({ "prompt": text })))
}
