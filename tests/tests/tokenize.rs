//! `/tokenize` and `/detokenize` through the gateway: forwarded to a worker serving the model, with the edge's
//! auth, model check and error mapping, counted in `baton_requests_total` and nowhere in SLO attainment.

mod common;

use baton_e2e::mock::{Flavor, MockEngine, VllmPair};
use baton_gateway::auth::Secret;
use common::*;
use http::StatusCode;
use serde_json::{json, Value};

async fn ready(base: &str) {
    assert!(
        wait_for(|| async { get(base, "/readiness").await.status == StatusCode::OK }).await,
        "gateway not ready in 10 s"
    );
}

#[tokio::test]
async fn tokenize_and_detokenize_reach_a_worker_of_the_model() {
    let engine = MockEngine::new(Flavor::OpenAi).spawn().await;
    let gw = start(aggregated(&[engine.url()])).await;
    let base = gw.url();
    ready(&base).await;
    // vLLM's shapes, as `vllm bench serve` sends and reads them.
    let r = post(
        &base,
        "/tokenize",
        r#"{"model":"mock-model","prompt":"hi!","add_special_tokens":false,"return_token_strs":true}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.headers["content-type"], "application/json");
    let v = r.json();
    assert_eq!(v["count"], 3);
    assert_eq!(v["tokens"], json!([104, 105, 33]));
    assert_eq!(v["token_strs"], json!(["h", "i", "!"]));
    assert!(v["max_model_len"].as_u64().is_some(), "{v}");
    let chat = post(
        &base,
        "/tokenize",
        r#"{"messages":[{"role":"user","content":"yo"}]}"#,
    )
    .await;
    assert_eq!(chat.json()["count"], "user: yo\n".len());
    let r = post(
        &base,
        "/detokenize",
        r#"{"model":"mock-model","tokens":[104,105]}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json(), json!({"prompt": "hi"}));
    // The engine's own 4xx comes back as the client's error, with its message.
    let r = post(&base, "/detokenize", r#"{"tokens":[999]}"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("out of vocabulary"), "{}", r.text());
    // The gateway's edge: unknown model, bad JSON, wrong method.
    let r = post(&base, "/tokenize", r#"{"model":"nope","prompt":"x"}"#).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    let r = post(&base, "/tokenize", "[1,2]").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(
        get(&base, "/tokenize").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(engine.stats().tokenize_calls, 4);
    assert_eq!(engine.stats().requests, 0, "no generation request was sent");
    // Counted once each, by endpoint; no SLO outcome (they generate nothing).
    let m = get(&base, "/metrics").await.text();
    let count = |endpoint: &str, outcome: &str| {
        metric(
            &m,
            &format!(
                "baton_requests_total{{endpoint=\"{endpoint}\",mode=\"aggregated\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    assert_eq!(count("tokenize", "success"), 2.0, "{m}");
    assert_eq!(count("detokenize", "success"), 1.0, "{m}");
    assert_eq!(count("detokenize", "client_error"), 1.0, "{m}");
    assert_eq!(count("tokenize", "client_error"), 2.0, "{m}");
    let slo = get(&base, "/v1/slo").await.json();
    assert_eq!(slo["rows"], json!([]), "{slo}");
    gw.shutdown().await;
}

#[tokio::test]
async fn pd_mode_tokenizes_on_a_decode_worker_and_retries_a_dead_one() {
    let pair = VllmPair::plain().await;
    // A decode worker nobody listens on: the call fails to connect and goes to the live one.
    let dead = "http://127.0.0.1:9".to_owned();
    let gw = start(pd(
        &[(pair.prefill.url(), None)],
        &[dead, pair.decode.url()],
    ))
    .await;
    let base = gw.url();
    for _ in 0..3 {
        let r = post(&base, "/tokenize", r#"{"prompt":"abc"}"#).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let v: Value = r.json();
        assert_eq!(v["tokens"], json!([256, 97, 98, 99]));
    }
    assert_eq!(pair.decode.stats().tokenize_calls, 3);
    assert_eq!(pair.prefill.stats().tokenize_calls, 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn tokenize_needs_the_client_key_and_respects_the_body_limit() {
    let engine = MockEngine::new(Flavor::OpenAi).spawn().await;
    let mut cfg = aggregated(&[engine.url()]);
    cfg.api_key = Some(Secret::new("sk-router"));
    cfg.max_payload_size = 64;
    let gw = start(cfg).await;
    let base = gw.url();
    let r = post(&base, "/tokenize", r#"{"prompt":"x"}"#).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let key = [("authorization", "Bearer sk-router")];
    let r = post_with(&base, "/tokenize", r#"{"prompt":"x"}"#, &key).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let big = format!(r#"{{"prompt":"{}"}}"#, "x".repeat(100));
    let r = post_with(&base, "/tokenize", &big, &key).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(engine.stats().tokenize_calls, 1);
    gw.shutdown().await;
}
