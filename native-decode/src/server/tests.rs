//! The HTTP API end to end on a tiny random model: real sockets, real hyper client.

use crate::test_support::wait_for;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use super::*;
use crate::chat_template::CHATML_FALLBACK;
use crate::engine::{EngineConfig, EngineHandle};
use crate::transfer::tcp::{self, TcpPuller};

pub(super) struct TestServer {
    pub(super) addr: SocketAddr,
    pub(super) engine: EngineHandle,
    /// The KV pull listener's port (prefill and both roles).
    kv_port: Option<u16>,
    /// Completing it stops the server gracefully (`serve_until`); `served` ends when every connection has.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<()>,
}

const TEST_ENGINE_ID: &str = "engine-7f3a9c";

/// The fleet key of every test server (`transfer_tests` makes the calls that use it).
pub(super) fn fleet_key() -> baton_protocol::FleetKey {
    baton_protocol::FleetKey::from_bytes(b"server-tests-fleet-key-0123").unwrap()
}

pub(super) async fn start(role: Role, policy: PullFailurePolicy) -> TestServer {
    start_with(role, policy, Limits::default()).await
}

async fn start_with(role: Role, policy: PullFailurePolicy, limits: Limits) -> TestServer {
    let engine = EngineHandle::spawn(
        crate::engine::tests::tiny_model(),
        crate::tokenizer::tests::tiny(),
        EngineConfig {
            block_size: 4,
            ..Default::default()
        },
    )
    .unwrap();
    let kv_endpoint = if matches!(role, Role::Prefill | Role::Both) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(tcp::serve(l, engine.clone(), fleet_key()));
        Some(KvEndpoint {
            engine_id: TEST_ENGINE_ID.into(),
            host: "127.0.0.1".into(),
            port,
            lease_secs: 30,
        })
    } else {
        None
    };
    let state = Arc::new(ServerState {
        engine: engine.clone(),
        model_name: "tiny".into(),
        template: Some(ChatTemplate::new(CHATML_FALLBACK, "<|im_start|>", "<|im_end|>").unwrap()),
        role,
        kv_endpoint,
        puller: Arc::new(TcpPuller::new(Duration::from_secs(5), Some(fleet_key()))),
        pull_failure: policy,
        limits,
        fleet_key: Some(fleet_key()),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let kv_port = state.kv_endpoint.as_ref().map(|e| e.port);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(serve_until(listener, state, async move {
        let _ = stopped.await;
    }));
    TestServer {
        addr,
        engine,
        kv_port,
        stop: Some(stop),
        served,
    }
}

pub(super) async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

pub(super) async fn post(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    let (s, text) = call(addr, Method::POST, path, Some(body)).await;
    (
        s,
        serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text })),
    )
}

fn sse_events(text: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("data: ") {
            if d == "[DONE]" {
                out.push(Value::Null);
            } else {
                out.push(serde_json::from_str(d).unwrap());
            }
        }
    }
    out
}

#[tokio::test]
async fn health_models_tokenize_metrics() {
    let s = start(Role::Both, PullFailurePolicy::Recompute).await;
    assert_eq!(call(s.addr, Method::GET, "/health", None).await.0, 200);
    let (st, models) = call(s.addr, Method::GET, "/v1/models", None).await;
    assert_eq!(st, 200);
    assert!(models.contains("\"id\":\"tiny\""));
    let (st, tok) = post(s.addr, "/tokenize", json!({"prompt": "hello<|im_end|>"})).await;
    assert_eq!(st, 200);
    assert_eq!(tok["count"], json!(2));
    let (_, text) = call(s.addr, Method::GET, "/metrics", None).await;
    for name in [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:e2e_request_latency_seconds_bucket",
        "baton:num_prefill_tokens_waiting",
        "baton:step_model_ms{model_name=\"tiny\",engine=\"0\",coef=\"fixed\"}",
        "coef=\"per_seq\"",
        "coef=\"per_prefill_token\"",
        "coef=\"per_kctx\"",
        "baton:step_duration_seconds_bucket",
        "baton:slo_requests_total",
        "baton:slo_headers_ignored_total",
    ] {
        assert!(text.contains(name), "missing {name}");
    }
    assert_eq!(call(s.addr, Method::GET, "/nope", None).await.0, 404);
}

