//! Gateway configuration: a TOML file, overridden by the command line.
//!
//! Defaults follow the SGLang router's so users switching over get the same
//! behaviour; Baton adds the per-leg timeouts it needs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_policies::{PolicyConfig, PolicyKind};
use serde::Deserialize;

use crate::secret::Secret;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    pub host: String,
    pub port: u16,
    /// A second listener serving only `/metrics`.
    pub prometheus_host: String,
    pub prometheus_port: Option<u16>,
    /// Aggregated mode: plain OpenAI-compatible engines.
    pub worker_urls: Vec<String>,
    pub prefill: Vec<PrefillWorker>,
    pub decode: Vec<String>,
    /// Protocol of the PD pools; chosen automatically when absent.
    pub pd_protocol: Option<PdProtocol>,
    pub policy: PolicyKind,
    pub prefill_policy: Option<PolicyKind>,
    pub decode_policy: Option<PolicyKind>,
    pub policy_config: PolicyConfig,
    /// Largest request body in bytes (413 above).
    pub max_payload_size: usize,
    /// Client connections: limit and deadlines (see `listener.rs`).
    pub connections: ConnectionConfig,
    pub timeouts: TimeoutConfig,
    pub retry: RetryConfig,
    pub breaker: BreakerConfig,
    pub health: HealthConfig,
    pub slo: crate::slo::config::SloConfig,
    /// When set, clients must send `Authorization: Bearer <key>` (tenant
    /// `default`); per-tenant keys are `[[slo.api_keys]]`.
    pub api_key: Option<Secret>,
    /// Key for `/metrics` and `/v1/slo` on the main listener.
    pub admin_api_key: Option<Secret>,
    /// Sent to engines as `Authorization: Bearer`; defaults to `api_key`
    /// (sglang-router's workers inherit the router's key). The client's own
    /// credentials are never forwarded.
    pub worker_api_key: Option<Secret>,
    /// File holding the fleet key shared with the engines.
    pub fleet_key_file: Option<PathBuf>,
    /// The fleet key itself (`BATON_FLEET_KEY`; `baton up` sets it in-process).
    pub fleet_key: Option<Secret>,
    /// Prefix-cache sharing between tenants: `tenant` (a salt per tenant) or
    /// `shared`.
    pub cache_isolation: CacheIsolation,
    /// Workers found at runtime: DNS names and a watched file (`crate::discovery`).
    pub discovery: DiscoveryConfig,
}

/// Workers that come and go: DNS names re-resolved periodically (every
/// address a worker: what `docker compose --scale` and Kubernetes headless
/// services give) and a watched file of workers. Each source adds and
/// drains only the workers it found.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// `host:port` (an `http://` prefix is allowed): every address it
    /// resolves to is a prefill worker on that port.
    pub prefill_dns: Option<String>,
    /// ... a decode worker.
    pub decode_dns: Option<String>,
    /// ... a worker of an aggregated gateway (prefill and decode in one).
    pub both_dns: Option<String>,
    /// SGLang bootstrap port of the prefill workers `prefill_dns` finds.
    pub prefill_bootstrap_port: Option<u16>,
    /// A TOML (`[[workers]]`) or JSON (`{"workers": [...]}` or a list) file
    /// of workers (`url`, `role`, `bootstrap_port`, `model`), re-read when
    /// its modification time or size changes.
    pub file: Option<PathBuf>,
    /// How often names are re-resolved and the file's mtime is checked.
    pub interval_ms: u64,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            prefill_dns: None,
            decode_dns: None,
            both_dns: None,
            prefill_bootstrap_port: None,
            file: None,
            interval_ms: 5_000,
        }
    }
}

impl DiscoveryConfig {
    /// Any source configured.
    pub fn enabled(&self) -> bool {
        self.dns_names().next().is_some() || self.file.is_some()
    }

    /// The configured names, with the role label each feeds.
    pub fn dns_names(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("prefill", &self.prefill_dns),
            ("decode", &self.decode_dns),
            ("both", &self.both_dns),
        ]
        .into_iter()
        .filter_map(|(role, n)| n.as_deref().map(|n| (role, n)))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.enabled() && self.interval_ms == 0 {
            return Err(ConfigError::Invalid(
                "discovery.interval_ms must be at least 1".into(),
            ));
        }
        for (role, name) in self.dns_names() {
            dns_target(name)
                .map_err(|e| ConfigError::Invalid(format!("discovery.{role}_dns '{name}': {e}")))?;
        }
        Ok(())
    }
}

