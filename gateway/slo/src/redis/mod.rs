//! The Redis store: state shared by gateway replicas.

mod keys;
mod scripts;

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, FromRedisValue, RedisError, ScriptInvocation};

pub use self::keys::key_id;
use self::keys::Keys;
use crate::error::ttl_ms;
use crate::goodput::{self, GoodputConfig, RowSet};
use crate::{
    AdmissionRecord, GoodputRow, OutcomeRecord, Phase, ReplicaState, SloStore, SloStoreError,
    StoreFuture,
};

/// Connection and key settings.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// e.g. `redis://127.0.0.1:6379/0`.
    pub url: String,
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
            prefix: "baton:{slo}".into(),
            goodput: GoodputConfig::default(),
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_secs(1),
            reconnect_retries: 2,
            reconnect_min_delay: Duration::from_millis(20),
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
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    keys: Keys,
    goodput: GoodputConfig,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("keys", &self.keys)
            .field("goodput", &self.goodput)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects (fails if Redis is unreachable) and loads the scripts.
    pub async fn connect(config: RedisConfig) -> Result<Self, SloStoreError> {
        let client = Client::open(config.url.as_str()).map_err(map_err)?;
        let conn = ConnectionManager::new_with_config(client, config.manager_config())
            .await
            .map_err(map_err)?;
        let store = Self::with_manager(conn, &config);
        store.load_scripts().await?;
        Ok(store)
    }

    /// Does not connect: the first call does (so a gateway can start while
    /// Redis is down, behind a [`ResilientStore`](crate::ResilientStore)).
    pub fn connect_lazy(config: RedisConfig) -> Result<Self, SloStoreError> {
        let client = Client::open(config.url.as_str()).map_err(map_err)?;
        let conn = ConnectionManager::new_lazy_with_config(client, config.manager_config())
            .map_err(map_err)?;
        Ok(Self::with_manager(conn, &config))
    }

    fn with_manager(conn: ConnectionManager, config: &RedisConfig) -> Self {
        Self {
            conn,
            keys: Keys::new(&config.prefix),
            goodput: config.goodput.clone(),
        }
    }

    /// The key prefix (every key this store writes starts with it).
    pub fn prefix(&self) -> &str {
        self.keys.prefix()
    }

    /// Loads the scripts so that the next invocations need no `NOSCRIPT`
    /// retry (a restarted Redis has an empty script cache).
    async fn load_scripts(&self) -> Result<(), SloStoreError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for source in scripts::ALL {
            pipe.cmd("SCRIPT").arg("LOAD").arg(source);
        }
        pipe.query_async::<Vec<String>>(&mut conn)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    /// Runs a prepared script invocation (one round trip).
    fn run<T>(&self, inv: Result<ScriptInvocation<'static>, SloStoreError>) -> StoreFuture<'_, T>
    where
        T: FromRedisValue + Send + 'static,
    {
        let mut conn = self.conn.clone();
        Box::pin(async move { inv?.invoke_async::<T>(&mut conn).await.map_err(map_err) })
    }

    fn admit(&self, a: &AdmissionRecord) -> Result<ScriptInvocation<'static>, SloStoreError> {
        let json = serde_json::to_string(a).map_err(|e| SloStoreError::corrupt("record", e))?;
        let mut inv = scripts::ADMIT.prepare_invoke();
        inv.key(self.keys.request(&a.request_id))
            .arg(json)
            .arg(a.phase.as_str())
            .arg(ttl_ms(a.ttl));
        Ok(inv)
    }

    fn phase(&self, id: &str, phase: Phase, ttl: Duration) -> ScriptInvocation<'static> {
        let mut inv = scripts::PHASE.prepare_invoke();
        inv.key(self.keys.request(id))
            .arg(phase.as_str())
            .arg(ttl_ms(ttl));
        inv
    }

    fn outcome(&self, o: &OutcomeRecord) -> ScriptInvocation<'static> {
        let cfg = &self.goodput;
        // A bucket must outlive every window that can include it.
        let bucket_ttl = ttl_ms(cfg.retention + cfg.bucket + Duration::from_secs(60));
        let mut inv = scripts::OUTCOME.prepare_invoke();
        inv.key(self.keys.request(&o.request_id))
            .key(self.keys.done(&o.request_id))
            .key(self.keys.bucket(cfg.bucket_of(o.finished_at_ms)))
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
        inv.key(self.keys.replica(&s.replica_id))
            .key(self.keys.replica_index())
            .arg(json)
            .arg(ttl_ms(ttl))
            .arg(&s.replica_id);
        Ok(inv)
    }

    async fn replicas(&self) -> Result<Vec<ReplicaState>, SloStoreError> {
        let mut conn = self.conn.clone();
        let raw: Vec<String> = scripts::CLUSTER
            .key(self.keys.replica_index())
            .arg(self.keys.replica_prefix())
            .invoke_async(&mut conn)
            .await
            .map_err(map_err)?;
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
        for bucket in self.goodput.bucket_range(window, now_ms) {
            inv.key(self.keys.bucket(bucket));
        }
        let mut conn = self.conn.clone();
        let flat: Vec<String> = inv.invoke_async(&mut conn).await.map_err(map_err)?;
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
        let mut conn = self.conn.clone();
        let (rec, phase): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(self.keys.request(id))
            .arg("rec")
            .arg("phase")
            .query_async(&mut conn)
            .await
            .map_err(map_err)?;
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

    async fn probe(&self) -> Result<(), SloStoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(map_err)?;
        self.load_scripts().await
    }
}

fn map_err(e: RedisError) -> SloStoreError {
    if e.is_timeout() {
        SloStoreError::Timeout
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
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
        let run = self.run::<i64>(Ok(self.outcome(o)));
        Box::pin(async move { run.await.map(drop) })
    }

    fn record_outcomes<'a>(&'a self, batch: &'a [OutcomeRecord]) -> StoreFuture<'a, ()> {
        // One round trip; the script is loaded first in case Redis restarted.
        let mut pipe = redis::pipe();
        pipe.load_script(&scripts::OUTCOME).ignore();
        for o in batch {
            pipe.invoke_script(&self.outcome(o)).ignore();
        }
        let mut conn = self.conn.clone();
        Box::pin(async move { pipe.query_async::<()>(&mut conn).await.map_err(map_err) })
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
