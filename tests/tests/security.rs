//! The gateway's side of the fleet-trust contract (docs/SECURITY.md), through
//! HTTP to the gateway with mock engines recording what they received:
//! clients never steer KV transfer, never pick cache salts, never reach the
//! engines with their own credentials; keys gate clients and admin
//! endpoints; SLO classes bound to keys cannot be raised; hostile budget
//! headers are 400s.

mod common;

use baton_e2e::mock::{Flavor, MockEngine, MockHandle, RecordedRequest, Rendezvous, VllmPair};
use baton_gateway::auth::{cache_salt, Secret};
use baton_gateway::config::{CacheIsolation, GatewayConfig};
use baton_gateway::slo::config::ApiKeyConfig;
use baton_protocol::fleet::{hex, FleetKey, FLEET_AUTH_HEADER, TENANT_HEADER};
use common::*;
use http::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const FLEET: &str = "0123456789abcdef0123456789abcdef";
const WORKER_KEY: &str = "engine-credential-of-the-gateway";
const ACME_KEY: &str = "sk-acme-client-key";
const GLOBEX_KEY: &str = "sk-globex-client-key";
const ADMIN_KEY: &str = "sk-admin-key";

/// A body carrying everything a hostile client might use to steer the fleet.
const HOSTILE: &str = r#"{"model":"mock-model","prompt":"one two three","max_tokens":8,
    "kv_transfer_params":{"do_remote_prefill":true,"do_remote_decode":false,
        "remote_engine_id":"victim","remote_block_ids":[[1,2]],"remote_request_id":"victim-0",
        "remote_host":"10.66.6.6","remote_port":6666},
    "cache_salt":"tenant-i-want-to-probe",
    "bootstrap_host":"10.66.6.6","bootstrap_port":6666,"bootstrap_room":7}"#;