/// `host:port` of a discovery name (`http://` and a trailing `/` allowed).
pub fn dns_target(name: &str) -> Result<(String, u16), String> {
    let s = name.trim();
    let s = s.strip_prefix("http://").unwrap_or(s).trim_end_matches('/');
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| "expected host:port".to_owned())?;
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("'{port}' is not a port number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') {
        return Err("expected host:port".into());
    }
    Ok((host.to_owned(), port))
}

/// Whether tenants may share prefix-cache entries.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum CacheIsolation {
    /// Every tenant's requests carry its own `cache_salt`.
    #[default]
    Tenant,
    /// No `cache_salt`: cache hits (and `cached_tokens`) cross tenants.
    Shared,
}

impl std::str::FromStr for CacheIsolation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tenant" => Ok(Self::Tenant),
            "shared" => Ok(Self::Shared),
            o => Err(format!(
                "unknown cache isolation '{o}' (expected tenant or shared)"
            )),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PrefillWorker {
    pub url: String,
    /// SGLang bootstrap port; `None` for vLLM pools or SGLang's "none".
    #[serde(default)]
    pub bootstrap_port: Option<u16>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PdProtocol {
    Vllm,
    Sglang,
}

impl std::str::FromStr for PdProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "vllm" => Ok(Self::Vllm),
            "sglang" => Ok(Self::Sglang),
            other => Err(format!(
                "unknown PD protocol '{other}' (expected vllm or sglang)"
            )),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionConfig {
    /// Client connections open at once per listener; default: what the
    /// open-file limit leaves room for, at most 10,000.
    pub max: Option<usize>,
    /// From accept to the first byte from the client.
    pub first_byte_secs: f64,
    /// From accept to the first request's head (protocol detection and the
    /// HTTP/2 handshake included); also each later HTTP/1 head.
    pub header_read_secs: f64,
    /// No request in progress and no bytes either way for this long: the
    /// connection is closed (HTTP/2: GOAWAY).
    pub idle_secs: f64,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            max: None,
            first_byte_secs: 10.0,
            header_read_secs: 30.0,
            idle_secs: 60.0,
        }
    }
}

impl ConnectionConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max == Some(0) {
            return Err(ConfigError::Invalid(
                "connections.max must be at least 1".into(),
            ));
        }
        for (name, v) in [
            ("first_byte_secs", self.first_byte_secs),
            ("header_read_secs", self.header_read_secs),
            ("idle_secs", self.idle_secs),
        ] {
            if !(v > 0.0 && v <= MAX_TIMEOUT_SECS) {
                return Err(ConfigError::Invalid(format!(
                    "connections.{name} must be a number of seconds in (0, {MAX_TIMEOUT_SECS}], got {v}"
                )));
            }
        }
        Ok(())
    }
}

/// A year: longer is a typo, and would overflow a `Duration`'s arithmetic.
const MAX_TIMEOUT_SECS: f64 = 365.0 * 86_400.0;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutConfig {
    pub connect_ms: u64,
    /// The whole prefill leg (head and body).
    pub prefill_secs: f64,
    /// From sending a leg to its response head (and, streaming, its first chunk).
    pub first_byte_secs: f64,
    /// Longest gap between two chunks of a stream.
    pub idle_secs: f64,
    /// The whole request, retries included.
    pub request_secs: f64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    pub max_retries: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub backoff_multiplier: f64,
    pub jitter_factor: f64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    pub enabled: bool,
    pub failure_threshold: u32,
    pub success_threshold: u32,
    pub open_secs: f64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    pub interval_secs: f64,
    pub timeout_secs: f64,
    pub failure_threshold: u32,
    pub success_threshold: u32,
    pub endpoint: String,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 30000,
            prometheus_host: "127.0.0.1".into(),
            prometheus_port: None,
            worker_urls: Vec::new(),
            prefill: Vec::new(),
            decode: Vec::new(),
            pd_protocol: None,
            policy: PolicyKind::CacheAware,
            prefill_policy: None,
            decode_policy: None,
            policy_config: PolicyConfig::default(),
            // Large prompts fit (a 128k-token context is well under 1 MiB
            // of text); hundreds of MiB per request only buys memory abuse.
            max_payload_size: 32 << 20,
            connections: ConnectionConfig::default(),
            timeouts: TimeoutConfig::default(),
            retry: RetryConfig::default(),
            breaker: BreakerConfig::default(),
            health: HealthConfig::default(),
            slo: crate::slo::config::SloConfig::default(),
            api_key: None,
            admin_api_key: None,
            worker_api_key: None,
            fleet_key_file: None,
            fleet_key: None,
            cache_isolation: CacheIsolation::Tenant,
            discovery: DiscoveryConfig::default(),
        }
    }
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        Self {
            connect_ms: 5_000,
            prefill_secs: 600.0,
            first_byte_secs: 600.0,
            idle_secs: 300.0,
            request_secs: 1800.0,
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_retries: 5,
            initial_backoff_ms: 50,
            max_backoff_ms: 30_000,
            backoff_multiplier: 1.5,
            jitter_factor: 0.2,
        }
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            failure_threshold: 10,
            success_threshold: 3,
            open_secs: 60.0,
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval_secs: 60.0,
            timeout_secs: 5.0,
            failure_threshold: 3,
            success_threshold: 2,
            endpoint: "/health".into(),
        }
    }
}

