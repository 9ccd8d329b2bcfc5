//! Gateway hygiene against hostile clients, through real TCP: connection
//! limits and deadlines, the request body limit, and routing plugins that
//! cannot stall the gateway (issue 13, findings 6, 10 and 12).
//!
//! Waits are on events (a read returning, a response arriving) with
//! generous deadlines; the configured limits are short so the events come
//! soon.

mod common;

use std::time::{Duration, Instant};

use baton_e2e::mock::{Flavor, MockEngine};
use baton_gateway::config::GatewayConfig;
use baton_policies::pipeline::script::MAX_BUDGET;
use baton_policies::pipeline::{AdmissionConfig, ScorerConfig};
use baton_policies::PolicyKind;
use bytes::Bytes;
use common::*;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest any expected event may take, however loaded the machine.
const EVENT: Duration = Duration::from_secs(30);

fn with_connections(
    mut c: GatewayConfig,
    max: Option<usize>,
    first_byte: f64,
    idle: f64,
) -> GatewayConfig {
    c.connections.max = max;
    c.connections.first_byte_secs = first_byte;
    c.connections.idle_secs = idle;
    c
}

/// Reads until the peer closes; `Err` if it did not within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Result<(), &'static str> {
    let mut buf = [0u8; 4096];
    let wait = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(within, wait)
        .await
        .map_err(|_| "still open")
}

