//! Client connections: how many may be open, and how long each may sit
//! silent. The mechanism (slots, deadlines, idle close) is `baton_conn`,
//! shared with the engine; this module holds the gateway's choices:
//!
//! - **Max connections** per listener: each accepted connection holds a
//!   slot; past the limit a new connection is closed at once (its peer sees
//!   the close instead of waiting in the backlog), counted in
//!   `baton_client_connections_refused_total`, and a warning is logged at
//!   most every [`REFUSAL_LOG_EVERY`]. Connections already open keep being
//!   served, `/health` included.
//! - **Deadlines** (`[connections]` in the config): the first byte within
//!   `first_byte_secs` of the accept, the first request within
//!   `header_read_secs` (also hyper's HTTP/1 header read timeout), and idle
//!   close after `idle_secs`, counted from the first request. A stalled
//!   stream, or a client that stops reading one, is not idle: the request's
//!   own timeouts bound it.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use baton_conn::{Limits, Slots};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::Service;

use crate::body::GatewayBody;
use crate::config::{secs, ConnectionConfig};
use crate::metrics::{ListenerLabels, Metrics};

/// The largest default connection limit (when the fd limit allows more).
pub const MAX_CONNECTIONS_CAP: usize = 10_000;
/// File descriptors kept for everything but client connections.
const FD_RESERVE: usize = 64;
/// How often, at most, a refused connection is logged.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// The default connection limit: what the open-file limit leaves room for
/// (each client connection may hold up to two engine connections, one per
/// PD leg), capped at [`MAX_CONNECTIONS_CAP`].
pub fn default_max_connections() -> usize {
    let files = baton_conn::open_file_limit().unwrap_or(1024);
    (files.saturating_sub(FD_RESERVE) / 3).clamp(16, MAX_CONNECTIONS_CAP)
}

/// The time limits of one client connection, from `[connections]`.
pub fn limits(c: &ConnectionConfig) -> Limits {
    Limits {
        first_byte: secs(c.first_byte_secs),
        first_request: Some(secs(c.header_read_secs)),
        header_read: secs(c.header_read_secs),
        idle: secs(c.idle_secs),
        drop_unread: false,
    }
}

/// The connection slots of one listener, counted in the metrics.
#[derive(Debug)]
pub struct ConnGate {
    slots: Slots,
    listener: &'static str,
    refused: AtomicU64,
    last_log: Mutex<Option<Instant>>,
    open_gauge: Gauge,
    refused_total: Counter,
}

/// One open connection's place under the limit (freed on drop).
#[derive(Debug)]
pub struct Slot {
    _slot: baton_conn::Slot,
    open_gauge: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open_gauge.dec();
    }
}

impl ConnGate {
    pub fn new(max: usize, listener: &'static str, metrics: &Metrics) -> Self {
        let labels = ListenerLabels { listener };
        Self {
            slots: Slots::new(max),
            listener,
            refused: AtomicU64::new(0),
            last_log: Mutex::new(None),
            open_gauge: metrics.connections_open.get_or_create(&labels).clone(),
            refused_total: metrics.connections_refused.get_or_create(&labels).clone(),
        }
    }

    /// A slot for a new connection, or `None` (logged, counted) at the limit.
    pub fn admit(&self) -> Option<Slot> {
        if let Some(slot) = self.slots.try_take() {
            self.open_gauge.inc();
            return Some(Slot {
                _slot: slot,
                open_gauge: self.open_gauge.clone(),
            });
        }
        self.refused_total.inc();
        self.refused.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut last = self.last_log.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_EVERY) {
            *last = Some(now);
            let refused = self.refused.swap(0, Ordering::Relaxed);
            tracing::warn!(
                listener = self.listener,
                max_connections = self.slots.max(),
                refused,
                "connection limit reached: closing new connections until some close \
                 (raise --max-connections and the open-file limit if this is real load)"
            );
        }
        None
    }

    /// Slots in use.
    pub fn open(&self) -> usize {
        self.slots.open()
    }
}

/// Serves one accepted connection until it ends, `stop` fires (graceful
/// shutdown) or one of its limits closes it (`baton_conn::serve`). `slot` is
/// held until then.
pub async fn serve<S>(
    stream: TcpStream,
    slot: Slot,
    svc: S,
    limits: Limits,
    stop: CancellationToken,
) where
    S: Service<Request<Incoming>, Response = Response<GatewayBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let _slot = slot;
    baton_conn::serve(
        stream,
        TowerToHyperService::new(svc),
        limits,
        stop.cancelled_owned(),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_limit_fits_the_open_file_limit() {
        let max = default_max_connections();
        assert!((16..=MAX_CONNECTIONS_CAP).contains(&max));
        if let Some(files) = baton_conn::open_file_limit() {
            assert!(files == usize::MAX || max * 3 + FD_RESERVE <= files.max(16 * 3 + FD_RESERVE));
        }
    }

    #[tokio::test]
    async fn the_gate_refuses_past_its_limit_and_frees_slots() {
        let metrics = Metrics::new();
        let gate = ConnGate::new(2, "test", &metrics);
        let a = gate.admit().unwrap();
        let _b = gate.admit().unwrap();
        assert!(gate.admit().is_none());
        assert!(gate.admit().is_none());
        assert_eq!(gate.open(), 2);
        drop(a);
        assert!(gate.admit().is_some());
        let text = metrics.render(&[]);
        assert!(
            text.contains("baton_client_connections_refused_total{listener=\"test\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("baton_client_connections_open{listener=\"test\"} 1"),
            "{text}"
        );
    }
}
