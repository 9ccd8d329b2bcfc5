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

/// A resolver whose answer the test sets: `--scale` up and down, or DNS down.
#[derive(Debug)]
struct FakeDns(std::sync::Mutex<Result<Vec<std::net::SocketAddr>, String>>);

impl FakeDns {
    fn answer(&self, a: Result<Vec<std::net::SocketAddr>, String>) {
        *self.0.lock().unwrap() = a;
    }
}

impl baton_gateway::discovery::Resolve for FakeDns {
    fn resolve<'a>(
        &'a self,
        _host: &'a str,
        _port: u16,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = std::io::Result<Vec<std::net::SocketAddr>>>
                + Send
                + 'a,
        >,
    > {
        let a = self.0.lock().unwrap().clone();
        Box::pin(async move { a.map_err(std::io::Error::other) })
    }
}

async fn healthy(base: &str, url: &str) -> bool {
    listed(base, url)
        .await
        .is_some_and(|w| w["is_healthy"] == true && w["status"] == "active")
}

#[tokio::test]
async fn dns_names_scale_the_pool_up_and_down_under_load() {
    let (a, b, c) = (
        slow_openai().await,
        slow_openai().await,
        slow_openai().await,
    );
    let mut cfg = aggregated(&[]);
    cfg.policy = PolicyKind::RoundRobin;
    let gw = start(cfg).await;
    let base = gw.url();
    let dns = Arc::new(FakeDns(std::sync::Mutex::new(Ok(vec![a.addr()]))));
    let watcher = baton_gateway::discovery::spawn_dns_with(
        &gw.state,
        baton_gateway::worker::Role::Unified,
        "engine:8000",
        dns.clone(),
        Duration::from_millis(50),
    );
    let a_url = a.url();
    assert!(wait_for_within(WAIT, || healthy(&base, &a_url)).await);
    assert_eq!(listed(&base, &a.url()).await.unwrap()["source"], "dns");
    let load = Load::start(base.clone(), 6, CHAT);
    load.advance(10).await;

    // --scale engine=3
    dns.answer(Ok(vec![a.addr(), b.addr(), c.addr()]));
    for m in [&b, &c] {
        m.wait_until(|s| s.completed >= 3, WAIT)
            .await
            .expect("new replica serves");
    }
    // --scale engine=2 while c has requests in flight: they finish, c gets no more.
    c.wait_until(|s| s.active > 0, WAIT).await.expect("c busy");
    dns.answer(Ok(vec![a.addr(), b.addr()]));
    await_gone(&base, &c.url()).await;
    let drained = c.stats();
    assert_eq!((drained.failed, drained.cancelled), (0, 0), "{drained:?}");
    assert_eq!(drained.completed, drained.requests);
    load.advance(20).await;
    assert_eq!(
        c.stats().requests,
        drained.requests,
        "a vanished address got a request"
    );

    // The name stops resolving: the last set stays.
    dns.answer(Err("SERVFAIL".into()));
    load.advance(20).await;
    assert!(healthy(&base, &a.url()).await && healthy(&base, &b.url()).await);

    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} lost of {ok}: {:?}",
        failures.len(),
        failures.first()
    );
    watcher.abort();
    gw.shutdown().await;
}

#[tokio::test]
async fn a_dns_name_from_the_config_is_resolved_by_the_system() {
    // `localhost` resolves to 127.0.0.1 here (and maybe ::1 too, where nothing
    // listens: that worker never passes its health check and gets nothing).
    let a = MockEngine::new(Flavor::OpenAi).spawn().await;
    let mut cfg = config();
    cfg.discovery.both_dns = Some(format!("localhost:{}", a.addr().port()));
    cfg.discovery.interval_ms = 50;
    let gw = start(cfg).await;
    assert_eq!(gw.state.mode.label(), "aggregated");
    let base = gw.url();
    let a_url = a.url();
    assert!(wait_for_within(WAIT, || healthy(&base, &a_url)).await);
    let r = post(&base, "/v1/chat/completions", CHAT).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(a.stats().completed, 1);
    gw.shutdown().await;
}

/// Replaces the file's content (a new size, so the change shows whatever the mtime granularity).
fn write_workers(path: &std::path::Path, entries: &[(&str, &str)], pad: usize) {
    let mut s = format!("# generation {}\n", "x".repeat(pad));
    for (url, role) in entries {
        s.push_str(&format!(
            "[[workers]]\nurl = \"{url}\"\nrole = \"{role}\"\n"
        ));
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, s).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn a_watched_workers_file_adds_and_drains_pd_workers() {
    let p = VllmPair::spawn(
        MockEngine::new(Flavor::VllmPrefill).token_delay(Duration::from_millis(5)),
        MockEngine::new(Flavor::VllmDecode).token_delay(Duration::from_millis(10)),
    )
    .await;
    let p2 = MockEngine::new(Flavor::VllmPrefill)
        .kv_registry(p.kv.clone())
        .spawn()
        .await;
    let dir = std::env::temp_dir().join(format!("baton-workers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("workers.toml");
    let (pre, dec, pre2) = (p.prefill.url(), p.decode.url(), p2.url());
    write_workers(&path, &[(&pre, "prefill"), (&dec, "decode")], 1);
    // Every worker comes from the file: the PD protocol is named.
    let mut cfg = config();
    cfg.pd_protocol = Some(baton_gateway::config::PdProtocol::Vllm);
    cfg.policy = PolicyKind::RoundRobin;
    cfg.discovery.file = Some(path.clone());
    cfg.discovery.interval_ms = 50;
    let gw = start(cfg).await;
    let base = gw.url();
    assert_eq!(gw.state.mode.label(), "pd_vllm");
    assert!(
        wait_for_within(WAIT, || async {
            healthy(&base, &pre).await && healthy(&base, &dec).await
        })
        .await
    );
    assert_eq!(listed(&base, &pre).await.unwrap()["source"], "file");
    let load = Load::start(base.clone(), 4, CHAT);
    load.advance(5).await;

    write_workers(
        &path,
        &[(&pre, "prefill"), (&pre2, "prefill"), (&dec, "decode")],
        2,
    );
    p2.wait_until(|s| s.completed >= 3, WAIT)
        .await
        .expect("added from the file");
    write_workers(&path, &[(&pre2, "prefill"), (&dec, "decode")], 3);
    await_gone(&base, &pre).await;
    let before = p.prefill.stats().requests;
    load.advance(20).await;
    assert_eq!(
        p.prefill.stats().requests,
        before,
        "a dropped worker got a request"
    );

    // Half-written or broken: the last good set stays.
    std::fs::write(&path, "[[workers]]\nurl = ").unwrap();
    load.advance(20).await;
    assert!(healthy(&base, &pre2).await && healthy(&base, &dec).await);

    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} lost of {ok}: {:?}",
        failures.len(),
        failures.first()
    );
    assert_eq!(p.decode.stats().rejected_params, 0);
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