#[tokio::test]
async fn completion_stream_and_non_stream_agree() {
    let s = start(Role::Both, PullFailurePolicy::Recompute).await;
    let body = json!({"model": "tiny", "prompt": "hello world", "max_tokens": 6, "temperature": 0,
                      "ignore_eos": true, "logprobs": 2});
    let (st, full) = post(s.addr, "/v1/completions", body.clone()).await;
    assert_eq!(st, 200, "{full}");
    assert_eq!(full["object"], json!("text_completion"));
    assert_eq!(full["usage"]["completion_tokens"], json!(6));
    assert_eq!(full["usage"]["prompt_tokens"], json!(6));
    assert_eq!(full["choices"][0]["finish_reason"], json!("length"));
    assert_eq!(
        full["choices"][0]["logprobs"]["tokens"]
            .as_array()
            .unwrap()
            .len(),
        6
    );
    assert_eq!(
        full["choices"][0]["logprobs"]["top_logprobs"][0]
            .as_object()
            .unwrap()
            .len(),
        2
    );

    let mut sb = body;
    sb["stream"] = json!(true);
    sb["stream_options"] = json!({"include_usage": true});
    let (st, text) = call(s.addr, Method::POST, "/v1/completions", Some(sb)).await;
    assert_eq!(st, 200);
    let events = sse_events(&text);
    assert_eq!(events.last(), Some(&Value::Null), "ends with [DONE]");
    let usage = &events[events.len() - 2];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["total_tokens"], json!(12));
    let streamed: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, full["choices"][0]["text"].as_str().unwrap());
    let last_choice = &events[events.len() - 3]["choices"][0];
    assert_eq!(last_choice["finish_reason"], json!("length"));
}

#[tokio::test]
async fn token_ids_in_logprobs_match_the_tokenizer() {
    let s = start(Role::Both, PullFailurePolicy::Recompute).await;
    let body = json!({"model": "tiny", "prompt": [5, 6, 7], "max_tokens": 4, "temperature": 0,
                      "ignore_eos": true, "logprobs": 1});
    let (_, plain) = post(s.addr, "/v1/completions", body.clone()).await;
    let mut ids = body;
    ids["return_tokens_as_token_ids"] = json!(true);
    let (st, with_ids) = post(s.addr, "/v1/completions", ids).await;
    assert_eq!(st, 200, "{with_ids}");
    let toks = with_ids["choices"][0]["logprobs"]["tokens"]
        .as_array()
        .unwrap();
    assert_eq!(toks.len(), 4);
    let tok = crate::tokenizer::tests::tiny();
    for (t, p) in toks.iter().zip(
        plain["choices"][0]["logprobs"]["tokens"]
            .as_array()
            .unwrap(),
    ) {
        let id: u32 = t
            .as_str()
            .unwrap()
            .strip_prefix("token_id:")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(json!(tok.token_text(id)), *p, "same token either way");
    }
    let top = with_ids["choices"][0]["logprobs"]["top_logprobs"][0]
        .as_object()
        .unwrap();
    assert!(top.keys().all(|k| k.starts_with("token_id:")));
}

#[tokio::test]
async fn chat_stream_starts_with_role_and_non_stream_has_message() {
    let s = start(Role::Both, PullFailurePolicy::Recompute).await;
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0,
                      "ignore_eos": true, "logprobs": true, "top_logprobs": 1});
    let (st, full) = post(s.addr, "/v1/chat/completions", body.clone()).await;
    assert_eq!(st, 200, "{full}");
    assert_eq!(full["object"], json!("chat.completion"));
    assert_eq!(full["choices"][0]["message"]["role"], json!("assistant"));
    assert_eq!(
        full["choices"][0]["logprobs"]["content"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    let mut sb = body;
    sb["stream"] = json!(true);
    let (_, text) = call(s.addr, Method::POST, "/v1/chat/completions", Some(sb)).await;
    let events = sse_events(&text);
    assert_eq!(events[0]["choices"][0]["delta"]["role"], json!("assistant"));
    assert_eq!(events[0]["object"], json!("chat.completion.chunk"));
    let streamed: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        streamed,
        full["choices"][0]["message"]["content"].as_str().unwrap()
    );
}

