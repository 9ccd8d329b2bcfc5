//! The Redis store: state shared by gateway replicas.

mod failover;
mod keys;
mod scripts;
mod sentinel;

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, FromRedisValue, RedisError, ScriptInvocation};

use self::failover::Failover;
pub use self::failover::{FailoverStats, FailoverStatsSnapshot};
pub use self::keys::key_id;
use self::keys::Keys;
pub use self::sentinel::SentinelConfig;
use crate::error::ttl_ms;
use crate::goodput::{self, GoodputConfig, RowSet};
use crate::{
    AdmissionRecord, GoodputRow, OutcomeRecord, Phase, ReplicaState, SloStore, SloStoreError,
    StoreFuture,
};

/// Connection and key settings.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// e.g. `redis://127.0.0.1:6379/0`. Unused when `sentinel` is set.
    pub url: String,
    /// Find the primary through Redis Sentinel (and follow its failovers)
    /// instead of connecting to `url`.
    pub sentinel: Option<SentinelConfig>,
    /// Every key starts with this; keep a `{hash tag}` in it (default
    /// `baton:{slo}`).
    pub prefix: String,
    pub goodput: GoodputConfig,
    /// Bound on one connection attempt.
    pub connect_timeout: Duration,
    /// Backstop bound on one command (callers should bound calls more
    /// tightly; [`ResilientStore`](crate::ResilientStore) does).
    pub response_timeout: Duration,
    /// Reconnect attempts per disconnection (then the next call retries).
    pub reconnect_retries: usize,
    /// First reconnect back-off (exponential, jittered, capped at 1 s).
    pub reconnect_min_delay: Duration,
}

impl RedisConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            sentinel: None,
            prefix: "baton:{slo}".into(),
            goodput: GoodputConfig::default(),
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_secs(1),
            reconnect_retries: 2,
            reconnect_min_delay: Duration::from_millis(20),
        }
    }

    /// The primary is whichever server the sentinels name (see
    /// [`SentinelConfig`]).
    pub fn sentinel(sentinel: SentinelConfig) -> Self {
        Self {
            sentinel: Some(sentinel),
            ..Self::new(String::new())
        }
    }

    fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout))
            .set_number_of_retries(self.reconnect_retries)
            .set_min_delay(self.reconnect_min_delay)
            .set_max_delay(Duration::from_secs(1))
    }
}

/// [`SloStore`] on Redis through an auto-reconnecting [`ConnectionManager`].
/// Clones share the connection.
///
/// With a [`SentinelConfig`] the primary is the one the sentinels name: a
/// background task re-asks them after a failure (and once per
/// `check_interval`) and swaps the connection to a promoted replica;
/// outcomes the old primary acknowledged but no replica confirmed (`WAIT`)
/// are replayed to the new one (deduplicated like every replay).
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    keys: Keys,
    goodput: GoodputConfig,
    config: RedisConfig,
    /// `None` until the sentinels named a primary (sentinel mode only).
    primary: RwLock<Option<Primary>>,
    /// Sentinel mode only.
    failover: Option<Failover>,
}

