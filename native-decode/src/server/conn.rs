//! Connection hygiene on the HTTP listener: a bounded number of open connections (more wait in the listen
//! backlog instead of exhausting file descriptors), a deadline for a new connection's first byte and for every
//! request's headers, and an idle timeout that winds down connections on which nothing moves.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::body::Body;
use super::{handle, ServerState};

/// Request-size and connection limits of the HTTP listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body; larger ones get 413.
    pub max_body: usize,
    /// Open connections at most; further ones wait in the kernel's listen backlog.
    pub max_connections: usize,
    /// A new connection must send its first byte, and every request its complete headers, within this.
    pub header_timeout: Duration,
    /// A connection with no request in flight on which no byte moved for this long is wound down (HTTP/1
    /// closes, HTTP/2 sends GOAWAY) and dropped if it stays silent. A request in flight may be silent for as
    /// long as it computes, but a peer that stops reading our response for this long loses the connection, and
    /// a request body must arrive within it.
    pub idle_timeout: Duration,
}

/// Default largest request body (a full-context prompt is far smaller; JSON token-id lists stay well within).
pub const DEFAULT_MAX_BODY: usize = 32 * 1024 * 1024;

/// Open connections allowed by default: 1024, or fewer when the process may open fewer files (leaving room for
/// the model, the KV listener and its peers), so that the limit is reached before `accept` fails.
pub fn default_max_connections() -> usize {
    const HEADROOM: usize = 64;
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| open_files_soft_limit(&text));
    match soft {
        Some(n) => n.saturating_sub(HEADROOM).clamp(16, 1024),
        None => 1024,
    }
}

/// The soft "Max open files" limit from `/proc/self/limits` ("unlimited" is none).
fn open_files_soft_limit(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body: DEFAULT_MAX_BODY,
            max_connections: default_max_connections(),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Serves HTTP/1.1 and HTTP/2 on `listener` until the process ends.
pub async fn serve(listener: TcpListener, state: Arc<ServerState>) {
    let limits = state.limits.clone();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut at_limit = false;
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => {
                at_limit = false;
                p
            }
            Err(_) => {
                if !at_limit {
                    // Once per episode, not per waiting connection.
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection limit reached: new connections wait in the listen backlog until one closes \
                         (raise with --max-connections)"
                    );
                    at_limit = true;
                }
                match slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    // The semaphore is never closed.
                    Err(_) => return,
                }
            }
        };
        let sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        tokio::spawn(connection(sock, state.clone(), permit));
    }
}

/// Counts an open connection in the `baton:http_connections` gauge while it exists.
struct Open(Arc<ServerState>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0
            .engine
            .stats
            .http_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection(sock: TcpStream, state: Arc<ServerState>, _slot: OwnedSemaphorePermit) {
    state
        .engine
        .stats
        .http_connections
        .fetch_add(1, Ordering::Relaxed);
    let _open = Open(state.clone());
    let limits = state.limits.clone();
    // Before protocol detection, which would otherwise wait for bytes without a deadline.
    let mut probe = [0u8; 1];
    match tokio::time::timeout(limits.header_timeout, sock.peek(&mut probe)).await {
        Ok(Ok(n)) if n > 0 => {}
        Ok(Ok(_)) | Ok(Err(_)) => return,
        Err(_) => {
            tracing::debug!(
                "connection sent nothing within {:?}: closed",
                limits.header_timeout
            );
            return;
        }
    }
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: sock,
        activity: activity.clone(),
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // hyper's header deadline also runs while an HTTP/1 connection waits for its next request: that is the
    // HTTP/1 keep-alive idle limit.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let st = state.clone();
    let act = activity.clone();
    let svc = hyper::service::service_fn(move |req| {
        let (st, busy) = (st.clone(), InFlight::new(&act));
        async move {
            let resp = handle(st, req).await?;
            // The count drops when the response body is done or dropped (a stream the client left).
            Ok::<_, Infallible>(resp.map(|inner| Counted { inner, _busy: busy }))
        }
    });
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let idle = limits.idle_timeout;
    let mut winding_down = false;
    let mut check_at = activity.last() + idle;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("connection ended: {e}");
                }
                return;
            }
            _ = tokio::time::sleep_until(check_at) => {
                let now = Instant::now();
                if activity.last() + idle > now {
                    check_at = activity.last() + idle;
                    continue;
                }
                if activity.write_blocked() {
                    tracing::debug!("peer read nothing of our response for {idle:?}: connection dropped");
                    return;
                }
                check_at = now + idle;
                if activity.in_flight.load(Ordering::Relaxed) > 0 {
                    // Silent because a request is still computing (a long non-streamed generation).
                    continue;
                }
                if winding_down {
                    tracing::debug!("idle connection ignored the wind-down for {idle:?}: dropped");
                    return;
                }
                winding_down = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// A response body that keeps its request counted as in flight; sizes pass through (a known length stays a
/// `Content-Length`).
struct Counted {
    inner: Body,
    _busy: InFlight,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Counts a request in its connection's `in_flight` while it exists.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(a: &Arc<Activity>) -> Self {
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// When bytes last moved on a connection, whether a write is waiting for the peer to read, and how many of its
/// requests are in flight.
struct Activity {
    base: Instant,
    last_ms: AtomicU64,
    write_blocked: AtomicBool,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            write_blocked: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    fn write_blocked(&self) -> bool {
        self.write_blocked.load(Ordering::Relaxed)
    }
}

/// A socket that records its activity.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        self.note_write(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_write(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Tracked {
    fn note_write(&self, r: &Poll<io::Result<usize>>) {
        match r {
            Poll::Pending => self.activity.write_blocked.store(true, Ordering::Relaxed),
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.activity.write_blocked.store(false, Ordering::Relaxed);
                self.activity.touch();
            }
            Poll::Ready(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_connection_limit_leaves_room_under_the_open_files_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(open_files_soft_limit(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(open_files_soft_limit(unlimited), None);
        assert_eq!(open_files_soft_limit("nothing"), None);
        let n = default_max_connections();
        assert!((16..=1024).contains(&n), "{n}");
    }
}
