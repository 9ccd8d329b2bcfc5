//! Aggregated mode: the gateway in front of plain OpenAI-compatible engines.

mod common;

use std::time::Duration;

use baton_e2e::mock::{Fault, Flavor, MockEngine};
use common::*;
use http::StatusCode;

#[tokio::test]
async fn chat_and_completions_stream_and_not() {
    let engine = MockEngine::new(Flavor::OpenAi).spawn().await;
    let gw = start(aggregated(&[engine.url()])).await;
    let base = gw.url();

    let r = post(&base, "/v1/chat/completions", CHAT).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        expected_text(8)
    );
    assert_eq!(r.json()["usage"]["completion_tokens"], 8);

    let r = post(&base, "/v1/completions", COMPLETION_STREAM).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = r.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(stream_text(&events), expected_text(8));
    // The include_usage chunk passes through untouched.
    let usage: serde_json::Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage["usage"]["completion_tokens"], 8);

    let r = post(&base, "/v1/chat/completions", CHAT_STREAM).await;
    assert_eq!(stream_text(&r.events()), expected_text(8));

    let r = post(
        &base,
        "/generate",
        r#"{"text":"a b","sampling_params":{"max_new_tokens":3}}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(engine.stats().completed, 4);
    gw.shutdown().await;
}

#[tokio::test]
async fn request_id_is_echoed_and_forwarded() {
    let engine = MockEngine::new(Flavor::OpenAi).spawn().await;
    let gw = start(aggregated(&[engine.url()])).await;
    let r = post_with(
        &gw.url(),
        "/v1/completions",
        COMPLETION,
        &[
            ("x-request-id", "client-42"),
            ("authorization", "Bearer sk-test"),
        ],
    )
    .await;
    assert_eq!(r.headers["x-request-id"], "client-42");
    let seen = &engine.requests()[0];
    assert_eq!(seen.headers["x-baton-request-id"], "client-42");
    // The client's credentials are its own: engines never see them.
    assert!(seen.headers.get("authorization").is_none());
    let r = post(&gw.url(), "/v1/completions", COMPLETION).await;
    assert!(r.headers["x-request-id"]
        .to_str()
        .unwrap()
        .starts_with("req-"));
    gw.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_openai_errors() {
    let engine = MockEngine::new(Flavor::OpenAi).spawn().await;
    let mut cfg = aggregated(&[engine.url()]);
    cfg.max_payload_size = 1024;
    let gw = start(cfg).await;
    let base = gw.url();
    let cases: &[(&str, &str, StatusCode, Option<&str>)] = &[
        (
            "/v1/chat/completions",
            "{not json",
            StatusCode::BAD_REQUEST,
            None,
        ),
        ("/v1/chat/completions", "[]", StatusCode::BAD_REQUEST, None),
        (
            "/v1/chat/completions",
            r#"{"messages":"hi"}"#,
            StatusCode::BAD_REQUEST,
            Some("messages"),
        ),
        (
            "/v1/completions",
            r#"{"prompt":"x","max_tokens":"ten"}"#,
            StatusCode::BAD_REQUEST,
            Some("max_tokens"),
        ),
        (
            "/v1/completions",
            r#"{"prompt":"x","stream":1}"#,
            StatusCode::BAD_REQUEST,
            Some("stream"),
        ),
        ("/v1/nothing", "{}", StatusCode::NOT_FOUND, None),
    ];
    for (path, body, status, param) in cases {
        let r = post(&base, path, body).await;
        assert_eq!(r.status, *status, "{path} {body}: {}", r.text());
        let j = r.json();
        assert!(
            j["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{j}"
        );
        assert!(j["error"]["type"].is_string());
        assert_eq!(j["error"]["param"].as_str(), *param, "{body}");
    }
    let huge = format!(r#"{{"prompt":"{}"}}"#, "x".repeat(4096));
    let r = post(&base, "/v1/completions", &huge).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let r = post(&base, "/v1/completions", "\u{0}\u{ff}garbage").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Nothing reached the engine.
    assert_eq!(engine.stats().requests, 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn engine_errors_pass_through_with_their_status() {
    let engine = MockEngine::new(Flavor::OpenAi)
        .fault(Fault::StatusAlways { status: 422 })
        .spawn()
        .await;
    let gw = start(aggregated(&[engine.url()])).await;
    let r = post(&gw.url(), "/v1/completions", COMPLETION).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json()["error"]["code"], "worker_status");
    // 4xx is the client's problem: not retried.
    assert_eq!(engine.stats().requests, 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn retries_move_to_another_worker() {
    let bad = MockEngine::new(Flavor::OpenAi)
        .fault(Fault::StatusAlways { status: 500 })
        .spawn()
        .await;
    let good = MockEngine::new(Flavor::OpenAi).spawn().await;
    let mut cfg = aggregated(&[bad.url(), good.url()]);
    cfg.policy = baton_policies::PolicyKind::RoundRobin;
    let gw = start(cfg).await;
    for _ in 0..4 {
        let r = post(&gw.url(), "/v1/completions", COMPLETION_STREAM).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(stream_text(&r.events()), expected_text(8));
    }
    assert_eq!(good.stats().completed, 4);
    assert!(bad.stats().requests >= 1);
    let m = get(&gw.url(), "/metrics").await.text();
    assert!(metric(&m, "baton_retries_total") >= 1.0, "{m}");
    gw.shutdown().await;
}

#[tokio::test]
async fn connect_errors_are_retried_then_reported() {
    // A port nothing listens on: bound for the whole test (so nothing else
    // can take it) but never listening, so every connect is refused.
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead = format!("http://{}", reserved.local_addr().unwrap());
    let mut cfg = aggregated(&[dead]);
    cfg.retry.max_retries = 2;
    let gw = start(cfg).await;
    let r = post(&gw.url(), "/v1/completions", COMPLETION).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("worker unreachable"));
    let m = get(&gw.url(), "/metrics").await.text();
    assert_eq!(metric(&m, "baton_retries_total"), 2.0);
    gw.shutdown().await;
    drop(reserved);
}

#[tokio::test]
async fn breaker_opens_routes_around_and_recovers() {
    let flaky = MockEngine::new(Flavor::OpenAi)
        .fault(Fault::StatusNth { n: 1, status: 500 })
        .fault(Fault::StatusNth { n: 2, status: 500 })
        .spawn()
        .await;
    let good = MockEngine::new(Flavor::OpenAi).spawn().await;
    let mut cfg = aggregated(&[flaky.url(), good.url()]);
    cfg.policy = baton_policies::PolicyKind::RoundRobin;
    cfg.breaker.failure_threshold = 2;
    cfg.breaker.success_threshold = 1;
    cfg.breaker.open_secs = 30.0;
    let gw = start(cfg).await;
    for _ in 0..6 {
        assert_eq!(
            post(&gw.url(), "/v1/completions", COMPLETION).await.status,
            StatusCode::OK
        );
    }
    // Two failures opened the flaky worker's breaker; it got no more traffic.
    assert_eq!(flaky.stats().requests, 2);
    let m = get(&gw.url(), "/metrics").await.text();
    assert_eq!(
        metric(
            &m,
            &format!("baton_breaker_state{{worker=\"{}\"", flaky.url())
        ),
        1.0,
        "{m}"
    );
    // 429/503 (overload) never open a breaker.
    // After the open period it is probed again and closes on success.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(31)).await;
    tokio::time::resume();
    for _ in 0..4 {
        assert_eq!(
            post(&gw.url(), "/v1/completions", COMPLETION).await.status,
            StatusCode::OK
        );
    }
    assert!(flaky.stats().completed >= 1);
    let m = get(&gw.url(), "/metrics").await.text();
    assert_eq!(
        metric(
            &m,
            &format!("baton_breaker_state{{worker=\"{}\"", flaky.url())
        ),
        0.0
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn overload_does_not_trip_breakers() {
    let busy = MockEngine::new(Flavor::OpenAi)
        .fault(Fault::StatusAlways { status: 429 })
        .spawn()
        .await;
    let mut cfg = aggregated(&[busy.url()]);
    cfg.breaker.failure_threshold = 1;
    cfg.retry.max_retries = 1;
    let gw = start(cfg).await;
    for _ in 0..3 {
        let r = post(&gw.url(), "/v1/completions", COMPLETION).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    }
    assert_eq!(
        busy.stats().requests,
        6,
        "each request tried twice, breaker never opened"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn not_ready_until_a_health_check_confirms_a_worker() {
    let e = MockEngine::new(Flavor::OpenAi).spawn().await;
    e.set_healthy(false);
    let mut cfg = aggregated(&[e.url()]);
    cfg.health.interval_secs = 0.05;
    // Far from the failure threshold: the worker stays routable (optimistic) but is not confirmed.
    cfg.health.failure_threshold = 1000;
    cfg.health.success_threshold = 1;
    let gw = start(cfg).await;
    let base = gw.url();
    let r = get(&base, "/readiness").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["pools"][0]["confirmed_healthy"], 0);
    e.set_healthy(true);
    assert!(wait_for(|| async { get(&base, "/readiness").await.status == StatusCode::OK }).await);
    gw.shutdown().await;
}

#[tokio::test]
async fn health_readiness_models_and_metrics() {
    let e1 = MockEngine::new(Flavor::OpenAi).model("m1").spawn().await;
    let e2 = MockEngine::new(Flavor::OpenAi).model("m2").spawn().await;
    let mut cfg = aggregated(&[e1.url(), e2.url()]);
    cfg.health.interval_secs = 0.05;
    cfg.health.failure_threshold = 1;
    cfg.health.success_threshold = 1;
    let gw = start(cfg).await;
    let base = gw.url();
    assert_eq!(get(&base, "/health").await.status, StatusCode::OK);
    // Ready once the first health checks answered (they start at once).
    assert!(wait_for(|| async { get(&base, "/readiness").await.status == StatusCode::OK }).await);
    let models = get(&base, "/v1/models").await.json();
    let ids: Vec<_> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec!["m1", "m2"]);

    e1.set_healthy(false);
    e2.set_healthy(false);
    let r = wait_for(|| async {
        get(&base, "/readiness").await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert!(r, "readiness turned 503");
    // A model the engines serve (the gateway refuses others with a 404 once it knows their lists).
    let completion = r#"{"model":"m2","prompt":"one two three","max_tokens":8}"#;
    let r = post(&base, "/v1/completions", completion).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(e1.stats().health_checks > 0);
    e2.set_healthy(true);
    assert!(wait_for(|| async { get(&base, "/readiness").await.status == StatusCode::OK }).await);
    assert_eq!(
        post(&base, "/v1/completions", completion).await.status,
        StatusCode::OK
    );

    let m = get(&base, "/metrics").await;
    let text = m.text();
    for name in [
        "baton_requests_total",
        "baton_time_to_first_token_seconds_bucket",
        "baton_worker_healthy",
        "baton_worker_in_flight",
        "baton_breaker_state",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    assert_eq!(metric(&text, "baton_requests_total{endpoint=\"completions\",mode=\"aggregated\",outcome=\"success\"}"), 1.0);
    gw.shutdown().await;
}

#[tokio::test]
async fn idle_and_total_timeouts_end_streams_with_an_error_event() {
    let slow = MockEngine::new(Flavor::OpenAi)
        .token_delay(Duration::from_millis(400))
        .spawn()
        .await;
    let mut cfg = aggregated(&[slow.url()]);
    cfg.timeouts.idle_secs = 0.1;
    let gw = start(cfg).await;
    let r = post(&gw.url(), "/v1/completions", COMPLETION_STREAM).await;
    assert_eq!(r.status, StatusCode::OK);
    let events = r.events();
    let last: serde_json::Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "worker_timeout", "{events:?}");
    assert!(slow
        .wait_until(|s| s.cancelled == 1, Duration::from_secs(5))
        .await
        .is_ok());
    gw.shutdown().await;
}

#[tokio::test]
async fn dropped_stream_becomes_an_sse_error() {
    let engine = MockEngine::new(Flavor::OpenAi)
        .fault(Fault::DropMidStreamNth {
            n: 1,
            after_tokens: 3,
        })
        .spawn()
        .await;
    let gw = start(aggregated(&[engine.url()])).await;
    let r = post(&gw.url(), "/v1/completions", COMPLETION_STREAM).await;
    let events = r.events();
    assert_eq!(stream_text(&events), expected_text(3));
    let last: serde_json::Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "worker_transport", "{events:?}");
    // Non-streaming after a failure before the first byte is retried.
    let r = post(&gw.url(), "/v1/completions", COMPLETION).await;
    assert_eq!(r.status, StatusCode::OK);
    gw.shutdown().await;
}

#[tokio::test]
async fn total_request_timeout_bounds_retries_and_hangs() {
    let hang = MockEngine::new(Flavor::OpenAi)
        .fault(Fault::HangNth { n: 1 })
        .fault(Fault::HangNth { n: 2 })
        .spawn()
        .await;
    let mut cfg = aggregated(&[hang.url()]);
    cfg.timeouts.request_secs = 0.3;
    let gw = start(cfg).await;
    let r = post(&gw.url(), "/v1/completions", COMPLETION).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(hang
        .wait_until(|s| s.cancelled == 1, Duration::from_secs(2))
        .await
        .is_ok());
    gw.shutdown().await;
}

#[tokio::test]
async fn separate_prometheus_listener_serves_only_metrics() {
    let engine = MockEngine::new(Flavor::OpenAi).spawn().await;
    let mut cfg = aggregated(&[engine.url()]);
    cfg.prometheus_port = Some(0);
    let gw = start(cfg).await;
    let maddr = format!("http://{}", gw.metrics_addr.expect("metrics listener"));
    let m = get(&maddr, "/metrics").await;
    assert_eq!(m.status, StatusCode::OK);
    assert!(m.text().contains("baton_worker_healthy"));
    assert_eq!(
        get(&maddr, "/v1/models").await.status,
        StatusCode::NOT_FOUND
    );
    gw.shutdown().await;
}
