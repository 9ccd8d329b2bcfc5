//! Workers that come and go without a restart: the worker API (`/workers`),
//! draining on removal, DNS discovery and the watched workers file.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baton_e2e::mock::{Flavor, MockEngine, MockHandle, VllmPair};
use baton_gateway::auth::Secret;
use baton_policies::PolicyKind;
use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

async fn send(
    method: Method,
    base: &str,
    path: &str,
    body: Option<Value>,
    key: Option<&str>,
) -> Reply {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    let body = body.map(|v| Bytes::from(v.to_string())).unwrap_or_default();
    let resp = client()
        .request(b.body(Full::new(body)).unwrap())
        .await
        .expect("gateway reachable");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

fn escape(url: &str) -> String {
    url.replace(':', "%3A").replace('/', "%2F")
}

/// The gateway's view of one worker (`GET /workers`), if listed.
async fn listed(base: &str, url: &str) -> Option<Value> {
    let r = send(Method::GET, base, "/workers", None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["url"] == url)
        .cloned()
}

/// Clients sending requests back to back until stopped; every answer is checked.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(base: String, clients: usize, body: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, ok, base) = (stop.clone(), ok.clone(), base.clone());
                tokio::spawn(async move {
                    let mut failures = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let r = post(&base, "/v1/chat/completions", body).await;
                        let v: Value = serde_json::from_slice(&r.body).unwrap_or_default();
                        let text = v["choices"][0]["message"]["content"].clone();
                        if r.status == StatusCode::OK && text == expected_text(8).as_str() {
                            ok.fetch_add(1, Ordering::SeqCst);
                        } else {
                            failures.push(format!("{}: {}", r.status, r.text()));
                        }
                    }
                    failures
                })
            })
            .collect();
        Self { stop, ok, tasks }
    }

    /// Waits until `n` more requests have succeeded (a deadline, no count of tries).
    async fn advance(&self, n: u64) {
        let target = self.ok.load(Ordering::SeqCst) + n;
        assert!(
            wait_for_within(WAIT, || async { self.ok.load(Ordering::SeqCst) >= target }).await,
            "load stalled at {} of {target}",
            self.ok.load(Ordering::SeqCst)
        );
    }

    /// Stops the clients; returns (succeeded, failures).
    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let mut failures = Vec::new();
        for t in self.tasks {
            failures.extend(t.await.unwrap());
        }
        (self.ok.load(Ordering::SeqCst), failures)
    }
}

async fn slow_openai() -> MockHandle {
    MockEngine::new(Flavor::OpenAi)
        .token_delay(Duration::from_millis(15))
        .spawn()
        .await
}

/// Waits until the drained worker has left `GET /workers` entirely.
async fn await_gone(base: &str, url: &str) {
    assert!(
        wait_for_within(WAIT, || async { listed(base, url).await.is_none() }).await,
        "{url} still listed: {:?}",
        listed(base, url).await
    );
}

