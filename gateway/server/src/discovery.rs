//! Workers found at runtime: DNS names and a watched file.
//!
//! - **DNS**: `[discovery] prefill_dns`/`decode_dns`/`both_dns` = `host:port`,
//!   re-resolved every `interval_ms`; every address is a worker (what
//!   `docker compose --scale` and Kubernetes headless services give). An
//!   address that appears is added; one that vanishes is drained (see
//!   [`crate::pool`]). A failed resolution keeps the last set (logged, at
//!   most once a minute while it lasts).
//! - **File** (llm-d style): `[discovery] file`, a TOML `[[workers]]` or JSON
//!   list of worker specs (the `POST /workers` body), re-read when its
//!   modification time or size changes; same add/drain semantics. A file
//!   that is missing or does not parse keeps the last set.
//!
//! Each source only adds and drains the workers it found itself
//! ([`Origin`]): a static or API-added worker stays whatever a name resolves to.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::periodic::Periodic;
use crate::state::AppState;
use crate::worker::{Origin, Role};
use crate::workers_api::{self, WorkerSpec};

/// A repeated failure is logged at warn level at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Turns a name into addresses (a seam: tests resolve names their own way).
pub trait Resolve: Send + Sync + std::fmt::Debug {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>>;
}

/// The system resolver (`getaddrinfo` through tokio: `/etc/hosts`, DNS).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// Starts the configured sources on `tasks`; they stop with `stop`.
pub fn spawn(state: &Arc<AppState>, stop: &CancellationToken, tasks: &TaskTracker) {
    let d = &state.config.discovery;
    let every = Duration::from_millis(d.interval_ms.max(1));
    for (role, name) in d.dns_names() {
        let role = match role {
            "prefill" => Role::Prefill,
            "decode" => Role::Decode,
            _ => Role::Unified,
        };
        tasks.spawn(watch_dns(
            Arc::clone(state),
            role,
            name.to_owned(),
            Arc::new(SystemResolver),
            every,
            stop.clone(),
        ));
    }
    if let Some(path) = &d.file {
        tasks.spawn(watch_file(
            Arc::clone(state),
            path.clone(),
            every,
            stop.clone(),
        ));
    }
}

/// What one pass changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub drained: Vec<String>,
}

/// Makes the `origin` workers of `role`'s pool exactly `desired` (those
/// another source already holds are left to it): adds the new, drains the gone.
pub fn reconcile(
    state: &Arc<AppState>,
    origin: Origin,
    role: Role,
    desired: &[WorkerSpec],
) -> Changes {
    let mut changes = Changes::default();
    let Some(pool) = state.pools.for_role(role) else {
        return changes;
    };
    let want: BTreeSet<String> = desired
        .iter()
        .filter_map(|s| workers_api::normalize_url(&s.url).ok())
        .collect();
    let members = pool.workers.snapshot();
    for w in members.iter().filter(|w| w.origin == origin) {
        if !want.contains(&w.url) && pool.remove(&w.url).is_ok() {
            changes.drained.push(w.url.clone());
        }
    }
    for spec in desired {
        let Ok(url) = workers_api::normalize_url(&spec.url) else {
            continue;
        };
        if members.iter().any(|w| w.url == url) {
            continue;
        }
        match workers_api::add(state, spec, origin) {
            Ok(w) => changes.added.push(w.url.clone()),
            Err(workers_api::ApiError::Duplicate(_)) => {}
            Err(e) => {
                tracing::warn!(source = origin.label(), worker = %spec.url, error = %e, "discovered worker refused")
            }
        }
    }
    if !changes.added.is_empty() || !changes.drained.is_empty() {
        tracing::info!(
            source = origin.label(),
            role = role.label(),
            added = ?changes.added,
            drained = ?changes.drained,
            "discovered workers changed"
        );
    }
    changes
}

/// Logs a failure that may repeat every tick: warn at first and then at
/// most every [`WARN_EVERY`], debug in between.
#[derive(Debug, Default)]
struct RateLimited {
    last: Option<Instant>,
}

impl RateLimited {
    fn failed(&mut self, what: &str, error: &dyn std::fmt::Display) {
        if self.last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            self.last = Some(Instant::now());
            tracing::warn!(source = what, error = %error, "discovery failed; keeping the last set of workers");
        } else {
            tracing::debug!(source = what, error = %error, "discovery still failing");
        }
    }

    fn recovered(&mut self, what: &str) {
        if self.last.take().is_some() {
            tracing::info!(source = what, "discovery recovered");
        }
    }
}

/// `http://ip:port` (IPv6 in brackets).
fn addr_url(a: SocketAddr) -> String {
    format!("http://{a}")
}