/// The connection to the current primary.
#[derive(Clone)]
struct Primary {
    conn: ConnectionManager,
    /// Sentinel mode: a second connection for `WAIT`, which blocks its
    /// connection (never the request path's) until replicas confirm.
    confirm: Option<ConnectionManager>,
    /// `host:port` (sentinel mode; empty for a URL).
    addr: String,
    /// Bumped at each switch to another primary.
    generation: u64,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("keys", &self.inner.keys)
            .field("goodput", &self.inner.goodput)
            .field("sentinel", &self.inner.config.sentinel)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects (fails if Redis is unreachable; with sentinels: if none
    /// names a reachable primary) and loads the scripts.
    pub async fn connect(config: RedisConfig) -> Result<Self, SloStoreError> {
        if config.sentinel.is_some() {
            let store = Self::with_primary(None, config)?;
            store.rediscover().await?;
            return Ok(store);
        }
        let client = Client::open(config.url.as_str()).map_err(map_err)?;
        let conn = ConnectionManager::new_with_config(client, config.manager_config())
            .await
            .map_err(map_err)?;
        let store = Self::with_primary(Some(conn), config)?;
        store.load_scripts().await?;
        Ok(store)
    }

    /// Does not connect: the first call does (so a gateway can start while
    /// Redis is down, behind a [`ResilientStore`](crate::ResilientStore)).
    /// With sentinels, calls fail until the background task (started by
    /// the first call) or [`ping`](SloStore::ping) found the primary.
    pub fn connect_lazy(config: RedisConfig) -> Result<Self, SloStoreError> {
        if config.sentinel.is_some() {
            return Self::with_primary(None, config);
        }
        let client = Client::open(config.url.as_str()).map_err(map_err)?;
        let conn = ConnectionManager::new_lazy_with_config(client, config.manager_config())
            .map_err(map_err)?;
        Self::with_primary(Some(conn), config)
    }

    fn with_primary(
        conn: Option<ConnectionManager>,
        config: RedisConfig,
    ) -> Result<Self, SloStoreError> {
        let failover = match &config.sentinel {
            Some(s) => {
                s.validate()
                    .map_err(|e| SloStoreError::Backend(format!("sentinel config: {e}")))?;
                Some(Failover::new(s.clone()))
            }
            None => None,
        };
        let primary = conn.map(|conn| Primary {
            conn,
            confirm: None,
            addr: String::new(),
            generation: 0,
        });
        Ok(Self {
            inner: Arc::new(Inner {
                keys: Keys::new(&config.prefix),
                goodput: config.goodput.clone(),
                primary: RwLock::new(primary),
                failover,
                config,
            }),
        })
    }

    /// The key prefix (every key this store writes starts with it).
    pub fn prefix(&self) -> &str {
        self.inner.keys.prefix()
    }

    /// Loads the scripts so that the next invocations need no `NOSCRIPT`
    /// retry (a restarted Redis has an empty script cache).
    async fn load_scripts(&self) -> Result<(), SloStoreError> {
        let mut conn = self.primary()?.conn;
        load_scripts_on(&mut conn).await
    }

    /// The current primary's connection. In sentinel mode this also starts
    /// the background task (once, from the first call inside a runtime).
    fn primary(&self) -> Result<Primary, SloStoreError> {
        self.ensure_watch();
        let p = self
            .inner
            .primary
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        p.ok_or_else(|| {
            self.suspect();
            SloStoreError::Unavailable("no Redis primary found yet (asking the sentinels)".into())
        })
    }

    /// Runs `f` on the primary's connection; a failure that may mean a
    /// failover makes the background task re-ask the sentinels.
    async fn on_primary<T, F, Fut>(&self, f: F) -> Result<T, SloStoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let p = self.primary()?;
        let r = f(p.conn).await.map_err(map_err);
        if let Err(e) = &r {
            if e.is_retryable() {
                self.suspect();
            }
        }
        r
    }

    /// Runs a prepared script invocation (one round trip).
    fn run<T>(&self, inv: Result<ScriptInvocation<'static>, SloStoreError>) -> StoreFuture<'_, T>
    where
        T: FromRedisValue + Send + 'static,
    {
        Box::pin(async move {
            let inv = inv?;
            self.on_primary(|mut conn| async move { inv.invoke_async::<T>(&mut conn).await })
                .await
        })
    }

    /// Counts outcomes in one round trip (a pipeline when several); in
    /// sentinel mode remembers them until a replica confirms them.
    async fn count(&self, batch: &[OutcomeRecord]) -> Result<(), SloStoreError> {
        let p = self.primary()?;
        let r = self.count_on(&p.conn, batch).await;
        match &r {
            Ok(()) => self.remember(p.generation, batch),
            Err(e) if e.is_retryable() => self.suspect(),
            Err(_) => {}
        }
        r
    }

    async fn count_on(
        &self,
        conn: &ConnectionManager,
        batch: &[OutcomeRecord],
    ) -> Result<(), SloStoreError> {
        let mut conn = conn.clone();
        if let [o] = batch {
            return self
                .outcome(o)
                .invoke_async::<i64>(&mut conn)
                .await
                .map(drop)
                .map_err(map_err);
        }
        // One round trip; the script is loaded first in case Redis restarted.
        let mut pipe = redis::pipe();
        pipe.load_script(&scripts::OUTCOME).ignore();
        for o in batch {
            pipe.invoke_script(&self.outcome(o)).ignore();
        }
        pipe.query_async::<()>(&mut conn).await.map_err(map_err)
    }

    fn admit(&self, a: &AdmissionRecord) -> Result<ScriptInvocation<'static>, SloStoreError> {
        let json = serde_json::to_string(a).map_err(|e| SloStoreError::corrupt("record", e))?;
        let mut inv = scripts::ADMIT.prepare_invoke();
        inv.key(self.inner.keys.request(&a.request_id))
            .arg(json)
            .arg(a.phase.as_str())
            .arg(ttl_ms(a.ttl));
        Ok(inv)
    }

