//! Client connections: how many may be open, and how long each may sit
//! silent. Everything the gateway does to a client connection before and
//! between requests lives here.
//!
//! - **Max connections** per listener: each accepted connection holds a
//!   slot; past the limit a new connection is closed at once (its peer sees
//!   the close instead of waiting in the backlog) and a warning is logged at
//!   most every [`REFUSAL_LOG_EVERY`]. Connections already open keep being
//!   served, `/health` included.
//! - **First byte**: a connection that sends nothing within `first_byte`
//!   of being accepted is closed.
//! - **First request**: its first request must have arrived within
//!   `header_read` of the accept: this bounds HTTP/1-vs-2 detection, the
//!   HTTP/2 preface and settings, and the first HTTP/1 head.
//! - **Idle**: after its first request, a connection with no request in
//!   progress (handler running or response body not yet sent: a stalled
//!   stream is not idle) and no bytes either way for `idle` is shut down
//!   gracefully (HTTP/1: closed between requests; HTTP/2: GOAWAY, open
//!   streams finish); one still silent `idle` later is dropped. Activity is
//!   checked every `idle / 4`, so the close comes between `idle` and
//!   `1.25 × idle` after the last byte. hyper's header read timeout
//!   (`header_read`) also bounds an HTTP/1 connection waiting for its next
//!   request.
//!
//! No HTTP/2 keep-alive PINGs: they and their answers would count as
//! traffic, so a live but idle client would never look idle. A dead peer
//! with a request in flight is bounded by that request's own timeouts.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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
    let files = open_file_limit().unwrap_or(1024);
    (files.saturating_sub(FD_RESERVE) / 3).clamp(16, MAX_CONNECTIONS_CAP)
}

/// The soft `RLIMIT_NOFILE`, read from procfs (no `unsafe` for getrlimit).
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        return Some(usize::MAX);
    }
    soft.parse().ok()
}

/// The time limits of one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub first_byte: Duration,
    pub header_read: Duration,
    pub idle: Duration,
}

impl ConnLimits {
    pub fn from_config(c: &ConnectionConfig) -> Self {
        Self {
            first_byte: secs(c.first_byte_secs),
            header_read: secs(c.header_read_secs),
            idle: secs(c.idle_secs),
        }
    }
}

/// The connection slots of one listener.
#[derive(Debug)]
pub struct ConnGate {
    slots: Arc<Semaphore>,
    max: usize,
    listener: &'static str,
    refused: AtomicU64,
    last_log: Mutex<Option<Instant>>,
    open_gauge: Gauge,
    refused_total: Counter,
}

/// One open connection's place under the limit (freed on drop).
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
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
            slots: Arc::new(Semaphore::new(max)),
            max,
            listener,
            refused: AtomicU64::new(0),
            last_log: Mutex::new(None),
            open_gauge: metrics.connections_open.get_or_create(&labels).clone(),
            refused_total: metrics.connections_refused.get_or_create(&labels).clone(),
        }
    }

    /// A slot for a new connection, or `None` (logged, counted) at the limit.
    pub fn admit(&self) -> Option<Slot> {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            self.open_gauge.inc();
            return Some(Slot {
                _permit: permit,
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
                max_connections = self.max,
                refused,
                "connection limit reached: closing new connections until some close \
                 (raise --max-connections and the open-file limit if this is real load)"
            );
        }
        None
    }

    /// Slots in use.
    pub fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }
}

/// What one connection did, seen by its watchdog.
#[derive(Debug, Default)]
struct Activity {
    reads: AtomicU64,
    writes: AtomicU64,
    requests: AtomicU64,
    in_progress: AtomicUsize,
    /// Wakes the watchdog at the first request, so the idle clock starts
    /// then rather than at the next first-byte check.
    first_request: tokio::sync::Notify,
}

impl Activity {
    fn io(&self) -> u64 {
        self.reads.load(Ordering::Relaxed) + self.writes.load(Ordering::Relaxed)
    }
}

