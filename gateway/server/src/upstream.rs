//! The HTTP client for engine calls.
//!
//! One pooled hyper client for the whole gateway. Dropping a pending call or
//! an unfinished response body closes that connection, which is how
//! cancellation reaches the engine.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use crate::error::{ErrorKind, GatewayError, Leg};

/// Client headers forwarded to engines (auth, tracing context, tenancy).
const FORWARDED: &[&str] = &[
    "authorization",
    "traceparent",
    "tracestate",
    "openai-organization",
    "openai-project",
    "x-api-key",
];

/// Ids sent on an engine call.
#[derive(Debug, Clone, Copy)]
pub struct CallIds<'a> {
    /// `X-Request-Id` for the engine: in PD mode the per-attempt transfer id
    /// (vLLM keys the KV hand-off on it), else the request id.
    pub upstream: &'a str,
    /// The gateway's request id (the client's, when it sent one), as
    /// `x-baton-request-id` on every leg for log correlation.
    pub request: &'a str,
}

#[derive(Clone, Debug)]
pub struct Upstream {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Upstream {
    pub fn new(connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(connector);
        Self { client }
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
    ) -> Result<Response<Incoming>, GatewayError> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(format!("{base_url}{path}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream")
            .body(Full::new(body))
            .map_err(|e| GatewayError::new(leg, ErrorKind::Connect(e.to_string())))?;
        let headers = req.headers_mut();
        if let Ok(v) = HeaderValue::from_str(ids.upstream) {
            headers.insert("x-request-id", v);
        }
        if let Ok(v) = HeaderValue::from_str(ids.request) {
            headers.insert("x-baton-request-id", v);
        }
        for name in FORWARDED {
            if let Some(v) = client_headers.get(*name) {
                headers.insert(*name, v.clone());
            }
        }
        self.client
            .request(req)
            .await
            .map_err(|e| classify(leg, &e))
    }

    /// GETs `base_url + path`, returning status and body.
    pub async fn get(&self, base_url: &str, path: &str) -> Result<(u16, Bytes), String> {
        let req = Request::builder()
            .method(Method::GET)
            .uri(format!("{base_url}{path}"))
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }
}

fn classify(leg: Leg, e: &hyper_util::client::legacy::Error) -> GatewayError {
    let msg = error_chain(e);
    if e.is_connect() {
        GatewayError::new(leg, ErrorKind::Connect(msg))
    } else {
        GatewayError::new(leg, ErrorKind::Transport(msg))
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
pub async fn read_body(leg: Leg, body: Incoming, limit: usize) -> Result<Bytes, GatewayError> {
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
