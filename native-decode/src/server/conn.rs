//! Connection hygiene on the HTTP listener: a bounded number of open connections (more wait in the listen
//! backlog instead of exhausting file descriptors), a deadline for a new connection's first byte and for every
//! request's headers, and an idle timeout that winds down connections on which nothing moves. The mechanism is
//! `baton_conn`, shared with the gateway; the engine's choices are here.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use baton_conn::{Slot, Slots};
use tokio::net::{TcpListener, TcpStream};

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
    match baton_conn::open_file_limit() {
        Some(n) => n.saturating_sub(HEADROOM).clamp(16, 1024),
        None => 1024,
    }
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

impl Limits {
    /// What `baton_conn` enforces on each connection: the first byte within the header timeout, idle from then
    /// on (no separate first-request deadline: hyper's header timeout bounds HTTP/1, idle bounds HTTP/2), and a
    /// peer that stops reading our response for the idle timeout loses its connection.
    fn connection(&self) -> baton_conn::Limits {
        baton_conn::Limits {
            first_byte: self.header_timeout,
            first_request: None,
            header_read: self.header_timeout,
            idle: self.idle_timeout,
            drop_unread: true,
        }
    }
}

/// Serves HTTP/1.1 and HTTP/2 on `listener` until the process ends.
pub async fn serve(listener: TcpListener, state: Arc<ServerState>) {
    serve_until(listener, state, std::future::pending()).await
}

/// Serves until `stop` completes, then stops accepting (new connections are refused once the listener is
/// dropped) and asks every open connection to finish gracefully: a request in progress, a stream included, runs to
/// its end; idle keep-alive connections close at once. Returns when every connection has ended; the caller bounds
/// how long it waits.
pub async fn serve_until(
    listener: TcpListener,
    state: Arc<ServerState>,
    stop: impl std::future::Future<Output = ()>,
) {
    let (stopping, _) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tokio::select! {
        _ = stop => {}
        _ = accept_loop(listener, &state, &stopping, &mut tasks) => {}
    }
    let _ = stopping.send(true);
    while tasks.join_next().await.is_some() {}
}

async fn accept_loop(
    listener: TcpListener,
    state: &Arc<ServerState>,
    stopping: &tokio::sync::watch::Sender<bool>,
    tasks: &mut tokio::task::JoinSet<()>,
) {
    let limits = state.limits.clone();
    let slots = Slots::new(limits.max_connections.max(1));
    let mut at_limit = false;
    loop {
        let slot = match slots.try_take() {
            Some(slot) => {
                at_limit = false;
                slot
            }
            None => {
                if !at_limit {
                    // Once per episode, not per waiting connection.
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection limit reached: new connections wait in the listen backlog until one closes \
                         (raise with --max-connections)"
                    );
                    at_limit = true;
                }
                slots.take().await
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
        let mut stop = stopping.subscribe();
        let stop = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        tasks.spawn(connection(sock, state.clone(), slot, stop));
        // Reap finished connections so the set does not grow with the process's lifetime.
        while tasks.try_join_next().is_some() {}
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

async fn connection(
    sock: TcpStream,
    state: Arc<ServerState>,
    _slot: Slot,
    stop: impl std::future::Future<Output = ()>,
) {
    state
        .engine
        .stats
        .http_connections
        .fetch_add(1, Ordering::Relaxed);
    let _open = Open(state.clone());
    let limits = state.limits.connection();
    let st = state.clone();
    let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
    baton_conn::serve(sock, svc, limits, stop).await;
}
