//! Connection hygiene for Baton's HTTP listeners, the gateway's (`gateway/server/src/listener.rs`) and the
//! engine's (`native-decode/src/server/conn.rs`): everything done to a client connection before and between
//! its requests.
//!
//! - **Slots** ([`Slots`]): each open connection holds one. What happens at the limit (closed at once, or left
//!   waiting in the listen backlog) is the listener's choice.
//! - **First byte**: a connection that sends nothing within [`Limits::first_byte`] is closed.
//! - **First request** (optional, [`Limits::first_request`]): a connection whose first request has not arrived
//!   within it is closed. This bounds HTTP/1-vs-2 detection, the HTTP/2 preface and settings, and the first
//!   HTTP/1 head.
//! - **Idle**: from the first request (without a first-request deadline: from the first byte), a connection
//!   with no request in progress (handler running or response body not yet sent: a stalled stream is not
//!   idle) and no bytes either way for [`Limits::idle`] is shut down gracefully (HTTP/1: closed between
//!   requests; HTTP/2: GOAWAY, open streams finish); one still silent `idle` later is dropped. With
//!   [`Limits::drop_unread`], a connection whose peer read nothing of a response for `idle` is dropped even
//!   with a request in progress. hyper's HTTP/1 header read timeout ([`Limits::header_read`]) also bounds an
//!   HTTP/1 connection waiting for its next request.
//!
//! No HTTP/2 keep-alive PINGs: they and their answers would count as traffic, so a live but idle client would
//! never look idle. A dead peer with a request in flight is bounded by that request's own timeouts (or by
//! `drop_unread`).
//!
//! The watchdog keeps no timer per byte: reads and writes store a timestamp, and one timer per connection
//! wakes at the next deadline that could close it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The time limits of one connection (see the crate documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Closed if no byte arrived within this of the start.
    pub first_byte: Duration,
    /// Closed if no request arrived within this of the start; `None`: the idle limit runs from the first byte.
    pub first_request: Option<Duration>,
    /// hyper's HTTP/1 header read timeout (each request head, and the wait for the next one).
    pub header_read: Duration,
    /// Wound down after this long with nothing in progress and no bytes either way, dropped after as long again.
    pub idle: Duration,
    /// Drop a connection whose peer read nothing of our response for `idle`, even with a request in progress.
    pub drop_unread: bool,
}

/// The connection slots of one listener.
#[derive(Debug)]
pub struct Slots {
    sem: Arc<Semaphore>,
    max: usize,
}

/// One open connection's place under the limit (freed on drop).
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Slots {
    pub fn new(max: usize) -> Self {
        Self {
            sem: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A slot, or `None` at the limit.
    pub fn try_take(&self) -> Option<Slot> {
        let permit = Arc::clone(&self.sem).try_acquire_owned().ok()?;
        Some(Slot { _permit: permit })
    }

    /// A slot, once one is free.
    pub async fn take(&self) -> Slot {
        match Arc::clone(&self.sem).acquire_owned().await {
            Ok(permit) => Slot { _permit: permit },
            Err(_) => unreachable!("the semaphore is never closed"),
        }
    }

    /// Slots in use.
    pub fn open(&self) -> usize {
        self.max - self.sem.available_permits()
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }
}

/// The soft `RLIMIT_NOFILE` from `/proc/self/limits` (no `unsafe` for getrlimit): `None` if unreadable,
/// `usize::MAX` if unlimited. Listeners size their default connection limit from it.
pub fn open_file_limit() -> Option<usize> {
    open_file_limit_in(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

fn open_file_limit_in(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        return Some(usize::MAX);
    }
    soft.parse().ok()
}

/// Serves HTTP/1.1 and HTTP/2 on one accepted connection until it ends, `stop` completes (then it is shut down
/// gracefully) or one of the [`Limits`] closes it. The caller holds the connection's [`Slot`] around this.
pub async fn serve<I, S, B>(io: I, svc: S, limits: Limits, stop: impl Future<Output = ()>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let activity = Arc::new(Activity::new());
    let io = Tracked {
        io,
        activity: Arc::clone(&activity),
    };
    let svc = Counted {
        inner: svc,
        activity: Arc::clone(&activity),
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's header deadline also runs while an HTTP/1 connection waits for its next request.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::pin!(stop);

    let mut watch = Watch::new(limits, activity.base);
    let mut check = watch.first_check();
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("connection ended: {e}");
                }
                return;
            }
            () = &mut stop, if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
                continue;
            }
            () = tokio::time::sleep_until(check) => {}
            // The first byte and the first request start clocks: check then, not at the next deadline.
            () = activity.wake.notified(), if !watch.requested => {}
        }
        match watch.step(&activity, Instant::now()) {
            Step::Wait(at) => check = at,
            Step::WindDown(at) => {
                tracing::debug!("closing an idle connection");
                conn.as_mut().graceful_shutdown();
                check = at;
            }
            Step::Close(why) => {
                tracing::debug!("closing {why}");
                return;
            }
        }
    }
}

