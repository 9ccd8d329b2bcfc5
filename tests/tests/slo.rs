//! SLO classes, goodput accounting and SLO-aware admission/placement.

mod common;

use std::time::Duration;

use baton_e2e::mock::{Fault, Flavor, MockEngine, VllmPair};
use baton_policies::slo::AdmissionMode;
use common::*;
use http::StatusCode;
use serde_json::Value;

fn row<'a>(report: &'a Value, class: &str, tenant: &str) -> &'a Value {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["class"] == class && r["tenant"] == tenant)
        .unwrap_or_else(|| panic!("no row {class}/{tenant} in {report}"))
}

#[tokio::test]
async fn every_request_is_counted_once_against_its_class() {
    let fast = MockEngine::new(Flavor::OpenAi).spawn().await;
    let slow = MockEngine::new(Flavor::OpenAi)
        .token_delay(Duration::from_millis(60))
        .spawn()
        .await;
    // (Tenants from API keys: tests/tests/security.rs.)
    let mut cfg = aggregated(&[fast.url()]);
    let gw = start(cfg.clone()).await;
    let h = [("x-slo-class", "interactive")];
    for _ in 0..3 {
        let r = post_with(&gw.url(), "/v1/completions", COMPLETION_STREAM, &h).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let r = post(&gw.url(), "/v1/completions", COMPLETION).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = post_with(
        &gw.url(),
        "/v1/completions",
        COMPLETION,
        &[("x-slo-class", "gold")],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"]["param"], "x-slo-class");
    let report = get(&gw.url(), "/v1/slo").await.json();
    let inter = row(&report, "interactive", "anonymous");
    assert_eq!(inter["requests"], 3);
    assert_eq!(inter["good"], 3);
    assert_eq!(inter["attainment"], 1.0);
    assert_eq!(row(&report, "standard", "anonymous")["good"], 1);
    let m = get(&gw.url(), "/metrics").await.text();
    assert_eq!(
        metric(
            &m,
            "baton_slo_requests_total{class=\"interactive\",tenant=\"anonymous\",result=\"good\"}"
        ),
        3.0,
        "{m}"
    );
    assert!(
        m.contains("baton_slo_attainment{class=\"interactive\",tenant=\"anonymous\"} 1.0"),
        "{m}"
    );
    gw.shutdown().await;

    // 60 ms between tokens misses interactive's 30 ms TPOT but meets standard's 100 ms.
    cfg.worker_urls = vec![slow.url()];
    let gw = start(cfg).await;
    let r = post_with(
        &gw.url(),
        "/v1/completions",
        COMPLETION_STREAM,
        &[("x-slo-class", "interactive")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = post(&gw.url(), "/v1/completions", COMPLETION_STREAM).await;
    assert_eq!(r.status, StatusCode::OK);
    let report = get(&gw.url(), "/v1/slo").await.json();
    let inter = row(&report, "interactive", "anonymous");
    assert_eq!(
        (inter["good"].as_u64(), inter["tpot_attainment"].as_f64()),
        (Some(0), Some(0.0))
    );
    assert_eq!(inter["ttft_attainment"], 1.0);
    assert_eq!(row(&report, "standard", "anonymous")["good"], 1);
    let m = get(&gw.url(), "/metrics").await.text();
    assert_eq!(metric(&m, "baton_slo_requests_total{class=\"interactive\",tenant=\"anonymous\",result=\"tpot_miss\"}"), 1.0);
    gw.shutdown().await;
}

#[tokio::test]
async fn refusals_as_invalid_are_client_errors_not_misses() {
    let engine = MockEngine::new(Flavor::OpenAi)
        .fault(Fault::StatusNth { n: 1, status: 400 })
        .spawn()
        .await;
    let gw = start(aggregated(&[engine.url()])).await;
    let r = post_with(
        &gw.url(),
        "/v1/completions",
        COMPLETION,
        &[("x-slo-ttft-ms", "1000")],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = post_with(
        &gw.url(),
        "/v1/completions",
        COMPLETION,
        &[("x-slo-ttft-ms", "nope")],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let report = get(&gw.url(), "/v1/slo").await.json();
    // The engine's 400 and the gateway's (a bad budget header) are the
    // client's mistakes: counted apart, neither served nor missed.
    let std = row(&report, "standard", "anonymous");
    assert_eq!(
        (
            std["requests"].as_u64(),
            std["failed"].as_u64(),
            std["good"].as_u64(),
            std["client_errors"].as_u64()
        ),
        (Some(0), Some(0), Some(0), Some(2)),
        "{report}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn predicted_misses_are_rejected_early_with_retry_after() {
    let engine = MockEngine::new(Flavor::OpenAi).spawn().await;
    let mut cfg = aggregated(&[engine.url()]);
    cfg.slo.routing = true;
    // A prefill rate of 10 tokens/s makes any prompt miss a 500 ms TTFT.
    cfg.slo.prior_prefill_tokens_per_s = 10.0;
    let gw = start(cfg).await;
    let long = format!(r#"{{"prompt":"{}","max_tokens":4}}"#, "word ".repeat(400));
    let r = post_with(
        &gw.url(),
        "/v1/completions",
        &long,
        &[("x-slo-class", "interactive")],
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert_eq!(
        engine.stats().requests,
        0,
        "rejected before any engine work"
    );
    // Batch has no targets: always admitted.
    let r = post_with(
        &gw.url(),
        "/v1/completions",
        &long,
        &[("x-slo-class", "batch")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let report = get(&gw.url(), "/v1/slo").await.json();
    assert_eq!(row(&report, "interactive", "anonymous")["rejected"], 1);
    assert_eq!(row(&report, "batch", "anonymous")["good"], 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn queue_mode_waits_until_the_deadline_then_rejects() {
    let engine = MockEngine::new(Flavor::OpenAi).spawn().await;
    let mut cfg = aggregated(&[engine.url()]);
    cfg.slo.routing = true;
    cfg.slo.policy.admission = AdmissionMode::Queue;
    cfg.slo.prior_prefill_tokens_per_s = 10.0;
    // Explicit budgets are never tighter than the class: a 150 ms class.
    cfg.slo.classes.insert(
        "tight".into(),
        baton_gateway::slo::config::ClassConfig {
            ttft_ms: Some(150.0),
            tpot_ms: None,
        },
    );
    let gw = start(cfg).await;
    let started = tokio::time::Instant::now();
    let r = post_with(
        &gw.url(),
        "/v1/completions",
        COMPLETION,
        &[("x-slo-class", "tight"), ("x-slo-ttft-ms", "150")],
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "held until the TTFT deadline"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn short_prompts_go_local_when_the_prefill_pool_is_backed_up() {
    // The prefill worker takes the first (long) request and hangs on it.
    let VllmPair {
        prefill: p,
        decode: d,
        ..
    } = VllmPair::spawn(
        MockEngine::new(Flavor::VllmPrefill).fault(Fault::HangNth { n: 1 }),
        MockEngine::new(Flavor::VllmDecode),
    )
    .await;
    let mut cfg = pd(&[(p.url(), None)], &[d.url()]);
    cfg.slo.routing = true;
    cfg.slo.policy.admission = AdmissionMode::Off;
    cfg.slo.prior_prefill_tokens_per_s = 5000.0;
    let gw = start(cfg).await;
    let url = gw.url();
    let long = format!(
        r#"{{"prompt":"{}","max_tokens":4}}"#,
        "longword ".repeat(4000)
    );
    let hung = tokio::spawn(async move {
        post_with(&url, "/v1/completions", &long, &[("x-slo-class", "batch")]).await
    });
    p.wait_until(|s| s.active == 1, Duration::from_secs(2))
        .await
        .unwrap();
    let r = post_with(
        &gw.url(),
        "/v1/completions",
        COMPLETION_STREAM,
        &[("x-slo-class", "interactive")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(stream_text(&r.events()), expected_text(8));
    // It skipped the busy prefill worker: decode prefilled it itself.
    assert_eq!(p.stats().requests, 1);
    assert!(d.requests()[0].body.get("kv_transfer_params").is_none());
    let m = get(&gw.url(), "/metrics").await.text();
    assert_eq!(metric(&m, "baton_slo_local_prefills_total"), 1.0);
    hung.abort();
    gw.shutdown().await;
}

#[tokio::test]
async fn engine_reported_load_is_scraped_for_placement() {
    use baton_e2e::sim::{SimEngine, SimRole};
    let p = SimEngine::new(SimRole::Prefill).spawn().await;
    let d = SimEngine::new(SimRole::Decode)
        .per_seq_ms(1.0)
        .spawn()
        .await;
    let mut cfg = pd(&[(p.url(), None)], &[d.url()]);
    cfg.slo.routing = true;
    cfg.slo.engine_metrics_interval_ms = 50;
    let gw = start(cfg).await;
    // Traffic that bypasses the gateway: only the engine's metrics show it.
    let body = r#"{"model":"sim","prompt":"hello there","max_tokens":400,"ignore_eos":true,"stream":true}"#;
    let mut direct = Vec::new();
    for _ in 0..3 {
        direct.push(open(&d.url(), "/v1/completions", body, &[]).await);
    }
    let decode = gw.state.pools.all()[1].workers.snapshot()[0].clone();
    let seen = || decode.engine_load(Duration::from_secs(5));
    wait_for(|| async { seen().is_some_and(|(running, _)| running >= 3) }).await;
    assert!(
        seen().is_some_and(|(running, _)| running >= 3),
        "{:?}",
        seen()
    );
    drop(direct);
    gw.shutdown().await;
}
