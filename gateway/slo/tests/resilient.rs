//! `ResilientStore`: time bounds, breaker, local fallback, bounded backlog,
//! resync. Deterministic faults on a wrapped `MemoryStore` under paused time,
//! then a real `redis-server` killed and restarted mid-run.

mod support;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use baton_slo::{
    AdmissionRecord, GoodputRow, MemoryStore, OutcomeRecord, Phase, RedisConfig, RedisStore,
    ReplicaState, ResilientConfig, ResilientStore, SloStore, SloStoreError, StoreFuture,
};
use support::{admission, outcome, replica_state, RedisServer, T0, TTL};
use tokio::time::Instant;

const UP: u8 = 0;
const DOWN: u8 = 1;
const HANG: u8 = 2;

/// A `MemoryStore` backend whose calls can fail or hang on demand.
#[derive(Clone, Debug, Default)]
struct Faulty {
    inner: MemoryStore,
    mode: Arc<AtomicU8>,
    calls: Arc<AtomicU64>,
}

impl Faulty {
    fn set(&self, mode: u8) {
        self.mode.store(mode, SeqCst);
    }

    fn calls(&self) -> u64 {
        self.calls.load(SeqCst)
    }

    /// Calls the inner store only when up (`MemoryStore` applies writes
    /// when called, not when awaited).
    fn gate<'a, T: Send + 'a>(
        &'a self,
        f: impl FnOnce(&'a MemoryStore) -> StoreFuture<'a, T>,
    ) -> StoreFuture<'a, T> {
        self.calls.fetch_add(1, SeqCst);
        match self.mode.load(SeqCst) {
            UP => f(&self.inner),
            DOWN => Box::pin(async { Err(SloStoreError::Unavailable("injected".into())) }),
            _ => Box::pin(std::future::pending()),
        }
    }
}

impl SloStore for Faulty {
    fn record_admission(&self, a: &AdmissionRecord) -> StoreFuture<'_, ()> {
        self.gate(|m| m.record_admission(a))
    }
    fn record_phase(&self, id: &str, phase: Phase, ttl: Duration) -> StoreFuture<'_, ()> {
        self.gate(|m| m.record_phase(id, phase, ttl))
    }
    fn record_outcome(&self, o: &OutcomeRecord) -> StoreFuture<'_, ()> {
        self.gate(|m| m.record_outcome(o))
    }
    fn publish_replica_state(&self, s: &ReplicaState, ttl: Duration) -> StoreFuture<'_, ()> {
        self.gate(|m| m.publish_replica_state(s, ttl))
    }
    fn cluster_state(&self) -> StoreFuture<'_, Vec<ReplicaState>> {
        self.gate(|m| m.cluster_state())
    }
    fn goodput(&self, window: Duration, now_ms: u64) -> StoreFuture<'_, Vec<GoodputRow>> {
        self.gate(|m| m.goodput(window, now_ms))
    }
    fn admission(&self, id: &str) -> StoreFuture<'_, Option<AdmissionRecord>> {
        self.gate(|m| m.admission(id))
    }
    fn ping(&self) -> StoreFuture<'_, ()> {
        self.gate(|m| m.ping())
    }
}

fn config() -> ResilientConfig {
    ResilientConfig {
        request_timeout: Duration::from_millis(5),
        control_timeout: Duration::from_millis(50),
        probe_interval: Duration::from_millis(100),
        failure_threshold: 3,
        backlog_capacity: 3,
        flush_batch: 2,
        ..ResilientConfig::default()
    }
}

fn requests(rows: &[GoodputRow]) -> u64 {
    rows.iter().map(|r| r.requests).sum()
}