#[tokio::test]
async fn errors_are_openai_shaped() {
    let s = start(Role::Both, PullFailurePolicy::Recompute).await;
    let long: Vec<u32> = (0..300).map(|i| 3 + i % 200).collect();
    let (st, e) = post(s.addr, "/v1/completions", json!({"prompt": long})).await;
    assert_eq!(st, 400);
    assert_eq!(e["error"]["type"], json!("BadRequestError"));
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("maximum context length"));
    assert_eq!(e["error"]["code"], json!(400));
    let (st, e) = post(
        s.addr,
        "/v1/completions",
        json!({"prompt": "x", "max_tokens": 300}),
    )
    .await;
    assert_eq!(
        (st, e["error"]["param"].clone()),
        (400, json!("max_tokens"))
    );
    let (st, e) = post(s.addr, "/v1/completions", json!({"prompt": "x", "n": 3})).await;
    assert_eq!((st, e["error"]["param"].clone()), (400, json!("n")));
    let (st, _) = post(s.addr, "/v1/completions", json!({"prompt": 5})).await;
    assert_eq!(st, 400);
    let (st, _) = post(s.addr, "/v1/completions", json!({"prompt": [99999]})).await;
    assert_eq!(st, 400);
    let (st, e) = post(
        s.addr,
        "/v1/completions",
        json!({"prompt": "x", "model": "other"}),
    )
    .await;
    assert_eq!(
        (st, e["error"]["type"].clone()),
        (404, json!("NotFoundError"))
    );
    let (st, _) = call(s.addr, Method::POST, "/v1/chat/completions", None).await;
    assert_eq!(st, 400);
}

#[tokio::test]
async fn dropped_stream_cancels_the_request() {
    let s = start(Role::Both, PullFailurePolicy::Recompute).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let body = json!({"prompt": "hello", "max_tokens": 200, "ignore_eos": true, "stream": true});
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}/v1/completions", s.addr))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let mut body = resp.into_body();
    let _ = body.frame().await;
    drop(body);
    drop(client);
    wait_for("the request to end after the client went away", || {
        s.engine
            .stats
            .num_running
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
            && s.engine.stats.kv_usage() == 0.0
    })
    .await;
}

