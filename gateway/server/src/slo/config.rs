//! SLO classes, tenants and the SLO-aware policy's settings.

use std::collections::BTreeMap;

use baton_policies::slo::SloPolicyConfig;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SloConfig {
    /// Named latency targets; `x-slo-class` picks one.
    pub classes: BTreeMap<String, ClassConfig>,
    /// Class of requests that name none.
    pub default_class: String,
    /// API keys → tenant (and optionally class). Keys are stored as SHA-256
    /// hex digests, never in clear.
    pub api_keys: Vec<ApiKeyConfig>,
    /// Route and admit by predicted TTFT/TPOT instead of the pools' policies.
    pub routing: bool,
    pub policy: SloPolicyConfig,
    /// Sliding window of the goodput accounting.
    pub window_secs: u64,
    /// `memory` (embedded, default) or `redis`.
    pub store: StoreKind,
    pub redis_url: String,
    /// Redis Sentinel addresses (`host:port`). When set, the store follows
    /// the primary the sentinels name for `redis_master_name` across
    /// failovers, and `redis_url` is unused. Passwords come from the
    /// environment only: `BATON_REDIS_SENTINEL_PASSWORD` (the sentinels'
    /// `requirepass`) and `BATON_REDIS_PASSWORD` (the primary's); neither is
    /// ever logged.
    pub redis_sentinels: Vec<String>,
    /// The master's name in the sentinels' `sentinel monitor` line
    /// (required with `redis_sentinels`).
    pub redis_master_name: String,
    /// Bound on any SLO-store call on the request path.
    pub store_timeout_ms: u64,
    /// Period of the cluster-state sync with the other replicas.
    pub sync_interval_ms: u64,
    /// Name of this replica in shared state (random when empty).
    pub replica_id: String,
    /// Period of reading each worker's `/metrics` for engine-reported load
    /// (0 disables); used when `routing` is on.
    pub engine_metrics_interval_ms: u64,
    /// Prior of the TPOT model before observations arrive.
    pub prior_tpot_base_ms: f64,
    pub prior_tpot_per_seq_ms: f64,
    /// Prior prefill throughput (tokens/s) before observations arrive.
    pub prior_prefill_tokens_per_s: f64,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ClassConfig {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Lowercase hex SHA-256 of the key (`printf %s KEY | sha256sum`).
    pub sha256: String,
    pub tenant: String,
    #[serde(default)]
    pub class: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Memory,
    Redis,
}

impl std::str::FromStr for StoreKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "memory" => Ok(Self::Memory),
            "redis" => Ok(Self::Redis),
            o => Err(format!(
                "unknown SLO store '{o}' (expected memory or redis)"
            )),
        }
    }
}

impl Default for SloConfig {
    fn default() -> Self {
        let class = |ttft: Option<f64>, tpot: Option<f64>| ClassConfig {
            ttft_ms: ttft,
            tpot_ms: tpot,
        };
        let mut classes = BTreeMap::new();
        // MLPerf's tiers for 8B-class models.
        classes.insert("interactive".into(), class(Some(500.0), Some(30.0)));
        classes.insert("standard".into(), class(Some(2000.0), Some(100.0)));
        classes.insert("batch".into(), class(None, None));
        Self {
            classes,
            default_class: "standard".into(),
            api_keys: Vec::new(),
            routing: false,
            policy: SloPolicyConfig::default(),
            window_secs: 60,
            store: StoreKind::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_sentinels: Vec::new(),
            redis_master_name: String::new(),
            store_timeout_ms: 5,
            sync_interval_ms: 100,
            replica_id: String::new(),
            engine_metrics_interval_ms: 500,
            prior_tpot_base_ms: 20.0,
            prior_tpot_per_seq_ms: 1.0,
            prior_prefill_tokens_per_s: 5000.0,
        }
    }
}