/// Serves one accepted connection until it ends, `stop` fires (graceful
/// shutdown) or one of [`ConnLimits`] closes it. `slot` is held until then.
pub async fn serve<S>(
    stream: TcpStream,
    slot: Slot,
    svc: S,
    limits: ConnLimits,
    stop: CancellationToken,
) where
    S: Service<Request<Incoming>, Response = Response<GatewayBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let _slot = slot;
    let activity = Arc::new(Activity::default());
    let io = Tracked {
        io: stream,
        activity: Arc::clone(&activity),
    };
    let svc = Counted {
        inner: svc,
        activity: Arc::clone(&activity),
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read);
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(svc));
    tokio::pin!(conn);

    let accepted = Instant::now();
    let mut serving = false;
    let mut draining = false;
    let mut stopping = false;
    let mut last_io = 0;
    let mut quiet_since = accepted;
    let mut check = accepted + limits.first_byte.min(limits.header_read);
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = stop.cancelled(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
                continue;
            }
            _ = tokio::time::sleep_until(check) => {}
            _ = activity.first_request.notified(), if !serving => {}
        }
        let now = Instant::now();
        if !serving {
            if activity.requests.load(Ordering::Relaxed) == 0 {
                let silent = activity.reads.load(Ordering::Relaxed) == 0;
                if silent && now >= accepted + limits.first_byte {
                    tracing::debug!("closing a connection that sent nothing");
                    return;
                }
                if now >= accepted + limits.header_read {
                    tracing::debug!("closing a connection that sent no request");
                    return;
                }
                check = if silent {
                    accepted + limits.first_byte.min(limits.header_read)
                } else {
                    accepted + limits.header_read
                };
                continue;
            }
            serving = true;
            last_io = activity.io();
            quiet_since = now;
        } else {
            let io = activity.io();
            if activity.in_progress.load(Ordering::Relaxed) > 0 || io != last_io {
                last_io = io;
                quiet_since = now;
            } else if now >= quiet_since + limits.idle {
                if draining {
                    tracing::debug!("dropping an idle connection that did not close");
                    return;
                }
                tracing::debug!("closing an idle connection");
                draining = true;
                conn.as_mut().graceful_shutdown();
                quiet_since = now;
            }
        }
        check = now + (limits.idle / 4).max(Duration::from_millis(1));
    }
}

/// The socket, counting reads and writes that moved bytes.
struct Tracked {
    io: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.reads.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl Tracked {
    fn wrote(&self, r: &Poll<io::Result<usize>>) {
        if matches!(r, Poll::Ready(Ok(n)) if *n > 0) {
            self.activity.writes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The service, counting requests and those in progress: from the call
/// until the response body is sent or dropped (a request waiting on a slow
/// engine, or a stalled stream, moves no bytes but is not idle).
#[derive(Clone)]
struct Counted<S> {
    inner: S,
    activity: Arc<Activity>,
}

/// One request in progress on a connection (decremented on drop).
pub struct InProgress(Arc<Activity>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S> Service<Request<Incoming>> for Counted<S>
where
    S: Service<Request<Incoming>, Response = Response<GatewayBody>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<TrackedBody<GatewayBody>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        self.activity.in_progress.fetch_add(1, Ordering::Relaxed);
        if self.activity.requests.fetch_add(1, Ordering::Relaxed) == 0 {
            self.activity.first_request.notify_one();
        }
        let guard = InProgress(Arc::clone(&self.activity));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = match fut.await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok(resp.map(|inner| TrackedBody {
                inner,
                _guard: guard,
            }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body holding its request's in-progress mark until hyper
    /// has sent it (or the connection dropped it).
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        _guard: InProgress,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_limit_fits_the_open_file_limit() {
        let max = default_max_connections();
        assert!((16..=MAX_CONNECTIONS_CAP).contains(&max));
        if let Some(files) = open_file_limit() {
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
