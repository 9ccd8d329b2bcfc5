//! PD mode with vLLM's NixlConnector protocol (sequential legs).

mod common;

use baton_e2e::mock::{Fault, Flavor, MockEngine, VllmKvRegistry, VllmPair};
use common::*;
use http::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn prefill_then_decode_with_params_copied_verbatim() {
    let p = VllmPair::plain().await;
    let gw = start(pd(&[(p.prefill.url(), None)], &[p.decode.url()])).await;
    assert_eq!(gw.state.mode.label(), "pd_vllm");
    let r = post_with(
        &gw.url(),
        "/v1/chat/completions",
        CHAT_STREAM,
        &[("x-request-id", "bench-1")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let events = r.events();
    assert_eq!(stream_text(&events), expected_text(8));
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert_eq!(r.headers["x-request-id"], "bench-1");

    let pre = &p.prefill.requests()[0];
    assert_eq!(pre.body["max_tokens"], 1);
    assert_eq!(pre.body["stream"], false);
    assert!(pre.body.get("stream_options").is_none());
    assert_eq!(pre.body["kv_transfer_params"]["do_remote_decode"], true);
    let dec = &p.decode.requests()[0];
    assert_eq!(dec.body["stream"], true);
    assert_eq!(dec.body["max_tokens"], 8);
    assert_eq!(dec.body["stream_options"]["include_usage"], true);
    // Both legs share one fresh transfer id, never the client's.
    let xp = pre.headers["x-request-id"].to_str().unwrap();
    let xd = dec.headers["x-request-id"].to_str().unwrap();
    assert_eq!(xp, xd);
    assert_ne!(xp, "bench-1");
    // The decode mock accepts only params equal to what prefill issued
    // (including its random nonce key), then marks them pulled.
    assert!(dec.body["kv_transfer_params"]["x_mock_nonce"].is_string());
    assert_eq!(
        (p.kv.issued(), p.kv.pulled(), p.kv.outstanding()),
        (1, 1, 0)
    );
    assert_eq!(p.decode.stats().rejected_params, 0);
    assert_eq!(p.decode.stats().local_prefills, 0);

    // A second request gets a different transfer id.
    let r = post(&gw.url(), "/v1/completions", COMPLETION).await;
    assert_eq!(r.json()["choices"][0]["text"], expected_text(8));
    assert_ne!(p.prefill.requests()[1].headers["x-request-id"], xp);
    let m = get(&gw.url(), "/metrics").await.text();
    assert_eq!(metric(&m, "baton_prefill_leg_duration_seconds_count"), 2.0);
    assert_eq!(metric(&m, "baton_decode_first_byte_seconds_count"), 2.0);
    gw.shutdown().await;
}

#[tokio::test]
async fn prefill_4xx_goes_to_the_client_and_decode_is_never_called() {
    let p = VllmPair::spawn(
        MockEngine::new(Flavor::VllmPrefill).fault(Fault::StatusAlways { status: 400 }),
        MockEngine::new(Flavor::VllmDecode),
    )
    .await;
    let gw = start(pd(&[(p.prefill.url(), None)], &[p.decode.url()])).await;
    let r = post(&gw.url(), "/v1/completions", COMPLETION_STREAM).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"]["code"], "prefill_status");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("prefill worker returned HTTP 400"));
    assert_eq!(p.decode.stats().requests, 0);
    assert_eq!(p.prefill.stats().requests, 1, "4xx is not retried");
    gw.shutdown().await;
}

#[tokio::test]
async fn failed_prefill_is_retried_on_another_pair() {
    let kv = VllmKvRegistry::default();
    let bad = MockEngine::new(Flavor::VllmPrefill)
        .fault(Fault::StatusAlways { status: 500 })
        .kv_registry(kv.clone())
        .spawn()
        .await;
    let good = MockEngine::new(Flavor::VllmPrefill)
        .kv_registry(kv.clone())
        .spawn()
        .await;
    let d = MockEngine::new(Flavor::VllmDecode)
        .kv_registry(kv.clone())
        .spawn()
        .await;
    let mut cfg = pd(&[(bad.url(), None), (good.url(), None)], &[d.url()]);
    cfg.prefill_policy = Some(baton_policies::PolicyKind::RoundRobin);
    let gw = start(cfg).await;
    for _ in 0..3 {
        let r = post(&gw.url(), "/v1/completions", COMPLETION).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    assert_eq!(good.stats().completed, 3);
    assert_eq!(d.stats().rejected_params, 0);
    assert_eq!(kv.outstanding(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn prefill_without_params_means_decode_prefills_and_it_is_counted() {
    // A prefill whose one token is a stop (natural length 0) returns no params.
    let p = VllmPair::spawn(
        MockEngine::new(Flavor::VllmPrefill).fault(Fault::EosFirstNth { n: 1 }),
        MockEngine::new(Flavor::VllmDecode),
    )
    .await;
    let gw = start(pd(&[(p.prefill.url(), None)], &[p.decode.url()])).await;
    let r = post(&gw.url(), "/v1/completions", r#"{"prompt":"a b"}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(p.decode.requests()[0]
        .body
        .get("kv_transfer_params")
        .is_none());
    assert_eq!(p.decode.stats().local_prefills, 1);
    let m = get(&gw.url(), "/metrics").await.text();
    assert_eq!(metric(&m, "baton_pd_local_prefills_total"), 1.0);
    gw.shutdown().await;
}

#[tokio::test]
async fn decode_failure_before_first_byte_retries_the_pair() {
    let p = VllmPair::spawn(
        MockEngine::new(Flavor::VllmPrefill),
        MockEngine::new(Flavor::VllmDecode).fault(Fault::ConnectionResetNth { n: 1 }),
    )
    .await;
    let gw = start(pd(&[(p.prefill.url(), None)], &[p.decode.url()])).await;
    let r = post(&gw.url(), "/v1/completions", COMPLETION_STREAM).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(stream_text(&r.events()), expected_text(8));
    assert_eq!(p.prefill.stats().requests, 2);
    // The first prefill's KV was never pulled: vLLM frees it on its lease.
    assert_eq!(p.kv.outstanding(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn n_greater_than_one_is_a_clear_400() {
    let p = VllmPair::plain().await;
    let gw = start(pd(&[(p.prefill.url(), None)], &[p.decode.url()])).await;
    let r = post(&gw.url(), "/v1/completions", r#"{"prompt":"x","n":2}"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let j: Value = r.json();
    assert!(j["error"]["message"].as_str().unwrap().contains("n > 1"));
    assert_eq!(p.prefill.stats().requests, 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn client_request_id_reaches_both_legs_for_correlation() {
    let p = VllmPair::plain().await;
    let gw = start(pd(&[(p.prefill.url(), None)], &[p.decode.url()])).await;
    let r = post_with(
        &gw.url(),
        "/v1/completions",
        COMPLETION,
        &[("x-request-id", "trace-7")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        p.prefill.requests()[0].headers["x-baton-request-id"],
        "trace-7"
    );
    assert_eq!(
        p.decode.requests()[0].headers["x-baton-request-id"],
        "trace-7"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn client_disconnect_during_prefill_cancels_it_and_decode_never_starts() {
    let p = VllmPair::spawn(
        MockEngine::new(Flavor::VllmPrefill).head_delay(std::time::Duration::from_secs(30)),
        MockEngine::new(Flavor::VllmDecode),
    )
    .await;
    let gw = start(pd(&[(p.prefill.url(), None)], &[p.decode.url()])).await;
    let url = gw.url();
    let req =
        tokio::spawn(async move { open(&url, "/v1/completions", COMPLETION_STREAM, &[]).await });
    p.prefill
        .wait_until(|s| s.active == 1, std::time::Duration::from_secs(2))
        .await
        .unwrap();
    req.abort();
    let _ = req.await;
    assert!(p
        .prefill
        .wait_until(|s| s.cancelled == 1, std::time::Duration::from_secs(2))
        .await
        .is_ok());
    assert_eq!(p.decode.stats().requests, 0);
    assert_eq!(p.kv.outstanding(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn prefill_timeout_is_a_504_naming_prefill() {
    let p = VllmPair::spawn(
        MockEngine::new(Flavor::VllmPrefill).fault(Fault::HangNth { n: 1 }),
        MockEngine::new(Flavor::VllmDecode),
    )
    .await;
    let mut cfg = pd(&[(p.prefill.url(), None)], &[p.decode.url()]);
    cfg.timeouts.prefill_secs = 0.2;
    cfg.retry.max_retries = 0;
    let gw = start(cfg).await;
    let r = post(&gw.url(), "/v1/completions", COMPLETION).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.json()["error"]["code"], "prefill_timeout");
    assert!(p
        .prefill
        .wait_until(|s| s.cancelled == 1, std::time::Duration::from_secs(2))
        .await
        .is_ok());
    gw.shutdown().await;
}
