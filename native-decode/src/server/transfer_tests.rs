//! KV transfer through the HTTP API on the tiny model: only fleet-authenticated calls steer it, and leases
//! neither outgrow their bounds nor keep other requests out.

use crate::test_support::wait_for;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use super::tests::{fleet_key, post, start};
use super::*;
use crate::chat_template::CHATML_FALLBACK;
use crate::engine::{EngineConfig, EngineHandle};
use crate::transfer::tcp::{self, TcpPuller};

/// POSTs as a gateway of the fleet: `x-request-id`, its fleet-auth tag, and the tenant.
async fn post_fleet(addr: SocketAddr, body: Value, request_id: &str, tenant: &str) -> (u16, Value) {
    let key = fleet_key();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}/v1/completions"))
        .header("content-type", "application/json")
        .header("x-request-id", request_id)
        .header(
            baton_protocol::fleet::FLEET_AUTH_HEADER,
            key.request_tag(request_id),
        )
        .header(baton_protocol::fleet::TENANT_HEADER, tenant)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn remote_decode() -> Value {
    json!({"do_remote_decode": true, "do_remote_prefill": false, "remote_engine_id": null,
           "remote_block_ids": null, "remote_host": null, "remote_port": null})
}

#[tokio::test]
async fn pd_pull_gives_the_same_tokens_and_failed_pull_recomputes_or_errors() {
    let prefill = start(Role::Prefill, PullFailurePolicy::Recompute).await;
    let decode = start(Role::Decode, PullFailurePolicy::Recompute).await;
    let strict = start(Role::Decode, PullFailurePolicy::Error).await;
    let prompt = "hello world hello world hello";
    let base = json!({"prompt": prompt, "max_tokens": 8, "temperature": 0, "ignore_eos": true});
    let (_, plain) = post(decode.addr, "/v1/completions", base.clone()).await;

    let mut pre = base.clone();
    pre["max_tokens"] = json!(1);
    pre["kv_transfer_params"] = remote_decode();
    let (st, pre_resp) = post_fleet(prefill.addr, pre, "pd-1", "t").await;
    assert_eq!(st, 200, "{pre_resp}");
    let params = pre_resp["kv_transfer_params"].clone();
    assert_eq!(params["do_remote_prefill"], json!(true));
    assert_eq!(params["remote_num_tokens"], plain["usage"]["prompt_tokens"]);
    // The transfer id is 128 random bits, nothing derived from the request id.
    let id = params["remote_request_id"].as_str().unwrap();
    assert!(
        id.len() == 32 && id.bytes().all(|c| c.is_ascii_hexdigit()) && !id.contains("pd-1"),
        "{id}"
    );
    assert!(
        prefill.engine.stats.kv_usage() > 0.0,
        "prefill holds the blocks"
    );

    let mut dec = base.clone();
    dec["kv_transfer_params"] = params.clone();
    let (st, dec_resp) = post_fleet(decode.addr, dec.clone(), "pd-2", "t").await;
    assert_eq!(st, 200);
    assert_eq!(dec_resp["choices"][0]["text"], plain["choices"][0]["text"]);
    let stats = &decode.engine.stats;
    assert_eq!(stats.kv_pulls.load(Ordering::Relaxed), 1);
    // Pulled blocks are freed on the prefill side (published after the scheduler's next pass).
    wait_for("the pulled blocks to be freed", || {
        prefill.engine.stats.kv_usage() == 0.0
    })
    .await;

    // The same params again: nothing to pull. Recompute policy: still served, counted.
    let (st, again) = post_fleet(decode.addr, dec.clone(), "pd-3", "t").await;
    assert_eq!(st, 200);
    assert_eq!(again["choices"][0]["text"], plain["choices"][0]["text"]);
    assert_eq!(stats.kv_pull_recomputes.load(Ordering::Relaxed), 1);
    // Error policy: the request fails.
    let (st, e) = post_fleet(strict.addr, dec, "pd-4", "t").await;
    assert_eq!(st, 502, "{e}");
    assert_eq!(e["error"]["param"], json!("kv_transfer_params"));
}

