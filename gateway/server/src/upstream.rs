//! The HTTP client for engine calls.
//!
//! Requests go out on keep-alive HTTP/1 connections from [`pool::ConnPool`],
//! read by the calling task itself: awaiting the head reads the socket, and
//! so does reading the [`UpstreamBody`]. Dropping a pending call or an
//! unfinished body closes that connection, which is how cancellation
//! reaches the engine. The HTTP/1 codec is [`http1`].

pub mod body;
pub mod http1;
pub mod pool;
#[cfg(test)]
pub mod scripted;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, Uri};
use http_body_util::BodyExt;

pub use self::body::{BodyError, UpstreamBody};
use self::pool::{ConnPool, ExchangeError};
use crate::error::{ErrorKind, GatewayError, Leg};

/// Client headers forwarded to engines (tracing context, OpenAI org and
/// project). Never the client's credentials (`authorization`, `x-api-key`)
/// nor the fleet's own headers: engines see the gateway's.
const FORWARDED: &[&str] = &[
    "traceparent",
    "tracestate",
    "openai-organization",
    "openai-project",
];

/// What the gateway itself presents to engines.
#[derive(Clone, Default)]
pub struct EngineCredentials {
    /// `Bearer <--worker-api-key>`.
    pub authorization: Option<HeaderValue>,
    /// Signs every generation call (`x-baton-fleet-auth`).
    pub fleet: Option<baton_protocol::FleetKey>,
}

impl std::fmt::Debug for EngineCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineCredentials")
            .field("authorization", &self.authorization.is_some())
            .field("fleet", &self.fleet)
            .finish()
    }
}

impl EngineCredentials {
    pub fn new(worker_api_key: Option<&str>, fleet: Option<baton_protocol::FleetKey>) -> Self {
        let authorization = worker_api_key
            .and_then(|k| HeaderValue::from_str(&format!("Bearer {k}")).ok())
            .map(|mut v| {
                v.set_sensitive(true);
                v
            });
        Self {
            authorization,
            fleet,
        }
    }
}

/// Ids sent on an engine call.
#[derive(Debug, Clone, Copy)]
pub struct CallIds<'a> {
    /// `X-Request-Id` for the engine: in PD mode the per-attempt transfer id
    /// (vLLM keys the KV hand-off on it), else the request id.
    pub upstream: &'a str,
    /// The gateway's request id (the client's, when it sent one), as
    /// `x-baton-request-id` on every leg for log correlation.
    pub request: &'a str,
    /// The authenticated tenant (`x-baton-tenant`, sent with fleet auth).
    pub tenant: &'a str,
    /// The request's budget for the engine (`x-baton-slo`), if it has one.
    pub slo: Option<&'a HeaderValue>,
}

/// The seam in front of engine calls: `dispatch` and the relay are generic
/// over it. Production code is compiled for [`Upstream`] alone (static
/// dispatch: no boxed future per call, no dynamic call per chunk); the unit
/// tests put a scripted engine ([`scripted`]) behind it and run on paused
/// time.
pub trait EngineClient: Clone + Send + Sync + 'static {
    /// A reply's body, read by the caller's task; dropping it cancels the call.
    type Body: http_body::Body<Data = Bytes, Error = BodyError> + Send + Unpin + 'static;

    /// POSTs JSON to `base_url + path`, resolving to the response head once
    /// it arrives (the body streams afterwards). Dropping the future cancels
    /// the call.
    fn post(
        &self,
        leg: Leg,
        base_url: &str,
        path: &str,
        ids: CallIds<'_>,
        client_headers: &HeaderMap,
        body: Bytes,
    ) -> impl Future<Output = Result<Response<Self::Body>, GatewayError>> + Send;
}

impl EngineClient for Upstream {
    type Body = UpstreamBody;