#[tokio::test(start_paused = true)]
async fn a_hanging_backend_costs_at_most_the_timeout_then_the_breaker_opens() {
    let backend = Faulty::default();
    let store = ResilientStore::new(backend.clone(), config());
    backend.set(HANG);
    for i in 0..3 {
        let t = Instant::now();
        store
            .record_admission(&admission(&format!("r{i}"), "a"))
            .await
            .unwrap();
        assert_eq!(
            t.elapsed(),
            Duration::from_millis(5),
            "bounded by the timeout"
        );
    }
    let st = store.stats().snapshot();
    assert_eq!((st.timeouts, st.fallbacks, st.healthy), (3, 3, false));

    // Breaker open: no backend call, no waiting; local state answers.
    let calls = backend.calls();
    let t = Instant::now();
    assert!(store.admission("r1").await.unwrap().is_some());
    store
        .publish_replica_state(&replica_state("a", 1), TTL)
        .await
        .unwrap();
    assert_eq!(
        store.cluster_state().await.unwrap(),
        vec![replica_state("a", 1)]
    );
    assert_eq!(t.elapsed(), Duration::ZERO);
    assert_eq!(backend.calls(), calls);
    assert_eq!(store.stats().snapshot().fallbacks, 6);
}

#[tokio::test(start_paused = true)]
async fn outcomes_are_buffered_bounded_and_flushed_once_on_resync() {
    let backend = Faulty::default();
    let store = ResilientStore::new(backend.clone(), config());
    backend.set(DOWN);
    for i in 0..5 {
        let o = outcome(&format!("r{i}"), "chatbot", &format!("t{i}"), T0, true);
        store.record_outcome(&o).await.unwrap();
    }
    let st = store.stats().snapshot();
    // Three errors open the breaker; the last two skip the backend.
    assert_eq!(
        (st.errors, st.fallbacks, st.backlog, st.backlog_dropped),
        (3, 5, 3, 2)
    );
    // Local goodput sees all five.
    let local = store.goodput(Duration::from_secs(60), T0).await.unwrap();
    assert_eq!(requests(&local), 5);

    // Still down: a resync attempt fails and keeps the backlog.
    assert!(store.resync_once().await.is_err());
    assert_eq!(store.stats().snapshot().backlog, 3);

    backend.set(UP);
    assert!(store.resync_once().await.unwrap());
    let st = store.stats().snapshot();
    assert_eq!(
        (st.backlog, st.flushed, st.resyncs, st.healthy),
        (0, 3, 1, true)
    );
    // The backend has the three newest (oldest dropped), counted once even
    // if flushed again.
    let rows = backend
        .inner
        .goodput(Duration::from_secs(60), T0)
        .await
        .unwrap();
    let tenants: Vec<_> = rows.iter().map(|r| r.tenant.as_str()).collect();
    assert_eq!(tenants, ["t2", "t3", "t4"]);
    assert!(!store.resync_once().await.unwrap(), "nothing left to do");
    // Healthy again: reads come from the backend.
    assert_eq!(
        requests(&store.goodput(Duration::from_secs(60), T0).await.unwrap()),
        3
    );
}

#[tokio::test(start_paused = true)]
async fn the_resync_task_republishes_live_state_when_the_backend_returns() {
    let backend = Faulty::default();
    let store = ResilientStore::new(backend.clone(), config());
    let task = store.spawn_resync();
    backend.set(DOWN);
    store
        .record_admission(&admission("done", "a"))
        .await
        .unwrap();
    store
        .record_admission(&admission("in-flight", "a"))
        .await
        .unwrap();
    store
        .record_outcome(&outcome("done", "chatbot", "acme", T0, true))
        .await
        .unwrap();
    store
        .publish_replica_state(&replica_state("a", 7), Duration::from_secs(10))
        .await
        .unwrap();
    store
        .publish_replica_state(&replica_state("old", 7), Duration::from_millis(50))
        .await
        .unwrap();
    assert!(!store.stats().snapshot().healthy);

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(store.stats().snapshot().resyncs, 0, "still down");
    backend.set(UP);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let st = store.stats().snapshot();
    assert_eq!((st.resyncs, st.backlog, st.healthy), (1, 0, true), "{st:?}");

    let b = &backend.inner;
    let rec = b
        .admission("in-flight")
        .await
        .unwrap()
        .expect("republished");
    assert!(rec.ttl < TTL, "with its remaining TTL, not a fresh one");
    assert_eq!(b.admission("done").await.unwrap(), None);
    assert_eq!(
        b.cluster_state().await.unwrap(),
        vec![replica_state("a", 7)]
    );
    assert_eq!(
        requests(&b.goodput(Duration::from_secs(60), T0).await.unwrap()),
        1
    );

    drop(store);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(task.is_finished(), "the task ends with the store");
}

