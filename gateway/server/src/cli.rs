//! The command line, compatible with sglang-router's for the flags users paste.

use std::path::PathBuf;

use baton_policies::PolicyKind;
use clap::Parser;

use crate::auth::Secret;
use crate::config::{CacheIsolation, ConfigError, GatewayConfig, PdProtocol, PrefillWorker};

/// Baton gateway: an OpenAI-compatible reverse proxy for LLM engine fleets that
/// splits every request into a prefill call and a decode call.
///
/// Aggregated mode:  baton-gateway --worker-urls http://127.0.0.1:8000 http://127.0.0.1:8001
///
/// PD, vLLM (NIXL): baton-gateway --pd-disaggregation --prefill http://127.0.0.1:8100 --decode http://127.0.0.1:8200
///
/// PD, SGLang:      baton-gateway --pd-disaggregation --prefill http://127.0.0.1:30001 8998 --decode http://127.0.0.1:30002
#[derive(Debug, Parser)]
#[command(name = "baton-gateway", version, verbatim_doc_comment)]
pub struct Cli {
    /// TOML config file; command-line flags override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to listen on.
    #[arg(long)]
    pub host: Option<String>,
    /// Port to listen on (default 30000).
    #[arg(long)]
    pub port: Option<u16>,

    /// Plain OpenAI-compatible workers (aggregated mode).
    #[arg(long, num_args = 1.., value_name = "URL")]
    pub worker_urls: Vec<String>,

    /// Enable prefill/decode disaggregation (implied by --prefill/--decode).
    #[arg(long)]
    pub pd_disaggregation: bool,
    /// A prefill worker: URL, then optionally its SGLang bootstrap port or `none`.
    /// Repeat for more workers.
    #[arg(long, num_args = 1..=2, value_names = ["URL", "BOOTSTRAP_PORT"], action = clap::ArgAction::Append)]
    pub prefill: Vec<String>,
    /// `--prefill` values grouped per occurrence (filled by [`Cli::parse_args`]).
    #[arg(skip)]
    pub prefill_groups: Vec<Vec<String>>,
    /// A decode worker URL. Repeat for more workers.
    #[arg(long, num_args = 1, value_name = "URL", action = clap::ArgAction::Append)]
    pub decode: Vec<String>,
    /// PD wire protocol [default: sglang if any prefill names a bootstrap port, else vllm].
    #[arg(long, value_name = "vllm|sglang")]
    pub pd_protocol: Option<PdProtocol>,

    /// Routing policy for every pool: round_robin, random, power_of_two, least_load, cache_aware.
    #[arg(long)]
    pub policy: Option<PolicyKind>,
    /// Routing policy for the prefill pool (overrides --policy).
    #[arg(long)]
    pub prefill_policy: Option<PolicyKind>,
    /// Routing policy for the decode pool (overrides --policy).
    #[arg(long)]
    pub decode_policy: Option<PolicyKind>,
    /// cache_aware: minimum prefix-match ratio to follow the cache.
    #[arg(long)]
    pub cache_threshold: Option<f32>,
    /// cache_aware: absolute in-flight difference that counts as imbalance.
    #[arg(long)]
    pub balance_abs_threshold: Option<u64>,
    /// cache_aware: relative in-flight ratio that counts as imbalance.
    #[arg(long)]
    pub balance_rel_threshold: Option<f32>,
    /// cache_aware: largest prefix tree per worker, in characters.
    #[arg(long)]
    pub max_tree_size: Option<usize>,

    /// Prometheus listener address.
    #[arg(long)]
    pub prometheus_host: Option<String>,
    /// Prometheus listener port (metrics are also on the main port at /metrics).
    #[arg(long)]
    pub prometheus_port: Option<u16>,

    /// Largest request body in bytes (413 above; default 32 MiB).
    #[arg(long)]
    pub max_payload_size: Option<usize>,
    /// Client connections open at once (default: what the open-file limit
    /// leaves room for, at most 10000); new ones past it are closed.
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// A client connection must send its first byte this soon (default 10).
    #[arg(long)]
    pub client_first_byte_timeout_secs: Option<f64>,
    /// ... and its first request head (then each HTTP/1 head) this soon
    /// after accept (default 30).
    #[arg(long)]
    pub client_header_timeout_secs: Option<f64>,
    /// A client connection with no request and no traffic this long is
    /// closed (default 60).
    #[arg(long)]
    pub client_idle_timeout_secs: Option<f64>,
    /// Total time budget of one request, retries included.
    #[arg(long)]
    pub request_timeout_secs: Option<f64>,
    /// TCP connect timeout to a worker.
    #[arg(long)]
    pub connect_timeout_ms: Option<u64>,
    /// Time budget of the whole prefill leg.
    #[arg(long)]
    pub prefill_timeout_secs: Option<f64>,
    /// Time to a leg's response head / first stream chunk.
    #[arg(long)]
    pub first_byte_timeout_secs: Option<f64>,
    /// Longest silence between two stream chunks.
    #[arg(long)]
    pub idle_timeout_secs: Option<f64>,

