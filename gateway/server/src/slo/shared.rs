//! The SLO store seen from one replica: where admissions and outcomes are
//! written (never on the request path: writes are spawned), and the
//! ~100 ms sync that publishes this replica's worker loads and reads the
//! other replicas' loads and the cluster-wide goodput counters.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_slo::{
    GoodputConfig, GoodputRow, MemoryStore, OutcomeRecord, RedisConfig, RedisStore, ReplicaState,
    ResilientConfig, ResilientStats, ResilientStore, SentinelConfig, SloStore, WorkerLoad,
};
use tokio_util::sync::CancellationToken;

use super::config::{SloConfig, StoreKind};
use super::tracker::LoadTracker;
use crate::config::ConfigError;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Debug)]
pub struct Shared {
    pub replica_id: String,
    pub store: Arc<dyn SloStore>,
    /// Present for a shared (Redis) store: its health and failure counters.
    pub stats: Option<Arc<ResilientStats>>,
    resilient: Option<Arc<ResilientStore<RedisStore>>>,
    /// Other replicas' worker loads from the last sync.
    peers: Mutex<Vec<ReplicaState>>,
    /// Cluster-wide goodput rows from the last sync (shared stores only).
    cluster_goodput: Mutex<Option<Vec<GoodputRow>>>,
    live_replicas: Mutex<usize>,
}