#[tokio::test]
async fn added_worker_takes_load_and_removed_one_drains_with_nothing_lost() {
    let a = slow_openai().await;
    let b = slow_openai().await;
    let mut cfg = aggregated(&[a.url()]);
    cfg.policy = PolicyKind::RoundRobin;
    let gw = start(cfg).await;
    let base = gw.url();
    let load = Load::start(base.clone(), 6, CHAT);
    load.advance(10).await;

    // Added under load: 202 in SGLang's shape, listed, then served once healthy.
    let r = send(
        Method::POST,
        &base,
        "/workers",
        Some(json!({"url": b.url(), "worker_type": "regular", "model_id": "mock-model"})),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (v["status"].as_str(), v["worker_id"].as_str()),
        (Some("accepted"), Some(b.url().as_str()))
    );
    assert_eq!(
        r.headers["location"],
        format!("/workers/{}", escape(&b.url()))
    );
    let w = listed(&base, &b.url()).await.expect("listed");
    assert_eq!(
        (w["source"].as_str(), w["role"].as_str()),
        (Some("api"), Some("both"))
    );
    b.wait_until(|s| s.completed >= 5, WAIT)
        .await
        .expect("the new worker serves");

    // Removed with requests in flight on it: they finish, none lost.
    b.wait_until(|s| s.active > 0, WAIT).await.expect("b busy");
    let r = send(
        Method::DELETE,
        &base,
        &format!("/workers/{}", escape(&b.url())),
        None,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    await_gone(&base, &b.url()).await;
    // Drained: everything it took was answered, and from now on it gets nothing.
    let drained = b.stats();
    assert_eq!(drained.active, 0);
    assert_eq!((drained.failed, drained.cancelled), (0, 0), "{drained:?}");
    assert_eq!(drained.completed, drained.requests);
    load.advance(30).await;
    assert_eq!(
        b.stats().requests,
        drained.requests,
        "a removed worker got a request"
    );

    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} lost of {}: {:?}",
        failures.len(),
        ok,
        &failures[..failures.len().min(3)]
    );
    assert_eq!(a.stats().failed + b.stats().failed, 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn pd_pools_grow_and_shrink_over_the_api() {
    let p = VllmPair::spawn(
        MockEngine::new(Flavor::VllmPrefill).token_delay(Duration::from_millis(5)),
        MockEngine::new(Flavor::VllmDecode).token_delay(Duration::from_millis(10)),
    )
    .await;
    let p2 = MockEngine::new(Flavor::VllmPrefill)
        .kv_registry(p.kv.clone())
        .spawn()
        .await;
    let mut cfg = pd(&[(p.prefill.url(), None)], &[p.decode.url()]);
    cfg.policy = PolicyKind::RoundRobin;
    let gw = start(cfg).await;
    let base = gw.url();
    let load = Load::start(base.clone(), 4, CHAT);
    load.advance(5).await;

    // Aggregated roles are refused in PD mode.
    let r = send(
        Method::POST,
        &base,
        "/workers",
        Some(json!({"url": p2.url(), "role": "both"})),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(r.json()["error"]["param"], "role");
    let r = send(
        Method::POST,
        &base,
        "/workers",
        Some(json!({"url": p2.url(), "role": "prefill"})),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    p2.wait_until(|s| s.completed >= 3, WAIT)
        .await
        .expect("new prefill serves");

    // The original prefill leaves; the new one carries the pool.
    let r = send(
        Method::DELETE,
        &base,
        &format!("/workers/{}", escape(&p.prefill.url())),
        None,
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    await_gone(&base, &p.prefill.url()).await;
    let before = p.prefill.stats().requests;
    load.advance(20).await;
    assert_eq!(p.prefill.stats().requests, before);
    let r = get(&base, "/readiness").await;
    assert_eq!(r.json()["pools"][0]["workers"], 1);

    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} lost of {ok}: {:?}",
        failures.len(),
        failures.first()
    );
    assert_eq!(p.decode.stats().rejected_params, 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_openai_errors_and_the_admin_key_is_required() {
    let a = MockEngine::new(Flavor::OpenAi).spawn().await;
    let mut cfg = aggregated(&[a.url()]);
    cfg.api_key = Some(Secret::new("sk-client"));
    cfg.admin_api_key = Some(Secret::new("sk-admin"));
    let gw = start(cfg).await;
    let base = gw.url();
    let admin = Some("sk-admin");
    let post_spec = |spec: Value, key: Option<&'static str>| {
        let base = base.clone();
        async move { send(Method::POST, &base, "/workers", Some(spec), key).await }
    };

    for key in [None, Some("sk-client")] {
        let r = post_spec(json!({"url": "http://127.0.0.1:9"}), key).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
        assert_eq!(
            send(Method::GET, &base, "/workers", None, key).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    for (spec, param) in [
        (json!({"url": "localhost:8000"}), "url"),
        (json!({"url": "https://a:1"}), "url"),
        (json!({"url": "http://a:1", "role": "leader"}), "role"),
        (json!({"url": "http://a:1", "role": "decode"}), "role"),
        (
            json!({"url": "http://a:1", "bootstrap_port": 8998}),
            "bootstrap_port",
        ),
        (json!({"role": "both"}), "body"),
    ] {
        let r = post_spec(spec.clone(), admin).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{spec}: {}", r.text());
        let e = &r.json()["error"];
        assert_eq!(
            (e["type"].as_str(), e["param"].as_str()),
            (Some("invalid_request_error"), Some(param)),
            "{spec}"
        );
    }
    let r = send(Method::POST, &base, "/workers", None, admin).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let r = post_spec(json!({"url": format!("{}/", a.url())}), admin).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "worker_exists");

    let r = send(
        Method::DELETE,
        &base,
        "/workers/http%3A%2F%2F127.0.0.1%3A9",
        None,
        admin,
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "worker_not_found");
    let r = send(
        Method::GET,
        &base,
        &format!("/workers/{}", escape(&a.url())),
        None,
        admin,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["source"], "static");
    assert_eq!(
        send(Method::PUT, &base, "/workers", None, admin)
            .await
            .status,
        StatusCode::METHOD_NOT_ALLOWED
    );

    // Unescaped URLs work too; the last worker can go (requests then get 503, not a hang).
    let r = send(
        Method::DELETE,
        &base,
        &format!("/workers/{}", a.url()),
        None,
        admin,
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let r = post_with(
        &base,
        "/v1/chat/completions",
        CHAT,
        &[("authorization", "Bearer sk-client")],
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    let r = send(Method::GET, &base, "/workers", None, admin).await;
    assert_eq!(r.json()["total"], 0);
    gw.shutdown().await;
}
