//! Listeners, the tower service and the non-generation endpoints.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use baton_protocol::{ClientRequest, Endpoint};
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Layer, Service};

use crate::body::{full, GatewayBody, ReadError};
use crate::config::{CacheIsolation, ConfigError, GatewayConfig};
use crate::dispatch::{self, Ctx};
use crate::error::{ErrorKind, GatewayError, Leg};
use crate::lifecycle::{EndReport, Ending, Lifecycle};
use crate::request_id::{RequestId, RequestIdLayer};
use crate::respond::{error_response, json_response};
use crate::state::AppState;

/// Slow clients get this long for the whole request body (their headers
/// and idle connections: `listener.rs`).
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long shutdown waits for in-flight requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// A running gateway; dropping it does not stop it, call [`shutdown`](Self::shutdown).
#[derive(Debug)]
pub struct RunningGateway {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub state: Arc<AppState>,
    /// Routing plugin reloads (see [`crate::plugin_reload`]).
    pub plugin_reloads: tokio::sync::watch::Receiver<crate::plugin_reload::ReloadEvents>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl RunningGateway {
    /// Stops accepting, lets in-flight requests finish (bounded), returns.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over; dropping remaining connections");
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Binds the listeners and starts serving.
pub async fn start(config: GatewayConfig) -> Result<RunningGateway, StartError> {
    let addr = format!("{}:{}", config.host, config.port);
    let metrics_addr = config
        .prometheus_port
        .map(|p| format!("{}:{}", config.prometheus_host, p));
    let state = Arc::new(AppState::new(config)?);
    let bind = |addr: String| async move {
        TcpListener::bind(&addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })
    };
    let listener = bind(addr).await?;
    let metrics_listener = match metrics_addr {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let local = listener.local_addr().map_err(|source| StartError::Bind {
        addr: "listener".into(),
        source,
    })?;
    tasks.spawn(crate::health::run(Arc::clone(&state), stop.clone()));
    if state.config.slo.routing && state.config.slo.engine_metrics_interval_ms > 0 {
        tasks.spawn(crate::engine_load::run(
            Arc::clone(&state),
            std::time::Duration::from_millis(state.config.slo.engine_metrics_interval_ms),
            stop.clone(),
        ));
    }
    tasks.spawn(Arc::clone(&state.slo.shared).run_sync(
        Arc::clone(&state.slo.tracker),
        std::time::Duration::from_millis(state.config.slo.sync_interval_ms),
        state.slo.accounting.window(),
        stop.clone(),
    ));
    tasks.spawn(sweep_idle_connections(Arc::clone(&state), stop.clone()));
    crate::discovery::spawn(&state, &stop, &tasks);
    let (reload_events, plugin_reloads) = tokio::sync::watch::channel(Default::default());
    if let Some(every) = crate::plugin_reload::interval(&state.config) {
        tasks.spawn(crate::plugin_reload::run(
            Arc::clone(&state),
            every,
            reload_events,
            stop.clone(),
        ));
    }
    tasks.spawn(accept_loop(
        listener,
        Arc::clone(&state),
        false,
        stop.clone(),
        tasks.clone(),
    ));
    let metrics_local = match metrics_listener {
        Some(l) => {
            let a = l.local_addr().ok();
            tasks.spawn(accept_loop(
                l,
                Arc::clone(&state),
                true,
                stop.clone(),
                tasks.clone(),
            ));
            a
        }
        None => None,
    };
    tracing::info!(addr = %local, mode = state.mode.label(), "baton gateway listening");
    Ok(RunningGateway {
        addr: local,
        metrics_addr: metrics_local,
        state,
        plugin_reloads,
        stop,
        tasks,
    })
}

/// Closes idle engine connections that expired or that the engine closed
/// (nothing else polls them while they wait in the pool).
async fn sweep_idle_connections(state: Arc<AppState>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(crate::upstream::pool::SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => state.upstream.pool().sweep(),
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<AppState>,
    metrics_only: bool,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let limits = crate::listener::limits(&state.config.connections);
    let (name, max) = if metrics_only {
        ("metrics", ADMIN_MAX_CONNECTIONS)
    } else {
        let max = state.config.connections.max;
        let max = max.unwrap_or_else(crate::listener::default_max_connections);
        ("main", max)
    };
    let gate = crate::listener::ConnGate::new(max, name, &state.metrics);
    loop {
        let (stream, _peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = gate.admit() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let svc = RequestIdLayer.layer(GatewayService {
            state: Arc::clone(&state),
            metrics_only,
        });
        // A token of its own: the connection's select polls it on every
        // turn, and the shared root's waiter list is one lock for all.
        let stop = stop.child_token();
        tasks.spawn(crate::listener::serve(stream, slot, svc, limits, stop));
    }
}

/// Connection limit of the metrics listener (scrapers need few).
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// The gateway as a tower service.
#[derive(Debug, Clone)]
pub struct GatewayService {
    state: Arc<AppState>,
    metrics_only: bool,
}

impl Service<Request<Incoming>> for GatewayService {
    type Response = Response<GatewayBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let state = Arc::clone(&self.state);
        let metrics_only = self.metrics_only;
        Box::pin(async move { Ok(route(state, req, metrics_only).await) })
    }
}

async fn route(
    state: Arc<AppState>,
    req: Request<Incoming>,
    metrics_only: bool,
) -> Response<GatewayBody> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    // The admin listener (`--prometheus-port`) serves only the admin
    // endpoints, open (bind it to an internal interface); on the main
    // listener they need the admin key once the gateway has keys.
    let admin_path = matches!(path.as_str(), "/metrics" | "/v1/slo");
    if metrics_only && !admin_path {
        return error_response(&GatewayError::new(Leg::Client, ErrorKind::NotFound));
    }
    if admin_path && !metrics_only && method == Method::GET {
        if let Err(e) = state.auth.admin(req.headers()) {
            return error_response(&e);
        }
    }
    if path == "/v1/models" && method == Method::GET {
        if let Err(e) = state.auth.client(req.headers()) {
            return error_response(&e);
        }
    }
    match (method, path.as_str()) {
        (Method::GET, "/health" | "/liveness") => {
            json_response(StatusCode::OK, Bytes::from_static(b"{\"status\":\"ok\"}"))
        }
        (Method::GET, "/readiness" | "/ready") => readiness(&state),
        (Method::GET, "/metrics") => {
            let window = state.slo.accounting.window().as_secs_f64();
            state.metrics.set_slo_window(window, &state.slo.report());
            if let Some(stats) = &state.slo.shared.stats {
                state.metrics.set_store_stats(&stats.snapshot());
            }
            let text = state.metrics.render(&state.pools.all());
            let mut resp = Response::new(full(text));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        (Method::GET, "/v1/models") => models(&state).await,
        (Method::GET, "/v1/slo") => slo_report(&state),
        (_, p) if crate::workers_api::handles(p) => crate::workers_api::handle(&state, req).await,
        (Method::POST, p) if crate::passthrough::is_passthrough(p) => {
            crate::passthrough::serve(state, req).await
        }
        (Method::POST, p) => match Endpoint::from_path(p) {
            Some(ep) => generate(state, ep, req).await,
            None => error_response(&GatewayError::new(Leg::Client, ErrorKind::NotFound)),
        },
        (_, p)
            if Endpoint::from_path(p).is_some()
                || crate::passthrough::is_passthrough(p)
                || matches!(
                    p,
                    "/health" | "/readiness" | "/metrics" | "/v1/models" | "/v1/slo"
                ) =>
        {
            error_response(&GatewayError::new(Leg::Client, ErrorKind::MethodNotAllowed))
        }
        _ => error_response(&GatewayError::new(Leg::Client, ErrorKind::NotFound)),
    }
}

fn readiness(state: &AppState) -> Response<GatewayBody> {
    let pools: Vec<Value> = state
        .pools
        .all()
        .iter()
        .map(|p| {
            json!({
                "role": p.role.label(),
                "policy": p.policy_name(),
                "workers": p.workers.len(),
                "healthy": p.healthy_count(),
                "confirmed_healthy": p.confirmed_healthy_count(),
            })
        })
        .collect();
    let ready = state.pools.ready();
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "mode": state.mode.label(),
        "pools": pools,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, Bytes::from(body.to_string()))
}

/// The union of the models the answering pool's workers serve.
async fn models(state: &Arc<AppState>) -> Response<GatewayBody> {
    let pools = state.pools.all();
    let Some(pool) = pools.last() else {
        return error_response(&GatewayError::new(Leg::Gateway, ErrorKind::NoWorker));
    };
    let probes = pool.workers.iter().filter(|w| w.is_healthy()).map(|w| {
        let upstream = state.upstream.clone();
        let url = w.url.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(5), upstream.get(&url, "/v1/models"))
                .await
                .ok()
                .and_then(Result::ok)
        }
    });
    let mut seen = std::collections::BTreeMap::new();
    for (status, body) in futures_util::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
    {
        if status != 200 {
            continue;
        }
        let Ok(v) = serde_json::from_slice::<Value>(&body) else {
            continue;
        };
        for m in v
            .get("data")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(id) = m.get("id").and_then(Value::as_str) {
                seen.entry(id.to_owned()).or_insert_with(|| m.clone());
            }
        }
    }
    if seen.is_empty() {
        return error_response(&GatewayError::new(pool_leg(pool.role), ErrorKind::NoWorker));
    }
    let body = json!({"object": "list", "data": seen.into_values().collect::<Vec<_>>()});
    json_response(StatusCode::OK, Bytes::from(body.to_string()))
}