#[tokio::test]
async fn client_supplied_transfer_params_are_ignored() {
    let engine = start(Role::Both, PullFailurePolicy::Error).await;
    // A "holder" the client names: it must never see a connection.
    let bait = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    bait.set_nonblocking(true).unwrap();
    let bait_port = bait.local_addr().unwrap().port();
    let pull = json!({"do_remote_prefill": true, "remote_host": "127.0.0.1", "remote_port": bait_port,
                      "remote_request_id": "guess", "remote_block_ids": [[0, 1]], "remote_num_tokens": 6});
    let body = json!({"prompt": "hello world", "max_tokens": 3, "temperature": 0, "ignore_eos": true,
                      "kv_transfer_params": pull});
    // Without fleet auth (none, or a tag for another request id): served plainly, no connection attempted
    // (with the Error policy a pull attempt would have failed the request).
    let (st, plain) = post(engine.addr, "/v1/completions", body.clone()).await;
    assert_eq!(st, 200, "{plain}");
    assert_eq!(plain["usage"]["completion_tokens"], json!(3));
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let forged = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}/v1/completions", engine.addr))
        .header("x-request-id", "mine")
        .header(
            baton_protocol::fleet::FLEET_AUTH_HEADER,
            fleet_key().request_tag("someone-elses-id"),
        )
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    assert_eq!(client.request(forged).await.unwrap().status(), 200);
    // The kernel queues a connection as soon as it is made, so one would be waiting here by now (a non-blocking
    // accept on the std listener asks the kernel itself, not the runtime's readiness).
    match bait.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the engine connected to the client-named host: {other:?}"),
    }
    assert_eq!(
        engine.engine.stats.kv_pull_failures.load(Ordering::Relaxed),
        0
    );

    // A plain `do_remote_decode` gets no lease: nothing kept, nothing advertised.
    let mut keep = body.clone();
    keep["kv_transfer_params"] = remote_decode();
    keep["max_tokens"] = json!(1);
    let (st, resp) = post(engine.addr, "/v1/completions", keep).await;
    assert_eq!(st, 200);
    assert!(resp.get("kv_transfer_params").is_none(), "{resp}");
    wait_for("blocks freed", || engine.engine.stats.kv_usage() == 0.0).await;

    // Control: the same pull from the fleet does connect (and, the bait hanging up, fails under the policy).
    let addr = engine.addr;
    let fleet_call = tokio::spawn(async move { post_fleet(addr, body, "fleet-1", "t").await });
    let bait = tokio::net::TcpListener::from_std(bait).unwrap();
    let (sock, _) = tokio::time::timeout(Duration::from_secs(60), bait.accept())
        .await
        .expect("fleet pull never connected")
        .unwrap();
    drop(sock);
    let (st, e) = fleet_call.await.unwrap();
    assert_eq!(st, 502, "{e}");
}

struct Prefill {
    addr: SocketAddr,
    engine: EngineHandle,
}

/// A prefill engine on the tiny model with its own lease settings.
async fn prefill_with(cfg: EngineConfig) -> Prefill {
    let engine = EngineHandle::spawn(
        crate::engine::tests::tiny_model(),
        crate::tokenizer::tests::tiny(),
        cfg,
    )
    .unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(tcp::serve(l, engine.clone(), fleet_key()));
    let state = Arc::new(ServerState {
        engine: engine.clone(),
        model_name: "tiny".into(),
        template: Some(ChatTemplate::new(CHATML_FALLBACK, "<|im_start|>", "<|im_end|>").unwrap()),
        role: Role::Prefill,
        kv_endpoint: Some(KvEndpoint {
            engine_id: "e".into(),
            host: "127.0.0.1".into(),
            port,
            lease_secs: cfg_lease_secs(),
        }),
        puller: Arc::new(TcpPuller::new(Duration::from_secs(5), Some(fleet_key()))),
        pull_failure: PullFailurePolicy::Recompute,
        limits: Limits::default(),
        fleet_key: Some(fleet_key()),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, state));
    Prefill { addr, engine }
}

fn cfg_lease_secs() -> u64 {
    600
}

fn ids(seed: u32, n: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|i| 3 + (i * 13 + seed * 29) % 250)
        .collect()
}

