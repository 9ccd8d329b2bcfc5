//! A request's lifecycle as the gateway counts it: a stream whose `[DONE]`
//! reached the client is a success whatever the client does next, and every
//! way a request ends is counted once in `/metrics` and `/v1/slo`.

mod common;

use std::time::Duration;

use baton_e2e::mock::{Flavor, MockEngine};
use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Sends one streaming request over a raw socket, reads up to the end of
/// the `data: [DONE]` event and closes the socket at once (what the
/// `openai` SDK, guidellm and `vllm bench` do).
async fn read_to_done_and_close(addr: std::net::SocketAddr, path: &str, body: &str) {
    let mut s = TcpStream::connect(addr).await.expect("gateway reachable");
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("[DONE] within 20 s")
            .unwrap();
        assert!(
            n > 0,
            "closed before [DONE]: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        if got.windows(14).any(|w| w == b"data: [DONE]\n\n") {
            return; // dropping `s` closes the socket
        }
    }
}

/// The `baton_requests_total` counts of one endpoint in aggregated mode.
async fn outcomes(base: &str, endpoint: &str) -> (f64, f64, f64) {
    let m = get(base, "/metrics").await.text();
    let one = |outcome: &str| {
        metric(
            &m,
            &format!("baton_requests_total{{endpoint=\"{endpoint}\",mode=\"aggregated\",outcome=\"{outcome}\"}}"),
        )
    };
    let all = metric(
        &m,
        &format!("baton_requests_total{{endpoint=\"{endpoint}\",mode=\"aggregated\","),
    );
    (all, one("success"), one("cancelled"))
}

/// Waits (with a deadline) until `n` requests were counted, then returns
/// (success, cancelled).
async fn counted(base: &str, endpoint: &str, n: f64) -> (f64, f64) {
    wait_for_within(Duration::from_secs(20), || async move {
        outcomes(base, endpoint).await.0 >= n
    })
    .await;
    let (_, ok, cancelled) = outcomes(base, endpoint).await;
    (ok, cancelled)
}

fn slo_row(report: &Value) -> &Value {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["class"] == "standard")
        .unwrap_or_else(|| panic!("no standard row in {report}"))
}

const N: usize = 200;

#[tokio::test]
async fn done_then_close_is_a_success_every_time() {
    let engine = MockEngine::new(Flavor::OpenAi).spawn().await;
    let gw = start(aggregated(&[engine.url()])).await;
    for _ in 0..N {
        read_to_done_and_close(gw.addr, "/v1/completions", COMPLETION_STREAM).await;
    }
    let (ok, cancelled) = counted(&gw.url(), "completions", N as f64).await;
    assert_eq!((ok, cancelled), (N as f64, 0.0));
    let report = get(&gw.url(), "/v1/slo").await.json();
    let row = slo_row(&report);
    assert_eq!(row["requests"], N, "{report}");
    assert_eq!(row["good"], N, "{report}");
    gw.shutdown().await;
}

/// An engine that sends its stream up to `[DONE]` and then holds the
/// connection open without ending the body: the gateway relays `[DONE]`
/// long before it could see the end of the upstream stream, so a client
/// closing after `[DONE]` always leaves first.
async fn engine_that_lingers_after_done() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                // The request: head plus the declared body.
                loop {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if got.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let chunk = |data: &str| format!("{:x}\r\n{data}\r\n", data.len());
                let mut out = String::from(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
                );
                for t in ["one", " two"] {
                    out.push_str(&chunk(&format!(
                        "data: {{\"choices\":[{{\"index\":0,\"text\":\"{t}\"}}]}}\n\n"
                    )));
                }
                out.push_str(&chunk("data: [DONE]\n\n"));
                if s.write_all(out.as_bytes()).await.is_err() {
                    return;
                }
                // No terminating chunk: wait until the gateway hangs up.
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    url
}

#[tokio::test]
async fn done_then_close_counts_before_the_engine_ends_its_stream() {
    let url = engine_that_lingers_after_done().await;
    let gw = start(aggregated(&[url])).await;
    for _ in 0..20 {
        read_to_done_and_close(gw.addr, "/v1/completions", COMPLETION_STREAM).await;
    }
    let (ok, cancelled) = counted(&gw.url(), "completions", 20.0).await;
    assert_eq!((ok, cancelled), (20.0, 0.0));
    let report = get(&gw.url(), "/v1/slo").await.json();
    assert_eq!(slo_row(&report)["good"], 20, "{report}");
    gw.shutdown().await;
}