    fn post(
        &self,
        leg: Leg,
        base_url: &str,
        path: &str,
        ids: CallIds<'_>,
        client_headers: &HeaderMap,
        body: Bytes,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, GatewayError>> + Send {
        Upstream::post(self, leg, base_url, path, ids, client_headers, body)
    }
}

/// Engine calls over HTTP/1 (see the module docs).
#[derive(Clone, Debug)]
pub struct Upstream {
    pool: Arc<ConnPool>,
    connect_timeout: Duration,
    targets: Arc<Targets>,
    credentials: Arc<EngineCredentials>,
}

/// Parsed targets by (worker URL, path): a gateway calls a few of them over
/// and over, and parsing the URL each time cost ~1% of a streamed request.
#[derive(Debug, Default)]
struct Targets(std::sync::Mutex<TargetMap>);

/// Worker URL → path → target (nested, so a look-up needs no owned key).
type TargetMap = std::collections::HashMap<String, std::collections::HashMap<String, Arc<Target>>>;

/// More distinct worker URLs than this (workers come and go) start the
/// cache afresh.
const MAX_TARGETS: usize = 1024;

impl Targets {
    fn get(&self, base_url: &str, path: &str) -> Result<Arc<Target>, String> {
        let cached = self
            .0
            .lock()
            .ok()
            .and_then(|m| m.get(base_url)?.get(path).cloned());
        if let Some(t) = cached {
            return Ok(t);
        }
        let target = Arc::new(Target::parse(base_url, path)?);
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= MAX_TARGETS {
                m.clear();
            }
            m.entry(base_url.to_owned())
                .or_default()
                .insert(path.to_owned(), Arc::clone(&target));
        }
        Ok(target)
    }
}

/// Where a request goes: the connection's origin and the request target.
#[derive(Debug)]
struct Target {
    /// `host:port` (port 80 when the URL has none): the pool key.
    origin: String,
    /// The URL's authority, as the `Host` header.
    host: HeaderValue,
    /// Origin-form (`/path?query`): what HTTP/1 sends to a server directly.
    path: String,
}

