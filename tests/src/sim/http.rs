//! The HTTP side of a sim engine: OpenAI completions/chat (SSE with a usage chunk), vLLM
//! NixlConnector prefill/decode semantics, `/health`, `/v1/models`, `/metrics`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::stream;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::sched::{SeqRequest, Token};
use super::{SimConfig, SimRole, SimStats};
use crate::engine_http::{
    self, error_response as error, full, json_bytes_response, json_response, sse_event, BoxError,
    EngineBody as SimBody, StatsCell, SSE_DONE,
};
use crate::mock::openai::{self, Completion, Endpoint, GenRequest};
use crate::mock::token_text;

pub(crate) struct Shared {
    pub cfg: SimConfig,
    pub engine_id: String,
    pub addr: SocketAddr,
    /// Taken by the accept loop's end.
    pub listener: Mutex<Option<TcpListener>>,
    pub submit: mpsc::UnboundedSender<SeqRequest>,
    pub stats: Arc<StatsCell<SimStats>>,
    pub stop: watch::Sender<bool>,
}

static NEXT_BLOCK: AtomicU64 = AtomicU64::new(1);

/// Prompt tokens of an OpenAI request body, counted exactly like the gateway estimates them:
/// `chars / 4 + 4 × messages` (at least 1), where the characters are the completion prompt, or
/// for chat `role:content\n` per message. A list of token ids counts one token per id.
pub fn prompt_tokens(body: &Value) -> Option<usize> {
    if let Some(msgs) = body.get("messages").and_then(Value::as_array) {
        let mut chars = 0usize;
        for m in msgs {
            if let Some(role) = m.get("role").and_then(Value::as_str) {
                chars += role.chars().count() + 1;
            }
            chars += match m.get("content") {
                Some(Value::String(s)) => s.chars().count(),
                Some(other @ Value::Array(_)) => other.to_string().chars().count(),
                _ => 0,
            };
            chars += 1;
        }
        return Some((chars / 4 + 4 * msgs.len()).max(1));
    }
    match body.get("prompt")? {
        Value::String(s) => Some((s.chars().count() / 4).max(1)),
        Value::Array(ids) if !ids.is_empty() && ids.iter().all(Value::is_u64) => Some(ids.len()),
        _ => None,
    }
}

/// Accepts connections until [`super::SimHandle::shutdown`].
pub(crate) async fn serve(shared: Arc<Shared>) {
    let stop = shared.stop.subscribe();
    engine_http::serve(shared, listener, stop, "sim engine", handle).await;
}