/// Re-resolves `name` every `every` until `stop`; the first pass runs at once.
pub async fn watch_dns(
    state: Arc<AppState>,
    role: Role,
    name: String,
    resolver: Arc<dyn Resolve>,
    every: Duration,
    stop: CancellationToken,
) {
    let Ok((host, port)) = crate::config::dns_target(&name) else {
        tracing::error!(name = %name, "discovery name is not host:port");
        return;
    };
    let bootstrap_port = match role {
        Role::Prefill => state.config.discovery.prefill_bootstrap_port,
        _ => None,
    };
    let role_label = match role {
        Role::Unified => "both",
        r => r.label(),
    };
    let what = format!("dns {name}");
    let mut log = RateLimited::default();
    let mut tick = Periodic::new(every, stop);
    while tick.next().await {
        let Some(resolved) = tick.unless_stopped(resolver.resolve(&host, port)).await else {
            return;
        };
        let addrs = match resolved {
            Ok(a) if !a.is_empty() => a,
            Ok(_) => {
                log.failed(&what, &"no addresses");
                continue;
            }
            Err(e) => {
                log.failed(&what, &e);
                continue;
            }
        };
        log.recovered(&what);
        let urls: BTreeSet<String> = addrs.into_iter().map(addr_url).collect();
        let desired: Vec<WorkerSpec> = urls
            .into_iter()
            .map(|url| WorkerSpec {
                url,
                role: Some(role_label.to_owned()),
                bootstrap_port,
                model: None,
            })
            .collect();
        reconcile(&state, Origin::Dns, role, &desired);
    }
}

/// [`watch_dns`] with a resolver of the caller's, until the handle is aborted.
pub fn spawn_dns_with(
    state: &Arc<AppState>,
    role: Role,
    name: &str,
    resolver: Arc<dyn Resolve>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(watch_dns(
        Arc::clone(state),
        role,
        name.to_owned(),
        resolver,
        every,
        CancellationToken::new(),
    ))
}

/// The workers file: `{"workers": [...]}`, a bare JSON list, or TOML `[[workers]]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum WorkersFile {
    Table { workers: Vec<WorkerSpec> },
    List(Vec<WorkerSpec>),
}

/// The specs a workers file lists.
pub fn parse_workers_file(text: &str) -> Result<Vec<WorkerSpec>, String> {
    let t = text.trim_start();
    let parsed: WorkersFile = if t.starts_with('{') || (t.starts_with('[') && !t.starts_with("[["))
    {
        serde_json::from_str(t).map_err(|e| format!("invalid JSON: {e}"))?
    } else if t.is_empty() {
        WorkersFile::List(Vec::new())
    } else {
        toml::from_str(t).map_err(|e| format!("invalid TOML: {e}"))?
    };
    Ok(match parsed {
        WorkersFile::Table { workers } | WorkersFile::List(workers) => workers,
    })
}

/// When the file last changed, as far as polling can tell.
fn signature(path: &Path) -> std::io::Result<(Option<SystemTime>, u64)> {
    let m = std::fs::metadata(path)?;
    Ok((m.modified().ok(), m.len()))
}

/// Re-reads `path` whenever it changes (checked every `every`) until `stop`.
pub async fn watch_file(
    state: Arc<AppState>,
    path: PathBuf,
    every: Duration,
    stop: CancellationToken,
) {
    let what = format!("file {}", path.display());
    let mut log = RateLimited::default();
    let mut seen = None;
    let mut tick = Periodic::new(every, stop);
    while tick.next().await {
        let sig = match signature(&path) {
            Ok(s) => s,
            Err(e) => {
                log.failed(&what, &e);
                continue;
            }
        };
        if seen == Some(sig) {
            continue;
        }
        let specs = match tokio::fs::read_to_string(&path)
            .await
            .map_err(|e| e.to_string())
            .and_then(|t| parse_workers_file(&t))
        {
            Ok(s) => s,
            Err(e) => {
                // Retried at the next tick (a writer may be half-way through).
                log.failed(&what, &e);
                continue;
            }
        };
        seen = Some(sig);
        log.recovered(&what);
        for pool in state.pools.all() {
            let mut mine = Vec::new();
            for spec in &specs {
                match workers_api::parse_role(spec.role.as_deref(), state.mode) {
                    Ok(r) if r == pool.role => mine.push(spec.clone()),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(source = %what, worker = %spec.url, error = %e, "worker in file refused")
                    }
                }
            }
            reconcile(&state, Origin::File, pool.role, &mine);
        }
    }
}

/// [`watch_file`] on the caller's path, until the handle is aborted.
pub fn spawn_file_with(
    state: &Arc<AppState>,
    path: PathBuf,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(watch_file(
        Arc::clone(state),
        path,
        every,
        CancellationToken::new(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_files_in_toml_and_json() {
        let toml = r#"
            [[workers]]
            url = "http://p:1"
            role = "prefill"
            bootstrap_port = 8998
            [[workers]]
            url = "http://d:1"
            worker_type = "decode"
        "#;
        let w = parse_workers_file(toml).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].bootstrap_port, Some(8998));
        assert_eq!(w[1].role.as_deref(), Some("decode"));
        let json = r#"{"workers": [{"url": "http://a:1", "model": "m"}]}"#;
        assert_eq!(
            parse_workers_file(json).unwrap()[0].model.as_deref(),
            Some("m")
        );
        let list = r#"[{"url": "http://a:1"}, {"url": "http://b:1"}]"#;
        assert_eq!(parse_workers_file(list).unwrap().len(), 2);
        assert!(parse_workers_file("").unwrap().is_empty());
        assert!(parse_workers_file("[[workers]]\nurl = ").is_err());
        assert!(parse_workers_file(r#"{"workers": [{"role": "decode"}]}"#).is_err());
    }

    #[test]
    fn addresses_become_urls() {
        assert_eq!(
            addr_url("10.0.0.7:8000".parse().unwrap()),
            "http://10.0.0.7:8000"
        );
        assert_eq!(addr_url("[::1]:8000".parse().unwrap()), "http://[::1]:8000");
    }
}
