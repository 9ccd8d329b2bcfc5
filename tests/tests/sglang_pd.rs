//! PD mode with SGLang's protocol (concurrent legs meeting in a bootstrap room).

mod common;

use std::time::Duration;

use baton_e2e::mock::{Fault, Flavor, MockEngine, MockHandle, Rendezvous};
use common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use serde_json::Value;

const BOOT: u16 = 8998;

struct Pair {
    prefill: MockHandle,
    decode: MockHandle,
    rv: Rendezvous,
}

async fn pair(prefill: MockEngine, decode: MockEngine) -> Pair {
    let rv = Rendezvous::default();
    Pair {
        prefill: prefill.rendezvous(rv.clone()).spawn().await,
        decode: decode.rendezvous(rv.clone()).spawn().await,
        rv,
    }
}

fn prefill_mock() -> MockEngine {
    MockEngine::new(Flavor::SglangPrefill {
        bootstrap_port: BOOT,
    })
}

fn decode_mock() -> MockEngine {
    MockEngine::new(Flavor::SglangDecode)
}

async fn gateway(p: &Pair) -> baton_gateway::RunningGateway {
    start(pd(&[(p.prefill.url(), Some(BOOT))], &[p.decode.url()])).await
}

#[tokio::test]
async fn legs_meet_in_a_fresh_room_stream_and_not() {
    let p = pair(prefill_mock(), decode_mock()).await;
    let gw = gateway(&p).await;
    assert_eq!(gw.state.mode.label(), "pd_sglang");
    let r = post(&gw.url(), "/v1/chat/completions", CHAT_STREAM).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(stream_text(&r.events()), expected_text(8));
    let r = post(&gw.url(), "/v1/completions", COMPLETION).await;
    assert_eq!(r.json()["choices"][0]["text"], expected_text(8));
    let r = post(
        &gw.url(),
        "/generate",
        r#"{"text":"hi there","sampling_params":{"max_new_tokens":4},"stream":true}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.events().last().unwrap(), "[DONE]");

    let pre = p.prefill.requests();
    let dec = p.decode.requests();
    assert_eq!(pre.len(), 3);
    for (a, b) in pre.iter().zip(&dec) {
        // Same body to both legs, with explicit bootstrap fields.
        assert_eq!(a.body, b.body);
        assert_eq!(a.body["bootstrap_host"], "127.0.0.1");
        assert_eq!(a.body["bootstrap_port"], BOOT);
        assert!(a.body["bootstrap_room"]
            .as_u64()
            .is_some_and(|r| r <= i64::MAX as u64));
    }
    assert_ne!(pre[0].body["bootstrap_room"], pre[1].body["bootstrap_room"]);
    assert_eq!(p.rv.pending(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn batches_get_one_room_per_item() {
    let p = pair(prefill_mock(), decode_mock()).await;
    let gw = gateway(&p).await;
    let r = post(
        &gw.url(),
        "/v1/completions",
        r#"{"prompt":["a b","c d","e"],"max_tokens":2}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["choices"].as_array().unwrap().len(), 3);
    let body = &p.decode.requests()[0].body;
    let rooms = body["bootstrap_room"].as_array().unwrap();
    assert_eq!(rooms.len(), 3);
    assert_eq!(body["bootstrap_host"].as_array().unwrap().len(), 3);
    assert_eq!(
        body["bootstrap_port"],
        serde_json::json!([BOOT, BOOT, BOOT])
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn prefill_4xx_answers_the_client_and_cancels_decode_at_once() {
    // The decode would wait 300 s for a room that never fills, as SGLang does.
    let p = pair(
        prefill_mock().fault(Fault::StatusAlways { status: 400 }),
        decode_mock().rendezvous_timeout(Duration::from_secs(300)),
    )
    .await;
    let gw = gateway(&p).await;
    let started = tokio::time::Instant::now();
    let r = post(&gw.url(), "/v1/chat/completions", CHAT_STREAM).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"]["code"], "prefill_status");
    let s = p
        .decode
        .wait_until(|s| s.cancelled == 1, Duration::from_secs(1))
        .await
        .expect("decode leg cancelled within 1 s");
    assert_eq!(s.completed, 0);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(p.rv.pending(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn decode_5xx_cancels_prefill_and_retries() {
    let p = pair(
        prefill_mock(),
        decode_mock().fault(Fault::StatusNth { n: 1, status: 500 }),
    )
    .await;
    let gw = gateway(&p).await;
    let r = post(&gw.url(), "/v1/completions", COMPLETION_STREAM).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(stream_text(&r.events()), expected_text(8));
    // The first prefill waited for a decode that never joined: cancelled.
    let s = p
        .prefill
        .wait_until(
            |s| s.cancelled == 1 && s.completed == 1,
            Duration::from_secs(2),
        )
        .await;
    assert!(s.is_ok(), "{s:?}");
    let rooms: Vec<_> = p
        .prefill
        .requests()
        .iter()
        .map(|r| r.body["bootstrap_room"].clone())
        .collect();
    assert_ne!(rooms[0], rooms[1], "one fresh room per attempt");
    gw.shutdown().await;
}

#[tokio::test]
async fn client_disconnect_cancels_both_legs() {
    // Before the head: prefill is computing (long), decode waits for it.
    let p = pair(
        prefill_mock().head_delay(Duration::from_secs(30)),
        decode_mock(),
    )
    .await;
    let gw = gateway(&p).await;
    let url = gw.url();
    let req =
        tokio::spawn(async move { open(&url, "/v1/completions", COMPLETION_STREAM, &[]).await });
    p.prefill
        .wait_until(|s| s.active == 1, Duration::from_secs(2))
        .await
        .unwrap();
    p.decode
        .wait_until(|s| s.active == 1, Duration::from_secs(2))
        .await
        .unwrap();
    req.abort();
    let _ = req.await;
    assert!(p
        .prefill
        .wait_until(|s| s.cancelled == 1, Duration::from_secs(2))
        .await
        .is_ok());
    assert!(p
        .decode
        .wait_until(|s| s.cancelled == 1, Duration::from_secs(2))
        .await
        .is_ok());
    assert_eq!(p.rv.pending(), 0);

    // Mid-stream: the client reads one chunk and hangs up.
    let p = pair(
        prefill_mock(),
        decode_mock().token_delay(Duration::from_millis(200)),
    )
    .await;
    let gw2 = gateway(&p).await;
    let resp = open(&gw2.url(), "/v1/completions", COMPLETION_STREAM, &[]).await;
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some());
    drop(body);
    assert!(p
        .decode
        .wait_until(|s| s.cancelled == 1, Duration::from_secs(2))
        .await
        .is_ok());
    let m = get(&gw2.url(), "/metrics").await.text();
    assert_eq!(metric(&m, "baton_requests_total{endpoint=\"completions\",mode=\"pd_sglang\",outcome=\"cancelled\"}"), 1.0, "{m}");
    gw.shutdown().await;
    gw2.shutdown().await;
}

#[tokio::test]
async fn slow_prefill_body_does_not_delay_the_client_stream() {
    // Prefill writes its head at once but its body only 5 s later; SGLang's
    // own gateway waits for that body before streaming.
    let p = pair(
        prefill_mock().body_delay(Duration::from_secs(5)),
        decode_mock(),
    )
    .await;
    let gw = gateway(&p).await;
    let resp = open(&gw.url(), "/v1/chat/completions", CHAT_STREAM, &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            got.extend_from_slice(&d);
        }
        if got.windows(6).any(|w| w == b"[DONE]") {
            break;
        }
    }
    // The whole decode stream arrived while the prefill reply was still pending.
    assert_eq!(p.prefill.stats().completed, 0);
    let events: Vec<String> = baton_protocol::sse::SseDecoder::new()
        .push(&got)
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(stream_text(&events), expected_text(8));
    gw.shutdown().await;
}

#[tokio::test]
async fn decode_dropping_mid_stream_ends_with_an_error_event_and_cancels_prefill() {
    let p = pair(
        prefill_mock().body_delay(Duration::from_secs(30)),
        decode_mock().fault(Fault::DropMidStreamNth {
            n: 1,
            after_tokens: 2,
        }),
    )
    .await;
    let gw = gateway(&p).await;
    let r = post(&gw.url(), "/v1/completions", COMPLETION_STREAM).await;
    let events = r.events();
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "decode_transport", "{events:?}");
    assert!(last["error"]["message"]
        .as_str()
        .unwrap()
        .contains("decode"));
    assert!(p
        .prefill
        .wait_until(|s| s.cancelled == 1, Duration::from_secs(2))
        .await
        .is_ok());
    gw.shutdown().await;
}

#[tokio::test]
async fn bootstrap_port_none_is_sent_as_null() {
    // `--prefill URL none`: SGLang would substitute the decode's default port;
    // this prefill's bootstrap server is elsewhere, so the mock refuses it.
    let p = pair(
        prefill_mock(),
        decode_mock().rendezvous_timeout(Duration::from_secs(300)),
    )
    .await;
    let mut cfg = pd(&[(p.prefill.url(), None)], &[p.decode.url()]);
    cfg.pd_protocol = Some(baton_gateway::config::PdProtocol::Sglang);
    cfg.retry.max_retries = 0;
    let gw = start(cfg).await;
    let r = post(&gw.url(), "/v1/completions", COMPLETION).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(p.prefill.requests()[0].body["bootstrap_port"].is_null());
    gw.shutdown().await;
}
