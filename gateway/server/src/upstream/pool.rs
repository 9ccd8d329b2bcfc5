//! Keep-alive HTTP/1 connections to engines, driven by the task that uses
//! them.
//!
//! A connection is a plain value ([`Conn`]): the request future writes the
//! request and reads the head from its socket, and the response body reads
//! the rest, all in the caller's task, so a burst of chunks is decoded and
//! relayed within one poll of the relay. Idle connections wait in a stack
//! per origin; only one whose response was read to the end comes back (see
//! [`super::body::UpstreamBody`]).

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::http1::{self, Head, MalformedHttp1};

/// An idle connection unused this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per origin (enough for one gateway's concurrency
/// against one engine; more are closed when they come back).
const MAX_IDLE_PER_ORIGIN: usize = 256;
/// How often idle connections are checked for a close by the engine, so
/// their sockets do not linger when traffic stops.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// One HTTP/1 connection to an engine.
pub struct Conn {
    stream: TcpStream,
    /// Bytes read from the socket and not yet consumed.
    pub(super) buf: BytesMut,
    origin: Arc<str>,
    /// Came from the pool (an earlier request used it).
    pub(super) reused: bool,
    /// The last read left room in the buffer (the socket had no more).
    drained: bool,
}

/// Why an exchange failed.
pub enum ExchangeError {
    /// The request could not be written: it never reached the engine.
    Unsent(io::Error),
    Io(io::Error),
    Protocol(MalformedHttp1),
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unsent(e) => write!(f, "sending the request: {e}"),
            Self::Io(e) => write!(f, "reading the response: {e}"),
            Self::Protocol(e) => write!(f, "bad response: {e}"),
        }
    }
}

impl Conn {
    /// Writes `request` and reads the response head (skipping interim 1xx
    /// heads). What follows the head stays in `buf` for the body.
    pub async fn exchange(&mut self, request: &[u8]) -> Result<Head, ExchangeError> {
        // Usually the whole request fits the socket's send buffer at once.
        let sent = match self.stream.try_write(request) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(ExchangeError::Unsent(e)),
        };
        let Conn {
            stream,
            buf,
            drained,
            ..
        } = self;
        let stream: &TcpStream = stream;
        if sent == request.len() {
            return read_head(stream, buf, drained).await;
        }
        // A large body: an engine may answer it (413, 400) without reading
        // it, so the head is watched while the rest is written instead of
        // after, which would wait for a timeout.
        let write = write_all(stream, &request[sent..]);
        let head = read_head(stream, buf, drained);
        tokio::pin!(write, head);
        tokio::select! {
            biased;
            h = &mut head => {
                // Answered before the request was sent whole: the
                // connection cannot carry another request.
                h.map(|h| Head { keep_alive: false, ..h })
            }
            w = &mut write => {
                w.map_err(ExchangeError::Unsent)?;
                head.await
            }
        }
    }

    /// Reads what the socket holds into `buf`: the byte count, 0 at the
    /// engine's close.
    pub fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_read_into(&self.stream, &mut self.buf, &mut self.drained, cx)
    }

    /// The response was read to its end. If its last read left room in the
    /// buffer, that read drained the socket: tokio is told so (as its own
    /// `poll_read` does after a short read), so the pool's check and the
    /// next request's first read cost no `recv` that could only say
    /// `EAGAIN`. A close by the engine still shows (tokio keeps it), and
    /// anything arriving later is a new readiness event.
    pub fn response_done(&mut self) {
        if std::mem::take(&mut self.drained) {
            let _ = self.stream.try_io(Interest::READABLE, || {
                Err::<(), _>(io::ErrorKind::WouldBlock.into())
            });
        }
    }

    /// Whether the idle connection can take a request: the engine neither
    /// closed it nor sent anything unasked. Reads only what the runtime has
    /// already seen arrive, never waits.
    fn ready(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// Reads a response head from `stream` into `buf` (skipping interim 1xx
/// heads), leaving what follows it in `buf`.
async fn read_head(
    stream: &TcpStream,
    buf: &mut BytesMut,
    drained: &mut bool,
) -> Result<Head, ExchangeError> {
    loop {
        if !buf.is_empty() {
            match http1::parse_head(buf).map_err(ExchangeError::Protocol)? {
                Some((head, len)) if head.status.is_informational() => {
                    if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
                        return Err(ExchangeError::Protocol(MalformedHttp1(
                            "unrequested protocol switch".into(),
                        )));
                    }
                    let _ = buf.split_to(len);
                    continue;
                }
                Some((head, len)) => {
                    let _ = buf.split_to(len);
                    return Ok(head);
                }
                None => {}
            }
        }
        let n = std::future::poll_fn(|cx| poll_read_into(stream, buf, drained, cx))
            .await
            .map_err(ExchangeError::Io)?;
        if n == 0 {
            return Err(ExchangeError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the response head",
            )));
        }
    }
}

/// Reads what `stream` holds into `buf`: the byte count, 0 at the close.
/// `drained`: the read left room in the buffer (the socket had no more).
fn poll_read_into(
    stream: &TcpStream,
    buf: &mut BytesMut,
    drained: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    loop {
        http1::reserve_read(buf);
        let room = buf.capacity() - buf.len();
        match stream.try_read_buf(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => {
                *drained = matches!(other, Ok(n) if n < room);
                return Poll::Ready(other);
            }
        }
        match stream.poll_read_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    }
}

/// Writes all of `data` through a shared reference (so a read can run
/// alongside).
async fn write_all(stream: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        stream.writable().await?;
        match stream.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
            if conn.ready() {
                conn.reused = true;
                return Some(conn);
            }
        }
    }

    /// Opens a new connection to `origin` (`host:port`).
    pub async fn connect(&self, origin: &str, timeout: Duration) -> Result<Conn, String> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(origin))
            .await
            .map_err(|_| format!("tcp connect to {origin} timed out after {timeout:?}"))?
            .map_err(|e| format!("tcp connect to {origin}: {e}"))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("tcp connect to {origin}: {e}"))?;
        Ok(Conn {
            stream,
            buf: BytesMut::new(),
            origin: Arc::from(origin),
            reused: false,
            drained: false,
        })
    }

    /// Takes back a connection whose exchange is complete; one that cannot
    /// take another request is closed instead.
    pub fn checkin(&self, conn: Conn) {
        if !conn.ready() {
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
        let mut closed = Vec::new();
        if let Ok(mut idle) = self.idle.lock() {
            for stack in idle.values_mut() {
                let mut i = 0;
                while i < stack.len() {
                    let entry = &stack[i];
                    if entry.since.elapsed() > IDLE_TIMEOUT || !entry.conn.ready() {
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

    /// Waits until the runtime has seen the most recent idle connection to
    /// `origin` become readable (for tests: the FIN of an engine that hung
    /// up, which `checkout` and `sweep` then notice without waiting).
    #[cfg(test)]
    pub async fn until_idle_readable(&self, origin: &str) {
        let idle = self.idle.lock().unwrap().get_mut(origin).and_then(Vec::pop);
        let idle = idle.expect("an idle connection");
        idle.conn.stream.readable().await.unwrap();
        let mut pool = self.idle.lock().unwrap();
        pool.entry(Arc::clone(&idle.conn.origin))
            .or_default()
            .push(idle);
    }

    /// Idle connections to `origin` (for tests).
    pub fn idle_count(&self, origin: &str) -> usize {
        self.idle
            .lock()
            .map(|idle| idle.get(origin).map_or(0, Vec::len))
            .unwrap_or(0)
    }
}