    fn phase(&self, id: &str, phase: Phase, ttl: Duration) -> ScriptInvocation<'static> {
        let mut inv = scripts::PHASE.prepare_invoke();
        inv.key(self.inner.keys.request(id))
            .arg(phase.as_str())
            .arg(ttl_ms(ttl));
        inv
    }

    fn outcome(&self, o: &OutcomeRecord) -> ScriptInvocation<'static> {
        let cfg = &self.inner.goodput;
        // A bucket must outlive every window that can include it.
        let bucket_ttl = ttl_ms(cfg.retention + cfg.bucket + Duration::from_secs(60));
        let mut inv = scripts::OUTCOME.prepare_invoke();
        inv.key(self.inner.keys.request(&o.request_id))
            .key(self.inner.keys.done(&o.request_id))
            .key(self.inner.keys.bucket(cfg.bucket_of(o.finished_at_ms)))
            .arg(ttl_ms(cfg.dedup_ttl))
            .arg(bucket_ttl)
            .arg(goodput::field_prefix(&o.class, &o.tenant));
        for c in goodput::GoodputCounter::of(&o.verdict()) {
            inv.arg(c.as_str());
        }
        inv
    }

    fn publish(
        &self,
        s: &ReplicaState,
        ttl: Duration,
    ) -> Result<ScriptInvocation<'static>, SloStoreError> {
        let json = serde_json::to_string(s).map_err(|e| SloStoreError::corrupt("state", e))?;
        let mut inv = scripts::PUBLISH.prepare_invoke();
        inv.key(self.inner.keys.replica(&s.replica_id))
            .key(self.inner.keys.replica_index())
            .arg(json)
            .arg(ttl_ms(ttl))
            .arg(&s.replica_id);
        Ok(inv)
    }

    async fn replicas(&self) -> Result<Vec<ReplicaState>, SloStoreError> {
        let mut inv = scripts::CLUSTER.prepare_invoke();
        inv.key(self.inner.keys.replica_index())
            .arg(self.inner.keys.replica_prefix());
        let raw: Vec<String> = self
            .on_primary(|mut conn| async move { inv.invoke_async(&mut conn).await })
            .await?;
        let mut out = Vec::with_capacity(raw.len());
        for json in raw {
            // One replica's unreadable entry (e.g. a newer, incompatible
            // version mid-rollout) must not blind every other replica.
            match serde_json::from_str::<ReplicaState>(&json) {
                Ok(s) => out.push(s),
                Err(e) => tracing::warn!(error = %e, "skipping corrupt replica state in Redis"),
            }
        }
        out.sort_by(|a, b| a.replica_id.cmp(&b.replica_id));
        Ok(out)
    }

    async fn sum(&self, window: Duration, now_ms: u64) -> Result<Vec<GoodputRow>, SloStoreError> {
        let mut inv = scripts::GOODPUT.prepare_invoke();
        for bucket in self.inner.goodput.bucket_range(window, now_ms) {
            inv.key(self.inner.keys.bucket(bucket));
        }
        let flat: Vec<String> = self
            .on_primary(|mut conn| async move { inv.invoke_async(&mut conn).await })
            .await?;
        let mut rows = RowSet::default();
        for pair in flat.chunks(2) {
            let [field, value] = pair else {
                return Err(SloStoreError::Corrupt("odd goodput reply".into()));
            };
            let (class, tenant, counter) = goodput::parse_field(field)
                .ok_or_else(|| SloStoreError::Corrupt(format!("bad goodput field {field:?}")))?;
            let n: u64 = value
                .parse()
                .map_err(|e| SloStoreError::corrupt(&format!("goodput {field:?}"), e))?;
            goodput::add(rows.row(&class, &tenant), counter, n);
        }
        Ok(rows.into_rows())
    }

    async fn get(&self, id: &str) -> Result<Option<AdmissionRecord>, SloStoreError> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.inner.keys.request(id)).arg("rec").arg("phase");
        let (rec, phase): (Option<String>, Option<String>) = self
            .on_primary(|mut conn| async move { cmd.query_async(&mut conn).await })
            .await?;
        let Some(rec) = rec else { return Ok(None) };
        let mut rec: AdmissionRecord =
            serde_json::from_str(&rec).map_err(|e| SloStoreError::corrupt("request record", e))?;
        if let Some(phase) = phase {
            rec.phase = phase
                .parse()
                .map_err(|e| SloStoreError::corrupt("request phase", e))?;
        }
        Ok(Some(rec))
    }

    /// `PING` and the scripts loaded; with sentinels, first the primary the
    /// sentinels name now (switching to it, and replaying what the old one
    /// may have lost), so that a [`ResilientStore`](crate::ResilientStore)
    /// probing a failed-over Redis finds the new primary.
    async fn probe(&self) -> Result<(), SloStoreError> {
        if self.inner.failover.is_some() {
            self.rediscover().await?;
            self.replay_stale().await?;
        }
        self.on_primary(|mut conn| async move {
            redis::cmd("PING").query_async::<String>(&mut conn).await
        })
        .await?;
        self.load_scripts().await
    }
}

