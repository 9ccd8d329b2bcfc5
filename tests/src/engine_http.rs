//! The HTTP plumbing both fake-engine families share ([`crate::mock`]: protocol-faithful, with
//! fixed delays and injected faults; [`crate::sim`]: a continuous-batching timing model): the
//! accept loop and one hyper HTTP/1 task per connection (so a client that hangs up drops its
//! handler future), response bodies, JSON and OpenAI error responses, SSE framing, counters that
//! tests can await ([`StatsCell`]), and a lock that survives poisoning. The OpenAI bodies themselves (token text, error shape, KV transfer
//! params) live in the mock's protocol modules and the sim renders with them too.

use std::future::{poll_fn, Future};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every fake engine's response body.
pub(crate) type EngineBody = UnsyncBoxBody<Bytes, BoxError>;

/// An engine's counters, published through a `watch` channel so waiters wake on every change
/// (tests await a count instead of polling it).
pub(crate) struct StatsCell<T> {
    tx: watch::Sender<T>,
}

impl<T: Clone + Default> StatsCell<T> {
    pub(crate) fn new() -> Self {
        Self {
            tx: watch::channel(T::default()).0,
        }
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut T)) {
        self.tx.send_modify(f);
    }

    pub(crate) fn snapshot(&self) -> T {
        self.tx.borrow().clone()
    }

    /// Waits until `pred` holds; `Err` carries the last snapshot on timeout.
    pub(crate) async fn wait_until(
        &self,
        pred: impl Fn(&T) -> bool,
        timeout: Duration,
    ) -> Result<T, T> {
        let mut rx = self.tx.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|s| pred(s)))
            .await
            .map(|r| r.map(|stats| stats.clone()));
        match waited {
            Ok(Ok(stats)) => Ok(stats),
            _ => Err(self.snapshot()),
        }
    }
}

/// Locks `m`, recovering a poisoned lock: every update leaves the state consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A body written at once.
pub(crate) fn full(data: impl Into<Bytes>) -> EngineBody {
    Full::new(data.into())
        .map_err(|never: std::convert::Infallible| match never {})
        .boxed_unsync()
}

pub(crate) fn json_response(status: u16, value: &Value) -> Response<EngineBody> {
    json_bytes_response(status, value.to_string().into())
}

/// A JSON answer already serialized.
pub(crate) fn json_bytes_response(status: u16, json: Bytes) -> Response<EngineBody> {
    let mut resp = Response::new(full(json));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// An OpenAI-style error answer.
pub(crate) fn error_response(status: u16, message: &str) -> Response<EngineBody> {
    json_response(status, &crate::mock::error_body(status, message))
}

/// One SSE event carrying `v` as its data.
pub(crate) fn sse_event(v: &Value) -> String {
    format!("data: {v}\n\n")
}

/// The event that ends an OpenAI stream.
pub(crate) const SSE_DONE: &str = "data: [DONE]\n\n";

/// The headers of a streamed (SSE) answer.
pub(crate) fn event_stream_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

/// A request handler of an engine whose state is `S`.
pub(crate) trait Handler<S>:
    Fn(Arc<S>, Request<Incoming>) -> Self::Answer + Copy + Send + Sync + 'static
{
    type Answer: Future<Output = Result<Response<EngineBody>, BoxError>> + Send + 'static;
}

impl<S, H, F> Handler<S> for H
where
    H: Fn(Arc<S>, Request<Incoming>) -> F + Copy + Send + Sync + 'static,
    F: Future<Output = Result<Response<EngineBody>, BoxError>> + Send + 'static,
{
    type Answer = F;
}

/// Accepts connections from the listener in `slot(&shared)` until `stop` turns true or the slot
/// is emptied (a shutdown that closes the socket at once), serving each connection with
/// `handle` on its own task; a connection ends at `stop` too. The listener is closed on return.
pub(crate) async fn serve<S: Send + Sync + 'static>(
    shared: Arc<S>,
    slot: fn(&S) -> &Mutex<Option<TcpListener>>,
    stop: watch::Receiver<bool>,
    name: &'static str,
    handle: impl Handler<S>,
) {
    let mut stopped = stop.clone();
    loop {
        let accept = poll_fn(|cx| match lock(slot(&shared)).as_ref() {
            Some(listener) => listener.poll_accept(cx).map(Some),
            None => Poll::Ready(None),
        });
        let accepted = tokio::select! {
            () = stopped_signal(&mut stopped) => break,
            accepted = accept => accepted,
        };
        match accepted {
            None => break,
            Some(Ok((stream, _))) => {
                let shared = Arc::clone(&shared);
                tokio::spawn(connection(stream, shared, stop.clone(), name, handle));
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "{name} accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    drop(lock(slot(&shared)).take());
}

async fn connection<S: Send + Sync + 'static>(
    stream: TcpStream,
    shared: Arc<S>,
    mut stop: watch::Receiver<bool>,
    name: &'static str,
    handle: impl Handler<S>,
) {
    let _ = stream.set_nodelay(true);
    let svc = service_fn(move |req| handle(Arc::clone(&shared), req));
    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        result = conn => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "{name} connection ended");
            }
        }
        () = stopped_signal(&mut stop) => {}
    }
}

async fn stopped_signal(rx: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, i.e. the engine is gone too.
    let _ = rx.wait_for(|stop| *stop).await;
}