/// One HTTP/1.1 response with a content-length body, read off a raw socket.
async fn read_response(s: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let read = async {
        loop {
            if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap_or(0);
                if data.len() >= end + 4 + len {
                    let status = head[9..12].parse().unwrap();
                    return (status, data[end + 4..end + 4 + len].to_vec());
                }
            }
            let n = s.read(&mut buf).await.expect("response readable");
            assert!(
                n > 0,
                "closed mid-response: {:?}",
                String::from_utf8_lossy(&data)
            );
            data.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(EVENT, read)
        .await
        .expect("a response within 30 s")
}

async fn health_on(s: &mut TcpStream) -> u16 {
    s.write_all(b"GET /health HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .unwrap();
    read_response(s).await.0
}

#[tokio::test]
async fn silent_connections_past_the_limit_do_not_stop_health() {
    let engine = MockEngine::new(Flavor::OpenAi).spawn().await;
    let gw = start(with_connections(
        aggregated(&[engine.url()]),
        Some(8),
        8.0,
        60.0,
    ))
    .await;
    // An admitted keep-alive connection (a load balancer's health checker).
    let mut checker = TcpStream::connect(gw.addr).await.unwrap();
    assert_eq!(health_on(&mut checker).await, 200);
    // Silent connections: 7 take the remaining slots, 13 are past the limit.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    // Past the limit they are closed at once (well before the first-byte
    // deadline closes the admitted ones)...
    let checks = silent.into_iter().map(|mut s| async move {
        let r = closed_within(&mut s, Duration::from_secs(2)).await;
        (r, s)
    });
    let (refused, admitted): (Vec<_>, Vec<_>) = futures_util::future::join_all(checks)
        .await
        .into_iter()
        .partition(|(r, _)| r.is_ok());
    assert_eq!(
        (refused.len(), admitted.len()),
        (13, 7),
        "connections past the limit of 8 are closed"
    );
    // ... while the admitted connection still answers, and counts them.
    assert_eq!(health_on(&mut checker).await, 200);
    checker
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .unwrap();
    let (status, text) = read_response(&mut checker).await;
    let text = String::from_utf8_lossy(&text);
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        metric(
            &text,
            "baton_client_connections_refused_total{listener=\"main\"}"
        ),
        13.0
    );
    assert_eq!(
        metric(&text, "baton_client_connections_open{listener=\"main\"}"),
        8.0
    );
    // The silent admitted ones are closed at the first-byte deadline, which
    // frees their slots for new clients.
    for (_, mut s) in admitted {
        closed_within(&mut s, EVENT).await.unwrap();
    }
    let mut fresh = TcpStream::connect(gw.addr).await.unwrap();
    assert_eq!(health_on(&mut fresh).await, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_first_byte_deadline() {
    let gw = start(with_connections(config(), None, 1.0, 60.0)).await;
    let t = Instant::now();
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    closed_within(&mut s, EVENT).await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    // A first byte, then nothing: the first-request deadline closes it
    // (the HTTP/1-vs-2 detection never completes).
    let mut c = config();
    c.connections.first_byte_secs = 1.0;
    c.connections.header_read_secs = 2.0;
    let gw2 = start(c).await;
    let t = Instant::now();
    let mut s = TcpStream::connect(gw2.addr).await.unwrap();
    s.write_all(b"P").await.unwrap();
    closed_within(&mut s, EVENT).await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        t.elapsed()
    );
    gw.shutdown().await;
    gw2.shutdown().await;
}

/// A 1 s idle timeout closes 1 s after the last byte;
/// 8 s leaves room for a loaded machine but not for a clock that started
/// at the 10 s first-byte check (or hyper's 30 s header timeout).
fn assert_idle_close(after: Duration) {
    assert!(after >= Duration::from_millis(900), "{after:?}");
    assert!(after < Duration::from_secs(8), "{after:?}");
}

#[tokio::test]
async fn an_idle_http1_keep_alive_connection_is_closed() {
    let gw = start(with_connections(config(), None, 10.0, 1.0)).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    assert_eq!(health_on(&mut s).await, 200);
    let t = Instant::now();
    // Well before hyper's 30 s header timeout could close it, and with the
    // idle clock started at the request (not at the 10 s first-byte check).
    closed_within(&mut s, EVENT).await.unwrap();
    assert_idle_close(t.elapsed());
    gw.shutdown().await;
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed() {
    let gw = start(with_connections(config(), None, 10.0, 1.0)).await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let ended = tokio::spawn(conn);
    let req = http::Request::get(format!("{}/health", gw.url()))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let _ = resp.into_body().collect().await.unwrap();
    let t = Instant::now();
    // `send` stays alive: the client would keep the connection; the
    // gateway's GOAWAY and close end it.
    let _ = tokio::time::timeout(EVENT, ended)
        .await
        .expect("the gateway closes an idle HTTP/2 connection");
    assert_idle_close(t.elapsed());
    drop(send);
    gw.shutdown().await;
}

#[tokio::test]
async fn an_idle_timeout_does_not_cut_a_stalled_stream() {
    // Two seconds between tokens, four times the idle timeout: the stream is
    // in progress, so its connection is not idle.
    let engine = MockEngine::new(Flavor::OpenAi)
        .token_delay(Duration::from_secs(2))
        .spawn()
        .await;
    let gw = start(with_connections(
        aggregated(&[engine.url()]),
        None,
        10.0,
        0.5,
    ))
    .await;
    let body = r#"{"model":"mock-model","prompt":"one two three","max_tokens":3,"stream":true}"#;
    let reply = tokio::time::timeout(EVENT, post(&gw.url(), "/v1/completions", body))
        .await
        .expect("the stream ends within 30 s");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(stream_text(&reply.events()), expected_text(3));
    assert_eq!(reply.events().last().map(String::as_str), Some("[DONE]"));
    gw.shutdown().await;
}

fn assert_too_large(status: u16, body: &[u8]) {
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(body));
    let v: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("limit"),
        "{v}"
    );
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_refused_before_it_is_sent() {
    let engine = MockEngine::new(Flavor::OpenAi).spawn().await;
    // The default limit: 32 MiB.
    let gw = start(aggregated(&[engine.url()])).await;
    for len in [(32u64 << 20) + 1, 100 << 20, 1 << 40] {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let head = format!(
            "POST /v1/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
             content-length: {len}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        // Not one byte of the body was sent.
        let (status, body) = read_response(&mut s).await;
        assert_too_large(status, &body);
    }
    assert_eq!(engine.stats().requests, 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_chunked_body_crossing_the_limit_is_refused_without_reading_it_all() {
    let engine = MockEngine::new(Flavor::OpenAi).spawn().await;
    let mut c = aggregated(&[engine.url()]);
    c.max_payload_size = 1 << 20;
    let gw = start(c).await;
    let s = TcpStream::connect(gw.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    const TOTAL: usize = 256 << 20;
    let writer = tokio::spawn(async move {
        wr.write_all(
            b"POST /v1/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
              transfer-encoding: chunked\r\n\r\n",
        )
        .await?;
        let chunk = vec![b' '; 64 << 10];
        let mut sent = 0;
        while sent < TOTAL {
            wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            wr.write_all(&chunk).await?;
            wr.write_all(b"\r\n").await?;
            sent += chunk.len();
        }
        Ok::<usize, std::io::Error>(sent)
    });
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head = tokio::time::timeout(EVENT, async {
        loop {
            let n = rd.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed without a response");
            data.extend_from_slice(&buf[..n]);
            if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                return String::from_utf8_lossy(&data[..end]).into_owned();
            }
        }
    })
    .await
    .expect("a response within 30 s");
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    // The gateway answered and stopped reading: the client could not push
    // the whole body (at most the socket buffers' worth past the limit).
    let finished = tokio::time::timeout(EVENT, writer)
        .await
        .expect("writer ends");
    assert!(
        finished.unwrap().is_err(),
        "all {TOTAL} bytes were accepted"
    );
    assert_eq!(engine.stats().requests, 0);
    gw.shutdown().await;
}

fn plugin_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("baton-hygiene-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A script where every operation is slow (a 60k-element reverse): at the
/// budget cap it would run for tens of seconds; the time limit ends it.
const SLOW_SCRIPT: &str = "let a = []; a.pad(60000, 1); loop { a.reverse(); }";

fn slow_pipeline(c: &mut GatewayConfig, tag: &str, scorer: bool, time_limit_ms: u64) {
    let dir = plugin_dir(tag);
    c.policy = PolicyKind::Pipeline;
    c.policy_config.pipeline.time_limit_ms = time_limit_ms;
    if scorer {
        let path = dir.join("slow_score.rhai");
        std::fs::write(&path, format!("fn score(w, r) {{ {SLOW_SCRIPT} }}")).unwrap();
        c.policy_config.pipeline.scorers = vec![ScorerConfig::Script {
            path: path.display().to_string(),
            weight: 1.0,
            budget: Some(MAX_BUDGET),
        }];
    } else {
        let path = dir.join("slow_admit.rhai");
        std::fs::write(&path, format!("fn admit(ws, r) {{ {SLOW_SCRIPT} }}")).unwrap();
        c.policy_config.pipeline.admission = vec![AdmissionConfig::Script {
            path: path.display().to_string(),
            budget: Some(MAX_BUDGET),
        }];
    }
}

// One runtime thread: a script on the async workers would hold the only
// one, and `/health` with it.
#[tokio::test(flavor = "current_thread")]
async fn a_looping_plugin_does_not_delay_health() {
    let a = MockEngine::new(Flavor::OpenAi).spawn().await;
    let b = MockEngine::new(Flavor::OpenAi).spawn().await;
    let mut c = aggregated(&[a.url(), b.url()]);
    let limit = Duration::from_secs(5);
    slow_pipeline(&mut c, "loop", true, limit.as_millis() as u64);
    let gw = start(c).await;
    let url = gw.url();
    let t = Instant::now();
    let scripted = tokio::spawn(async move { post(&url, "/v1/completions", COMPLETION).await });
    // /health answers while the scripted request is still being decided.
    let health = tokio::time::timeout(EVENT, get(&gw.url(), "/health"))
        .await
        .expect("/health within 30 s");
    assert_eq!(health.status, StatusCode::OK);
    assert!(
        !scripted.is_finished(),
        "the scripted request ended first ({:?})",
        t.elapsed()
    );
    // The scripted request is routed by least load once the limit passes
    // (its script would otherwise run for tens of seconds per worker).
    let reply = tokio::time::timeout(EVENT, scripted)
        .await
        .expect("the scripted request is answered")
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(t.elapsed() >= limit, "{:?}", t.elapsed());
    assert!(
        t.elapsed() < limit + Duration::from_secs(20),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(a.stats().requests + b.stats().requests, 1);
    let pools = gw.state.pools.all();
    assert_eq!(pools[0].plugin_overruns(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_slow_admission_plugin_admits_after_its_time_limit() {
    let a = MockEngine::new(Flavor::OpenAi).spawn().await;
    let mut c = aggregated(&[a.url()]);
    slow_pipeline(&mut c, "admit", false, 200);
    let gw = start(c).await;
    let t = Instant::now();
    let reply = tokio::time::timeout(EVENT, post(&gw.url(), "/v1/completions", COMPLETION))
        .await
        .expect("answered");
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert_eq!(gw.state.pools.all()[0].plugin_overruns(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn unsafe_plugins_are_start_up_errors() {
    let a = MockEngine::new(Flavor::OpenAi).spawn().await;
    let dir = plugin_dir("unsafe");
    let cases = [
        (
            "over_cap.rhai",
            "fn score(w, r) { 1 }",
            Some(300_000_000),
            "1000000",
        ),
        (
            "imports.rhai",
            "import \"other\" as o; fn score(w, r) { 1 }",
            None,
            "import",
        ),
        (
            "prints.rhai",
            "fn score(w, r) { print(r.text_prefix); 1 }",
            None,
            "print",
        ),
    ];
    for (name, src, budget, expect) in cases {
        let path = dir.join(name);
        std::fs::write(&path, src).unwrap();
        let mut c = aggregated(&[a.url()]);
        c.policy = PolicyKind::Pipeline;
        c.policy_config.pipeline.scorers = vec![ScorerConfig::Script {
            path: path.display().to_string(),
            weight: 1.0,
            budget,
        }];
        let err = baton_gateway::start(c).await.unwrap_err().to_string();
        assert!(err.contains(name) && err.contains(expect), "{name}: {err}");
    }
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// POSTs `body` over a fresh connection without copying it.
async fn post_raw(addr: std::net::SocketAddr, body: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    read_response(&mut s).await.0
}

// One thread: every allocation comes from one allocator arena, so what a
// request leaves behind shows in the RSS instead of hiding in per-thread
// arenas.
#[tokio::test(flavor = "current_thread")]
async fn bodies_are_not_retained_after_their_request() {
    // The mock keeps every request it saw unless told not to.
    let engine = MockEngine::new(Flavor::OpenAi)
        .record_requests(false)
        .spawn()
        .await;
    let gw = start(aggregated(&[engine.url()])).await;
    const PROMPT: usize = 24 << 20;
    let body = format!(
        r#"{{"model":"mock-model","prompt":"{}","max_tokens":1}}"#,
        "x".repeat(PROMPT)
    );
    let target = gw.addr;
    // Warm up: the first requests size the allocator's pools.
    for _ in 0..2 {
        assert_eq!(post_raw(target, body.as_bytes()).await, 200);
    }
    let before = rss_bytes();
    const N: u64 = 8;
    for _ in 0..N {
        assert_eq!(post_raw(target, body.as_bytes()).await, 200);
    }
    let grown = rss_bytes().saturating_sub(before);
    // Keeping each body (or a parsed copy) would add N x 24 MiB or more.
    assert!(
        grown < (N / 2) * PROMPT as u64,
        "RSS grew by {} MiB over {N} requests of {} MiB",
        grown >> 20,
        PROMPT >> 20
    );
    gw.shutdown().await;
}