/// SIGTERM's path (`serve_until`): a stream in progress runs to its `[DONE]`, new connections are refused, and the
/// server returns once its connections have ended.
#[tokio::test]
async fn a_graceful_stop_finishes_streams_in_progress_and_refuses_new_connections() {
    let mut s = start(Role::Both, PullFailurePolicy::Recompute).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let body = json!({"prompt": "hello", "max_tokens": 64, "ignore_eos": true, "stream": true});
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}/v1/completions", s.addr))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let mut body = resp.into_body();
    let mut text = Vec::new();
    // The stream has started before the stop.
    if let Some(Ok(f)) = body.frame().await {
        text.extend_from_slice(f.data_ref().map(|d| &d[..]).unwrap_or_default());
    }
    s.stop.take().unwrap().send(()).unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    text.extend_from_slice(&rest);
    let text = String::from_utf8_lossy(&text);
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let tokens = sse_events(&text)
        .iter()
        .filter(|e| {
            e["choices"][0]["text"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .count();
    assert!(tokens > 1, "the whole stream came: {text}");
    drop(client);
    tokio::time::timeout(Duration::from_secs(30), &mut s.served)
        .await
        .expect("the server returns once its connections ended")
        .unwrap();
    assert!(tokio::net::TcpStream::connect(s.addr).await.is_err());
}

// One async worker: before tokenization moved to the blocking pool, a huge prompt held it and `/health`
// could not even be accepted until the prompt was tokenized.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn health_answers_while_a_huge_prompt_is_tokenized() {
    let s = start(Role::Both, PullFailurePolicy::Recompute).await;
    let prompt = "hello world, ".repeat(30 * 1024 * 1024 / 13);
    let (addr, text) = (s.addr, prompt.clone());
    // `/tokenize` has no context limit: the whole prompt is tokenized.
    let big = tokio::spawn(async move { post(addr, "/tokenize", json!({ "prompt": text })).await });
    let stats = s.engine.stats.clone();
    wait_for("the big prompt to be in preparation", || {
        stats
            .num_preparing
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    })
    .await;
    assert_eq!(call(s.addr, Method::GET, "/health", None).await.0, 200);
    assert!(
        !big.is_finished(),
        "/health answered only after the big prompt was done"
    );
    let (st, r) = big.await.unwrap();
    assert_eq!(st, 200);
    assert!(r["count"].as_u64().unwrap() > 1_000_000);
    // As a completion prompt it cannot fit the context whatever its tokens: refused without tokenizing.
    let (st, e) = post(
        s.addr,
        "/v1/completions",
        json!({"prompt": prompt, "max_tokens": 1}),
    )
    .await;
    assert_eq!((st, &e["error"]["param"]), (400, &json!("prompt")), "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("at least"));
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let limits = Limits {
        max_body: 4096,
        ..Limits::default()
    };
    let s = start_with(Role::Both, PullFailurePolicy::Recompute, limits).await;
    let (st, e) = post(
        s.addr,
        "/v1/completions",
        json!({"prompt": "x".repeat(5000), "max_tokens": 1}),
    )
    .await;
    assert_eq!(st, 413, "{e}");
    assert_eq!(e["error"]["code"], json!(413));
    assert_eq!(e["error"]["type"], json!("RequestTooLargeError"));
    // Without a declared length (chunked), the limit applies while reading.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let chunk = "y".repeat(3000);
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         {len:x}\r\n{chunk}\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
        len = chunk.len()
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), sock.read_to_end(&mut resp))
        .await
        .expect("answered")
        .unwrap();
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    // A whole body keeps its length through the connection's in-flight accounting (not chunked).
    assert!(
        resp.to_ascii_lowercase().contains("content-length:"),
        "{resp}"
    );
    // Within the limit: served.
    let (st, _) = post(
        s.addr,
        "/v1/completions",
        json!({"prompt": "hi", "max_tokens": 1}),
    )
    .await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn silent_connections_are_bounded_and_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limits = Limits {
        max_connections: 8,
        // Long enough that the test sees each batch of 8 held open even on a loaded machine.
        header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let s = start_with(Role::Both, PullFailurePolicy::Recompute, limits).await;
    let stats = s.engine.stats.clone();
    let open = move || {
        stats
            .http_connections
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    // 24 connections, three times the limit: silent ones, and slowloris ones that stop inside their headers.
    let mut socks = Vec::new();
    for i in 0..24 {
        let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        if i % 3 == 0 {
            c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        socks.push(c);
    }
    wait_for("the connection limit to fill", || open() == 8).await;
    // Each is closed by the server (read gives EOF) after the header deadline, never more than 8 at once.
    for mut c in socks {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(30), c.read(&mut buf))
            .await
            .expect("silent connection closed by the server")
            .unwrap_or(0);
        assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf[..n]));
        assert!(open() <= 8, "{} open connections", open());
    }
    let health = tokio::time::timeout(
        Duration::from_secs(30),
        call(s.addr, Method::GET, "/health", None),
    )
    .await
    .expect("/health answers");
    assert_eq!(health.0, 200);
    // A kept-alive HTTP/1 connection that goes quiet after its response is closed too.
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let eof = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(eof.is_ok(), "idle keep-alive connection closed");
    assert!(got.starts_with(b"HTTP/1.1 200"));
}

