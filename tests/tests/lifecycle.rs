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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (all, ok, cancelled) = outcomes(base, endpoint).await;
        if all >= n || tokio::time::Instant::now() > deadline {
            return (ok, cancelled);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
