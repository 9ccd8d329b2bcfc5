//! The HTTP side of a mock: routing, faults, and turning replies into responses (the accept loop
//! and connection tasks are [`crate::engine_http`]'s, shared with the sim engines).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::body::{self, BoxError, MockBody, Step};
use super::faults::{self, FaultAction};
use super::openai::{self, Completion, Endpoint, GenRequest, Rendered};
use super::rendezvous::Rendezvous;
use super::stats::{lock, MockEnding, Recorder, RequestGuard, StatsCell};
use super::vllm::VllmKvRegistry;
use super::{sglang, vllm, Config, Flavor};
use crate::engine_http::{self, error_response, json_response};

/// State shared by a mock's accept loop, its connections and its handles.
pub(crate) struct Shared {
    pub cfg: Config,
    pub registry: VllmKvRegistry,
    pub rendezvous: Rendezvous,
    /// vLLM `remote_engine_id` of this mock.
    pub engine_id: String,
    pub stats: Arc<StatsCell>,
    pub recorder: Recorder,
    pub healthy: AtomicBool,
    /// Generation requests seen (for `…Nth` faults).
    pub index: AtomicUsize,
    /// Next fake KV block id.
    pub next_block: AtomicU64,
    pub shutdown: watch::Sender<bool>,
    pub listener: Mutex<Option<TcpListener>>,
    pub addr: SocketAddr,
}

impl Shared {
    /// The host SGLang decoders would reach this server's bootstrap endpoint at.
    pub(crate) fn bootstrap_host(&self) -> String {
        let ip = self.addr.ip();
        if ip.is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            ip.to_string()
        }
    }

    /// Stops accepting (closing the listening socket now) and tears down every connection.
    pub(crate) fn shutdown(&self) {
        drop(lock(&self.listener).take());
        self.shutdown.send_replace(true);
    }
}

/// One parsed generation request, handed to the flavor's logic.
pub(crate) struct Call<'a> {
    pub shared: &'a Shared,
    pub req: GenRequest,
    pub body: Value,
    pub headers: HeaderMap,
    /// Injected: the first token is EOS.
    pub eos_first: bool,
}

impl Call<'_> {
    pub(crate) fn cfg(&self) -> &Config {
        &self.shared.cfg
    }

    /// What a normal generation for this request produces.
    pub(crate) fn completion(&self) -> Completion {
        let mut c = if self.eos_first {
            Completion::eos_first()
        } else {
            Completion::for_request(&self.req, self.cfg().default_tokens)
        };
        c.extra.extend(self.cfg().reply_fields.clone());
        c
    }

    /// Produces `completion`: [`Call::compute`], then [`Call::answer`].
    pub(crate) async fn generate(&self, completion: Completion, head_delay: bool) -> Reply {
        self.compute(&completion, head_delay).await;
        self.answer(&completion)
    }

    /// The time before the response head: the head delay (if `head_delay`), then for a
    /// non-stream answer the whole generation time (tokens × token delay).
    pub(crate) async fn compute(&self, completion: &Completion, head_delay: bool) {
        let cfg = self.cfg();
        if head_delay {
            sleep(cfg.head_delay).await;
        }
        if !self.req.stream {
            let tokens = u32::try_from(completion.tokens).unwrap_or(u32::MAX);
            sleep(cfg.token_delay.saturating_mul(tokens)).await;
        }
    }

    /// Renders `completion` in the request's format.
    pub(crate) fn answer(&self, completion: &Completion) -> Reply {
        Reply::Answer(openai::render(&self.req, completion, &self.cfg().model))
    }
}

