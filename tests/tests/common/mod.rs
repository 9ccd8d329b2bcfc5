//! Shared harness: start a gateway on an ephemeral port in front of mocks,
//! and a small HTTP client that can read SSE and hang up mid-stream.
#![allow(dead_code)]

use std::time::Duration;

use baton_gateway::config::{GatewayConfig, PrefillWorker};
use baton_gateway::RunningGateway;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// A config with fast retries and no background health probing, so tests
/// are deterministic; tests override what they exercise.
pub fn config() -> GatewayConfig {
    let mut c = GatewayConfig {
        port: 0,
        ..GatewayConfig::default()
    };
    c.retry.initial_backoff_ms = 1;
    c.retry.max_backoff_ms = 5;
    c.health.interval_secs = 3600.0;
    c
}

pub fn aggregated(urls: &[String]) -> GatewayConfig {
    GatewayConfig {
        worker_urls: urls.to_vec(),
        ..config()
    }
}

pub fn pd(prefill: &[(String, Option<u16>)], decode: &[String]) -> GatewayConfig {
    GatewayConfig {
        prefill: prefill
            .iter()
            .map(|(url, port)| PrefillWorker {
                url: url.clone(),
                bootstrap_port: *port,
            })
            .collect(),
        decode: decode.to_vec(),
        ..config()
    }
}

pub async fn start(c: GatewayConfig) -> RunningGateway {
    baton_gateway::start(c).await.expect("gateway starts")
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// `data:` payloads of an SSE body.
    pub fn events(&self) -> Vec<String> {
        let mut d = baton_protocol::sse::SseDecoder::new();
        d.push(&self.body).into_iter().map(|e| e.data).collect()
    }
}

pub async fn open(
    base: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> hyper::Response<Incoming> {
    let mut b = Request::post(format!("{base}{path}")).header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    client().request(req).await.expect("gateway reachable")
}

pub async fn post(base: &str, path: &str, body: &str) -> Reply {
    post_with(base, path, body, &[]).await
}

pub async fn post_with(base: &str, path: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
    let resp = open(base, path, body, headers).await;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
        .await
        .expect("body within 20 s")
        .expect("body readable")
        .to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn get(base: &str, path: &str) -> Reply {
    get_with(base, path, &[]).await
}

pub async fn get_with(base: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut b = Request::get(format!("{base}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::new())).unwrap();
    let resp = client().request(req).await.expect("gateway reachable");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

/// Concatenated `content` / `text` of OpenAI chunks.
pub fn stream_text(events: &[String]) -> String {
    let mut out = String::new();
    for e in events {
        let Ok(v) = serde_json::from_str::<Value>(e) else {
            continue;
        };
        for c in v["choices"].as_array().into_iter().flatten() {
            if let Some(s) = c.pointer("/delta/content").and_then(Value::as_str) {
                out.push_str(s);
            }
            if let Some(s) = c.get("text").and_then(Value::as_str) {
                out.push_str(s);
            }
        }
    }
    out
}

pub fn expected_text(n: usize) -> String {
    (0..n).map(|i| format!("t{i} ")).collect()
}

pub const CHAT: &str =
    r#"{"model":"mock-model","messages":[{"role":"user","content":"hello there"}],"max_tokens":8}"#;
pub const CHAT_STREAM: &str = r#"{"model":"mock-model","messages":[{"role":"user","content":"hello there"}],"max_tokens":8,"stream":true,"stream_options":{"include_usage":true}}"#;
pub const COMPLETION: &str = r#"{"model":"mock-model","prompt":"one two three","max_tokens":8}"#;
pub const COMPLETION_STREAM: &str = r#"{"model":"mock-model","prompt":"one two three","max_tokens":8,"stream":true,"stream_options":{"include_usage":true}}"#;

pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name_and_labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Re-checks `cond` until it holds or 10 s have passed (a deadline, not a count of tries: each try may be an HTTP
/// round trip that a loaded machine makes slow); the 10 ms poll only sets how soon a met condition is noticed.
/// For state the tests can only read (metrics, reports); an engine's own counters are awaited with its
/// `wait_until`.
pub async fn wait_for<F, Fut>(cond: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_for_within(Duration::from_secs(10), cond).await
}

/// [`wait_for`] with another deadline (a Redis restart takes longer to recover from).
pub async fn wait_for_within<F, Fut>(limit: Duration, cond: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}
