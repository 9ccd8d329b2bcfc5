//! Redis Sentinel failover through the real interfaces: a primary
//! `redis-server`, a replica (`--replicaof`) and three sentinels
//! (`redis-server <conf> --sentinel`), the gateway's store stack
//! (`ResilientStore` over a Sentinel-following `RedisStore`) writing outcomes
//! all along; the primary is killed (SIGKILL) mid-stream, the sentinels
//! promote the replica, and the cluster's history on the new primary must
//! hold every outcome written, each once.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use baton_slo::{
    GoodputRow, RedisConfig, RedisStore, ResilientConfig, ResilientStore, SentinelConfig, SloStore,
};
use support::{outcome, RedisServer, T0};
use tokio::time::Instant;

const MASTER: &str = "baton-slo";
const WINDOW: Duration = Duration::from_secs(3600);

/// Polls `cond` until it holds; fails the test after `limit`.
async fn wait_for<F, Fut>(what: &str, limit: Duration, cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    assert!(
        support::until_within(limit, cond).await,
        "timed out after {limit:?} waiting for {what}"
    );
}

async fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(1)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await?;
    cmd.query_async(&mut conn).await
}

/// The primary's port according to one sentinel.
async fn sentinel_primary(sentinel: u16) -> Option<u16> {
    let mut cmd = redis::cmd("SENTINEL");
    cmd.arg("get-master-addr-by-name").arg(MASTER);
    let addr: Option<(String, u16)> = query(sentinel, &cmd).await.ok()?;
    addr.map(|(_, port)| port)
}

/// How many entries a `SENTINEL <what> <master>` listing has.
async fn sentinel_count(sentinel: u16, what: &str) -> usize {
    let mut cmd = redis::cmd("SENTINEL");
    cmd.arg(what).arg(MASTER);
    query::<Vec<HashMap<String, String>>>(sentinel, &cmd)
        .await
        .map_or(0, |v| v.len())
}

/// Goodput as a fresh client of `port` reads it.
async fn rows_at(port: u16) -> Vec<GoodputRow> {
    let store = RedisStore::connect(RedisConfig::new(format!("redis://127.0.0.1:{port}/")))
        .await
        .expect("connect to the promoted replica");
    store.goodput(WINDOW, T0 + 1000).await.expect("goodput")
}