fn listener(shared: &Shared) -> &Mutex<Option<TcpListener>> {
    &shared.listener
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<SimBody>, BoxError> {
    let path = req.uri().path().to_owned();
    let chat = match path.as_str() {
        "/v1/chat/completions" => Some(true),
        "/v1/completions" => Some(false),
        _ => None,
    };
    if let Some(chat) = chat {
        if req.method() != Method::POST {
            return Ok(error(405, "method not allowed"));
        }
        let (parts, body) = req.into_parts();
        let bytes = body.collect().await?.to_bytes();
        shared.stats.update(|s| s.requests += 1);
        let resp = generation(&shared, chat, &parts.headers, &bytes).await;
        if !resp.status().is_success() {
            shared.stats.update(|s| s.errors += 1);
        }
        return Ok(resp);
    }
    Ok(match (req.method(), path.as_str()) {
        (&Method::GET, "/health") => Response::new(full(Bytes::new())),
        (&Method::GET, "/v1/models") => json_response(
            200,
            &json!({"object": "list", "data": [{
                "id": shared.cfg.model, "object": "model", "created": 0, "owned_by": "baton-sim",
            }]}),
        ),
        (&Method::GET, "/metrics") => {
            let st = shared.stats.snapshot();
            let model = &shared.cfg.model;
            let text = format!(
                "vllm:num_requests_running{{model_name=\"{model}\"}} {}\n\
                 vllm:num_requests_waiting{{model_name=\"{model}\"}} {}\n\
                 vllm:prompt_tokens_total{{model_name=\"{model}\"}} {}\n\
                 vllm:generation_tokens_total{{model_name=\"{model}\"}} {}\n",
                st.running, st.waiting, st.prefill_tokens, st.output_tokens
            );
            let mut r = Response::new(full(text));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        _ => error(404, &format!("no route for {} {path}", req.method())),
    })
}

/// The request fields the sim acts on: the mocks' parse (the same validation), then the sim's
/// own prompt count (the gateway's estimate) and `ignore_eos`.
struct Gen {
    req: GenRequest,
    chat: bool,
    ignore_eos: bool,
    prompt_tokens: usize,
    model: String,
}

fn parse(chat: bool, body: &Value, served: &str) -> Result<Gen, String> {
    let endpoint = if chat {
        Endpoint::Chat
    } else {
        Endpoint::Completions
    };
    let mut req = GenRequest::parse(endpoint, body)?;
    if req.n != 1 {
        return Err("the sim engine serves n=1 only".into());
    }
    let prompt_tokens = prompt_tokens(body).ok_or(if chat {
        "`messages` must be a non-empty array"
    } else {
        "`prompt` must be a string or a list of token ids"
    })?;
    // Usage reports the sim's count, not the mocks' word count.
    req.prompt_tokens = vec![prompt_tokens];
    let model = req.model.clone().unwrap_or_else(|| served.to_owned());
    Ok(Gen {
        req,
        chat,
        ignore_eos: body
            .get("ignore_eos")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        prompt_tokens,
        model,
    })
}

async fn generation(
    shared: &Shared,
    chat: bool,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Response<SimBody> {
    let Ok(body) = serde_json::from_slice::<Value>(bytes) else {
        return error(400, "request body is not valid JSON");
    };
    let g = match parse(chat, &body, &shared.cfg.model) {
        Ok(g) => g,
        Err(m) => return error(400, &m),
    };
    let params = body.get("kv_transfer_params").filter(|v| !v.is_null());
    // Output length and finish reason.
    let cap = g.req.max_tokens.unwrap_or(shared.cfg.default_tokens);
    let (mut tokens, mut finish) = match g.req.max_tokens {
        Some(m) => (m, "length"),
        None => (cap, "stop"),
    };
    if let Some(e) = shared.cfg.eos_after.filter(|_| !g.ignore_eos) {
        if e < tokens || (e == tokens && finish == "stop") {
            (tokens, finish) = (e, "stop");
        }
    }
    let mut prefill_tokens = g.prompt_tokens;
    let mut issue = false;
    match shared.cfg.role {
        SimRole::Unified => {}
        SimRole::Prefill => {
            let remote_decode = params
                .and_then(|p| p.get("do_remote_decode"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if remote_decode {
                if g.req.stream {
                    return error(400, "do_remote_decode requires stream=false");
                }
                // vLLM returns params only when prefill stopped at the length cap.
                issue = tokens == 1 && finish == "length";
            }
        }
        SimRole::Decode => match params {
            Some(p) => {
                if !well_formed(p) {
                    return error(400, "invalid kv_transfer_params");
                }
                shared.stats.update(|s| s.kv_pulled += 1);
                prefill_tokens = 1;
            }
            None => shared.stats.update(|s| s.local_prefills += 1),
        },
    }
    let (tx, rx) = mpsc::unbounded_channel();
    if shared
        .submit
        .send(SeqRequest {
            prefill_tokens,
            output_tokens: tokens,
            tx,
        })
        .is_err()
    {
        return error(503, "engine stopped");
    }
    let render = Render {
        id: format!(
            "{}{:032x}",
            if g.chat { "chatcmpl-" } else { "cmpl-" },
            rand::random::<u128>()
        ),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: g.model.clone(),
        chat: g.chat,
        tokens,
        finish,
        prompt_tokens: g.prompt_tokens,
        include_usage: g.req.include_usage,
    };
    if g.req.stream {
        return sse_response(render, rx);
    }
    let mut rx = rx;
    loop {
        match rx.recv().await {
            Some(Token { last: true, .. }) => break,
            Some(_) => {}
            None => return error(503, "engine stopped"),
        }
    }
    let mut extra = Map::new();
    if issue {
        let blocks = g.prompt_tokens.div_ceil(16).max(1) as u64;
        let first = NEXT_BLOCK.fetch_add(blocks, Ordering::Relaxed);
        let base = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map_or_else(
                || format!("cmpl-{:016x}", rand::random::<u64>()),
                str::to_owned,
            );
        let mut params = crate::mock::vllm::prefill_kv_params(
            &shared.engine_id,
            shared.addr.port(),
            &base,
            first,
            blocks,
        );
        params["remote_num_tokens"] = json!(g.prompt_tokens);
        extra.insert("kv_transfer_params".into(), params);
        shared.stats.update(|s| s.kv_issued += 1);
    }
    let completion = Completion {
        tokens,
        finish_reason: finish,
        extra,
    };
    let answer = openai::render(&g.req, &completion, &shared.cfg.model);
    // A whole answer renders as one chunk.
    let body = answer
        .chunks
        .into_iter()
        .next()
        .map_or_else(Bytes::new, |c| c.data);
    json_bytes_response(200, body)
}

/// What a decode-side params object must look like (no registry is shared: lenient).
fn well_formed(p: &Value) -> bool {
    p.get("do_remote_prefill") == Some(&Value::Bool(true))
        && p.get("do_remote_decode") != Some(&Value::Bool(true))
        && p.get("remote_engine_id").and_then(Value::as_str).is_some()
        && p.get("remote_request_id").and_then(Value::as_str).is_some()
}

struct Render {
    id: String,
    created: u64,
    model: String,
    chat: bool,
    tokens: usize,
    finish: &'static str,
    prompt_tokens: usize,
    include_usage: bool,
}

impl Render {
    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.tokens,
            "total_tokens": self.prompt_tokens + self.tokens,
        })
    }

    fn object(&self, stream: bool) -> &'static str {
        match (self.chat, stream) {
            (true, true) => "chat.completion.chunk",
            (true, false) => "chat.completion",
            (false, _) => "text_completion",
        }
    }

    fn chunk(&self, choices: Value) -> String {
        sse_event(&json!({
            "id": self.id, "object": self.object(true), "created": self.created,
            "model": self.model, "choices": choices,
        }))
    }

    /// The SSE bytes of token `t` (the chat role chunk comes with the first token; the last
    /// token is followed by the usage chunk and `[DONE]`).
    fn token_events(&self, t: Token) -> Bytes {
        let mut out = String::new();
        let finish = if t.last {
            Value::from(self.finish)
        } else {
            Value::Null
        };
        if self.chat {
            if t.index == 0 {
                out.push_str(&self.chunk(json!([{"index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": null, "finish_reason": null}])));
            }
            out.push_str(&self.chunk(json!([{"index": 0,
                "delta": {"content": token_text(t.index)},
                "logprobs": null, "finish_reason": finish}])));
        } else {
            out.push_str(&self.chunk(json!([{"index": 0, "text": token_text(t.index),
                "logprobs": null, "finish_reason": finish}])));
        }
        if t.last {
            if self.include_usage {
                let v = json!({
                    "id": self.id, "object": self.object(true), "created": self.created,
                    "model": self.model, "choices": [], "usage": self.usage(),
                });
                out.push_str(&sse_event(&v));
            }
            out.push_str(SSE_DONE);
        }
        Bytes::from(out)
    }
}

/// A streaming answer: the head goes out at once (as vLLM's does), each token as the scheduler
/// produces it. Dropping the body (client gone) drops `rx`, which removes the sequence.
fn sse_response(render: Render, rx: mpsc::UnboundedReceiver<Token>) -> Response<SimBody> {
    let frames = stream::unfold((rx, render, false), |(mut rx, render, done)| async move {
        if done {
            return None;
        }
        match rx.recv().await {
            Some(t) => {
                let data = render.token_events(t);
                Some((Ok(Frame::data(data)), (rx, render, t.last)))
            }
            None => {
                let e: BoxError = "engine stopped mid-stream".into();
                Some((Err(e), (rx, render, true)))
            }
        }
    });
    let mut r = Response::new(StreamBody::new(frames).boxed_unsync());
    engine_http::event_stream_headers(r.headers_mut());
    r
}
