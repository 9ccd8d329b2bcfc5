//! Several gateway replicas sharing SLO state through a real Redis, and
//! serving on through a Redis outage.

mod common;
#[path = "../../gateway/slo/tests/support/port.rs"]
mod port;
#[path = "../../gateway/slo/tests/support/redis_server.rs"]
mod redis_server;

use std::time::Duration;

use baton_e2e::mock::{Flavor, MockEngine};
use baton_gateway::slo::config::StoreKind;
use common::*;
use http::StatusCode;
use redis_server::RedisServer as Redis;
use serde_json::Value;

fn replica(engine: &str, redis: &str, id: &str) -> baton_gateway::GatewayConfig {
    let mut c = aggregated(&[engine.to_owned()]);
    c.slo.store = StoreKind::Redis;
    c.slo.redis_url = redis.to_owned();
    c.slo.replica_id = id.to_owned();
    c.slo.sync_interval_ms = 20;
    c
}

fn interactive(report: &Value) -> u64 {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["class"] == "interactive")
        .map(|r| r["requests"].as_u64().unwrap())
        .sum()
}

/// Re-reads `/v1/slo` until `cond` holds (the replicas sync every 20 ms and
/// read cluster goodput every 10 syncs); bounded.
async fn eventually(url: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let cond = &cond;
    let met = wait_for_within(RECOVERY, || async move {
        cond(&get(url, "/v1/slo").await.json())
    })
    .await;
    let last = get(url, "/v1/slo").await.json();
    assert!(met, "condition not reached; last report: {last}");
    last
}

/// How long a replica may take to reach a condition after a Redis restart.
const RECOVERY: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_goodput_and_survive_a_redis_outage() {
    let mut redis = Redis::start();
    let engine = MockEngine::new(Flavor::OpenAi).spawn().await;
    let a = start(replica(&engine.url(), &redis.url(), "replica-a")).await;
    let b = start(replica(&engine.url(), &redis.url(), "replica-b")).await;
    let h = [("x-slo-class", "interactive")];
    for _ in 0..3 {
        assert_eq!(
            post_with(&a.url(), "/v1/completions", COMPLETION_STREAM, &h)
                .await
                .status,
            StatusCode::OK
        );
    }
    for _ in 0..2 {
        assert_eq!(
            post_with(&b.url(), "/v1/completions", COMPLETION_STREAM, &h)
                .await
                .status,
            StatusCode::OK
        );
    }
    // Each replica reports the cluster-wide count, from Redis.
    let ra = eventually(&a.url(), |r| interactive(r) == 5 && r["replicas"] == 2).await;
    assert_eq!(ra["replicas"], 2);
    eventually(&b.url(), |r| interactive(r) == 5).await;

    // Redis goes away: serving continues, each request promptly.
    redis.kill();
    for _ in 0..4 {
        let t = tokio::time::Instant::now();
        let r = post_with(&a.url(), "/v1/completions", COMPLETION_STREAM, &h).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "a Redis outage must not hold requests"
        );
    }
    let m = get(&a.url(), "/metrics").await.text();
    assert!(
        m.contains("baton_slo_store{stat=\"healthy\"} 0")
            || metric(&m, "baton_slo_store{stat=\"errors\"}") > 0.0,
        "{m}"
    );

    // Redis returns (empty): the replicas reconnect, flush their backlog and
    // republish; the outage's requests are counted.
    redis.restart();
    let a_url = a.url();
    let recovered = wait_for_within(RECOVERY, || resynced(&a_url)).await;
    assert!(recovered, "replica A resynced with the restarted Redis");
    // The restarted Redis is empty: what it now counts is A's flushed backlog
    // (the 4 outage requests), plus what comes next.
    eventually(&a.url(), |r| interactive(r) >= 4).await;
    let r = post_with(&b.url(), "/v1/completions", COMPLETION_STREAM, &h).await;
    assert_eq!(r.status, StatusCode::OK);
    eventually(&b.url(), |r| interactive(r) >= 5 && r["replicas"] == 2).await;
    a.shutdown().await;
    b.shutdown().await;
}

/// This replica's own count of finished requests (its Prometheus counter,
/// never the shared store).
async fn local_count(url: &str) -> u64 {
    metric(
        &get(url, "/metrics").await.text(),
        "baton_slo_requests_total{",
    ) as u64
}

async fn resynced(url: &str) -> bool {
    let m = get(url, "/metrics").await.text();
    metric(&m, "baton_slo_store{stat=\"resyncs\"}") >= 1.0
        && m.contains("baton_slo_store{stat=\"healthy\"} 1")
        && metric(&m, "baton_slo_store{stat=\"backlog\"}") == 0.0
}

/// With Redis persisted (AOF), a crash and restart loses nothing and the
/// replicas' backlog replay doubles nothing: the cluster-wide count is
/// exactly the sum of what the replicas counted, before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisted_redis_restart_keeps_cluster_counts_exact() {
    let mut redis = Redis::start_persistent();
    let engine = MockEngine::new(Flavor::OpenAi).spawn().await;
    let a = start(replica(&engine.url(), &redis.url(), "replica-a")).await;
    let b = start(replica(&engine.url(), &redis.url(), "replica-b")).await;
    let h = [("x-slo-class", "interactive")];
    let send = |url: String, n: usize| async move {
        for _ in 0..n {
            let r = post_with(&url, "/v1/completions", COMPLETION_STREAM, &h).await;
            assert_eq!(r.status, StatusCode::OK);
        }
    };
    send(a.url(), 3).await;
    send(b.url(), 2).await;
    eventually(&a.url(), |r| interactive(r) == 5 && r["replicas"] == 2).await;

    // Crash (SIGKILL) while both replicas keep serving.
    redis.kill();
    send(a.url(), 4).await;
    send(b.url(), 2).await;
    redis.restart();
    let (a_url, b_url) = (a.url(), b.url());
    let (a_url, b_url) = (&a_url, &b_url);
    wait_for_within(RECOVERY, || async move {
        resynced(a_url).await && resynced(b_url).await
    })
    .await;
    assert!(resynced(a_url).await && resynced(b_url).await);
    let total = local_count(&a.url()).await + local_count(&b.url()).await;
    assert_eq!(total, 11);
    eventually(&a.url(), |r| interactive(r) == total).await;
    eventually(&b.url(), |r| interactive(r) == total).await;
    // No late replay lands on top: still exact a few syncs later, and new
    // requests count once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(interactive(&get(&a.url(), "/v1/slo").await.json()), total);
    send(b.url(), 1).await;
    eventually(&a.url(), |r| interactive(r) == total + 1).await;
    a.shutdown().await;
    b.shutdown().await;
}

/// The client's `x-request-id` is not a unique key: a client that reuses one
/// (its retries, a fixed id) sends distinct requests, each counted once in
/// the cluster-wide count, on one replica and across replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reusing_a_client_request_id_each_count() {
    let redis = Redis::start();
    let engine = MockEngine::new(Flavor::OpenAi).spawn().await;
    let a = start(replica(&engine.url(), &redis.url(), "replica-a")).await;
    let b = start(replica(&engine.url(), &redis.url(), "replica-b")).await;
    let h = [("x-slo-class", "interactive"), ("x-request-id", "same-id")];
    for url in [a.url(), a.url(), b.url()] {
        let r = post_with(&url, "/v1/completions", COMPLETION_STREAM, &h).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    eventually(&a.url(), |r| interactive(r) == 3 && r["replicas"] == 2).await;
    assert_eq!(local_count(&a.url()).await + local_count(&b.url()).await, 3);
    a.shutdown().await;
    b.shutdown().await;
}
