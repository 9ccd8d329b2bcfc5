//! Keep-alive HTTP/1 connections to engines, driven by the task that uses
//! them.
//!
//! hyper's pooled client spawns a task per connection and passes each
//! response chunk from it to the caller's task: two task polls per streamed
//! token. Here a connection is a plain value ([`Conn`]) that the request
//! future and the response body poll themselves, so a burst of chunks is
//! decoded and relayed within one poll of the relay's task. Idle connections
//! wait in a stack per origin; only one whose response was read to the end
//! comes back (see [`super::body::UpstreamBody`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// An idle connection unused this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per origin (enough for one gateway's concurrency
/// against one engine; more are closed when they come back).
const MAX_IDLE_PER_ORIGIN: usize = 256;
/// How often idle connections are checked for a close by the engine, so
/// their sockets do not linger when traffic stops.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

type Sender = http1::SendRequest<Full<Bytes>>;
type Driver = http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// One HTTP/1 connection: the request side and the future that does its
/// I/O, which whoever holds the connection must poll.
pub struct Conn {
    pub(super) sender: Sender,
    /// `None` once the connection has closed.
    driver: Option<Driver>,
    origin: Arc<str>,
    /// Came from the pool (an earlier request used it).
    pub(super) reused: bool,
}

impl Conn {
    /// Runs the connection's I/O as far as it goes now; `false` once it has
    /// closed (the pending request or body then sees why).
    pub fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(driver) = &mut self.driver else {
            return false;
        };
        match Pin::new(driver).poll(cx) {
            Poll::Pending => true,
            Poll::Ready(result) => {
                if let Err(e) = result {
                    tracing::debug!(origin = %self.origin, error = %e, "engine connection closed");
                }
                self.driver = None;
                false
            }
        }
    }

    /// Whether a new request may be sent now (the previous exchange is
    /// over and the connection still open), driving it to find out.
    fn ready(&mut self, cx: &mut Context<'_>) -> bool {
        // Driving first reads a close the engine sent while we were away.
        for _ in 0..2 {
            if !self.drive(cx) {
                return false;
            }
            match self.sender.poll_ready(cx) {
                Poll::Ready(Ok(())) => return true,
                Poll::Ready(Err(_)) => return false,
                Poll::Pending => {}
            }
        }
        false
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// Idle connections per origin (`host:port`).
#[derive(Default)]
pub struct ConnPool {
    idle: Mutex<HashMap<Arc<str>, Vec<Idle>>>,
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPool").finish_non_exhaustive()
    }
}

impl ConnPool {
    /// The most recently used idle connection to `origin` that is still
    /// open, if any.
    pub fn checkout(&self, origin: &str) -> Option<Conn> {
        let mut noop = Context::from_waker(Waker::noop());
        loop {
            let idle = self.idle.lock().ok()?.get_mut(origin)?.pop()?;
            if idle.since.elapsed() > IDLE_TIMEOUT {
                // The rest are older still.
                let stale = self.idle.lock().ok()?.remove(origin);
                drop(stale);
                return None;
            }
            let mut conn = idle.conn;
            // An engine that closed the connection meanwhile is noticed
            // here (its FIN is read), not by the request.
            if conn.ready(&mut noop) {
                conn.reused = true;
                return Some(conn);
            }
        }
    }

    /// Opens a new connection to `origin` (`host:port`).
    pub async fn connect(
        &self,
        origin: &str,
        timeout: Duration,
    ) -> Result<Conn, Box<dyn std::error::Error + Send + Sync>> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(origin))
            .await
            .map_err(|_| format!("tcp connect to {origin} timed out after {timeout:?}"))?
            .map_err(|e| format!("tcp connect to {origin}: {e}"))?;
        stream.set_nodelay(true)?;
        let (sender, driver) = http1::handshake(TokioIo::new(stream)).await?;
        Ok(Conn {
            sender,
            driver: Some(driver),
            origin: Arc::from(origin),
            reused: false,
        })
    }

    /// Takes back a connection whose exchange is complete; one that cannot
    /// take another request is closed instead.
    pub fn checkin(&self, mut conn: Conn, cx: &mut Context<'_>) {
        if !conn.ready(cx) {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let stack = idle.entry(Arc::clone(&conn.origin)).or_default();
        let evicted = (stack.len() >= MAX_IDLE_PER_ORIGIN).then(|| stack.remove(0));
        stack.push(Idle {
            conn,
            since: Instant::now(),
        });
        drop(idle);
        drop(evicted);
    }

    /// Closes idle connections that expired or that the engine closed.
    pub fn sweep(&self) {
        let mut noop = Context::from_waker(Waker::noop());
        let mut closed = Vec::new();
        if let Ok(mut idle) = self.idle.lock() {
            for stack in idle.values_mut() {
                let mut i = 0;
                while i < stack.len() {
                    let entry = &mut stack[i];
                    if entry.since.elapsed() > IDLE_TIMEOUT || !entry.conn.ready(&mut noop) {
                        closed.push(stack.remove(i));
                    } else {
                        i += 1;
                    }
                }
            }
            idle.retain(|_, stack| !stack.is_empty());
        }
        drop(closed);
    }

    /// Idle connections to `origin` (for tests).
    pub fn idle_count(&self, origin: &str) -> usize {
        self.idle
            .lock()
            .map(|idle| idle.get(origin).map_or(0, Vec::len))
            .unwrap_or(0)
    }
}