#[tokio::test]
async fn plain_replies_reveal_no_engine_internals() {
    let s = start(Role::Both, PullFailurePolicy::Recompute).await;
    let kv_port = s.kv_port.expect("role both listens for KV pulls");
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    for (path, body) in [
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": true}),
        ),
        ("/v1/completions", json!({"prompt": "hi", "max_tokens": 3})),
    ] {
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{}{path}", s.addr))
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut seen = String::new();
        for (k, v) in resp.headers() {
            seen.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        seen.push_str(&String::from_utf8_lossy(&bytes));
        for secret in [
            "kv_transfer_params",
            "remote_host",
            "remote_port",
            "engine_id",
            "system_fingerprint",
            TEST_ENGINE_ID,
            "127.0.0.1",
        ] {
            assert!(!seen.contains(secret), "{secret} in {seen}");
        }
        assert!(!mentions_number(&seen, kv_port), "KV port in {seen}");
    }
}

/// Whether `n` appears in `text` as a whole number (not inside a longer run of digits, like a timestamp).
fn mentions_number(text: &str, n: u16) -> bool {
    let needle = n.to_string();
    let b = text.as_bytes();
    text.match_indices(&needle).any(|(i, _)| {
        let before = i.checked_sub(1).map(|j| b[j].is_ascii_digit());
        let after = b.get(i + needle.len()).map(u8::is_ascii_digit);
        before != Some(true) && after != Some(true)
    })
}