    /// Retries before the first byte reached the client.
    #[arg(long)]
    pub retry_max_retries: Option<u32>,
    #[arg(long)]
    pub retry_initial_backoff_ms: Option<u64>,
    #[arg(long)]
    pub retry_max_backoff_ms: Option<u64>,
    #[arg(long)]
    pub retry_backoff_multiplier: Option<f64>,
    #[arg(long)]
    pub retry_jitter_factor: Option<f64>,
    /// Disable retries.
    #[arg(long)]
    pub disable_retries: bool,

    /// Consecutive failures that open a worker's breaker.
    #[arg(long)]
    pub cb_failure_threshold: Option<u32>,
    /// Successes in half-open state that close it again.
    #[arg(long)]
    pub cb_success_threshold: Option<u32>,
    /// How long a breaker stays open before probing.
    #[arg(long)]
    pub cb_timeout_duration_secs: Option<f64>,
    /// Disable circuit breakers.
    #[arg(long)]
    pub disable_circuit_breaker: bool,

    /// Active health check period.
    #[arg(long)]
    pub health_check_interval_secs: Option<f64>,
    #[arg(long)]
    pub health_check_timeout_secs: Option<f64>,
    #[arg(long)]
    pub health_failure_threshold: Option<u32>,
    #[arg(long)]
    pub health_success_threshold: Option<u32>,
    #[arg(long)]
    pub health_check_endpoint: Option<String>,

    /// Route and admit by predicted TTFT/TPOT against each request's SLO.
    #[arg(long)]
    pub slo_routing: bool,
    /// When no placement can meet the SLO: off (place anyway), reject (429 +
    /// Retry-After) or queue (wait until the TTFT deadline).
    #[arg(long, value_name = "off|reject|queue")]
    pub slo_admission: Option<String>,
    /// Where SLO budgets and shared cluster state live: memory or redis.
    #[arg(long, value_name = "memory|redis")]
    pub slo_store: Option<crate::slo::config::StoreKind>,
    /// Redis URL for --slo-store redis.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Class of requests that name none (see [slo.classes] in the config).
    #[arg(long)]
    pub slo_default_class: Option<String>,
    /// Sliding window of the goodput accounting.
    #[arg(long)]
    pub slo_window_secs: Option<u64>,
    /// This replica's name in shared state.
    #[arg(long)]
    pub replica_id: Option<String>,

    /// Clients must send `Authorization: Bearer KEY` (sglang-router compatible;
    /// engines get it too unless --worker-api-key is given). Per-tenant keys
    /// go in the config file ([[slo.api_keys]]).
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<Secret>,
    /// Key for /metrics and /v1/slo on the main port (always open on the
    /// --prometheus-port listener).
    #[arg(long, value_name = "KEY")]
    pub admin_api_key: Option<Secret>,
    /// Sent to engines as `Authorization: Bearer KEY` (the client's own
    /// credentials are never forwarded).
    #[arg(long, value_name = "KEY")]
    pub worker_api_key: Option<Secret>,
    /// File holding the fleet key shared with the engines (>= 16 bytes).
    #[arg(long, value_name = "PATH")]
    pub fleet_key_file: Option<PathBuf>,
    /// The fleet key itself, from the environment only.
    #[arg(long, env = "BATON_FLEET_KEY", hide = true, hide_env_values = true)]
    pub fleet_key: Option<Secret>,
    /// Prefix-cache sharing between tenants: tenant (default: a cache salt per
    /// tenant) or shared.
    #[arg(long, value_name = "tenant|shared")]
    pub cache_isolation: Option<CacheIsolation>,