/// What the gateway serves, derived from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Aggregated,
    Pd(PdProtocol),
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Self::Aggregated => "aggregated",
            Self::Pd(PdProtocol::Vllm) => "pd_vllm",
            Self::Pd(PdProtocol::Sglang) => "pd_sglang",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

impl GatewayConfig {
    pub fn from_toml_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Checks the config and derives the serving mode.
    pub fn mode(&self) -> Result<Mode, ConfigError> {
        self.connections.validate()?;
        if self.max_payload_size == 0 {
            return Err(ConfigError::Invalid(
                "max_payload_size must be at least 1 byte".into(),
            ));
        }
        self.discovery.validate()?;
        let d = &self.discovery;
        let aggregated = !self.worker_urls.is_empty() || d.both_dns.is_some();
        let static_pd = !self.prefill.is_empty() || !self.decode.is_empty();
        let dns_pd = d.prefill_dns.is_some() || d.decode_dns.is_some();
        // A PD gateway whose workers all come later (the worker API, a file)
        // says so by naming its protocol.
        let pd = static_pd || dns_pd || (self.pd_protocol.is_some() && !aggregated);
        if pd && aggregated {
            return Err(ConfigError::Invalid(
                "give either --worker-urls / discovery.both_dns (aggregated) or --prefill/--decode / discovery.prefill_dns/decode_dns (PD), not both"
                    .into(),
            ));
        }
        for url in self
            .worker_urls
            .iter()
            .chain(self.decode.iter())
            .chain(self.prefill.iter().map(|p| &p.url))
        {
            validate_url(url)?;
        }
        if !pd {
            return Ok(Mode::Aggregated);
        }
        // Pools may start empty when workers come at runtime; a static list
        // with one role missing is a mistake.
        if static_pd && !d.enabled() && (self.prefill.is_empty() || self.decode.is_empty()) {
            return Err(ConfigError::Invalid(
                "PD mode needs at least one --prefill and one --decode worker".into(),
            ));
        }
        let protocol = self.pd_protocol.unwrap_or_else(|| {
            if self.prefill.iter().any(|p| p.bootstrap_port.is_some())
                || d.prefill_bootstrap_port.is_some()
            {
                PdProtocol::Sglang
            } else {
                PdProtocol::Vllm
            }
        });
        Ok(Mode::Pd(protocol))
    }
}