#[tokio::test]
async fn leases_are_bounded_in_total_and_per_tenant() {
    // 40 blocks of 4 tokens: leases may hold 20 in total and 10 per tenant; each prefill below keeps 5.
    let s = prefill_with(EngineConfig {
        block_size: 4,
        num_blocks: 40,
        kv_lease: Duration::from_secs(cfg_lease_secs()),
        kv_lease_max_share: 0.5,
        kv_lease_tenant_share: 0.25,
        ..Default::default()
    })
    .await;
    let keep = |seed: u32| {
        json!({"prompt": ids(seed, 20), "max_tokens": 1, "temperature": 0, "ignore_eos": true,
               "kv_transfer_params": remote_decode()})
    };
    let granted = |resp: &Value| resp["kv_transfer_params"]["do_remote_prefill"] == json!(true);
    let mut n = 0;
    let mut ask = |tenant: &'static str| {
        n += 1;
        let (addr, body, id) = (s.addr, keep(n), format!("lease-{n}"));
        async move { post_fleet(addr, body, &id, tenant).await }
    };
    let (_, r) = ask("a").await;
    assert!(granted(&r), "{r}");
    let (_, r) = ask("a").await;
    assert!(granted(&r), "{r}");
    // Tenant a is at its 10 blocks: refused, served without transfer params (its decode computes locally).
    let (st, r) = ask("a").await;
    assert_eq!(st, 200);
    assert!(r.get("kv_transfer_params").is_none(), "{r}");
    assert_eq!(r["usage"]["completion_tokens"], json!(1));
    // Tenant b still gets leases, up to the total of 20.
    let (_, r) = ask("b").await;
    assert!(granted(&r), "{r}");
    let (_, r) = ask("b").await;
    assert!(granted(&r), "{r}");
    let (_, r) = ask("c").await;
    assert!(r.get("kv_transfer_params").is_none(), "{r}");
    let stats = &s.engine.stats;
    assert_eq!(stats.kv_leases_refused.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn unpulled_leases_do_not_keep_a_victim_out() {
    // Leases may take the whole pool and live 600 s; a victim that needs their blocks must still be admitted
    // without waiting for them to expire. The grace is zero so that nothing here depends on timing.
    let s = prefill_with(EngineConfig {
        block_size: 4,
        num_blocks: 16,
        kv_lease: Duration::from_secs(cfg_lease_secs()),
        kv_lease_grace: Duration::ZERO,
        kv_lease_max_share: 1.0,
        kv_lease_tenant_share: 1.0,
        ..Default::default()
    })
    .await;
    for (i, tenant) in ["mallory", "mallory"].iter().enumerate() {
        let body = json!({"prompt": ids(i as u32, 24), "max_tokens": 1, "temperature": 0,
                          "ignore_eos": true, "kv_transfer_params": remote_decode()});
        let (_, r) = post_fleet(s.addr, body, &format!("hold-{i}"), tenant).await;
        assert_eq!(
            r["kv_transfer_params"]["do_remote_prefill"],
            json!(true),
            "{r}"
        );
    }
    // 12 of 16 blocks are leased; the victim needs 20 + 8 tokens = 7 blocks.
    let stats = s.engine.stats.clone();
    let victim =
        json!({"prompt": ids(9, 20), "max_tokens": 8, "temperature": 0, "ignore_eos": true});
    let (st, r) = tokio::time::timeout(
        Duration::from_secs(60),
        post(s.addr, "/v1/completions", victim),
    )
    .await
    .expect("the victim is served long before the leases' 600 s TTL");
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["usage"]["completion_tokens"], json!(8));
    assert!(stats.kv_leases_reclaimed.load(Ordering::Relaxed) >= 1);
    assert_eq!(stats.kv_leases_expired.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_reclaimed_lease_fails_its_pull_cleanly_and_the_decoder_recomputes() {
    let prefill = prefill_with(EngineConfig {
        block_size: 4,
        num_blocks: 16,
        kv_lease: Duration::from_secs(cfg_lease_secs()),
        kv_lease_grace: Duration::ZERO,
        kv_lease_max_share: 1.0,
        kv_lease_tenant_share: 1.0,
        ..Default::default()
    })
    .await;
    let decode = start(Role::Decode, PullFailurePolicy::Recompute).await;
    let prompt = ids(3, 24);
    let body = json!({"prompt": prompt, "max_tokens": 6, "temperature": 0, "ignore_eos": true});
    let mut pre = body.clone();
    pre["max_tokens"] = json!(1);
    pre["kv_transfer_params"] = remote_decode();
    let (_, r) = post_fleet(prefill.addr, pre, "keep", "t").await;
    let params = r["kv_transfer_params"].clone();
    assert_eq!(params["do_remote_prefill"], json!(true), "{r}");
    // Another request needs the pool: the lease is reclaimed.
    let big = json!({"prompt": ids(4, 40), "max_tokens": 8, "temperature": 0, "ignore_eos": true});
    assert_eq!(post(prefill.addr, "/v1/completions", big).await.0, 200);
    assert_eq!(
        prefill
            .engine
            .stats
            .kv_leases_reclaimed
            .load(Ordering::Relaxed),
        1
    );
    // The decode leg finds nothing, computes the prompt itself and answers as a plain request would.
    let (_, plain) = post(decode.addr, "/v1/completions", body.clone()).await;
    let mut dec = body;
    dec["kv_transfer_params"] = params;
    let (st, r) = post_fleet(decode.addr, dec, "pull", "t").await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["choices"][0]["text"], plain["choices"][0]["text"]);
    assert_eq!(
        decode
            .engine
            .stats
            .kv_pull_recomputes
            .load(Ordering::Relaxed),
        1
    );
}
