//! Following a Sentinel failover without losing or doubling an outcome.
//!
//! Redis replicates asynchronously: an outcome the primary acknowledged may
//! not be on any replica yet when the primary dies, and the promoted replica
//! would not have it. So the store keeps every acknowledged outcome until a
//! replica confirms it: a background task writes a marker on a second
//! connection and `WAIT`s for `confirm_replicas` replicas (the replication
//! stream is ordered, so a replica past the marker holds every write the
//! primary acknowledged before it). When the sentinels name another primary
//! the task switches the connection and replays the unconfirmed outcomes to
//! it. A replay counts once: the outcome script sets the request's dedup
//! marker and its counters atomically, and both replicate together, so the
//! new primary either has both (the replay is a no-op) or neither (the
//! replay counts it).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Client;
use tokio::time::Instant;

use super::{load_scripts_on, map_err, Primary, RedisStore, SentinelConfig};
use crate::resilient::log_limit::LogLimit;
use crate::{OutcomeRecord, SloStoreError};

/// Outcomes per replay round trip.
const REPLAY_BATCH: usize = 1000;

pub(super) struct Failover {
    config: SentinelConfig,
    /// One discovery at a time.
    discover: tokio::sync::Mutex<()>,
    unconfirmed: Mutex<Unconfirmed>,
    /// A call failed in a way a failover explains: ask the sentinels now.
    suspect: AtomicBool,
    watching: AtomicBool,
    next_generation: AtomicU64,
    last_check: Mutex<Option<Instant>>,
    stats: Arc<FailoverStats>,
    log: LogLimit,
}

#[derive(Default)]
struct Unconfirmed {
    entries: VecDeque<Entry>,
    next_seq: u64,
}

struct Entry {
    seq: u64,
    /// The primary that acknowledged it.
    generation: u64,
    outcome: OutcomeRecord,
}

/// Counters of a Sentinel-following [`RedisStore`]: plain atomics for the
/// gateway's metrics.
#[derive(Debug, Default)]
pub struct FailoverStats {
    /// Switches to another primary.
    pub switches: AtomicU64,
    /// Outcomes acknowledged by a primary, not yet confirmed by a replica
    /// (a gauge).
    pub unconfirmed: AtomicU64,
    /// Unconfirmed outcomes replayed to a new primary.
    pub replayed: AtomicU64,
    /// Unconfirmed outcomes dropped at capacity (still counted on the
    /// primary; lost only if it fails before a replica has them).
    pub dropped: AtomicU64,
}

/// A copy of [`FailoverStats`] at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailoverStatsSnapshot {
    pub switches: u64,
    pub unconfirmed: u64,
    pub replayed: u64,
    pub dropped: u64,
}

impl FailoverStats {
    pub fn snapshot(&self) -> FailoverStatsSnapshot {
        FailoverStatsSnapshot {
            switches: self.switches.load(Relaxed),
            unconfirmed: self.unconfirmed.load(Relaxed),
            replayed: self.replayed.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
        }
    }
}

impl Failover {
    pub(super) fn new(config: SentinelConfig) -> Self {
        Self {
            config,
            discover: tokio::sync::Mutex::new(()),
            unconfirmed: Mutex::default(),
            suspect: AtomicBool::new(true),
            watching: AtomicBool::new(false),
            next_generation: AtomicU64::new(1),
            last_check: Mutex::new(None),
            stats: Arc::default(),
            log: LogLimit::new(Duration::from_secs(10)),
        }
    }