/// The Redis store's settings: `redis_url`, or the sentinels (passwords
/// from the environment, never from the file, never logged).
fn redis_config(cfg: &SloConfig) -> Result<RedisConfig, ConfigError> {
    if cfg.redis_sentinels.is_empty() {
        return Ok(RedisConfig::new(cfg.redis_url.clone()));
    }
    if cfg.redis_master_name.is_empty() {
        return Err(ConfigError::Invalid(
            "[slo] redis_sentinels needs redis_master_name (the name in `sentinel monitor`)".into(),
        ));
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mut s = SentinelConfig::new(cfg.redis_sentinels.clone(), cfg.redis_master_name.clone());
    s.sentinel_password = env("BATON_REDIS_SENTINEL_PASSWORD");
    s.password = env("BATON_REDIS_PASSWORD");
    s.validate()
        .map_err(|e| ConfigError::Invalid(format!("[slo] redis_sentinels: {e}")))?;
    tracing::info!(
        sentinels = ?cfg.redis_sentinels,
        master = %cfg.redis_master_name,
        "SLO store: Redis through Sentinel (redis_url unused)"
    );
    Ok(RedisConfig::sentinel(s))
}

impl Shared {
    pub fn new(cfg: &SloConfig) -> Result<Self, ConfigError> {
        let replica_id = if cfg.replica_id.is_empty() {
            format!("gw-{:08x}", rand::random::<u32>())
        } else {
            cfg.replica_id.clone()
        };
        let (store, stats, resilient): (Arc<dyn SloStore>, _, _) = match cfg.store {
            StoreKind::Memory => (
                Arc::new(MemoryStore::new(GoodputConfig::default())),
                None,
                None,
            ),
            StoreKind::Redis => {
                let backend = RedisStore::connect_lazy(redis_config(cfg)?).map_err(|e| {
                    if cfg.redis_sentinels.is_empty() {
                        ConfigError::Invalid(format!("--redis-url {}: {e}", cfg.redis_url))
                    } else {
                        ConfigError::Invalid(format!("[slo] redis_sentinels: {e}"))
                    }
                })?;
                let rc = ResilientConfig {
                    request_timeout: Duration::from_millis(cfg.store_timeout_ms.max(1)),
                    ..ResilientConfig::default()
                };
                let r = Arc::new(ResilientStore::new(backend, rc));
                (r.clone() as Arc<dyn SloStore>, Some(r.stats()), Some(r))
            }
        };
        Ok(Self {
            replica_id,
            store,
            stats,
            resilient,
            peers: Mutex::new(Vec::new()),
            cluster_goodput: Mutex::new(None),
            live_replicas: Mutex::new(1),
        })
    }

    pub fn is_shared(&self) -> bool {
        self.resilient.is_some()
    }

    /// Spawns a store write; the request never waits for it. Only a shared
    /// store is written: nothing reads the embedded store's admissions and
    /// outcomes (this replica's counts are its accounting window), and
    /// writing them cost a lock, map entries and a 5-minute dedup entry per
    /// request.
    pub fn write_outcome(&self, o: OutcomeRecord) {
        if !self.is_shared() {
            return;
        }
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            let store = Arc::clone(&self.store);
            h.spawn(async move {
                if let Err(e) = store.record_outcome(&o).await {
                    tracing::debug!(error = %e, "SLO outcome not written to the shared store");
                }
            });
        }
    }

    pub fn write_admission(&self, a: baton_slo::AdmissionRecord) {
        if !self.is_shared() {
            return;
        }
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            let store = Arc::clone(&self.store);
            h.spawn(async move {
                if let Err(e) = store.record_admission(&a).await {
                    tracing::debug!(error = %e, "SLO admission not written to the shared store");
                }
            });
        }
    }

    /// Other replicas' loads summed per worker URL.
    pub fn peer_load(&self, url: &str) -> WorkerLoad {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let mut sum = WorkerLoad {
            url: url.to_owned(),
            ..WorkerLoad::default()
        };
        for p in peers.iter() {
            for w in p.workers.iter().filter(|w| w.url == url) {
                sum.queued_prefill_tokens += w.queued_prefill_tokens;
                sum.active_prefills += w.active_prefills;
                sum.active_decodes += w.active_decodes;
                sum.pending_decodes += w.pending_decodes;
            }
        }
        sum
    }

    pub fn cluster_goodput(&self) -> Option<Vec<GoodputRow>> {
        self.cluster_goodput
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn live_replicas(&self) -> usize {
        *self.live_replicas.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sync loop; runs until `stop`.
    pub async fn run_sync(
        self: Arc<Self>,
        tracker: Arc<LoadTracker>,
        interval: Duration,
        window: Duration,
        stop: CancellationToken,
    ) {
        let _resync = self
            .resilient
            .as_ref()
            .map(|r| crate::abort::AbortOnDrop(r.spawn_resync()));
        let mut tick =
            crate::periodic::Periodic::new(interval.max(Duration::from_millis(10)), stop);
        let ttl = (interval * 10).max(Duration::from_secs(1));
        let mut n: u64 = 0;
        while tick.next().await {
            let state = ReplicaState {
                replica_id: self.replica_id.clone(),
                updated_ms: now_ms(),
                workers: tracker
                    .snapshot()
                    .into_iter()
                    .map(|(url, s)| WorkerLoad {
                        url,
                        queued_prefill_tokens: s.queued_prefill_tokens,
                        active_prefills: s.active_prefills,
                        active_decodes: s.active_decodes,
                        pending_decodes: s.pending_decodes,
                        prefill_tokens_per_s: s.prefill_rate.value,
                        ttft_ms_ewma: s.ttft_ms.value,
                        tpot_ms_ewma: None,
                        tpot_fit: Some(s.tpot.coefficients()),
                    })
                    .collect(),
            };
            let _ = self.store.publish_replica_state(&state, ttl).await;
            if let Ok(all) = self.store.cluster_state().await {
                *self.live_replicas.lock().unwrap_or_else(|p| p.into_inner()) = all.len().max(1);
                let others: Vec<ReplicaState> = all
                    .into_iter()
                    .filter(|r| r.replica_id != self.replica_id)
                    .collect();
                *self.peers.lock().unwrap_or_else(|p| p.into_inner()) = others;
            }
            // Goodput counters change slowly; read them about once a second.
            if self.is_shared() && n.is_multiple_of(10) {
                if let Ok(rows) = self.store.goodput(window, now_ms()).await {
                    *self
                        .cluster_goodput
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(rows);
                }
            }
            n += 1;
        }
    }
}