/// Awaits a store call that must succeed; records the slowest.
async fn timed<T>(slowest: &mut Duration, f: StoreFuture<'_, T>) -> T {
    let t = Instant::now();
    let v = f.await.expect("a ResilientStore call never fails");
    *slowest = (*slowest).max(t.elapsed());
    v
}

/// Kills a real redis-server while calls continue, restarts it on the same
/// port, and checks the backlog is flushed and state resynced.
#[tokio::test]
async fn survives_redis_restart() {
    let mut server = RedisServer::start();
    let redis_config = RedisConfig::new(server.url());
    let timeout = Duration::from_millis(25);
    // Scheduling slack on 2 shared cores; the bound itself is `timeout`.
    let slack = Duration::from_millis(40);
    let config = ResilientConfig {
        request_timeout: timeout,
        control_timeout: timeout,
        resync_timeout: Duration::from_millis(500),
        probe_interval: Duration::from_millis(50),
        ..ResilientConfig::default()
    };
    let store = ResilientStore::new(
        RedisStore::connect(redis_config.clone()).await.unwrap(),
        config,
    );
    let _task = store.spawn_resync();

    store
        .record_admission(&admission("before", "a"))
        .await
        .unwrap();
    store
        .record_outcome(&outcome("before", "chatbot", "acme", T0, true))
        .await
        .unwrap();
    store
        .publish_replica_state(&replica_state("a", 1), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(store.stats().snapshot().fallbacks, 0);

    server.kill();
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let id = format!("during-{i}");
        let o = outcome(&id, "chatbot", "acme", T0 + 1000, i % 2 == 0);
        timed(&mut slowest, store.record_admission(&admission(&id, "a"))).await;
        timed(&mut slowest, store.record_phase(&id, Phase::Decode, TTL)).await;
        timed(&mut slowest, store.record_outcome(&o)).await;
    }
    let in_flight = admission("in-flight", "a");
    timed(&mut slowest, store.record_admission(&in_flight)).await;
    let state = replica_state("a", 2);
    let ttl = Duration::from_secs(30);
    timed(&mut slowest, store.publish_replica_state(&state, ttl)).await;
    let cluster = timed(&mut slowest, store.cluster_state()).await;
    let local = timed(&mut slowest, store.goodput(ttl, T0 + 2000)).await;
    eprintln!("slowest call with Redis down: {slowest:?}");
    assert!(
        slowest < timeout + slack,
        "a call took {slowest:?} with Redis down"
    );
    assert_eq!(cluster, vec![replica_state("a", 2)], "local state served");
    assert_eq!(requests(&local), 21, "local goodput served");
    let st = store.stats().snapshot();
    assert!(st.errors + st.timeouts > 0, "{st:?}");
    assert!(!st.healthy && st.backlog == 20, "{st:?}");

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = store.stats().snapshot();
        if st.resyncs >= 1 && st.backlog == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no resync: {st:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A fresh replica on the restarted (empty) Redis sees the resynced state.
    let other = RedisStore::connect(redis_config).await.unwrap();
    let rows = other
        .goodput(Duration::from_secs(60), T0 + 2000)
        .await
        .unwrap();
    assert_eq!(
        requests(&rows),
        20,
        "backlog flushed (pre-crash data died with Redis)"
    );
    assert_eq!(rows[0].good, 10);
    assert_eq!(
        other.cluster_state().await.unwrap(),
        vec![replica_state("a", 2)]
    );
    assert!(other.admission("in-flight").await.unwrap().is_some());
    assert_eq!(other.admission("during-3").await.unwrap(), None);

    // Back to normal: writes reach Redis directly.
    store
        .record_outcome(&outcome("after", "chatbot", "acme", T0 + 1000, true))
        .await
        .unwrap();
    let rows = other
        .goodput(Duration::from_secs(60), T0 + 2000)
        .await
        .unwrap();
    assert_eq!(requests(&rows), 21);
    assert!(store.stats().snapshot().healthy);
}
