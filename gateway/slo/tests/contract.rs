//! One contract suite, run against every store: `MemoryStore` (on paused
//! time), `RedisStore` and `ResilientStore<RedisStore>` (each against a real
//! `redis-server` child; every key the store created must carry a TTL).

mod support;

use std::sync::Mutex;
use std::time::Duration;

use baton_slo::{
    GoodputRow, MemoryStore, Phase, RedisConfig, RedisStore, ResilientConfig, ResilientStore,
    SloStore,
};
use support::{admission, outcome, replica_state, RedisServer, T0, TTL};

/// A backend shared by several replicas' store handles.
trait Harness {
    type Store: SloStore;
    /// A store handle for one replica; all share the harness's backend.
    async fn replica(&self) -> Self::Store;
    /// Backend invariants, checked after every case.
    async fn check(&self) {}
}

// ---------------------------------------------------------------- cases

/// Marks request ids that must never appear in a Redis key name.
const HOSTILE_MARK: &str = "hostile-client-id";

async fn admission_is_readable_and_expires<H: Harness>(h: &H) {
    let s = h.replica().await;
    let a = admission("req-1", "a");
    s.record_admission(&a).await.unwrap();
    assert_eq!(s.admission("req-1").await.unwrap(), Some(a.clone()));
    // Another replica reads the same record.
    let other = h.replica().await;
    assert_eq!(other.admission("req-1").await.unwrap(), Some(a));
    assert_eq!(s.admission("unknown").await.unwrap(), None);
    h.check().await;

    let short = admission_with_ttl("req-short", SHORT_TTL);
    s.record_admission(&short).await.unwrap();
    assert!(s.admission("req-short").await.unwrap().is_some());
    assert!(admission_expires(&s, "req-short").await, "TTL honoured");
    assert!(s.admission("req-1").await.unwrap().is_some());
    h.check().await;
}

