//! Redis with persistence (AOF, `appendfsync everysec`, as docker/compose.yaml
//! runs it): goodput counts and dedup markers survive a restart or a crash,
//! and a `ResilientStore`'s backlog replay lands on top of the persisted
//! counts without counting anything twice — including outcomes whose write
//! reached Redis although the gateway saw it fail.

mod support;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use baton_slo::{
    AdmissionRecord, GoodputRow, OutcomeRecord, Phase, RedisConfig, RedisStore, ReplicaState,
    ResilientConfig, ResilientStore, SloStore, SloStoreError, StoreFuture,
};
use support::{outcome, RedisServer, T0};

const WINDOW: Duration = Duration::from_secs(3600);

fn requests(rows: &[GoodputRow]) -> u64 {
    rows.iter().map(|r| r.requests).sum()
}

fn outcomes(prefix: &str, n: usize) -> Vec<OutcomeRecord> {
    (0..n)
        .map(|i| {
            outcome(
                &format!("{prefix}-{i}"),
                "chatbot",
                "acme",
                T0 + 10,
                i % 3 != 0,
            )
        })
        .collect()
}

/// Goodput as a fresh replica connecting now sees it.
async fn redis_requests(url: &str) -> u64 {
    let store = RedisStore::connect(RedisConfig::new(url)).await.unwrap();
    requests(&store.goodput(WINDOW, T0 + 1000).await.unwrap())
}

/// Counts and dedup markers are in the AOF: after SIGTERM (`docker restart`)
/// or SIGKILL (a crash: Redis writes the AOF before it replies, so the page
/// cache has every acknowledged write) the counts are all there and a replay
/// of the same outcomes adds nothing.
#[tokio::test]
async fn aof_keeps_counts_and_dedup_markers_across_restart_and_crash() {
    let mut server = RedisServer::start_persistent();
    let store = RedisStore::connect(RedisConfig::new(server.url()))
        .await
        .unwrap();
    let first = outcomes("a", 10);
    for o in &first {
        store.record_outcome(o).await.unwrap();
    }
    assert_eq!(redis_requests(&server.url()).await, 10);

    server.terminate();
    server.restart();
    assert_eq!(redis_requests(&server.url()).await, 10, "after SIGTERM");
    // The old connection reconnects by itself; replays count once.
    // Polled to a deadline rather than a count of tries: a loaded machine
    // may take a while to reconnect.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.record_outcomes(&first).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the store did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(redis_requests(&server.url()).await, 10, "replay deduped");

    let second = outcomes("b", 5);
    store.record_outcomes(&second).await.unwrap();
    server.kill();
    server.restart();
    assert_eq!(redis_requests(&server.url()).await, 15, "after SIGKILL");
    let store = RedisStore::connect(RedisConfig::new(server.url()))
        .await
        .unwrap();
    store.record_outcomes(&first).await.unwrap();
    store.record_outcomes(&second).await.unwrap();
    assert_eq!(redis_requests(&server.url()).await, 15, "replay deduped");
}

/// A Redis backend whose outcome writes can be made to land and then report
/// a timeout: what the gateway sees when its 5 ms bound cuts off a write that
/// Redis executes anyway.
#[derive(Clone, Debug)]
struct LandsThenFails {
    inner: RedisStore,
    on: Arc<AtomicBool>,
}