    /// DNS discovery: every address HOST resolves to is a prefill worker on
    /// PORT, re-resolved every --discovery-interval-ms (compose `--scale`,
    /// Kubernetes headless services).
    #[arg(long, value_name = "HOST:PORT")]
    pub prefill_dns: Option<String>,
    /// ... a decode worker.
    #[arg(long, value_name = "HOST:PORT")]
    pub decode_dns: Option<String>,
    /// ... a worker of an aggregated gateway.
    #[arg(long, value_name = "HOST:PORT")]
    pub worker_dns: Option<String>,
    /// SGLang bootstrap port of the prefill workers --prefill-dns finds.
    #[arg(long)]
    pub prefill_dns_bootstrap_port: Option<u16>,
    /// A TOML or JSON file of workers, re-read when it changes.
    #[arg(long, value_name = "FILE")]
    pub workers_file: Option<PathBuf>,
    /// How often DNS names are re-resolved and the workers file is checked (default 5000).
    #[arg(long)]
    pub discovery_interval_ms: Option<u64>,

    /// Log filter (e.g. info, debug, baton_gateway=trace); RUST_LOG wins when set.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

impl Cli {
    /// Parses arguments, keeping each `--prefill URL [PORT]` group together.
    pub fn parse_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Self::command().try_get_matches_from(args)?;
        let mut cli = Self::from_arg_matches(&matches)?;
        cli.prefill_groups = matches
            .get_occurrences::<String>("prefill")
            .map(|occ| occ.map(|vals| vals.cloned().collect()).collect())
            .unwrap_or_default();
        Ok(cli)
    }