impl Target {
    fn parse(base_url: &str, path: &str) -> Result<Self, String> {
        let url = format!("{base_url}{path}");
        let uri: Uri = url.parse().map_err(|e| format!("invalid URL {url}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("invalid URL {url}: scheme is not http"));
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("invalid URL {url}: no host"))?;
        let origin = format!("{host}:{}", uri.port_u16().unwrap_or(80));
        let authority = uri.authority().map_or(host, |a| a.as_str());
        let host =
            HeaderValue::from_str(authority).map_err(|e| format!("invalid URL {url}: {e}"))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        Ok(Self { origin, host, path })
    }
}

static JSON: HeaderValue = HeaderValue::from_static("application/json");
static ACCEPT: HeaderValue = HeaderValue::from_static("application/json, text/event-stream");

impl Upstream {
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            pool: Arc::new(ConnPool::default()),
            connect_timeout,
            targets: Arc::default(),
            credentials: Arc::default(),
        }
    }

    /// Engine calls carry these credentials.
    pub fn with_credentials(mut self, credentials: EngineCredentials) -> Self {
        self.credentials = Arc::new(credentials);
        self
    }

    /// The pool of idle engine connections.
    pub fn pool(&self) -> &ConnPool {
        &self.pool
    }

    /// POSTs JSON to `base_url + path`, returning the response head once it
    /// arrives (the body streams afterwards).
    pub async fn post(
        &self,
        leg: Leg,
        base_url: &str,
        path: &str,
        ids: CallIds<'_>,
        client_headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response<UpstreamBody>, GatewayError> {
        let target = self
            .targets
            .get(base_url, path)
            .map_err(|e| GatewayError::new(leg, ErrorKind::Connect(e)))?;
        let upstream_id = HeaderValue::from_str(ids.upstream).ok();
        let request_id = HeaderValue::from_str(ids.request).ok();
        let mut headers: Vec<(&str, &HeaderValue)> = Vec::with_capacity(12);
        headers.push(("host", &target.host));
        headers.push(("content-type", &JSON));
        headers.push(("accept", &ACCEPT));
        if let Some(v) = &upstream_id {
            headers.push(("x-request-id", v));
        }
        if let Some(v) = &request_id {
            headers.push(("x-baton-request-id", v));
        }
        if let Some(v) = ids.slo {
            headers.push((baton_protocol::engine_slo::SLO_HEADER, v));
        }
        for name in FORWARDED {
            if let Some(v) = client_headers.get(*name) {
                headers.push((name, v));
            }
        }
        let creds = &*self.credentials;
        if let Some(v) = &creds.authorization {
            headers.push(("authorization", v));
        }
        // The tag covers the x-request-id this call carries; an engine trusts
        // transfer params and the tenant only with a valid tag.
        let fleet = creds.fleet.as_ref().and_then(|k| {
            let tag = HeaderValue::from_str(&k.request_tag(ids.upstream)).ok()?;
            Some((tag, HeaderValue::from_str(ids.tenant).ok()?))
        });
        if let Some((tag, tenant)) = &fleet {
            headers.push((baton_protocol::fleet::FLEET_AUTH_HEADER, tag));
            headers.push((baton_protocol::fleet::TENANT_HEADER, tenant));
        }
        let request = http1::encode_request("POST", &target.path, &headers, &body);
        self.send(leg, &target.origin, &request).await
    }

    /// GETs `base_url + path`, returning status and body.
    pub async fn get(&self, base_url: &str, path: &str) -> Result<(u16, Bytes), String> {
        let target = self.targets.get(base_url, path)?;
        let mut headers = vec![("host", &target.host)];
        if let Some(v) = &self.credentials.authorization {
            headers.push(("authorization", v));
        }
        let request = http1::encode_request("GET", &target.path, &headers, b"");
        let resp = self
            .send(Leg::Gateway, &target.origin, &request)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| error_chain(&e))?
            .to_bytes();
        Ok((status, body))
    }

    /// Sends `request` on an idle connection to `origin`, or a new one, and
    /// reads until the response head is in.
    async fn send(
        &self,
        leg: Leg,
        origin: &str,
        request: &[u8],
    ) -> Result<Response<UpstreamBody>, GatewayError> {
        loop {
            let mut conn = match self.pool.checkout(origin) {
                Some(c) => c,
                None => self
                    .pool
                    .connect(origin, self.connect_timeout)
                    .await
                    .map_err(|e| GatewayError::new(leg, ErrorKind::Connect(e)))?,
            };
            match conn.exchange(request).await {
                Ok(head) => {
                    let body = UpstreamBody::new(&head, conn, Arc::clone(&self.pool));
                    let mut resp = Response::new(body);
                    *resp.status_mut() = head.status;
                    *resp.version_mut() = head.version;
                    *resp.headers_mut() = head.headers;
                    return Ok(resp);
                }
                // An idle connection the engine closed as we picked it: the
                // request never left, so it goes out on a new one.
                Err(ExchangeError::Unsent(_)) if conn.reused => {}
                Err(e) => {
                    return Err(GatewayError::new(leg, ErrorKind::Transport(e.to_string())));
                }
            }
        }
    }
}

