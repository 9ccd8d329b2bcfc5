//! Budgets and load over HTTP on the tiny model: `x-baton-slo` counts only from the fleet, and every generation
//! response (and `GET /load`) tells the engine's state.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use baton_policies::step::EngineReport;
use baton_protocol::engine_slo::{LOAD_HEADER, SLO_HEADER};
use baton_protocol::fleet::FLEET_AUTH_HEADER;
use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use super::fleet::Caller;
use super::tests::{fleet_key, start};
use super::*;
use crate::metrics::Stats;
use crate::transfer::PullFailurePolicy;

async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: Option<Value>,
) -> (u16, HeaderMap, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    let req = b
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let head = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, head, String::from_utf8_lossy(&bytes).into_owned())
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A budget that would put its request ahead of everything: first token due now, 1 ms per token.
fn tight_slo() -> String {
    format!("ttft=1;tpot=1;deadline={}", unix_ms())
}

fn report(head: &HeaderMap) -> EngineReport {
    let v = head
        .get(LOAD_HEADER)
        .expect("x-baton-load on the response")
        .to_str()
        .unwrap();
    serde_json::from_str(v).unwrap()
}

fn sane(r: &EngineReport) {
    assert!((0.0..=1.0).contains(&r.kv_usage), "{r:?}");
    let m = r.step.expect("the step model");
    assert!(m.is_valid(), "{r:?}");
}

#[test]
fn a_clients_slo_header_is_ignored_and_the_fleets_is_kept() {
    let stats = Stats::default();
    let mut h = HeaderMap::new();
    h.insert(SLO_HEADER, tight_slo().parse().unwrap());
    // The attack: no fleet authentication, a deadline of "now". The request gets no budget at all, so it has no
    // deadline to be ordered by (it is due 10 s after arrival, as every request without one).
    assert_eq!(
        handlers::request_slo(&Caller::default(), &h, &stats),
        crate::engine::SeqSlo::default()
    );
    assert_eq!(stats.slo_headers_ignored.load(Ordering::Relaxed), 1);
    let fleet = Caller {
        fleet: true,
        tenant: Some("anonymous".into()),
    };
    let slo = handlers::request_slo(&fleet, &h, &stats);
    assert_eq!((slo.tpot_ms, slo.ttft_ms), (Some(1.0), Some(1.0)));
    assert!(slo.first_token_due.is_some());
    assert_eq!(stats.slo_requests.load(Ordering::Relaxed), 1);
    // Malformed from the fleet: no budget, no error. No header: nothing counted.
    h.insert(SLO_HEADER, "ttft=-1".parse().unwrap());
    assert!(handlers::request_slo(&fleet, &h, &stats).is_empty());
    assert!(handlers::request_slo(&fleet, &HeaderMap::new(), &stats).is_empty());
    assert_eq!(stats.slo_requests.load(Ordering::Relaxed), 1);
    assert_eq!(stats.slo_headers_ignored.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn only_fleet_calls_bring_budgets_to_the_engine() {
    let s = start(Role::Both, PullFailurePolicy::Recompute).await;
    let body =
        json!({"prompt": "hello world", "max_tokens": 3, "temperature": 0, "ignore_eos": true});
    let stats = &s.engine.stats;
    // A client's tight budget, with an x-request-id but no valid tag: served plainly, its header ignored.
    let client = [
        ("x-request-id", "c-1".to_string()),
        (FLEET_AUTH_HEADER, fleet_key().request_tag("other")),
        (SLO_HEADER, tight_slo()),
    ];
    let (st, _, text) = send(
        s.addr,
        Method::POST,
        "/v1/completions",
        &client,
        Some(body.clone()),
    )
    .await;
    assert_eq!(st, 200, "{text}");
    assert_eq!(stats.slo_headers_ignored.load(Ordering::Relaxed), 1);
    assert_eq!(stats.slo_requests.load(Ordering::Relaxed), 0);
    // The fleet's: honoured.
    let fleet = [
        ("x-request-id", "g-1".to_string()),
        (FLEET_AUTH_HEADER, fleet_key().request_tag("g-1")),
        (SLO_HEADER, tight_slo()),
    ];
    let (st, _, text) = send(s.addr, Method::POST, "/v1/completions", &fleet, Some(body)).await;
    assert_eq!(st, 200, "{text}");
    assert_eq!(stats.slo_requests.load(Ordering::Relaxed), 1);
    assert_eq!(stats.slo_headers_ignored.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn load_is_reported_on_get_load_and_every_generation_response() {
    let s = start(Role::Both, PullFailurePolicy::Recompute).await;
    let (st, head, text) = send(s.addr, Method::GET, "/load", &[], None).await;
    assert_eq!(st, 200);
    assert_eq!(head["content-type"], "application/json");
    let idle: EngineReport = serde_json::from_str(&text).unwrap();
    sane(&idle);
    assert_eq!((idle.running, idle.waiting, idle.context_tokens), (0, 0, 0));

    let body =
        json!({"prompt": "hello world", "max_tokens": 3, "temperature": 0, "ignore_eos": true});
    let (st, head, _) = send(
        s.addr,
        Method::POST,
        "/v1/completions",
        &[],
        Some(body.clone()),
    )
    .await;
    assert_eq!(st, 200);
    sane(&report(&head));
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let (st, head, _) = send(s.addr, Method::POST, "/v1/completions", &[], Some(stream)).await;
    assert_eq!(st, 200);
    // Taken when the head goes out (after the first token): at most this request is in the engine.
    let r = report(&head);
    sane(&r);
    assert!(r.running + r.waiting <= 1, "{r:?}");
    let chat = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let (st, head, _) = send(
        s.addr,
        Method::POST,
        "/v1/chat/completions",
        &[],
        Some(chat),
    )
    .await;
    assert_eq!(st, 200);
    sane(&report(&head));
    // A refusal tells the load too.
    let (st, head, _) = send(
        s.addr,
        Method::POST,
        "/v1/completions",
        &[],
        Some(json!({"prompt": "x", "n": 2})),
    )
    .await;
    assert_eq!(st, 400);
    sane(&report(&head));
    assert_eq!(send(s.addr, Method::POST, "/load", &[], None).await.0, 405);
}