fn pool_leg(role: crate::worker::Role) -> Leg {
    match role {
        crate::worker::Role::Unified => Leg::Worker,
        crate::worker::Role::Prefill => Leg::Prefill,
        crate::worker::Role::Decode => Leg::Decode,
    }
}

async fn generate(
    state: Arc<AppState>,
    endpoint: Endpoint,
    req: Request<Incoming>,
) -> Response<GatewayBody> {
    let start = Instant::now();
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    // Counted from here on, whichever way it ends (a refusal below included).
    let unknown_caller = crate::slo::classify::unclassified(&state.config.slo, None);
    let mut life = Lifecycle::new(&state, endpoint.label(), &request_id, start, unknown_caller);
    // Before the body is read: an unauthenticated client costs no upload.
    let caller = match state.auth.client(req.headers()) {
        Ok(c) => c,
        Err(e) => return refuse(life, &e),
    };
    life.hold_to(crate::slo::classify::unclassified(
        &state.config.slo,
        Some(&caller),
    ));
    let limit = state.config.max_payload_size;
    let (parts, body) = req.into_parts();
    let too_large = GatewayError::new(Leg::Client, ErrorKind::PayloadTooLarge { limit });
    // A declared length over the limit is refused before any of the body is
    // read (hyper sends no 100-continue for a body nobody polls).
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().parse::<u64>().unwrap_or(u64::MAX));
    if declared.is_some_and(|len| len > limit as u64) {
        return refuse(life, &too_large);
    }
    let expected = declared.map(|len| len as usize);
    let bytes = match crate::body::read_limited(body, limit, expected, BODY_READ_TIMEOUT).await {
        Ok(b) => b,
        Err(ReadError::TooLarge) => return refuse(life, &too_large),
        Err(ReadError::Broken(e)) => {
            let err = GatewayError::client(baton_protocol::ProtocolError::InvalidJson(format!(
                "could not read request body: {e}"
            )));
            return refuse(life, &err);
        }
        Err(ReadError::Timeout) => {
            return refuse(
                life,
                &GatewayError::new(Leg::Client, ErrorKind::Timeout("body_read")),
            );
        }
    };
    let mut creq = match ClientRequest::parse(endpoint, &bytes) {
        Ok(r) => r,
        Err(e) => return refuse(life, &GatewayError::client(e)),
    };
    // A model no engine serves is the client's mistake: 404 here, before any engine work.
    if let Err(e) = crate::models::check(state.mode, &state.pools.all(), creq.model.as_deref()) {
        return refuse(life, &e);
    }
    let span = tracing::debug_span!(
        "request",
        id = %request_id,
        endpoint = endpoint.label(),
        stream = creq.stream
    );
    let slo = match crate::slo::classify::classify(&state.config.slo, &caller, &parts.headers) {
        Ok(t) => t,
        Err(e) => return refuse(life, &GatewayError::client(e)),
    };
    life.hold_to(slo.clone());
    // Prefix-cache isolation: the tenant's salt replaces whatever the client
    // sent (parse already dropped it).
    let salt = match state.config.cache_isolation {
        CacheIsolation::Tenant => Some(crate::auth::cache_salt(&state.salt_key, &slo.tenant)),
        CacheIsolation::Shared => None,
    };
    creq.set_cache_salt(salt.as_deref());
    let prompt_tokens = crate::slo::estimate_prompt_tokens(&creq);
    let ctx = Ctx {
        slo,
        prompt_tokens,
        req: creq,
        headers: parts.headers,
        request_id,
        start,
        deadline: start + state.request_timeout(),
    };
    tracing::Instrument::instrument(dispatch::dispatch(&state, ctx, life), span).await
}