/// What one connection did, seen by its watchdog.
#[derive(Debug)]
struct Activity {
    base: Instant,
    /// Nanoseconds after `base` when a byte last moved or a request ended.
    last_ns: AtomicU64,
    /// A byte was read.
    heard: AtomicBool,
    /// The last write found the peer's window full (it is not reading).
    write_blocked: AtomicBool,
    requests: AtomicU64,
    in_progress: AtomicUsize,
    /// Notified at the first byte and at the first request.
    wake: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            last_ns: AtomicU64::new(0),
            heard: AtomicBool::new(false),
            write_blocked: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            in_progress: AtomicUsize::new(0),
            wake: Notify::new(),
        }
    }

    fn touch(&self) {
        let ns = self.base.elapsed().as_nanos() as u64;
        self.last_ns.store(ns, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_nanos(self.last_ns.load(Ordering::Relaxed))
    }

    fn read(&self) {
        self.touch();
        if !self.heard.load(Ordering::Relaxed) && !self.heard.swap(true, Ordering::Relaxed) {
            self.wake.notify_one();
        }
    }

    fn wrote(&self, r: &Poll<io::Result<usize>>) {
        match r {
            Poll::Pending => self.write_blocked.store(true, Ordering::Relaxed),
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.write_blocked.store(false, Ordering::Relaxed);
                self.touch();
            }
            Poll::Ready(_) => {}
        }
    }
}

/// The watchdog's decision after a check.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Check again then.
    Wait(Instant),
    /// Shut down gracefully; check again then.
    WindDown(Instant),
    /// Drop the connection now (what it was, for the log).
    Close(&'static str),
}

/// The connection limits applied to what [`Activity`] recorded.
#[derive(Debug)]
struct Watch {
    limits: Limits,
    accepted: Instant,
    /// A request had arrived at the last check.
    requested: bool,
    draining: bool,
}

impl Watch {
    fn new(limits: Limits, accepted: Instant) -> Self {
        Self {
            limits,
            accepted,
            requested: false,
            draining: false,
        }
    }

    /// The first deadline that could close a new connection.
    fn first_check(&self) -> Instant {
        let first = match self.limits.first_request {
            Some(first_request) => self.limits.first_byte.min(first_request),
            None => self.limits.first_byte,
        };
        self.accepted + first
    }

    fn step(&mut self, a: &Activity, now: Instant) -> Step {
        let l = &self.limits;
        self.requested = a.requests.load(Ordering::Relaxed) > 0;
        if !self.requested {
            let heard = a.heard.load(Ordering::Relaxed);
            let mut next = None;
            if !heard {
                let at = self.accepted + l.first_byte;
                if now >= at {
                    return Step::Close("a connection that sent nothing");
                }
                next = Some(at);
            }
            if let Some(first_request) = l.first_request {
                let at = self.accepted + first_request;
                if now >= at {
                    return Step::Close("a connection that sent no request");
                }
                return Step::Wait(next.map_or(at, |n| n.min(at)));
            }
            if let Some(at) = next {
                return Step::Wait(at);
            }
        }
        let quiet_until = a.last() + l.idle;
        if quiet_until > now {
            return Step::Wait(quiet_until);
        }
        if l.drop_unread && a.write_blocked.load(Ordering::Relaxed) {
            return Step::Close("a connection whose peer read nothing of our response");
        }
        if a.in_progress.load(Ordering::Relaxed) > 0 {
            // Silent because a request is still computing (a long non-streamed answer, a stalled stream).
            return Step::Wait(now + l.idle);
        }
        if self.draining {
            return Step::Close("an idle connection that did not close");
        }
        self.draining = true;
        Step::WindDown(now + l.idle)
    }
}

/// The socket, recording when bytes moved.
struct Tracked<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.activity.wrote(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.activity.wrote(&r);
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

/// The service, counting requests and those in progress: from the call until the response body is sent or
/// dropped (a request waiting on a slow engine, or a stalled stream, moves no bytes but is not idle).
struct Counted<S> {
    inner: S,
    activity: Arc<Activity>,
}

/// One request in progress on a connection (ended on drop).
struct InProgress(Arc<Activity>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Ordering::Relaxed);
        // Idle counts from the end of the last request, even one that ended without a byte after it.
        self.0.touch();
    }
}

impl<S, B> Service<Request<Incoming>> for Counted<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = CountedFuture<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.activity.in_progress.fetch_add(1, Ordering::Relaxed);
        if self.activity.requests.fetch_add(1, Ordering::Relaxed) == 0 {
            self.activity.wake.notify_one();
        }
        let guard = InProgress(Arc::clone(&self.activity));
        CountedFuture {
            inner: self.inner.call(req),
            guard: Some(guard),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer; its in-progress mark moves into the response body.
    struct CountedFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InProgress>,
    }
}

impl<F, B, E> Future for CountedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = ready!(this.inner.poll(cx))?;
        let guard = this.guard.take().expect("polled after completion");
        Poll::Ready(Ok(resp.map(|inner| TrackedBody {
            inner,
            _guard: guard,
        })))
    }
}

pin_project_lite::pin_project! {
    /// A response body holding its request's in-progress mark until hyper has sent it (or the connection
    /// dropped it); sizes pass through (a known length stays a `Content-Length`).
    struct TrackedBody<B> {
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
mod tests;
