//! The gateway's edge: requests it can tell are wrong get OpenAI's error shape from the gateway
//! itself, before any engine work; an engine's own 4xx reaches the client with its `param`/`code`.

mod common;

use baton_e2e::mock::{Flavor, MockEngine, VllmPair};
use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Waits (up to 10 s) until the gateway's first health round confirmed its workers, which is also
/// when it has read their model lists.
async fn ready(base: &str) {
    assert!(
        wait_for(|| async { get(base, "/readiness").await.status == StatusCode::OK }).await,
        "gateway not ready in 10 s"
    );
}

fn assert_openai_error(r: &Reply, status: StatusCode, param: &str, code: Option<&str>) {
    assert_eq!(r.status, status, "{}", r.text());
    let e = &r.json()["error"];
    assert_eq!(e["type"], "invalid_request_error", "{}", r.text());
    assert_eq!(e["param"], param, "{}", r.text());
    if let Some(code) = code {
        assert_eq!(e["code"], code, "{}", r.text());
    }
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn token_limits_and_sampling_ranges_are_refused_before_any_engine_work() {
    let VllmPair {
        prefill, decode, ..
    } = VllmPair::plain().await;
    let gw = start(pd(&[(prefill.url(), None)], &[decode.url()])).await;
    let base = gw.url();
    let chat = |extra: &str| {
        format!(r#"{{"model":"mock-model","messages":[{{"role":"user","content":"hi"}}],{extra}}}"#)
    };
    let cases = [
        (
            "/v1/chat/completions",
            chat(r#""max_tokens":0"#),
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            chat(r#""max_completion_tokens":0,"stream":true"#),
            "max_completion_tokens",
        ),
        (
            "/v1/chat/completions",
            chat(r#""temperature":2.5"#),
            "temperature",
        ),
        (
            "/v1/chat/completions",
            chat(r#""temperature":-1"#),
            "temperature",
        ),
        ("/v1/chat/completions", chat(r#""top_p":0"#), "top_p"),
        (
            "/v1/completions",
            r#"{"model":"mock-model","prompt":"a","top_p":1.5}"#.to_owned(),
            "top_p",
        ),
        (
            "/generate",
            r#"{"text":"a","sampling_params":{"max_new_tokens":0}}"#.to_owned(),
            "sampling_params.max_new_tokens",
        ),
        (
            "/generate",
            r#"{"text":"a","sampling_params":{"temperature":9}}"#.to_owned(),
            "sampling_params.temperature",
        ),
    ];
    for (path, body, param) in &cases {
        let r = post(&base, path, body).await;
        assert_openai_error(&r, StatusCode::BAD_REQUEST, param, Some("bad_request"));
    }
    // Not one prefill was computed for them.
    assert!(prefill.requests().is_empty() && decode.requests().is_empty());
    // The edges of each range are fine.
    let r = post(
        &base,
        "/v1/chat/completions",
        &chat(r#""max_tokens":1,"temperature":0,"top_p":1"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    gw.shutdown().await;
}

#[tokio::test]
async fn a_model_no_engine_serves_is_a_404_from_the_gateway() {
    for disaggregated in [false, true] {
        let engines = if disaggregated {
            let p = VllmPair::plain().await;
            vec![p.prefill, p.decode]
        } else {
            vec![MockEngine::new(Flavor::OpenAi).spawn().await]
        };
        let cfg = if disaggregated {
            pd(&[(engines[0].url(), None)], &[engines[1].url()])
        } else {
            aggregated(&[engines[0].url()])
        };
        let gw = start(cfg).await;
        let base = gw.url();
        ready(&base).await;
        let r = post(
            &base,
            "/v1/chat/completions",
            r#"{"model":"no-such-model","messages":[{"role":"user","content":"hi"}],"max_tokens":2}"#,
        )
        .await;
        assert_openai_error(&r, StatusCode::NOT_FOUND, "model", Some("model_not_found"));
        assert!(r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-model"));
        assert!(engines.iter().all(|e| e.requests().is_empty()));
        // The served model (and no model at all) still go through.
        let r = post(&base, "/v1/completions", COMPLETION).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let r = post(&base, "/v1/completions", r#"{"prompt":"a","max_tokens":2}"#).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        gw.shutdown().await;
    }
}

/// An engine that is healthy, lists no models and refuses every generation request with
/// `status` and `body`.
async fn refusing_engine(status: u16, body: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // The head, then as many body bytes as it announces.
                let head_end = loop {
                    let Ok(n) = conn.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let (code, reply) = if head.starts_with("get /health") {
                    (200, "{}")
                } else if head.starts_with("get ") {
                    (404, r#"{"error":{"message":"not found"}}"#)
                } else {
                    (status, body)
                };
                let resp = format!(
                    "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                    reply.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            });
        }
    });
    url
}

#[tokio::test]
async fn an_engine_4xx_reaches_the_client_with_its_own_param_and_code() {
    // vLLM's shape (under `error`) and SGLang's / older vLLM's (top level, numeric code).
    let nested = refusing_engine(
        400,
        r#"{"error":{"message":"This model's maximum context length is 2048 tokens.","type":"BadRequestError","param":"messages","code":"context_length_exceeded"}}"#,
    )
    .await;
    let gw = start(aggregated(&[nested])).await;
    let r = post(&gw.url(), "/v1/chat/completions", CHAT).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let e = &r.json()["error"];
    assert_eq!(e["param"], "messages");
    assert_eq!(e["code"], "context_length_exceeded");
    assert_eq!(e["type"], "invalid_request_error");
    assert_eq!(
        e["message"],
        "worker returned HTTP 400: This model's maximum context length is 2048 tokens."
    );
    gw.shutdown().await;

    let flat = refusing_engine(
        422,
        r#"{"object":"error","message":"bad stop","type":"BadRequestError","param":"stop","code":422}"#,
    )
    .await;
    let gw = start(aggregated(&[flat])).await;
    let r = post(&gw.url(), "/v1/completions", COMPLETION).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text());
    let e = &r.json()["error"];
    assert_eq!(e["param"], "stop");
    assert_eq!(e["message"], "worker returned HTTP 422: bad stop");
    // A numeric code is no OpenAI code: the gateway's own stands in.
    assert_eq!(e["code"], "worker_status");
    gw.shutdown().await;
}