async fn sleep(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

/// What a flavor decided to answer.
pub(crate) enum Reply {
    Error { status: u16, message: String },
    Answer(Rendered),
    Reset,
}

impl Reply {
    pub(crate) fn error(status: u16, message: &str) -> Self {
        Self::Error {
            status,
            message: message.to_owned(),
        }
    }
}

/// Accepts connections until shutdown.
pub(crate) async fn serve(shared: Arc<Shared>) {
    let stop = shared.shutdown.subscribe();
    engine_http::serve(shared, listener, stop, "mock engine", handle).await;
}

fn listener(shared: &Shared) -> &Mutex<Option<TcpListener>> {
    &shared.listener
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, BoxError> {
    let path = req.uri().path().to_owned();
    if let Some(endpoint) = Endpoint::from_path(&path) {
        if req.method() != Method::POST {
            return Ok(error_response(405, "method not allowed"));
        }
        return generation(&shared, endpoint, path, req).await;
    }
    Ok(match (req.method(), path.as_str()) {
        (&Method::GET, "/health") => {
            shared.stats.update(|s| s.health_checks += 1);
            if shared.healthy.load(Ordering::SeqCst) {
                Response::new(engine_http::full(Bytes::new()))
            } else {
                error_response(503, "engine unhealthy")
            }
        }
        (&Method::GET, "/v1/models") => json_response(
            200,
            &json!({"object": "list", "data": [{
                "id": shared.cfg.model, "object": "model", "created": 0,
                "owned_by": "baton-mock", "root": shared.cfg.model, "parent": null,
            }]}),
        ),
        (&Method::POST, "/tokenize" | "/detokenize") => {
            shared.stats.update(|s| s.tokenize_calls += 1);
            let bytes = req.into_body().collect().await?.to_bytes();
            tokenization(shared.cfg.model.as_str(), &path, &bytes)
        }
        _ => error_response(404, &format!("no route for {} {path}", req.method())),
    })
}

/// The mock's context length, as `/tokenize` reports it.
pub(crate) const MAX_MODEL_LEN: usize = 4096;

/// vLLM's `/tokenize` and `/detokenize` with a byte-level tokenizer: token `i` is byte `i` (chat messages are
/// rendered `role: content\n`; `add_special_tokens` puts a BOS id 256 first, as vLLM's defaults do for a prompt).
fn tokenization(model: &str, path: &str, body: &[u8]) -> Response<MockBody> {
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) else {
        return error_response(400, "request body is not a JSON object");
    };
    if let Some(m) = req.get("model").and_then(Value::as_str) {
        if m != model {
            return error_response(404, &format!("The model `{m}` does not exist."));
        }
    }
    if path == "/detokenize" {
        let Some(ids) = req.get("tokens").and_then(Value::as_array) else {
            return error_response(400, "tokens is required");
        };
        let mut bytes = Vec::with_capacity(ids.len());
        for id in ids {
            match id.as_u64() {
                Some(b) if b < 256 => bytes.push(b as u8),
                Some(256) => {}
                _ => return error_response(400, "token id out of vocabulary"),
            }
        }
        return json_response(200, &json!({"prompt": String::from_utf8_lossy(&bytes)}));
    }
    let flag = |k: &str| req.get(k).and_then(Value::as_bool);
    let (text, special_default) = match (req.get("prompt"), req.get("messages")) {
        (Some(Value::String(p)), _) => (p.clone(), true),
        (None, Some(Value::Array(msgs))) => {
            let mut t = String::new();
            for m in msgs {
                let role = m.get("role").and_then(Value::as_str).unwrap_or("");
                let content = m.get("content").and_then(Value::as_str).unwrap_or("");
                t.push_str(&format!("{role}: {content}\n"));
            }
            (t, false)
        }
        _ => return error_response(400, "prompt or messages is required"),
    };
    let mut tokens: Vec<u32> = Vec::new();
    if flag("add_special_tokens").unwrap_or(special_default) {
        tokens.push(256);
    }
    tokens.extend(text.bytes().map(u32::from));
    let mut out = json!({"count": tokens.len(), "max_model_len": MAX_MODEL_LEN, "tokens": tokens});
    if flag("return_token_strs") == Some(true) {
        let strs: Vec<String> = tokens
            .iter()
            .map(|&t| match t {
                256 => "<s>".to_owned(),
                b => String::from_utf8_lossy(&[b as u8]).into_owned(),
            })
            .collect();
        out["token_strs"] = json!(strs);
    }
    json_response(200, &out)
}

async fn generation(
    shared: &Shared,
    endpoint: Endpoint,
    path: String,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, BoxError> {
    let guard = RequestGuard::start(shared.stats.clone());
    let index = shared.index.fetch_add(1, Ordering::SeqCst) + 1;
    let (parts, body) = req.into_parts();
    // A body that fails to arrive means the client went away: the guard counts it cancelled.
    let bytes = body.collect().await?.to_bytes();
    let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
    if shared.cfg.record {
        shared.recorder.push(crate::mock::RecordedRequest {
            path,
            headers: parts.headers.clone(),
            body: parsed.clone().unwrap_or(Value::Null),
        });
    }
    let mut abort_after = None;
    let mut eos_first = false;
    match faults::decide(&shared.cfg.faults, index) {
        Some(FaultAction::Status(status)) => {
            let message = format!("injected fault: HTTP {status}");
            return respond(shared, guard, Reply::error(status, &message), None);
        }
        Some(FaultAction::Hang) => {
            let never: Infallible = std::future::pending().await;
            match never {}
        }
        Some(FaultAction::Reset) => return respond(shared, guard, Reply::Reset, None),
        Some(FaultAction::DropMidStream { after_tokens }) => abort_after = Some(after_tokens),
        Some(FaultAction::EosFirst) => eos_first = true,
        None => {}
    }
    let Some(body) = parsed else {
        let reply = Reply::error(400, "request body is not valid JSON");
        return respond(shared, guard, reply, None);
    };
    let req = match GenRequest::parse(endpoint, &body) {
        Ok(req) => req,
        Err(message) => return respond(shared, guard, Reply::error(400, &message), None),
    };
    let call = Call {
        shared,
        req,
        body,
        headers: parts.headers,
        eos_first,
    };
    let reply = match shared.cfg.flavor {
        Flavor::OpenAi => {
            let completion = call.completion();
            call.generate(completion, true).await
        }
        Flavor::VllmPrefill => vllm::prefill(&call).await,
        Flavor::VllmDecode => vllm::decode(&call).await,
        Flavor::SglangPrefill { bootstrap_port } => sglang::prefill(&call, bootstrap_port).await,
        Flavor::SglangDecode => sglang::decode(&call).await,
    };
    respond(shared, guard, reply, abort_after)
}

/// The one place replies become HTTP responses.
fn respond(
    shared: &Shared,
    guard: RequestGuard,
    reply: Reply,
    abort_after: Option<usize>,
) -> Result<Response<MockBody>, BoxError> {
    let rendered = match reply {
        Reply::Error { status, message } => {
            guard.finish(MockEnding::Failed);
            return Ok(error_response(status, &message));
        }
        Reply::Reset => {
            guard.finish(MockEnding::Failed);
            return Err("injected connection reset".into());
        }
        Reply::Answer(rendered) => rendered,
    };
    let stream = rendered.content_type == "text/event-stream";
    let mut chunks = rendered.chunks;
    if let Some(after) = abort_after {
        // Keep the leading non-token chunks and `after` token chunks.
        let cut = if stream {
            chunks
                .iter()
                .enumerate()
                .filter(|(_, c)| c.token)
                .nth(after)
                .map_or(chunks.len(), |(i, _)| i)
        } else {
            0
        };
        chunks.truncate(cut);
    }
    let cfg = &shared.cfg;
    let length: usize = chunks.iter().map(|c| c.data.len()).sum();
    let steps = chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| Step {
            gap: match (i, c.paced) {
                (0, _) => cfg.body_delay,
                (_, true) => cfg.token_delay,
                (_, false) => Duration::ZERO,
            },
            data: c.data,
        })
        .collect();
    let mut resp = Response::new(body::timed(steps, abort_after.is_some(), guard));
    let headers = resp.headers_mut();
    if stream {
        engine_http::event_stream_headers(headers);
    } else {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(rendered.content_type),
        );
        if abort_after.is_none() {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
    }
    Ok(resp)
}