/// A request refused before dispatch: counted, then answered.
fn refuse(mut life: Lifecycle, e: &GatewayError) -> Response<GatewayBody> {
    life.end(EndReport::unserved(Ending::of(e), life.start()));
    error_response(e)
}

/// `GET /v1/slo`: goodput and attainment per class and tenant over the window.
fn slo_report(state: &AppState) -> Response<GatewayBody> {
    let window = state.slo.accounting.window().as_secs_f64();
    // Attainment counts served, rejected and failed requests; client errors
    // and cancellations are reported beside them (this replica's).
    let mut report = state.slo.report();
    let excluded = state.slo.excluded.counts();
    for key in excluded.keys() {
        report.entry(key.clone()).or_default();
    }
    let rows: Vec<Value> = report
        .into_iter()
        .map(|(key, c)| {
            let ratio = |n: u64| {
                if c.requests == 0 {
                    0.0
                } else {
                    n as f64 / c.requests as f64
                }
            };
            let ex = excluded.get(&key).copied().unwrap_or_default();
            let (class, tenant) = key;
            json!({
                "class": class,
                "tenant": tenant,
                "requests": c.requests,
                "good": c.good,
                "rejected": c.rejected,
                "failed": c.failed,
                "client_errors": ex.client_errors,
                "cancelled": ex.cancelled,
                "attainment": ratio(c.good),
                "ttft_attainment": ratio(c.ttft_met),
                "tpot_attainment": ratio(c.tpot_met),
                "goodput_rps": c.good as f64 / window,
            })
        })
        .collect();
    let classes: serde_json::Map<String, Value> = state
        .config
        .slo
        .classes
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                json!({"ttft_ms": v.ttft_ms, "tpot_ms": v.tpot_ms}),
            )
        })
        .collect();
    let body = json!({
        "window_secs": window,
        "replicas": state.slo.replica_count(),
        "classes": classes,
        "rows": rows,
    });
    json_response(StatusCode::OK, Bytes::from(body.to_string()))
}
