//! Everything a request handler needs, shared behind one `Arc`.

use std::sync::Arc;
use std::time::Duration;

use baton_policies::PolicyKind;

use crate::config::{secs, ConfigError, GatewayConfig, Mode};
use crate::metrics::Metrics;
use crate::pool::{Pool, Pools};
use crate::upstream::Upstream;
use crate::worker::{Role, Worker};

#[derive(Debug)]
pub struct AppState {
    pub config: GatewayConfig,
    pub mode: Mode,
    pub pools: Pools,
    pub upstream: Upstream,
    pub metrics: Arc<Metrics>,
    pub slo: Arc<crate::slo::SloEngine>,
    pub auth: crate::auth::Auth,
    /// Keys the tenants' cache salts: the fleet key (every replica salts a
    /// tenant alike) or a random per-process key.
    pub salt_key: baton_protocol::FleetKey,
}

impl AppState {
    pub fn new(config: GatewayConfig) -> Result<Self, ConfigError> {
        let mode = config.mode()?;
        let build = |kind: PolicyKind| {
            baton_policies::build(kind, &config.policy_config)
                .map_err(|e| ConfigError::Invalid(format!("routing policy {kind}: {e}")))
        };
        let make = |url: &str, role: Role, port: Option<u16>| {
            Arc::new(Worker::new(url, role, port, &config.breaker))
        };
        let pools = match mode {
            Mode::Aggregated => Pools::Aggregated(Pool::new(
                Role::Unified,
                config
                    .worker_urls
                    .iter()
                    .map(|u| make(u, Role::Unified, None))
                    .collect(),
                build(config.policy)?,
            )),
            Mode::Pd(_) => Pools::Pd {
                prefill: Pool::new(
                    Role::Prefill,
                    config
                        .prefill
                        .iter()
                        .map(|p| make(&p.url, Role::Prefill, p.bootstrap_port))
                        .collect(),
                    build(config.prefill_policy.unwrap_or(config.policy))?,
                ),
                decode: Pool::new(
                    Role::Decode,
                    config
                        .decode
                        .iter()
                        .map(|u| make(u, Role::Decode, None))
                        .collect(),
                    build(config.decode_policy.unwrap_or(config.policy))?,
                ),
            },
        };
        let config_slo = config.slo.clone();
        let metrics = Arc::new(Metrics::new());
        let auth = crate::auth::Auth::new(&config)?;
        let fleet = baton_protocol::FleetKey::load(
            config.fleet_key_file.as_deref(),
            config.fleet_key.as_ref().map(|k| k.expose().to_owned()),
        )
        .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let salt_key = match &fleet {
            Some(k) => k.clone(),
            None => baton_protocol::FleetKey::from_bytes(&rand::random::<[u8; 32]>())
                .map_err(|e| ConfigError::Invalid(e.to_string()))?,
        };
        // sglang-router's workers inherit the router's key.
        let worker_key = config.worker_api_key.as_ref().or(config.api_key.as_ref());
        let upstream = Upstream::new(Duration::from_millis(config.timeouts.connect_ms))
            .with_credentials(crate::upstream::EngineCredentials::new(
                worker_key.map(crate::auth::Secret::expose),
                fleet,
            ));
        Ok(Self {
            auth,
            salt_key,
            config,
            mode,
            pools,
            upstream,
            slo: Arc::new(crate::slo::SloEngine::new(
                config_slo,
                Arc::clone(&metrics),
            )?),
            metrics,
        })
    }

    pub fn idle_timeout(&self) -> Duration {
        secs(self.config.timeouts.idle_secs)
    }
    pub fn first_byte_timeout(&self) -> Duration {
        secs(self.config.timeouts.first_byte_secs)
    }
    pub fn prefill_timeout(&self) -> Duration {
        secs(self.config.timeouts.prefill_secs)
    }
    pub fn request_timeout(&self) -> Duration {
        secs(self.config.timeouts.request_secs)
    }
}