/// The `client_errors`, `failed` and `requests` of the standard/anonymous
/// row of `/v1/slo`, and `baton_requests_total{outcome="client_error"}`.
async fn client_errors(admin: &str) -> (Value, Value, Value, f64) {
    let report = get(admin, "/v1/slo").await.json();
    let row = slo_row(&report).clone();
    let m = get(admin, "/metrics").await.text();
    let counted = metric(
        &m,
        "baton_requests_total{endpoint=\"completions\",mode=\"aggregated\",outcome=\"client_error\"}",
    );
    (
        row["client_errors"].clone(),
        row["failed"].clone(),
        row["requests"].clone(),
        counted,
    )
}

/// The gateway with its admin endpoints on their own open listener.
async fn gateway(cfg: baton_gateway::GatewayConfig) -> (baton_gateway::RunningGateway, String) {
    let mut cfg = cfg;
    cfg.prometheus_port = Some(0);
    let gw = start(cfg).await;
    let admin = format!("http://{}", gw.metrics_addr.expect("admin listener"));
    (gw, admin)
}

/// Each edge refusal is counted once as a client error, never as an SLO miss.
async fn assert_one_client_error(admin: &str) {
    let (slo, failed, requests, counted) = client_errors(admin).await;
    assert_eq!((slo, failed, requests), (1.into(), 0.into(), 0.into()));
    assert_eq!(counted, 1.0);
}

#[tokio::test]
async fn bad_json_is_a_counted_client_error() {
    let engine = MockEngine::new(Flavor::OpenAi).spawn().await;
    let (gw, admin) = gateway(aggregated(&[engine.url()])).await;
    let r = post(&gw.url(), "/v1/completions", "{not json").await;
    assert_eq!(r.status, 400);
    assert_one_client_error(&admin).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn bad_api_key_is_a_counted_client_error() {
    let engine = MockEngine::new(Flavor::OpenAi).spawn().await;
    let mut cfg = aggregated(&[engine.url()]);
    cfg.api_key = Some(baton_gateway::auth::Secret::new("sk-right"));
    let (gw, admin) = gateway(cfg).await;
    let r = post_with(
        &gw.url(),
        "/v1/completions",
        COMPLETION,
        &[("authorization", "Bearer sk-wrong")],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_one_client_error(&admin).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn big_body_is_a_counted_client_error() {
    let engine = MockEngine::new(Flavor::OpenAi).spawn().await;
    let mut cfg = aggregated(&[engine.url()]);
    cfg.max_payload_size = 1024;
    let (gw, admin) = gateway(cfg).await;
    let big = format!(
        r#"{{"model":"mock-model","prompt":"{}","max_tokens":8}}"#,
        "a".repeat(2000)
    );
    let r = post(&gw.url(), "/v1/completions", &big).await;
    assert_eq!(r.status, 413);
    assert_one_client_error(&admin).await;
    gw.shutdown().await;
}

/// A body that stops arriving: 408 once the body-read limit (60 s, on the
/// paused clock) passes.
#[tokio::test(start_paused = true)]
async fn slow_body_is_a_counted_client_error() {
    let engine = MockEngine::new(Flavor::OpenAi).spawn().await;
    let (gw, admin) = gateway(aggregated(&[engine.url()])).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"POST /v1/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\":",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed without an answer");
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_string();
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert_one_client_error(&admin).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn an_engine_refusing_a_request_is_a_client_error_not_a_miss() {
    let engine = MockEngine::new(Flavor::OpenAi)
        .fault(baton_e2e::mock::Fault::StatusAlways { status: 400 })
        .spawn()
        .await;
    let (gw, admin) = gateway(aggregated(&[engine.url()])).await;
    let r = post(&gw.url(), "/v1/completions", COMPLETION).await;
    assert_eq!(r.status, 400);
    assert_one_client_error(&admin).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_client_leaving_mid_stream_is_cancelled_and_no_miss() {
    let engine = MockEngine::new(Flavor::OpenAi)
        .token_delay(Duration::from_millis(200))
        .spawn()
        .await;
    let (gw, admin) = gateway(aggregated(&[engine.url()])).await;
    let resp = open(&gw.url(), "/v1/completions", COMPLETION_STREAM, &[]).await;
    let mut body = resp.into_body();
    use http_body_util::BodyExt;
    assert!(body.frame().await.unwrap().unwrap().data_ref().is_some());
    drop(body);
    assert!(engine
        .wait_until(|s| s.cancelled == 1, Duration::from_secs(5))
        .await
        .is_ok());
    let admin = &admin;
    wait_for(|| async move {
        let report = get(admin, "/v1/slo").await.json();
        slo_row(&report)["cancelled"] == 1
    })
    .await;
    let report = get(admin, "/v1/slo").await.json();
    let row = slo_row(&report);
    assert_eq!(
        (&row["cancelled"], &row["requests"], &row["failed"]),
        (&1.into(), &0.into(), &0.into()),
        "{row}"
    );
    gw.shutdown().await;
}