impl SloStore for LandsThenFails {
    fn record_admission(&self, a: &AdmissionRecord) -> StoreFuture<'_, ()> {
        self.inner.record_admission(a)
    }
    fn record_phase(&self, id: &str, phase: Phase, ttl: Duration) -> StoreFuture<'_, ()> {
        self.inner.record_phase(id, phase, ttl)
    }
    fn record_outcome(&self, o: &OutcomeRecord) -> StoreFuture<'_, ()> {
        let write = self.inner.record_outcome(o);
        let fail = self.on.load(SeqCst);
        Box::pin(async move {
            write.await?;
            if fail {
                Err(SloStoreError::Timeout)
            } else {
                Ok(())
            }
        })
    }
    fn record_outcomes<'a>(&'a self, batch: &'a [OutcomeRecord]) -> StoreFuture<'a, ()> {
        self.inner.record_outcomes(batch)
    }
    fn publish_replica_state(&self, s: &ReplicaState, ttl: Duration) -> StoreFuture<'_, ()> {
        self.inner.publish_replica_state(s, ttl)
    }
    fn cluster_state(&self) -> StoreFuture<'_, Vec<ReplicaState>> {
        self.inner.cluster_state()
    }
    fn goodput(&self, window: Duration, now_ms: u64) -> StoreFuture<'_, Vec<GoodputRow>> {
        self.inner.goodput(window, now_ms)
    }
    fn admission(&self, id: &str) -> StoreFuture<'_, Option<AdmissionRecord>> {
        self.inner.admission(id)
    }
    fn ping(&self) -> StoreFuture<'_, ()> {
        self.inner.ping()
    }
}

/// The chaos suite's Redis restart, made deterministic: counted outcomes,
/// outcomes that landed but were reported failed (backlogged), Redis goes
/// down (`crash`: SIGKILL, else SIGTERM), outcomes during the outage, Redis
/// comes back with its AOF, one resync. Redis must then hold every outcome
/// exactly once: as many as the replica's own (mirror) count.
async fn replay_on_top_of_persisted_counts(crash: bool) {
    let mut server = RedisServer::start_persistent();
    let on = Arc::new(AtomicBool::new(false));
    let backend = LandsThenFails {
        inner: RedisStore::connect(RedisConfig::new(server.url()))
            .await
            .unwrap(),
        on: on.clone(),
    };
    let config = ResilientConfig {
        // Generous: on 2 shared cores a real 5 ms bound would add timeouts
        // of its own; the ambiguous ones are injected above.
        request_timeout: Duration::from_secs(1),
        resync_timeout: Duration::from_secs(2),
        failure_threshold: 3,
        ..ResilientConfig::default()
    };
    let store = ResilientStore::new(backend, config);

    for o in outcomes("counted", 5) {
        store.record_outcome(&o).await.unwrap();
    }
    on.store(true, SeqCst);
    for o in outcomes("landed", 3) {
        store.record_outcome(&o).await.unwrap();
    }
    on.store(false, SeqCst);
    let st = store.stats().snapshot();
    assert_eq!(
        (st.timeouts, st.backlog, st.healthy),
        (3, 3, false),
        "{st:?}"
    );
    assert_eq!(redis_requests(&server.url()).await, 8, "the 3 did land");

    if crash {
        server.kill();
    } else {
        server.terminate();
    }
    for o in outcomes("outage", 10) {
        store.record_outcome(&o).await.unwrap();
    }
    assert_eq!(store.stats().snapshot().backlog, 13);
    server.restart();
    assert_eq!(redis_requests(&server.url()).await, 8, "persisted");

    // The connection may need a moment to come back after the restart.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(store.resync_once().await.is_ok() && store.stats().snapshot().healthy) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            store.stats().snapshot()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = store.stats().snapshot();
    assert_eq!((st.backlog, st.flushed, st.resyncs), (0, 13, 1), "{st:?}");

    let local = requests(&store.mirror().goodput(WINDOW, T0 + 1000).await.unwrap());
    assert_eq!(local, 18);
    assert_eq!(
        redis_requests(&server.url()).await,
        local,
        "every outcome exactly once: none lost, the 3 replays deduped"
    );
    // Reads go to Redis again and agree.
    assert_eq!(
        requests(&store.goodput(WINDOW, T0 + 1000).await.unwrap()),
        18
    );
}

#[tokio::test]
async fn backlog_replay_after_a_graceful_restart_counts_every_outcome_once() {
    replay_on_top_of_persisted_counts(false).await;
}

#[tokio::test]
async fn backlog_replay_after_a_crash_counts_every_outcome_once() {
    replay_on_top_of_persisted_counts(true).await;
}