fn requests(rows: &[GoodputRow]) -> u64 {
    rows.iter().map(|r| r.requests).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_keeps_every_outcome_once() {
    if !RedisServer::available() {
        // tests/run-all.sh (and so CI) provides one: there it must run.
        assert!(
            std::env::var_os("CI").is_none(),
            "no redis-server binary (tests/fetch-redis.sh provides one)"
        );
        eprintln!(
            "SKIPPED sentinel_failover_keeps_every_outcome_once: no redis-server binary on PATH \
             (run tests/run-all.sh, or put tests/fetch-redis.sh's folder first on PATH)"
        );
        return;
    }

    // ---- a primary, a replica in sync, three sentinels that know both ----
    // Persistent (AOF) like docker/compose.yaml's Redis; the initial sync's
    // RDB lands in each server's own folder.
    let mut primary = RedisServer::start_persistent();
    let replica = RedisServer::start_replica_of(primary.port());
    wait_for(
        "the replica's link to the primary",
        Duration::from_secs(15),
        || async {
            let mut cmd = redis::cmd("INFO");
            cmd.arg("replication");
            query::<String>(replica.port(), &cmd)
                .await
                .is_ok_and(|info| info.contains("master_link_status:up"))
        },
    )
    .await;
    // Short timeouts so that the failover takes seconds: subjectively down
    // after 500 ms, quorum 2 of 3.
    let conf = format!(
        "sentinel monitor {MASTER} 127.0.0.1 {} 2\n\
         sentinel down-after-milliseconds {MASTER} 500\n\
         sentinel failover-timeout {MASTER} 10000\n\
         sentinel parallel-syncs {MASTER} 1\n",
        primary.port()
    );
    let sentinels: Vec<RedisServer> = (0..3).map(|_| RedisServer::start_sentinel(&conf)).collect();
    let ports: Vec<u16> = sentinels.iter().map(RedisServer::port).collect();
    // Each sentinel must see the replica (from the primary's INFO) and the
    // two other sentinels (hello messages every 2 s) before a failover can
    // be agreed on.
    for &s in &ports {
        wait_for(
            "each sentinel to know the replica and the other sentinels",
            Duration::from_secs(30),
            || async move {
                sentinel_count(s, "replicas").await == 1
                    && sentinel_count(s, "sentinels").await == 2
            },
        )
        .await;
    }

    // ---- the gateway's store stack, following the sentinels ----
    let mut sc = SentinelConfig::new(
        ports.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
        MASTER,
    );
    sc.check_interval = Duration::from_millis(500);
    let backend = RedisStore::connect(RedisConfig::sentinel(sc))
        .await
        .expect("the sentinels name a primary");
    assert_eq!(
        backend.primary_addr(),
        Some(format!("127.0.0.1:{}", primary.port()))
    );
    let store = ResilientStore::new(
        backend.clone(),
        ResilientConfig {
            // This machine is shared and loaded: a tight bound only moves
            // more outcomes through the backlog, which is what is tested.
            request_timeout: Duration::from_millis(50),
            probe_interval: Duration::from_millis(100),
            ..ResilientConfig::default()
        },
    );
    let _resync = store.spawn_resync();

    // ---- a writer that never stops: outcomes before, during, after ----
    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (store, written, stop) = (store.clone(), written.clone(), stop.clone());
        async move {
            let mut i = 0u64;
            while !stop.load(SeqCst) {
                let o = outcome(
                    &format!("req-{i}"),
                    "chatbot",
                    "acme",
                    T0 + 10,
                    !i.is_multiple_of(3),
                );
                store
                    .record_outcome(&o)
                    .await
                    .expect("the resilient store never fails");
                i += 1;
                written.store(i, SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            i
        }
    });
    let w = written.clone();
    wait_for(
        "outcomes written to the first primary",
        Duration::from_secs(30),
        || {
            let w = w.clone();
            async move { w.load(SeqCst) >= 200 }
        },
    )
    .await;

    // ---- kill the primary; wait for the promotion (the event, polled) ----
    let at_kill = written.load(SeqCst);
    let killed_at = Instant::now();
    primary.kill();
    let new_port = replica.port();
    wait_for(
        "a sentinel to name the replica as primary",
        Duration::from_secs(30),
        || {
            let ports = ports.clone();
            async move {
                for s in ports {
                    if sentinel_primary(s).await == Some(new_port) {
                        return true;
                    }
                }
                false
            }
        },
    )
    .await;
    let promoted_after = killed_at.elapsed();
    let at_promotion = written.load(SeqCst);
    let w = written.clone();
    wait_for(
        "outcomes written after the promotion",
        Duration::from_secs(30),
        || {
            let w = w.clone();
            async move { w.load(SeqCst) >= at_promotion + 200 }
        },
    )
    .await;
    stop.store(true, SeqCst);
    let total = writer.await.expect("writer");

    // ---- the store is back on the new primary, backlog flushed ----
    let new_addr = format!("127.0.0.1:{new_port}");
    wait_for(
        "the store on the new primary, healthy, backlog empty",
        Duration::from_secs(30),
        || {
            let (store, new_addr) = (store.clone(), new_addr.clone());
            async move {
                let s = store.stats().snapshot();
                s.healthy
                    && s.backlog == 0
                    && store.backend().primary_addr().as_deref() == Some(&new_addr)
            }
        },
    )
    .await;
    // One more probe: anything an old primary acknowledged is replayed.
    store.backend().ping().await.expect("probe the new primary");

    // ---- every outcome once: the new primary's history = what was written ----
    let rows = rows_at(new_port).await;
    let local = store.mirror().goodput(WINDOW, T0 + 1000).await.unwrap();
    let stats = store.stats().snapshot();
    let fo = backend.failover_stats().expect("sentinel mode").snapshot();
    eprintln!(
        "written {total} ({at_kill} before the kill, {} until the promotion {promoted_after:?} after it); \
         on the new primary {}; resilient {stats:?}; failover {fo:?}",
        at_promotion - at_kill,
        requests(&rows)
    );
    assert_eq!(
        requests(&local),
        total,
        "the local mirror counts every write"
    );
    assert_eq!(
        requests(&rows),
        total,
        "none lost, none doubled on the new primary"
    );
    assert_eq!(rows, local, "same counts per class, tenant and counter");
    assert_eq!(stats.backlog_dropped, 0);
    assert_eq!(fo.switches, 1, "one switch, to the promoted replica");
    assert!(
        at_promotion > at_kill,
        "outcomes were written during the outage"
    );
    drop(sentinels);
}