/// The error and its sources, joined (hyper's top-level messages are vague).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// Reads a whole body, bounded by `limit` bytes.
pub async fn read_body<B>(leg: Leg, body: B, limit: usize) -> Result<Bytes, GatewayError>
where
    B: http_body::Body<Data = Bytes, Error = BodyError>,
{
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => Err(GatewayError::new(
            leg,
            if e.is::<http_body_util::LengthLimitError>() {
                ErrorKind::BadReply(format!("reply larger than {limit} bytes"))
            } else {
                ErrorKind::Transport(error_chain(e.as_ref()))
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body::Body;
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;
    use tokio::sync::{watch, Notify};

    /// Connections opened and closed by a test engine.
    struct Counts {
        opened: AtomicUsize,
        closed: watch::Sender<usize>,
    }

    impl Counts {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                opened: AtomicUsize::new(0),
                closed: watch::channel(0).0,
            })
        }

        fn close(&self) {
            self.closed.send_modify(|n| *n += 1);
        }

        /// Waits until the engine has closed `n` connections (woken by each close; 10 s guard against a hang).
        async fn until_closed(&self, n: usize) {
            let mut rx = self.closed.subscribe();
            tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|c| *c >= n))
                .await
                .unwrap_or_else(|_| panic!("the engine closed {n} connections"))
                .unwrap();
        }
    }

    /// A listener on an ephemeral port and its base URL.
    async fn listen() -> (TcpListener, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        (listener, url)
    }

    /// An engine answering every request with `size` bytes; `keep_alive:
    /// false` makes it close each connection after one response.
    async fn engine(size: usize, keep_alive: bool) -> (String, Arc<Counts>) {
        let (listener, url) = listen().await;
        let counts = Counts::new();
        let c = Arc::clone(&counts);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                c.opened.fetch_add(1, Ordering::SeqCst);
                let c = Arc::clone(&c);
                tokio::spawn(async move {
                    let svc = service_fn(move |_req| async move {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            vec![b'x'; size],
                        ))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                    c.close();
                });
            }
        });
        (url, counts)
    }

    fn ids() -> CallIds<'static> {
        CallIds {
            upstream: "u",
            request: "r",
            tenant: "t",
            slo: None,
        }
    }

    async fn post(up: &Upstream, url: &str) -> Response<UpstreamBody> {
        up.post(
            Leg::Worker,
            url,
            "/v1/completions",
            ids(),
            &HeaderMap::new(),
            Bytes::new(),
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn an_engine_refusing_a_large_body_unread_is_answered_at_once() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Reads only the request head, answers 413 and keeps the connection
        // open without reading the body, as a server refusing it may.
        let (listener, url) = listen().await;
        let engine = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                assert_eq!(s.read(&mut byte).await.unwrap(), 1);
                head.push(byte[0]);
            }
            s.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 2\r\n\r\n{}")
                .await
                .unwrap();
            std::future::pending::<()>().await;
        });
        let up = Upstream::new(Duration::from_secs(1));
        // Far more than the socket buffers hold, so the write cannot finish.
        let body = Bytes::from(vec![b' '; 64 << 20]);
        let headers = HeaderMap::new();
        let call = up.post(Leg::Worker, &url, "/v1/completions", ids(), &headers, body);
        // A guard only: without the fix the call waits here forever.
        let resp = tokio::time::timeout(Duration::from_secs(20), call)
            .await
            .expect("answered while the body was still being written")
            .unwrap();
        assert_eq!(resp.status(), 413);
        let body = read_body(Leg::Worker, resp.into_body(), 1 << 10)
            .await
            .unwrap();
        assert_eq!(&body[..], b"{}");
        // The request was cut short, so the connection is not pooled.
        assert_eq!(up.pool().idle_count(url.trim_start_matches("http://")), 0);
        engine.abort();
    }

    #[tokio::test]
    async fn a_connection_read_to_the_end_is_reused() {
        let (url, counts) = engine(100, true).await;
        let up = Upstream::new(Duration::from_secs(1));
        let origin = url.trim_start_matches("http://");
        for _ in 0..3 {
            let body = read_body(Leg::Worker, post(&up, &url).await.into_body(), 1 << 20);
            assert_eq!(body.await.unwrap().len(), 100);
            assert_eq!(up.pool().idle_count(origin), 1);
        }
        assert_eq!(counts.opened.load(Ordering::SeqCst), 1);
        let (status, body) = up.get(&url, "/health").await.unwrap();
        assert_eq!((status, body.len()), (200, 100));
        assert_eq!(counts.opened.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_unfinished_body_closes_its_connection() {
        let (url, counts) = engine(4 << 20, true).await;
        let up = Upstream::new(Duration::from_secs(1));
        let mut body = post(&up, &url).await.into_body();
        assert!(body.frame().await.unwrap().unwrap().is_data());
        drop(body);
        // The engine sees the disconnect; nothing went back to the pool.
        counts.until_closed(1).await;
        assert_eq!(up.pool().idle_count(url.trim_start_matches("http://")), 0);
        let body = read_body(Leg::Worker, post(&up, &url).await.into_body(), 8 << 20);
        assert_eq!(body.await.unwrap().len(), 4 << 20);
        assert_eq!(counts.opened.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connections_the_engine_closes_are_not_reused() {
        let (url, counts) = engine(10, false).await;
        let up = Upstream::new(Duration::from_secs(1));
        let origin = url.trim_start_matches("http://");
        for n in 1..=2 {
            let body = read_body(Leg::Worker, post(&up, &url).await.into_body(), 1 << 20);
            assert_eq!(body.await.unwrap().len(), 10);
            assert_eq!(up.pool().idle_count(origin), 0);
            assert_eq!(counts.opened.load(Ordering::SeqCst), n);
        }
    }

    #[tokio::test]
    async fn idle_connections_the_engine_closes_are_dropped() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Answers one request per connection, keep-alive, then hangs up
        // when told, while the connection is idle in the pool (as engines do
        // after their keep-alive timeout).
        let (listener, url) = listen().await;
        let counts = Counts::new();
        let hang_up = Arc::new(Notify::new());
        let (c, h) = (Arc::clone(&counts), Arc::clone(&hang_up));
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                c.opened.fetch_add(1, Ordering::SeqCst);
                let (c, h) = (Arc::clone(&c), Arc::clone(&h));
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    let _ = stream.read(&mut buf).await;
                    let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    stream.write_all(reply).await.unwrap();
                    h.notified().await;
                    drop(stream);
                    c.close();
                });
            }
        });
        let up = Upstream::new(Duration::from_secs(1));
        let origin = url.trim_start_matches("http://");
        for n in 1..=2 {
            let body = read_body(Leg::Worker, post(&up, &url).await.into_body(), 1 << 20);
            assert_eq!(&body.await.unwrap()[..], b"ok");
            assert_eq!(up.pool().idle_count(origin), 1);
            hang_up.notify_one();
            counts.until_closed(n).await;
            up.pool().until_idle_readable(origin).await;
            // The next request notices the close and connects afresh.
        }
        assert_eq!(counts.opened.load(Ordering::SeqCst), 2);
        up.pool().sweep();
        assert_eq!(up.pool().idle_count(origin), 0);
    }

    /// An engine that answers every request on a connection with `pieces`,
    /// written one by one with a pause between them (so they arrive in
    /// separate reads), then hangs up if `hang_up`. Counts connections. The
    /// pause is real time: on a paused clock, time would jump past the
    /// calls' connect deadline whenever the runtime waits on the kernel.
    async fn raw_engine(pieces: &'static [&'static [u8]], hang_up: bool) -> (String, Arc<Counts>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (listener, url) = listen().await;
        let counts = Counts::new();
        let c = Arc::clone(&counts);
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                c.opened.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    // One read is one request: the client writes it at once.
                    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {
                        for piece in pieces {
                            if stream.write_all(piece).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(3)).await;
                        }
                        if hang_up {
                            return;
                        }
                    }
                });
            }
        });
        (url, counts)
    }

    async fn body_of(up: &Upstream, url: &str) -> Result<Bytes, GatewayError> {
        let resp = up
            .post(
                Leg::Worker,
                url,
                "/v1/completions",
                ids(),
                &HeaderMap::new(),
                Bytes::new(),
            )
            .await?;
        read_body(Leg::Worker, resp.into_body(), 1 << 20).await
    }

    #[tokio::test]
    async fn chunks_split_across_reads_are_reassembled_and_the_connection_reused() {
        static REPLY: &[&[u8]] = &[
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-enc",
            b"oding: chunked\r\ncontent-type: text/event-stream\r\n\r\n5\r\nhel",
            b"lo\r",
            b"\n6;ext=1\r\n world\r\n",
            b"0\r\ntrailer: x\r\n",
            b"\r\n",
        ];
        let (url, counts) = raw_engine(REPLY, false).await;
        let up = Upstream::new(Duration::from_secs(1));
        for _ in 0..3 {
            let resp = post(&up, &url).await;
            assert_eq!(resp.headers()["content-type"], "text/event-stream");
            let mut body = resp.into_body();
            let mut got = Vec::new();
            while let Some(frame) = body.frame().await {
                got.extend_from_slice(&frame.unwrap().into_data().unwrap());
            }
            assert_eq!(got, b"hello world");
            assert!(body.is_end_stream());
            assert_eq!(up.pool().idle_count(url.trim_start_matches("http://")), 1);
        }
        assert_eq!(counts.opened.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn connection_close_is_honoured() {
        static REPLY: &[&[u8]] =
            &[b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"];
        let (url, counts) = raw_engine(REPLY, true).await;
        let up = Upstream::new(Duration::from_secs(1));
        for n in 1..=2 {
            assert_eq!(&body_of(&up, &url).await.unwrap()[..], b"ok");
            assert_eq!(up.pool().idle_count(url.trim_start_matches("http://")), 0);
            assert_eq!(counts.opened.load(Ordering::SeqCst), n);
        }
    }

    #[tokio::test]
    async fn a_body_without_length_runs_to_the_close() {
        static REPLY: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\n\r\npart one, ", b"part two"];
        let (url, _) = raw_engine(REPLY, true).await;
        let up = Upstream::new(Duration::from_secs(1));
        assert_eq!(
            &body_of(&up, &url).await.unwrap()[..],
            b"part one, part two"
        );
        assert_eq!(up.pool().idle_count(url.trim_start_matches("http://")), 0);
    }

    #[tokio::test]
    async fn early_closes_and_garbage_are_transport_errors() {
        static CUT_CHUNKED: &[&[u8]] =
            &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel"];
        static CUT_LENGTH: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhel"];
        static CUT_HEAD: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\ncontent-le"];
        static GARBAGE: &[&[u8]] = &[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP"];
        static BAD_CHUNK: &[&[u8]] =
            &[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"];
        static BAD_HEAD: &[&[u8]] = &[b"SSH-2.0-OpenSSH\r\n\r\n"];
        for reply in [CUT_CHUNKED, CUT_LENGTH, CUT_HEAD, BAD_CHUNK, BAD_HEAD] {
            let (url, _) = raw_engine(reply, true).await;
            let up = Upstream::new(Duration::from_secs(1));
            let e = body_of(&up, &url).await.unwrap_err();
            assert!(matches!(e.kind, ErrorKind::Transport(_)), "{e:?}");
            assert_eq!(up.pool().idle_count(url.trim_start_matches("http://")), 0);
        }
        // More than the response: the body is fine, the connection is not
        // trusted again.
        let (url, counts) = raw_engine(GARBAGE, false).await;
        let up = Upstream::new(Duration::from_secs(1));
        assert_eq!(&body_of(&up, &url).await.unwrap()[..], b"ok");
        assert_eq!(&body_of(&up, &url).await.unwrap()[..], b"ok");
        assert_eq!(counts.opened.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn targets_split_into_origin_host_and_path() {
        let t = Target::parse("http://[::1]:8000/prefix", "/v1/completions").unwrap();
        assert_eq!(t.origin, "[::1]:8000");
        assert_eq!(t.host, "[::1]:8000");
        assert_eq!(t.path, "/prefix/v1/completions");
        let t = Target::parse("http://engine", "/health").unwrap();
        assert_eq!(
            (t.origin.as_str(), t.host.to_str().unwrap()),
            ("engine:80", "engine")
        );
        assert!(Target::parse("https://engine", "/health").is_err());
    }

    #[tokio::test]
    async fn connect_failures_are_connect_errors() {
        let (listener, url) = listen().await;
        drop(listener);
        let up = Upstream::new(Duration::from_secs(1));
        let e = up
            .post(
                Leg::Decode,
                &url,
                "/v1/completions",
                ids(),
                &HeaderMap::new(),
                Bytes::new(),
            )
            .await
            .unwrap_err();
        assert!(matches!(e.kind, ErrorKind::Connect(_)), "{e:?}");
        assert_eq!(e.leg, Leg::Decode);
    }
}