async fn load_scripts_on(conn: &mut ConnectionManager) -> Result<(), SloStoreError> {
    let mut pipe = redis::pipe();
    for source in scripts::ALL {
        pipe.cmd("SCRIPT").arg("LOAD").arg(source);
    }
    pipe.query_async::<Vec<String>>(conn)
        .await
        .map_err(map_err)?;
    Ok(())
}

fn map_err(e: RedisError) -> SloStoreError {
    if e.is_timeout() {
        SloStoreError::Timeout
    } else if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        // No primary here (any more): a replica refusing writes (Redis 6
        // wraps it in a script error), a primary cut off from its replicas,
        // a server still loading its data. Retryable, like a lost connection.
        || matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
        || e.to_string().contains("READONLY")
    {
        SloStoreError::Unavailable(e.to_string())
    } else if matches!(e.code(), Some("CORRUPT" | "WRONGTYPE"))
        || matches!(
            e.kind(),
            redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType
        )
    {
        SloStoreError::Corrupt(e.to_string())
    } else {
        SloStoreError::Backend(e.to_string())
    }
}

impl SloStore for RedisStore {
    fn record_admission(&self, a: &AdmissionRecord) -> StoreFuture<'_, ()> {
        let run = self.run::<i64>(self.admit(a));
        Box::pin(async move { run.await.map(drop) })
    }

    fn record_phase(&self, request_id: &str, phase: Phase, ttl: Duration) -> StoreFuture<'_, ()> {
        let run = self.run::<i64>(Ok(self.phase(request_id, phase, ttl)));
        Box::pin(async move { run.await.map(drop) })
    }

    fn record_outcome(&self, o: &OutcomeRecord) -> StoreFuture<'_, ()> {
        let o = o.clone();
        Box::pin(async move { self.count(std::slice::from_ref(&o)).await })
    }

    fn record_outcomes<'a>(&'a self, batch: &'a [OutcomeRecord]) -> StoreFuture<'a, ()> {
        Box::pin(self.count(batch))
    }

    fn publish_replica_state(&self, s: &ReplicaState, ttl: Duration) -> StoreFuture<'_, ()> {
        let run = self.run::<i64>(self.publish(s, ttl));
        Box::pin(async move { run.await.map(drop) })
    }

    fn cluster_state(&self) -> StoreFuture<'_, Vec<ReplicaState>> {
        Box::pin(self.replicas())
    }

    fn goodput(&self, window: Duration, now_ms: u64) -> StoreFuture<'_, Vec<GoodputRow>> {
        Box::pin(self.sum(window, now_ms))
    }

    fn admission(&self, request_id: &str) -> StoreFuture<'_, Option<AdmissionRecord>> {
        let id = request_id.to_owned();
        Box::pin(async move { self.get(&id).await })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(self.probe())
    }
}