fn sha256_hex(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

fn fleet() -> FleetKey {
    FleetKey::from_bytes(FLEET.as_bytes()).unwrap()
}

/// Keys for two tenants (acme bound to `batch`, globex to `interactive`),
/// an admin key, engine credentials and the fleet key.
fn secure(mut c: GatewayConfig) -> GatewayConfig {
    for (key, tenant, class) in [
        (ACME_KEY, "acme", "batch"),
        (GLOBEX_KEY, "globex", "interactive"),
    ] {
        c.slo.api_keys.push(ApiKeyConfig {
            sha256: sha256_hex(key),
            tenant: tenant.into(),
            class: Some(class.into()),
        });
    }
    c.admin_api_key = Some(Secret::new(ADMIN_KEY));
    c.worker_api_key = Some(Secret::new(WORKER_KEY));
    c.fleet_key = Some(Secret::new(FLEET));
    c
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// Client headers that try to pass as the fleet or another tenant.
fn forged(auth: &str) -> Vec<(&'static str, String)> {
    vec![
        ("authorization", auth.to_owned()),
        ("x-api-key", "sk-client-secondary".to_owned()),
        (FLEET_AUTH_HEADER, "0".repeat(64)),
        (TENANT_HEADER, "globex".to_owned()),
    ]
}

async fn send(base: &str, path: &str, body: &str, headers: &[(&'static str, String)]) -> Reply {
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    post_with(base, path, body, &h).await
}

/// What every engine call must look like: the gateway's credentials and a
/// fleet tag valid for the call's own x-request-id, none of the client's.
fn assert_fleet_call(seen: &RecordedRequest, tenant: &str) {
    let h = &seen.headers;
    assert_eq!(
        h["authorization"],
        bearer(WORKER_KEY).as_str(),
        "gateway's credential, not the client's"
    );
    assert!(h.get("x-api-key").is_none(), "client x-api-key forwarded");
    let id = h["x-request-id"].to_str().unwrap();
    let tag = h[FLEET_AUTH_HEADER].to_str().unwrap();
    assert!(
        fleet().verify_request(id, tag),
        "fleet tag must verify for x-request-id {id}"
    );
    assert_eq!(
        h.get_all(FLEET_AUTH_HEADER).iter().count(),
        1,
        "client's forged tag forwarded"
    );
    assert_eq!(h[TENANT_HEADER], tenant);
    assert_eq!(h.get_all(TENANT_HEADER).iter().count(), 1);
    for field in ["bootstrap_host", "bootstrap_port", "bootstrap_room"] {
        if seen.body.get(field).is_some() {
            assert_ne!(seen.body[field], json!("10.66.6.6"), "{field}");
            assert_ne!(seen.body[field], json!(6666), "{field}");
            assert_ne!(seen.body[field], json!(7), "{field}");
        }
    }
    assert_eq!(
        seen.body["cache_salt"],
        json!(cache_salt(&fleet(), tenant)),
        "the tenant's salt, not the client's"
    );
}

#[tokio::test]
async fn aggregated_engine_sees_only_the_gateways_transfer_fields_credentials_and_salt() {
    let engine = MockEngine::new(Flavor::OpenAi).spawn().await;
    let gw = start(secure(aggregated(&[engine.url()]))).await;
    for (key, tenant) in [(ACME_KEY, "acme"), (GLOBEX_KEY, "globex")] {
        for body in [
            HOSTILE.to_owned(),
            HOSTILE.replace("\"max_tokens\":8", "\"max_tokens\":8,\"stream\":true"),
        ] {
            let r = send(&gw.url(), "/v1/completions", &body, &forged(&bearer(key))).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            let seen = engine.requests().pop().unwrap();
            assert!(
                seen.body.get("kv_transfer_params").is_none(),
                "{}",
                seen.body
            );
            assert!(seen.body.get("bootstrap_host").is_none());
            assert_fleet_call(&seen, tenant);
        }
    }
    let salts: Vec<Value> = engine
        .requests()
        .iter()
        .map(|r| r.body["cache_salt"].clone())
        .collect();
    assert_eq!(salts[0], salts[1], "one tenant, one salt");
    assert_ne!(salts[0], salts[2], "tenants never share a salt");
    // A clean body (the fast path forwarding the client's bytes) is salted too.
    let r = send(
        &gw.url(),
        "/v1/chat/completions",
        CHAT,
        &[("authorization", bearer(ACME_KEY))],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        engine.requests().pop().unwrap().body["cache_salt"],
        salts[0]
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn shared_cache_isolation_sends_no_salt_and_no_fleet_key_sends_no_tag() {
    let engine = MockEngine::new(Flavor::OpenAi).spawn().await;
    let mut cfg = aggregated(&[engine.url()]);
    cfg.cache_isolation = CacheIsolation::Shared;
    let gw = start(cfg).await;
    let r = send(
        &gw.url(),
        "/v1/completions",
        HOSTILE,
        &forged("Bearer sk-whatever"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let seen = engine.requests().pop().unwrap();
    assert!(
        seen.body.get("cache_salt").is_none(),
        "client salt removed, none set"
    );
    assert!(seen.body.get("kv_transfer_params").is_none());
    // No fleet key, no worker key: nothing of the client's passes instead.
    for h in [
        "authorization",
        "x-api-key",
        FLEET_AUTH_HEADER,
        TENANT_HEADER,
    ] {
        assert!(seen.headers.get(h).is_none(), "{h} forwarded");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn without_a_fleet_key_salts_still_isolate_tenants() {
    let engine = MockEngine::new(Flavor::OpenAi).spawn().await;
    let mut cfg = secure(aggregated(&[engine.url()]));
    cfg.fleet_key = None;
    let gw = start(cfg).await;
    for key in [ACME_KEY, GLOBEX_KEY, ACME_KEY] {
        let r = send(
            &gw.url(),
            "/v1/completions",
            COMPLETION,
            &[("authorization", bearer(key))],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let salts: Vec<String> = engine
        .requests()
        .iter()
        .map(|r| r.body["cache_salt"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(salts[0].len(), 32);
    assert_eq!(salts[0], salts[2]);
    assert_ne!(salts[0], salts[1]);
    assert_ne!(
        salts[0],
        cache_salt(&fleet(), "acme"),
        "a per-process secret, not a guessable one"
    );
    assert!(engine.requests()[0]
        .headers
        .get(FLEET_AUTH_HEADER)
        .is_none());
    gw.shutdown().await;
}

#[tokio::test]
async fn vllm_pd_legs_carry_only_the_gateways_params_and_a_fresh_128_bit_transfer_id() {
    let VllmPair {
        prefill: p,
        decode: d,
        kv,
    } = VllmPair::plain().await;
    let gw = start(secure(pd(&[(p.url(), None)], &[d.url()]))).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = send(
            &gw.url(),
            "/v1/completions",
            HOSTILE,
            &forged(&bearer(GLOBEX_KEY)),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert!(r.json().get("kv_transfer_params").is_none());
        let pre = p.requests().pop().unwrap();
        let dec = d.requests().pop().unwrap();
        assert_eq!(pre.body["kv_transfer_params"]["do_remote_decode"], true);
        assert!(
            pre.body["kv_transfer_params"]["remote_host"].is_null(),
            "client's host reached prefill"
        );
        // The decode mock accepts only params its prefill issued.
        assert_ne!(dec.body["kv_transfer_params"]["remote_host"], "10.66.6.6");
        assert!(dec.body["kv_transfer_params"]["x_mock_nonce"].is_string());
        assert_fleet_call(&pre, "globex");
        assert_fleet_call(&dec, "globex");
        let id = pre.headers["x-request-id"].to_str().unwrap().to_owned();
        let random = id.strip_prefix("baton-").expect("gateway transfer id");
        assert!(
            random.len() >= 32 && random.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}: >= 128 random bits"
        );
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);
    assert_eq!(d.stats().rejected_params, 0);
    assert_eq!((kv.issued(), kv.pulled()), (2, 2));
    gw.shutdown().await;
}

#[tokio::test]
async fn sglang_pd_bootstrap_fields_are_the_gateways() {
    let rv = Rendezvous::default();
    let boot = 8998;
    let p: MockHandle = MockEngine::new(Flavor::SglangPrefill {
        bootstrap_port: boot,
    })
    .rendezvous(rv.clone())
    .spawn()
    .await;
    let d = MockEngine::new(Flavor::SglangDecode)
        .rendezvous(rv.clone())
        .spawn()
        .await;
    let gw = start(secure(pd(&[(p.url(), Some(boot))], &[d.url()]))).await;
    let r = send(
        &gw.url(),
        "/v1/completions",
        HOSTILE,
        &forged(&bearer(ACME_KEY)),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let (pre, dec) = (p.requests().pop().unwrap(), d.requests().pop().unwrap());
    for leg in [&pre, &dec] {
        assert_eq!(leg.body["bootstrap_host"], "127.0.0.1");
        assert_eq!(leg.body["bootstrap_port"], boot);
        assert!(leg.body.get("kv_transfer_params").is_none());
        assert_fleet_call(leg, "acme");
    }
    assert_eq!(pre.body["bootstrap_room"], dec.body["bootstrap_room"]);
    gw.shutdown().await;
}

#[tokio::test]
async fn replies_never_reveal_the_engines_kv_endpoint() {
    let leak = json!({"do_remote_prefill": true, "remote_engine_id": "engine-7",
        "remote_host": "10.1.2.3", "remote_port": 5601, "remote_block_ids": [[1]]});
    let engine = MockEngine::new(Flavor::OpenAi)
        .reply_field("kv_transfer_params", leak)
        .spawn()
        .await;
    let gw = start(aggregated(&[engine.url()])).await;
    for (path, body) in [
        ("/v1/completions", COMPLETION),
        ("/v1/chat/completions", CHAT),
        ("/v1/completions", COMPLETION_STREAM),
    ] {
        let r = post(&gw.url(), path, body).await;
        assert_eq!(r.status, StatusCode::OK);
        let text = r.text();
        for secret in ["kv_transfer_params", "10.1.2.3", "5601", "engine-7"] {
            assert!(
                !text.contains(secret),
                "{path}: reply reveals {secret}: {text}"
            );
        }
    }
    // The rest of the answer is intact.
    assert_eq!(
        post(&gw.url(), "/v1/completions", COMPLETION).await.json()["choices"][0]["text"],
        expected_text(8)
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn configured_keys_are_required_and_failures_are_openai_401s() {
    let engine = MockEngine::new(Flavor::OpenAi).spawn().await;
    let mut cfg = aggregated(&[engine.url()]);
    cfg.api_key = Some(Secret::new("sk-router"));
    let gw = start(cfg).await;
    for headers in [
        vec![],
        vec![("authorization", "Bearer sk-wrong")],
        vec![("authorization", "Basic c2stcm91dGVy")],
        vec![("x-api-key", "sk-wrong")],
    ] {
        let r = post_with(&gw.url(), "/v1/completions", COMPLETION, &headers).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert_eq!(r.headers["www-authenticate"], "Bearer");
        let e = &r.json()["error"];
        assert_eq!(e["type"], "invalid_request_error");
        assert_eq!(e["code"], "invalid_api_key");
        assert!(
            e["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty() && !m.contains("sk-")),
            "{e}"
        );
        let r = get_with(&gw.url(), "/v1/models", &headers).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        engine.stats().requests,
        0,
        "nothing unauthenticated reached an engine"
    );
    let r = post_with(
        &gw.url(),
        "/v1/completions",
        COMPLETION,
        &[("authorization", "Bearer sk-router")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = post_with(
        &gw.url(),
        "/v1/completions",
        COMPLETION,
        &[("x-api-key", "sk-router")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // sglang-router: engines inherit the router's key when no worker key is set.
    assert_eq!(
        engine.requests()[0].headers["authorization"],
        "Bearer sk-router"
    );
    assert_eq!(
        get(&gw.url(), "/health").await.status,
        StatusCode::OK,
        "probes stay open"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_keys_class_cannot_be_raised_and_explicit_budgets_are_clamped() {
    let engine = MockEngine::new(Flavor::OpenAi).spawn().await;
    let mut cfg = secure(aggregated(&[engine.url()]));
    cfg.slo.routing = true;
    cfg.slo.policy.admission = baton_policies::slo::AdmissionMode::Reject;
    // ~10 tokens/s: a 400-word prompt is predicted to miss any TTFT target,
    // a short one takes ~1 s (meets 2 s, misses 500 ms).
    cfg.slo.prior_prefill_tokens_per_s = 10.0;
    cfg.slo.api_keys.push(ApiKeyConfig {
        sha256: sha256_hex("sk-initech"),
        tenant: "initech".into(),
        class: Some("standard".into()),
    });
    let gw = start(cfg).await;
    let long = format!(r#"{{"prompt":"{}","max_tokens":4}}"#, "word ".repeat(400));
    // acme is bound to batch (no targets): asking for interactive changes nothing.
    let h = [
        ("authorization", bearer(ACME_KEY)),
        ("x-slo-class", "interactive".into()),
    ];
    let r = send(&gw.url(), "/v1/completions", &long, &h).await;
    assert_eq!(r.status, StatusCode::OK, "stays batch: {}", r.text());
    // globex (interactive) may loosen to batch.
    let h = [
        ("authorization", bearer(GLOBEX_KEY)),
        ("x-slo-class", "batch".into()),
    ];
    assert_eq!(
        send(&gw.url(), "/v1/completions", &long, &h).await.status,
        StatusCode::OK
    );
    // initech (standard, 2 s): a 1 ms TTFT budget is clamped to 2 s, admitted.
    let short = r#"{"prompt":"one two three four five six seven eight nine ten","max_tokens":200}"#;
    let h = [
        ("authorization", "Bearer sk-initech".to_owned()),
        ("x-slo-ttft-ms", "1".into()),
    ];
    assert_eq!(
        send(&gw.url(), "/v1/completions", short, &h).await.status,
        StatusCode::OK
    );
    let h = [
        ("authorization", "Bearer sk-initech".to_owned()),
        ("x-slo-class", "interactive".into()),
    ];
    assert_eq!(
        send(&gw.url(), "/v1/completions", short, &h).await.status,
        StatusCode::OK,
        "stays standard"
    );
    let report = get_with(
        &gw.url(),
        "/v1/slo",
        &[("authorization", &bearer(ADMIN_KEY))],
    )
    .await
    .json();
    let rows: Vec<(String, String, u64)> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["class"].as_str().unwrap().into(),
                r["tenant"].as_str().unwrap().into(),
                r["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        rows.contains(&("batch".into(), "acme".into(), 1)),
        "{rows:?}"
    );
    assert!(
        rows.contains(&("batch".into(), "globex".into(), 1)),
        "{rows:?}"
    );
    assert!(
        rows.contains(&("standard".into(), "initech".into(), 2)),
        "{rows:?}"
    );
    assert!(!rows.iter().any(|r| r.0 == "interactive"), "{rows:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn admin_endpoints_need_the_admin_key_on_the_main_port_and_are_open_on_the_admin_listener() {
    let engine = MockEngine::new(Flavor::OpenAi).spawn().await;
    let mut cfg = secure(aggregated(&[engine.url()]));
    cfg.prometheus_port = Some(0);
    let gw = start(cfg.clone()).await;
    let admin = format!("http://{}", gw.metrics_addr.unwrap());
    for path in ["/metrics", "/v1/slo"] {
        for h in [
            vec![],
            vec![("authorization", format!("Bearer {ACME_KEY}"))],
            vec![("authorization", "Bearer nope".into())],
        ] {
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let r = get_with(&gw.url(), path, &h).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path} {h:?}");
            assert!(!r.text().contains("acme"), "no tenant names before auth");
        }
        let r = get_with(&gw.url(), path, &[("authorization", &bearer(ADMIN_KEY))]).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(
            get(&admin, path).await.status,
            StatusCode::OK,
            "admin listener {path}"
        );
    }
    // The admin listener serves nothing else.
    let r = post_with(
        &admin,
        "/v1/completions",
        COMPLETION,
        &[("authorization", &bearer(ACME_KEY))],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    gw.shutdown().await;

    // Client keys but no admin key: closed on the main port.
    cfg.admin_api_key = None;
    cfg.prometheus_port = None;
    let gw = start(cfg).await;
    let r = get_with(
        &gw.url(),
        "/metrics",
        &[("authorization", &bearer(ACME_KEY))],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--prometheus-port"));
    gw.shutdown().await;
}

#[tokio::test]
async fn hostile_budget_headers_are_400s_naming_the_header_not_panics() {
    let engine = MockEngine::new(Flavor::OpenAi).spawn().await;
    let mut cfg = aggregated(&[engine.url()]);
    cfg.slo.routing = true;
    cfg.slo.policy.admission = baton_policies::slo::AdmissionMode::Queue;
    let gw = start(cfg).await;
    for value in [
        "1e300",
        "1e400",
        "NaN",
        "inf",
        "-inf",
        "-1",
        "0",
        "18446744073709551616000",
        "1e-400",
        "86400001",
    ] {
        for name in ["x-slo-ttft-ms", "x-slo-tpot-ms"] {
            let r = post_with(&gw.url(), "/v1/completions", COMPLETION, &[(name, value)]).await;
            assert_eq!(
                r.status,
                StatusCode::BAD_REQUEST,
                "{name}: {value}: {}",
                r.text()
            );
            assert_eq!(r.json()["error"]["param"], name);
        }
    }
    // The largest accepted budget is served (no overflow turning it into a deadline).
    let r = post_with(
        &gw.url(),
        "/v1/completions",
        COMPLETION,
        &[("x-slo-ttft-ms", "86400000")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(engine.stats().requests, 1);
    gw.shutdown().await;
}

/// Every log line of a gateway serving good, bad and admin keys (and a
/// failing engine, so errors are logged too) is free of keys.
#[tokio::test]
async fn keys_never_appear_in_logs() {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    // The test runtime is single-threaded: the gateway's tasks log here too.
    let _guard = tracing::subscriber::set_default(subscriber);
    let VllmPair {
        prefill: p,
        decode: d,
        ..
    } = VllmPair::plain().await;
    let mut cfg = secure(pd(&[(p.url(), None)], &[d.url()]));
    cfg.api_key = Some(Secret::new("sk-router-key"));
    let gw = start(cfg).await;
    for key in [ACME_KEY, "sk-router-key", "sk-wrong-key", ADMIN_KEY] {
        let _ = send(
            &gw.url(),
            "/v1/completions",
            COMPLETION,
            &forged(&bearer(key)),
        )
        .await;
        let _ = get_with(&gw.url(), "/metrics", &[("authorization", &bearer(key))]).await;
    }
    d.shutdown();
    let r = send(
        &gw.url(),
        "/v1/completions",
        COMPLETION,
        &forged(&bearer(ACME_KEY)),
    )
    .await;
    assert!(r.status.is_server_error(), "{}", r.status);
    gw.shutdown().await;
    let logs = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("request failed"),
        "logs were captured: {logs}"
    );
    for secret in [
        ACME_KEY,
        "sk-router-key",
        "sk-wrong-key",
        ADMIN_KEY,
        WORKER_KEY,
        FLEET,
    ] {
        assert!(!logs.contains(secret), "{secret} logged");
    }
}