pub(crate) fn validate_url(url: &str) -> Result<(), ConfigError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| ConfigError::Invalid(format!("invalid worker URL '{url}': {e}")))?;
    match uri.scheme_str() {
        Some("http") if uri.host().is_some() => Ok(()),
        Some("https") => Err(ConfigError::Invalid(format!(
            "worker URL '{url}': https upstreams are not supported; terminate TLS in front of the engine"
        ))),
        _ => Err(ConfigError::Invalid(format!(
            "worker URL '{url}' must look like http://host:port"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trip_with_defaults() {
        let c: GatewayConfig = toml::from_str(
            r#"
            port = 8080
            decode = ["http://127.0.0.1:2"]
            [[prefill]]
            url = "http://127.0.0.1:1"
            bootstrap_port = 8998
            [timeouts]
            idle_secs = 5
            "#,
        )
        .unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.timeouts.idle_secs, 5.0);
        assert_eq!(c.timeouts.request_secs, 1800.0);
        assert_eq!(c.mode().unwrap(), Mode::Pd(PdProtocol::Sglang));
    }

    #[test]
    fn security_settings_from_toml() {
        let c: GatewayConfig = toml::from_str(
            r#"
            api_key = "sk-main"
            admin_api_key = "sk-admin"
            worker_api_key = "sk-engine"
            fleet_key_file = "/run/secrets/fleet"
            cache_isolation = "shared"
            [[slo.api_keys]]
            sha256 = "5f8eee912cd7c0ccb238560e8a22e7f78909e6dac18288188f7f4ea35112700d"
            tenant = "acme"
            class = "batch"
            "#,
        )
        .unwrap();
        assert_eq!(c.api_key.as_ref().map(Secret::expose), Some("sk-main"));
        assert_eq!(
            c.admin_api_key.as_ref().map(Secret::expose),
            Some("sk-admin")
        );
        assert_eq!(
            c.worker_api_key.as_ref().map(Secret::expose),
            Some("sk-engine")
        );
        assert_eq!(c.cache_isolation, CacheIsolation::Shared);
        assert_eq!(c.slo.api_keys[0].class.as_deref(), Some("batch"));
        assert_eq!(
            GatewayConfig::default().cache_isolation,
            CacheIsolation::Tenant
        );
        assert!(!format!("{c:?}").contains("sk-"));
    }

    #[test]
    fn unknown_keys_and_bad_modes_are_errors() {
        assert!(toml::from_str::<GatewayConfig>("prot = 1").is_err());
        let mut c = GatewayConfig {
            decode: vec!["http://a:1".into()],
            ..Default::default()
        };
        assert!(c.mode().is_err());
        c.prefill.push(PrefillWorker {
            url: "http://b:1".into(),
            bootstrap_port: None,
        });
        assert_eq!(c.mode().unwrap(), Mode::Pd(PdProtocol::Vllm));
        c.worker_urls.push("http://c:1".into());
        assert!(c.mode().is_err());
        let bad = GatewayConfig {
            worker_urls: vec!["localhost:8000".into()],
            ..Default::default()
        };
        assert!(bad.mode().is_err());
    }

    #[test]
    fn the_compose_discovery_configs_parse() {
        for text in [
            include_str!("../../../docker/gateway/gateway-dns.toml"),
            include_str!("../../../docker/gateway/chaos-scale.toml"),
        ] {
            let c: GatewayConfig = toml::from_str(text).unwrap();
            assert_eq!(c.mode().unwrap(), Mode::Pd(PdProtocol::Vllm));
            assert_eq!(c.discovery.prefill_dns.as_deref(), Some("prefill:8000"));
            assert_eq!(c.discovery.decode_dns.as_deref(), Some("decode:8000"));
        }
    }

    #[test]
    fn discovery_decides_the_mode() {
        let c: GatewayConfig = toml::from_str(
            r#"
            [discovery]
            prefill_dns = "prefill:8000"
            decode_dns = "http://decode:8000/"
            interval_ms = 500
            "#,
        )
        .unwrap();
        assert_eq!(c.mode().unwrap(), Mode::Pd(PdProtocol::Vllm));
        assert_eq!(c.discovery.interval_ms, 500);
        assert_eq!(
            dns_target("http://decode:8000/").unwrap(),
            ("decode".into(), 8000)
        );
        assert_eq!(dns_target("[::1]:9").unwrap(), ("::1".into(), 9));
        assert!(dns_target("decode").is_err());
        let mut sg = c.clone();
        sg.discovery.prefill_bootstrap_port = Some(8998);
        assert_eq!(sg.mode().unwrap(), Mode::Pd(PdProtocol::Sglang));
        let mut mixed = c.clone();
        mixed.worker_urls.push("http://a:1".into());
        assert!(mixed.mode().is_err());
        let mut bad = c;
        bad.discovery.decode_dns = Some("decode".into());
        assert!(bad.mode().unwrap_err().to_string().contains("decode_dns"));
        // Aggregated from a name; PD with every worker to come from the API.
        let agg = GatewayConfig {
            discovery: DiscoveryConfig {
                both_dns: Some("engine:8000".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(agg.mode().unwrap(), Mode::Aggregated);
        let empty_pd = GatewayConfig {
            pd_protocol: Some(PdProtocol::Vllm),
            ..Default::default()
        };
        assert_eq!(empty_pd.mode().unwrap(), Mode::Pd(PdProtocol::Vllm));
        // A file may fill in the missing role.
        let half = GatewayConfig {
            decode: vec!["http://d:1".into()],
            discovery: DiscoveryConfig {
                file: Some("/etc/baton/workers.toml".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(half.mode().is_ok());
    }
}