    /// The effective config: file (if any), then flags on top.
    pub fn into_config(self) -> Result<GatewayConfig, ConfigError> {
        let mut c = match &self.config {
            Some(path) => GatewayConfig::from_toml_file(path)?,
            None => GatewayConfig::default(),
        };
        macro_rules! set {
            ($($field:expr => $value:expr),* $(,)?) => {
                $(if let Some(v) = $value { $field = v; })*
            };
        }
        set!(
            c.host => self.host,
            c.port => self.port,
            c.policy => self.policy,
            c.prometheus_host => self.prometheus_host,
            c.max_payload_size => self.max_payload_size,
            c.connections.first_byte_secs => self.client_first_byte_timeout_secs,
            c.connections.header_read_secs => self.client_header_timeout_secs,
            c.connections.idle_secs => self.client_idle_timeout_secs,
            c.timeouts.request_secs => self.request_timeout_secs,
            c.timeouts.connect_ms => self.connect_timeout_ms,
            c.timeouts.prefill_secs => self.prefill_timeout_secs,
            c.timeouts.first_byte_secs => self.first_byte_timeout_secs,
            c.timeouts.idle_secs => self.idle_timeout_secs,
            c.retry.max_retries => self.retry_max_retries,
            c.retry.initial_backoff_ms => self.retry_initial_backoff_ms,
            c.retry.max_backoff_ms => self.retry_max_backoff_ms,
            c.retry.backoff_multiplier => self.retry_backoff_multiplier,
            c.retry.jitter_factor => self.retry_jitter_factor,
            c.breaker.failure_threshold => self.cb_failure_threshold,
            c.breaker.success_threshold => self.cb_success_threshold,
            c.breaker.open_secs => self.cb_timeout_duration_secs,
            c.health.interval_secs => self.health_check_interval_secs,
            c.health.timeout_secs => self.health_check_timeout_secs,
            c.health.failure_threshold => self.health_failure_threshold,
            c.health.success_threshold => self.health_success_threshold,
            c.health.endpoint => self.health_check_endpoint,
            c.policy_config.cache_aware.cache_threshold => self.cache_threshold,
            c.policy_config.cache_aware.balance_abs_threshold => self.balance_abs_threshold,
            c.policy_config.cache_aware.balance_rel_threshold => self.balance_rel_threshold,
            c.policy_config.cache_aware.max_tree_size => self.max_tree_size,
        );
        if self.prometheus_port.is_some() {
            c.prometheus_port = self.prometheus_port;
        }
        if self.max_connections.is_some() {
            c.connections.max = self.max_connections;
        }
        for (field, value) in [
            (&mut c.api_key, self.api_key),
            (&mut c.admin_api_key, self.admin_api_key),
            (&mut c.worker_api_key, self.worker_api_key),
            (&mut c.fleet_key, self.fleet_key),
        ] {
            if value.is_some() {
                *field = value;
            }
        }
        if self.fleet_key_file.is_some() {
            c.fleet_key_file = self.fleet_key_file;
        }
        if let Some(i) = self.cache_isolation {
            c.cache_isolation = i;
        }
        if self.prefill_policy.is_some() {
            c.prefill_policy = self.prefill_policy;
        }
        if self.decode_policy.is_some() {
            c.decode_policy = self.decode_policy;
        }
        if self.pd_protocol.is_some() {
            c.pd_protocol = self.pd_protocol;
        }
        set!(
            c.slo.store => self.slo_store,
            c.slo.redis_url => self.redis_url,
            c.slo.default_class => self.slo_default_class,
            c.slo.window_secs => self.slo_window_secs,
            c.slo.replica_id => self.replica_id,
        );
        if self.slo_routing {
            c.slo.routing = true;
        }
        if let Some(a) = self.slo_admission {
            c.slo.policy.admission = match a.as_str() {
                "off" => baton_policies::slo::AdmissionMode::Off,
                "reject" => baton_policies::slo::AdmissionMode::Reject,
                "queue" => baton_policies::slo::AdmissionMode::Queue,
                o => {
                    return Err(ConfigError::Invalid(format!(
                        "--slo-admission {o}: expected off, reject or queue"
                    )))
                }
            };
        }
        if !c.slo.classes.contains_key(&c.slo.default_class) {
            return Err(ConfigError::Invalid(format!(
                "SLO default class '{}' is not among the classes ({})",
                c.slo.default_class,
                c.slo.classes.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        if self.disable_retries {
            c.retry.max_retries = 0;
        }
        if self.disable_circuit_breaker {
            c.breaker.enabled = false;
        }
        if !self.worker_urls.is_empty() {
            c.worker_urls = self.worker_urls;
        }
        if !self.prefill_groups.is_empty() {
            c.prefill = self
                .prefill_groups
                .into_iter()
                .map(parse_prefill)
                .collect::<Result<_, _>>()?;
        }
        if !self.decode.is_empty() {
            c.decode = self.decode;
        }
        for (field, value) in [
            (&mut c.discovery.prefill_dns, self.prefill_dns),
            (&mut c.discovery.decode_dns, self.decode_dns),
            (&mut c.discovery.both_dns, self.worker_dns),
        ] {
            if value.is_some() {
                *field = value;
            }
        }
        if self.prefill_dns_bootstrap_port.is_some() {
            c.discovery.prefill_bootstrap_port = self.prefill_dns_bootstrap_port;
        }
        if self.workers_file.is_some() {
            c.discovery.file = self.workers_file;
        }
        if let Some(ms) = self.discovery_interval_ms {
            c.discovery.interval_ms = ms;
        }
        if self.pd_disaggregation
            && !c.discovery.enabled()
            && (c.prefill.is_empty() || c.decode.is_empty())
        {
            return Err(ConfigError::Invalid(
                "--pd-disaggregation needs at least one --prefill and one --decode".into(),
            ));
        }
        c.mode()?;
        Ok(c)
    }
}

fn parse_prefill(args: Vec<String>) -> Result<PrefillWorker, ConfigError> {
    let mut it = args.into_iter();
    let url = it
        .next()
        .ok_or_else(|| ConfigError::Invalid("--prefill needs a URL".into()))?;
    let bootstrap_port = match it.next() {
        None => None,
        Some(p) if p.eq_ignore_ascii_case("none") => None,
        Some(p) => Some(p.parse::<u16>().map_err(|_| {
            ConfigError::Invalid(format!(
                "--prefill {url} {p}: bootstrap port must be a number or 'none'"
            ))
        })?),
    };
    Ok(PrefillWorker {
        url,
        bootstrap_port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;

    fn cli(args: &str) -> Result<GatewayConfig, String> {
        let argv = std::iter::once("baton-gateway").chain(args.split_whitespace());
        Cli::parse_args(argv)
            .map_err(|e| e.to_string())?
            .into_config()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn sglang_router_command_line_works_unchanged() {
        let c = cli("--pd-disaggregation --prefill http://127.0.0.1:30001 8998 \
             --prefill http://127.0.0.1:30003 none --decode http://127.0.0.1:30002 \
             --decode http://127.0.0.1:30004 --policy cache_aware --prefill-policy round_robin \
             --decode-policy power_of_two --host 0.0.0.0 --port 8000 --prometheus-port 29000 \
             --max-payload-size 1048576 --request-timeout-secs 60 --retry-max-retries 2 \
             --cb-failure-threshold 4 --health-check-interval-secs 5")
        .unwrap();
        assert_eq!(c.prefill.len(), 2);
        assert_eq!(c.prefill[0].bootstrap_port, Some(8998));
        assert_eq!(c.prefill[1].bootstrap_port, None);
        assert_eq!(c.decode.len(), 2);
        assert_eq!(c.mode().unwrap(), Mode::Pd(PdProtocol::Sglang));
        assert_eq!(c.prefill_policy, Some(PolicyKind::RoundRobin));
        assert_eq!(c.decode_policy, Some(PolicyKind::PowerOfTwo));
        assert_eq!((c.host.as_str(), c.port), ("0.0.0.0", 8000));
        assert_eq!(c.prometheus_port, Some(29000));
        assert_eq!(c.max_payload_size, 1 << 20);
        assert_eq!(c.timeouts.request_secs, 60.0);
        assert_eq!(c.retry.max_retries, 2);
        assert_eq!(c.breaker.failure_threshold, 4);
        assert_eq!(c.health.interval_secs, 5.0);
    }

    #[test]
    fn connection_limits_and_body_limit() {
        let c = cli("--worker-urls http://a:1").unwrap();
        assert_eq!(c.max_payload_size, 32 << 20);
        assert_eq!(c.connections.max, None);
        let c = cli(
            "--worker-urls http://a:1 --max-connections 100 --client-first-byte-timeout-secs 2 \
             --client-header-timeout-secs 5 --client-idle-timeout-secs 7",
        )
        .unwrap();
        assert_eq!(c.connections.max, Some(100));
        assert_eq!(c.connections.first_byte_secs, 2.0);
        assert_eq!(c.connections.header_read_secs, 5.0);
        assert_eq!(c.connections.idle_secs, 7.0);
        for bad in [
            "--max-connections 0",
            "--client-idle-timeout-secs 0",
            "--client-first-byte-timeout-secs 1e300",
            "--client-header-timeout-secs NaN",
            "--max-payload-size 0",
        ] {
            let e = cli(&format!("--worker-urls http://a:1 {bad}")).unwrap_err();
            assert!(e.contains("must be"), "{bad}: {e}");
        }
    }

    #[test]
    fn vllm_is_the_default_without_bootstrap_ports() {
        let c = cli("--prefill http://127.0.0.1:1 --decode http://127.0.0.1:2").unwrap();
        assert_eq!(c.mode().unwrap(), Mode::Pd(PdProtocol::Vllm));
        let c =
            cli("--prefill http://127.0.0.1:1 9 --decode http://127.0.0.1:2 --pd-protocol vllm")
                .unwrap();
        assert_eq!(c.mode().unwrap(), Mode::Pd(PdProtocol::Vllm));
    }

    #[test]
    fn security_flags() {
        let c = cli(
            "--worker-urls http://a:1 --api-key sk-1 --admin-api-key sk-2 \
             --worker-api-key sk-3 --fleet-key-file /run/fleet.key --cache-isolation shared",
        )
        .unwrap();
        assert_eq!(c.api_key.as_ref().map(Secret::expose), Some("sk-1"));
        assert_eq!(c.admin_api_key.as_ref().map(Secret::expose), Some("sk-2"));
        assert_eq!(c.worker_api_key.as_ref().map(Secret::expose), Some("sk-3"));
        assert_eq!(
            c.fleet_key_file.as_deref(),
            Some(std::path::Path::new("/run/fleet.key"))
        );
        assert_eq!(c.cache_isolation, CacheIsolation::Shared);
        assert!(
            !format!("{c:?}").contains("sk-"),
            "keys never Debug-printed"
        );
        assert!(cli("--worker-urls http://a:1 --cache-isolation none")
            .unwrap_err()
            .contains("tenant or shared"));
    }

    #[test]
    fn discovery_flags() {
        let c = cli(
            "--pd-disaggregation --prefill-dns prefill:8000 --decode-dns decode:8000 \
             --discovery-interval-ms 250 --workers-file /etc/baton/workers.toml",
        )
        .unwrap();
        assert_eq!(c.discovery.prefill_dns.as_deref(), Some("prefill:8000"));
        assert_eq!(c.discovery.decode_dns.as_deref(), Some("decode:8000"));
        assert_eq!(c.discovery.interval_ms, 250);
        assert!(c.discovery.file.is_some());
        assert_eq!(c.mode().unwrap(), Mode::Pd(PdProtocol::Vllm));
        let c = cli("--worker-dns engine:8000").unwrap();
        assert_eq!(c.mode().unwrap(), Mode::Aggregated);
        assert!(cli("--worker-dns engine")
            .unwrap_err()
            .contains("host:port"));
    }

    #[test]
    fn helpful_errors() {
        assert!(cli("--pd-disaggregation --decode http://a:1").is_err());
        assert!(cli("--prefill http://a:1 notaport --decode http://b:1")
            .unwrap_err()
            .contains("bootstrap port"));
        assert!(cli("--policy best").unwrap_err().contains("round_robin"));
        let c = cli("--worker-urls http://a:1 http://b:2").unwrap();
        assert_eq!(c.worker_urls.len(), 2);
    }
}