async fn phase_update_changes_phase_and_refreshes_ttl<H: Harness>(h: &H) {
    let s = h.replica().await;
    s.record_admission(&admission_with_ttl("req-p", SHORT_TTL))
        .await
        .unwrap();
    // Written with the same TTL and never refreshed: its expiry says when
    // req-p's first TTL has run out.
    s.record_admission(&admission_with_ttl("req-p-control", SHORT_TTL))
        .await
        .unwrap();
    s.record_phase("req-p", Phase::Decode, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(admission_expires(&s, "req-p-control").await);
    let rec = s
        .admission("req-p")
        .await
        .unwrap()
        .expect("TTL was refreshed");
    assert_eq!(rec.phase, Phase::Decode);
    // A phase change of an unknown request neither fails nor creates one.
    s.record_phase("req-gone", Phase::Prefill, TTL)
        .await
        .unwrap();
    assert_eq!(s.admission("req-gone").await.unwrap(), None);
    h.check().await;
}

async fn outcome_counts_once_and_deletes_the_record<H: Harness>(h: &H) {
    let (a, b) = (h.replica().await, h.replica().await);
    a.record_admission(&admission("req-o", "a")).await.unwrap();
    let o = outcome("req-o", "chatbot", "acme", T0 + 100, true);
    a.record_outcome(&o).await.unwrap();
    assert_eq!(a.admission("req-o").await.unwrap(), None, "record deleted");
    // Replays (a retried write, a backlog flush, another replica) count once.
    a.record_outcome(&o).await.unwrap();
    b.record_outcome(&o).await.unwrap();
    let rows = a.goodput(Duration::from_secs(60), T0 + 1000).await.unwrap();
    assert_eq!(
        rows,
        vec![row("chatbot", "acme", [1, 1, 1, 1, 0, 0])],
        "counted once"
    );
    h.check().await;
}

/// Request ids come from clients: hostile ones work like any other and
/// never show up in a key name (the Redis harness checks every key).
async fn hostile_request_ids_are_only_hashed_into_keys<H: Harness>(h: &H) {
    let s = h.replica().await;
    let long = format!("{HOSTILE_MARK}{}", "x".repeat(64 * 1024));
    for id in [
        format!("{HOSTILE_MARK}}}{{other}}:replica:zz"),
        format!("{HOSTILE_MARK}*?[a]\r\nFLUSHALL"),
        long,
    ] {
        let a = admission(&id, "a");
        s.record_admission(&a).await.unwrap();
        assert_eq!(s.admission(&id).await.unwrap(), Some(a));
        s.record_outcome(&outcome(&id, "chatbot", "acme", T0 + 100, true))
            .await
            .unwrap();
        assert_eq!(s.admission(&id).await.unwrap(), None);
    }
    h.check().await;
}

async fn goodput_sums_a_window_across_replicas<H: Harness>(h: &H) {
    let (a, b) = (h.replica().await, h.replica().await);
    let mut rejected = outcome("r4", "code", "x|y%", T0 + 2500, false);
    (rejected.ttft_met, rejected.rejected) = (false, true);
    let mut failed = outcome("r5", "code", "x|y%", T0 + 2600, false);
    failed.failed = true;
    let mut good_but_failed = outcome("r7", "chatbot", "beta", T0 + 2700, true);
    good_but_failed.failed = true;
    a.record_outcome(&outcome("r6", "chatbot", "acme", T0 - 60_000, true))
        .await
        .unwrap();
    a.record_outcome(&outcome("r1", "chatbot", "acme", T0 + 500, true))
        .await
        .unwrap();
    a.record_outcome(&outcome("r2", "chatbot", "acme", T0 + 1500, false))
        .await
        .unwrap();
    b.record_outcome(&outcome("r3", "chatbot", "acme", T0 + 2000, true))
        .await
        .unwrap();
    b.record_outcome(&rejected).await.unwrap();
    b.record_outcome(&failed).await.unwrap();
    a.record_outcome(&good_but_failed).await.unwrap();

    let now = T0 + 3000;
    let ten_s = vec![
        row("chatbot", "acme", [3, 2, 3, 2, 0, 0]),
        row("chatbot", "beta", [1, 0, 1, 1, 0, 1]),
        row("code", "x|y%", [2, 0, 1, 0, 1, 1]),
    ];
    for s in [&a, &b] {
        assert_eq!(
            s.goodput(Duration::from_secs(10), now).await.unwrap(),
            ten_s
        );
    }
    let two_min = a.goodput(Duration::from_secs(120), now).await.unwrap();
    assert_eq!(two_min[0], row("chatbot", "acme", [4, 3, 4, 3, 0, 0]));
    // The longest window (the 1 h retention: 3601 one-second buckets) and
    // anything longer (clamped) give the same answer.
    for window in [3600, 86_400] {
        let rows = b.goodput(Duration::from_secs(window), now).await.unwrap();
        assert_eq!(rows, two_min);
    }
    // 1 s window: buckets T0+2 s ..= T0+3 s.
    let one_s = b.goodput(Duration::from_secs(1), now).await.unwrap();
    assert_eq!(
        one_s,
        vec![
            row("chatbot", "acme", [1, 1, 1, 1, 0, 0]),
            row("chatbot", "beta", [1, 0, 1, 1, 0, 1]),
            row("code", "x|y%", [2, 0, 1, 0, 1, 1]),
        ]
    );
    assert!(a
        .goodput(Duration::from_secs(10), T0 + 3_600_000)
        .await
        .unwrap()
        .is_empty());
    h.check().await;
}

async fn replica_state_is_a_lease<H: Harness>(h: &H) {
    let (a, b) = (h.replica().await, h.replica().await);
    let (sa, sb) = (
        replica_state("replica-a", 10),
        replica_state("replica-b", 20),
    );
    a.publish_replica_state(&sa, SHORT_TTL).await.unwrap();
    b.publish_replica_state(&sb, Duration::from_secs(30))
        .await
        .unwrap();
    for s in [&a, &b] {
        assert_eq!(
            s.cluster_state().await.unwrap(),
            vec![sa.clone(), sb.clone()]
        );
    }
    // Republishing replaces the state.
    let sb2 = replica_state("replica-b", 25);
    b.publish_replica_state(&sb2, Duration::from_secs(30))
        .await
        .unwrap();
    h.check().await;
    let lease_ended = until(|| async { a.cluster_state().await.unwrap() == vec![sb2.clone()] });
    assert!(lease_ended.await, "a's lease expired");
    a.publish_replica_state(&sa, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(b.cluster_state().await.unwrap(), vec![sa, sb2]);
    h.check().await;
}

/// A TTL that runs out during a case. Long enough that a loaded machine
/// still reads the record back before it expires; the cases then wait for
/// the expiry itself, not for a guessed time.
const SHORT_TTL: Duration = Duration::from_secs(1);

/// Polls `cond` until it holds (true) or 10 s have passed (false).
async fn until<F, Fut>(cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    support::until_within(Duration::from_secs(10), cond).await
}

/// Whether `id`'s admission record expires within [`until`]'s deadline.
async fn admission_expires(s: &impl SloStore, id: &str) -> bool {
    until(|| async { s.admission(id).await.unwrap().is_none() }).await
}

fn admission_with_ttl(id: &str, ttl: Duration) -> baton_slo::AdmissionRecord {
    baton_slo::AdmissionRecord {
        ttl,
        ..admission(id, "a")
    }
}

/// Counters: requests, good, ttft_met, tpot_met, rejected, failed.
fn row(class: &str, tenant: &str, c: [u64; 6]) -> GoodputRow {
    GoodputRow {
        class: class.into(),
        tenant: tenant.into(),
        requests: c[0],
        good: c[1],
        ttft_met: c[2],
        tpot_met: c[3],
        rejected: c[4],
        failed: c[5],
    }
}

macro_rules! contract_suite {
    ($name:ident, $harness:expr, $($test_attr:tt)*) => {
        mod $name {
            use super::*;

            #[$($test_attr)*]
            async fn admission_is_readable_and_expires() {
                super::admission_is_readable_and_expires(&$harness).await
            }

            #[$($test_attr)*]
            async fn phase_update_changes_phase_and_refreshes_ttl() {
                super::phase_update_changes_phase_and_refreshes_ttl(&$harness).await
            }

            #[$($test_attr)*]
            async fn outcome_counts_once_and_deletes_the_record() {
                super::outcome_counts_once_and_deletes_the_record(&$harness).await
            }

            #[$($test_attr)*]
            async fn hostile_request_ids_are_only_hashed_into_keys() {
                super::hostile_request_ids_are_only_hashed_into_keys(&$harness).await
            }

            #[$($test_attr)*]
            async fn goodput_sums_a_window_across_replicas() {
                super::goodput_sums_a_window_across_replicas(&$harness).await
            }

            #[$($test_attr)*]
            async fn replica_state_is_a_lease() {
                super::replica_state_is_a_lease(&$harness).await
            }
        }
    };
}

// ---------------------------------------------------------------- harnesses

/// Replicas are clones of one `MemoryStore` (shared maps).
#[derive(Default)]
struct Memory(MemoryStore);

impl Harness for Memory {
    type Store = MemoryStore;
    async fn replica(&self) -> MemoryStore {
        self.0.clone()
    }
}

/// Replicas are separate `RedisStore` connections to one server.
struct Redis {
    server: RedisServer,
    prefix: String,
}

impl Redis {
    fn new() -> Self {
        Self {
            server: RedisServer::start(),
            prefix: "test:{slo}".into(),
        }
    }

    async fn connect(&self) -> RedisStore {
        let mut cfg = RedisConfig::new(self.server.url());
        cfg.prefix = self.prefix.clone();
        RedisStore::connect(cfg).await.expect("connect to redis")
    }

    /// SCANs the prefix: every key must have a TTL (PTTL > 0).
    async fn check_ttls(&self) {
        let client = redis::Client::open(self.server.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut cursor: u64 = 0;
        let mut seen = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("*")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .unwrap();
            for key in keys {
                assert!(key.starts_with(&self.prefix), "{key} outside the prefix");
                assert!(
                    !key.contains(HOSTILE_MARK),
                    "a client-chosen id became part of a key name: {key}"
                );
                let pttl: i64 = redis::cmd("PTTL")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                assert!(pttl > 0 || pttl == -2, "{key} has no TTL (PTTL {pttl})");
                seen += 1;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        assert!(seen > 0, "expected the store to have created keys");
    }
}

impl Harness for Redis {
    type Store = RedisStore;
    async fn replica(&self) -> RedisStore {
        self.connect().await
    }
    async fn check(&self) {
        self.check_ttls().await
    }
}

/// Replicas are `ResilientStore`s (each with its own mirror) on one Redis;
/// none may have fallen back to local state.
struct Resilient {
    redis: Redis,
    stores: Mutex<Vec<ResilientStore<RedisStore>>>,
}

impl Resilient {
    fn new() -> Self {
        Self {
            redis: Redis::new(),
            stores: Mutex::default(),
        }
    }
}

impl Harness for Resilient {
    type Store = ResilientStore<RedisStore>;
    async fn replica(&self) -> Self::Store {
        // Generous bounds: this suite checks semantics, not failover (2 shared
        // CPU cores make 5 ms bounds flaky here; tests/resilient.rs covers it).
        let config = ResilientConfig {
            request_timeout: Duration::from_millis(500),
            control_timeout: Duration::from_millis(500),
            ..ResilientConfig::default()
        };
        let store = ResilientStore::new(self.redis.connect().await, config);
        self.stores.lock().unwrap().push(store.clone());
        store
    }
    async fn check(&self) {
        self.redis.check_ttls().await;
        for s in self.stores.lock().unwrap().iter() {
            let st = s.stats().snapshot();
            assert_eq!((st.errors, st.timeouts, st.fallbacks), (0, 0, 0), "{st:?}");
        }
    }
}

contract_suite!(memory, Memory::default(), tokio::test(start_paused = true));
contract_suite!(redis_store, Redis::new(), tokio::test);
contract_suite!(resilient_redis, Resilient::new(), tokio::test);