    fn unconfirmed(&self) -> std::sync::MutexGuard<'_, Unconfirmed> {
        self.unconfirmed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl RedisStore {
    /// Sentinel mode: counters of switches and unconfirmed outcomes.
    pub fn failover_stats(&self) -> Option<Arc<FailoverStats>> {
        self.inner.failover.as_ref().map(|f| f.stats.clone())
    }

    /// Sentinel mode: the `host:port` of the primary in use, if one was
    /// found.
    pub fn primary_addr(&self) -> Option<String> {
        self.inner.failover.as_ref()?;
        let p = self.inner.primary.read().unwrap_or_else(|e| e.into_inner());
        p.as_ref().map(|p| p.addr.clone())
    }

    /// Makes the background task ask the sentinels at its next tick.
    pub(super) fn suspect(&self) {
        if let Some(f) = &self.inner.failover {
            f.suspect.store(true, Relaxed);
        }
    }

    /// Keeps acknowledged outcomes until a replica confirms them.
    pub(super) fn remember(&self, generation: u64, batch: &[OutcomeRecord]) {
        let Some(f) = &self.inner.failover else {
            return;
        };
        let mut u = f.unconfirmed();
        for o in batch {
            let seq = u.next_seq;
            u.next_seq += 1;
            u.entries.push_back(Entry {
                seq,
                generation,
                outcome: o.clone(),
            });
        }
        let cap = f.config.unconfirmed_capacity;
        if u.entries.len() > cap {
            let excess = u.entries.len() - cap;
            u.entries.drain(..excess);
            f.stats.dropped.fetch_add(excess as u64, Relaxed);
        }
        f.stats.unconfirmed.store(u.entries.len() as u64, Relaxed);
    }

    /// Starts the background task (sentinel mode, once, inside a runtime).
    /// It holds the store weakly and ends with the last clone.
    pub(super) fn ensure_watch(&self) {
        let Some(f) = &self.inner.failover else {
            return;
        };
        if f.watching.swap(true, Relaxed) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            f.watching.store(false, Relaxed);
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        let period = f.config.tick;
        rt.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                RedisStore { inner }.maintain().await;
            }
        });
    }

    /// One tick: re-ask the sentinels if due, replay what an old primary
    /// may have lost, confirm what replicas hold.
    async fn maintain(&self) {
        let Some(f) = &self.inner.failover else {
            return;
        };
        let due = f.suspect.load(Relaxed)
            || f.last_check
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_none_or(|t| t.elapsed() >= f.config.check_interval);
        let mut result = Ok(());
        if due {
            result = self.rediscover().await.map(drop);
        }
        if result.is_ok() {
            result = self.replay_stale().await.map(drop);
        }
        if result.is_ok() {
            result = self.confirm().await;
        }
        if let Err(e) = result {
            if let Some(suppressed) = f.log.permit() {
                tracing::warn!(error = %e, suppressed, "SLO store: Redis primary not (yet) reachable through the sentinels");
            }
        }
    }

    /// Asks the sentinels for the primary; switches to it if it is another
    /// server and says it is a primary. Returns whether it switched.
    pub(super) async fn rediscover(&self) -> Result<bool, SloStoreError> {
        let Some(f) = &self.inner.failover else {
            return Ok(false);
        };
        let _one = f.discover.lock().await;
        *f.last_check.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let bound = self.inner.config.connect_timeout;
        let candidates = f.config.ask(bound).await?;
        let current = self
            .inner
            .primary
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut last_err = None;
        for addr in candidates {
            if let Some(p) = current.as_ref().filter(|p| p.addr == addr) {
                match bounded(bound, is_primary(&p.conn, &addr)).await {
                    Ok(()) => {
                        f.suspect.store(false, Relaxed);
                        return Ok(false);
                    }
                    Err(e) => {
                        last_err = Some(e);
                        continue;
                    }
                }
            }
            match bounded(bound, self.open_primary(f, &addr)).await {
                Ok(p) => {
                    let old = current.as_ref().map(|p| p.addr.as_str()).unwrap_or("none");
                    tracing::info!(
                        primary = %addr,
                        previous = %old,
                        "SLO store: using the Redis primary the sentinels name"
                    );
                    *self
                        .inner
                        .primary
                        .write()
                        .unwrap_or_else(|e| e.into_inner()) = Some(p);
                    if current.is_some() {
                        f.stats.switches.fetch_add(1, Relaxed);
                    }
                    f.suspect.store(false, Relaxed);
                    return Ok(true);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| SloStoreError::Unavailable("no primary named".into())))
    }

    async fn open_primary(&self, f: &Failover, addr: &str) -> Result<Primary, SloStoreError> {
        let client = Client::open(f.config.primary_info(addr)?).map_err(map_err)?;
        let cfg = self.inner.config.manager_config();
        let mut conn = ConnectionManager::new_with_config(client.clone(), cfg.clone())
            .await
            .map_err(map_err)?;
        is_primary(&conn, addr).await?;
        load_scripts_on(&mut conn).await?;
        let confirm = ConnectionManager::new_with_config(client, cfg)
            .await
            .map_err(map_err)?;
        Ok(Primary {
            conn,
            confirm: Some(confirm),
            addr: addr.to_owned(),
            generation: f.next_generation.fetch_add(1, Relaxed),
        })
    }

    /// Replays the unconfirmed outcomes an earlier primary acknowledged to
    /// the current one; they then wait for its replicas' confirmation.
    pub(super) async fn replay_stale(&self) -> Result<u64, SloStoreError> {
        let Some(f) = &self.inner.failover else {
            return Ok(0);
        };
        let Some(p) = self
            .inner
            .primary
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        else {
            return Ok(0);
        };
        let bound = self.inner.config.response_timeout;
        let mut replayed = 0;
        loop {
            let (batch, max_seq): (Vec<OutcomeRecord>, u64) = {
                let u = f.unconfirmed();
                let stale: Vec<&Entry> = u
                    .entries
                    .iter()
                    .filter(|e| e.generation != p.generation)
                    .take(REPLAY_BATCH)
                    .collect();
                let Some(last) = stale.last() else {
                    return Ok(replayed);
                };
                let max = last.seq;
                (stale.iter().map(|e| e.outcome.clone()).collect(), max)
            };
            bounded(bound, self.count_on(&p.conn, &batch)).await?;
            let mut u = f.unconfirmed();
            for e in u.entries.iter_mut() {
                if e.generation != p.generation && e.seq <= max_seq {
                    e.generation = p.generation;
                }
            }
            drop(u);
            replayed += batch.len() as u64;
            f.stats.replayed.fetch_add(batch.len() as u64, Relaxed);
            tracing::info!(
                outcomes = batch.len(),
                primary = %p.addr,
                "SLO store: replayed outcomes no replica had confirmed to the new primary"
            );
        }
    }

    /// Writes a marker and `WAIT`s for the replicas on the confirm
    /// connection; forgets the outcomes acknowledged before it.
    async fn confirm(&self) -> Result<(), SloStoreError> {
        let Some(f) = &self.inner.failover else {
            return Ok(());
        };
        let Some(p) = self
            .inner
            .primary
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        else {
            return Ok(());
        };
        let Some(mut conn) = p.confirm.clone() else {
            return Ok(());
        };
        let hi = {
            let u = f.unconfirmed();
            if !u.entries.iter().any(|e| e.generation == p.generation) {
                return Ok(());
            }
            u.next_seq
        };
        let wait = f.config.confirm_timeout;
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.inner.keys.confirm())
            .arg(p.generation)
            .arg("PX")
            .arg(60_000)
            .ignore()
            .cmd("WAIT")
            .arg(f.config.confirm_replicas)
            .arg(wait_ms);
        let (acked,): (usize,) = bounded(wait + self.inner.config.response_timeout, async move {
            pipe.query_async(&mut conn).await.map_err(map_err)
        })
        .await?;
        if acked >= f.config.confirm_replicas {
            let mut u = f.unconfirmed();
            u.entries
                .retain(|e| !(e.generation == p.generation && e.seq < hi));
            f.stats.unconfirmed.store(u.entries.len() as u64, Relaxed);
        }
        Ok(())
    }
}

/// `ROLE` says primary (a sentinel may lag behind a failover).
async fn is_primary(conn: &ConnectionManager, addr: &str) -> Result<(), SloStoreError> {
    let mut conn = conn.clone();
    let role: redis::Role = redis::cmd("ROLE")
        .query_async(&mut conn)
        .await
        .map_err(map_err)?;
    match role {
        redis::Role::Primary { .. } => Ok(()),
        _ => Err(SloStoreError::Unavailable(format!(
            "{addr} is not a primary (any more)"
        ))),
    }
}

async fn bounded<T>(
    bound: Duration,
    f: impl std::future::Future<Output = Result<T, SloStoreError>>,
) -> Result<T, SloStoreError> {
    tokio::time::timeout(bound, f).await?
}