// Paused time: whenever the runtime waits (here for the scheduler thread's tokens), the clock jumps to the next
// timer, so the connection's idle timer fires many times while the request computes without sending a byte.
#[tokio::test(start_paused = true)]
async fn a_silent_request_in_flight_keeps_its_connection_and_a_stalled_body_times_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limits = Limits {
        header_timeout: Duration::from_secs(3600),
        idle_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let s = start_with(Role::Both, PullFailurePolicy::Recompute, limits).await;
    let t0 = tokio::time::Instant::now();
    let (st, r) = post(
        s.addr,
        "/v1/completions",
        json!({"prompt": "hello", "max_tokens": 64, "ignore_eos": true}),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["usage"]["completion_tokens"], json!(64));
    assert!(
        t0.elapsed() > Duration::from_secs(3),
        "the idle timer had the chance to fire ({:?})",
        t0.elapsed()
    );

    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    c.write_all(
        b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{\"prompt\"",
    )
    .await
    .unwrap();
    let mut resp = Vec::new();
    c.read_to_end(&mut resp).await.unwrap();
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limits = Limits {
        idle_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let s = start_with(Role::Both, PullFailurePolicy::Recompute, limits).await;
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    // The HTTP/2 preface and an empty SETTINGS frame, then silence (no stream, no SETTINGS ack, no PING ack).
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "idle HTTP/2 connection still open");
    // Frame type 0x7 is GOAWAY: the server said goodbye before closing.
    let mut frames = &got[..];
    let mut types = Vec::new();
    while frames.len() >= 9 {
        let len =
            usize::from(frames[0]) << 16 | usize::from(frames[1]) << 8 | usize::from(frames[2]);
        types.push(frames[3]);
        frames = &frames[(9 + len).min(frames.len())..];
    }
    assert!(types.contains(&0x7), "frame types {types:?}");
}

/// vLLM's `/tokenize` and `/detokenize` shapes (what `vllm bench serve` and other tools read), their options and
/// their errors.
#[tokio::test]
async fn tokenize_and_detokenize_speak_vllms_shapes() {
    let s = start(Role::Both, PullFailurePolicy::Recompute).await;
    let (st, t) = post(
        s.addr,
        "/tokenize",
        json!({"model": "tiny", "prompt": "hello world", "return_token_strs": true}),
    )
    .await;
    assert_eq!(st, 200, "{t}");
    let tokens = t["tokens"].as_array().unwrap().clone();
    assert_eq!(t["count"], json!(tokens.len()));
    assert_eq!(t["max_model_len"], json!(s.engine.context_length));
    let strs: Vec<&str> = t["token_strs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(strs.len(), tokens.len());
    assert_eq!(strs.concat(), "hello world");
    // Round trip through /detokenize.
    let (st, d) = post(
        s.addr,
        "/detokenize",
        json!({"model": "tiny", "tokens": tokens}),
    )
    .await;
    assert_eq!((st, d), (200, json!({"prompt": "hello world"})));
    // Without return_token_strs there is no token_strs; chat messages render with the template.
    let (_, plain) = post(s.addr, "/tokenize", json!({"prompt": "hello world"})).await;
    assert!(plain.get("token_strs").is_none(), "{plain}");
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let (st, chat) = post(s.addr, "/tokenize", json!({"messages": msgs})).await;
    assert_eq!(st, 200, "{chat}");
    let (_, rendered) = post(
        s.addr,
        "/detokenize",
        json!({"tokens": chat["tokens"].clone()}),
    )
    .await;
    let rendered = rendered["prompt"].as_str().unwrap();
    assert!(
        rendered.contains("<|im_start|>user\nhi<|im_end|>"),
        "{rendered}"
    );
    assert!(rendered.ends_with("<|im_start|>assistant\n"), "{rendered}");
    // Errors: another model, an id outside the vocabulary, nothing to tokenize.
    let (st, e) = post(
        s.addr,
        "/tokenize",
        json!({"model": "other", "prompt": "x"}),
    )
    .await;
    assert_eq!(st, 404, "{e}");
    let (st, e) = post(s.addr, "/detokenize", json!({"tokens": [1, 999_999]})).await;
    assert_eq!(st, 400, "{e}");
    assert_eq!(e["error"]["param"], json!("tokens"));
    assert!(
        e["error"]["message"].as_str().unwrap().contains("999999"),
        "{e}"
    );
    let (st, e) = post(s.addr, "/tokenize", json!({"add_special_tokens": true})).await;
    assert_eq!((st, &e["error"]["param"]), (400, &json!("prompt")), "{e}");
}

/// `echo` puts the prompt's text before the output (whole and streamed); with `logprobs` it would need
/// prompt log-probabilities, which the engine does not compute: a 400 naming `echo`, never a silent omission.
#[tokio::test]
async fn completion_echo_and_its_limit() {
    let s = start(Role::Both, PullFailurePolicy::Recompute).await;
    let body =
        json!({"prompt": "hello world", "max_tokens": 4, "temperature": 0, "ignore_eos": true});
    let (_, plain) = post(s.addr, "/v1/completions", body.clone()).await;
    let out = plain["choices"][0]["text"].as_str().unwrap().to_owned();
    let mut echo = body.clone();
    echo["echo"] = json!(true);
    let (st, echoed) = post(s.addr, "/v1/completions", echo.clone()).await;
    assert_eq!(st, 200, "{echoed}");
    assert_eq!(
        echoed["choices"][0]["text"],
        json!(format!("hello world{out}"))
    );
    for n in ["prompt_tokens", "completion_tokens"] {
        assert_eq!(
            echoed["usage"][n], plain["usage"][n],
            "echo changes no token count"
        );
    }
    let mut stream = echo.clone();
    stream["stream"] = json!(true);
    let (st, text) = call(s.addr, Method::POST, "/v1/completions", Some(stream)).await;
    assert_eq!(st, 200);
    let events = sse_events(&text);
    assert_eq!(events[0]["choices"][0]["text"], json!("hello world"));
    let streamed: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, format!("hello world{out}"));
    // Token-id prompts echo their decoded text.
    let (_, t) = post(
        s.addr,
        "/tokenize",
        json!({"prompt": "hello world", "add_special_tokens": false}),
    )
    .await;
    let mut ids = echo.clone();
    ids["prompt"] = t["tokens"].clone();
    let (st, by_ids) = post(s.addr, "/v1/completions", ids).await;
    assert_eq!(st, 200, "{by_ids}");
    assert!(by_ids["choices"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with("hello world"));
    let mut lp = echo;
    lp["logprobs"] = json!(1);
    let (st, e) = post(s.addr, "/v1/completions", lp).await;
    assert_eq!(st, 400, "{e}");
    assert_eq!(e["error"]["param"], json!("echo"));
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("prompt log-probabilities"),
        "{e}"
    );
}
