//! The streaming OpenAI client: sends one request, reads its SSE stream (the protocol crate's
//! decoder) through [`StreamTimer`], and classifies how it ended (ok, 429 rejected, HTTP error,
//! aborted stream, connection failure, timeout). [`post_stream`] is the part the e2e tests'
//! load runs share: any request in, a measurement out; its clock is tokio's, so it runs as well
//! under paused time.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::{timeout_at, Instant};

use baton_protocol::sse::SseDecoder;

use crate::chunk::{truncate, Chunk};
use crate::record::Outcome;
use crate::request::RequestTemplate;
use crate::timing::{StreamResult, StreamTimer};
use crate::workload::RequestSpec;

/// A client that can't be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad URL {0:?}: {1}")]
    Url(String, String),
    #[error("bad header {0:?}")]
    Header(String),
}

/// The pooled HTTP/1 client requests go through.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A client with benchmark settings: no Nagle delay (token chunks are small), idle connections
/// kept 30 s.
pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// Sends benchmark requests to one server.
#[derive(Clone)]
pub struct BenchClient {
    http: HttpClient,
    uri: Uri,
    template: RequestTemplate,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
}

/// How one request went.
#[derive(Clone, Debug, PartialEq)]
pub struct Sent {
    /// The HTTP status (0: no answer).
    pub status: u16,
    pub outcome: Outcome,
    pub stream: StreamResult,
    /// The gateway's prediction for this request (`x-baton-predicted`), when it made one.
    pub predicted: Option<Predicted>,
}

/// What the gateway predicted for one request, to compare with what was measured.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Predicted {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
}

/// Header on the gateway's answer: `ttft=<ms>;tpot=<ms>`, the syntax of the engines' `x-baton-slo`.
pub const PREDICTED_HEADER: &str = "x-baton-predicted";

fn predicted(headers: &http::HeaderMap) -> Option<Predicted> {
    let v = baton_protocol::EngineSlo::parse(headers.get(PREDICTED_HEADER)?.to_str().ok()?)?;
    (!v.is_empty()).then_some(Predicted {
        ttft_ms: v.ttft_ms,
        tpot_ms: v.tpot_ms,
    })
}

impl BenchClient {
    /// `base_url` is `http://host:port` (a trailing `/v1` or the full endpoint path is fine too).
    pub fn new(
        base_url: &str,
        template: RequestTemplate,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let uri = endpoint_uri(base_url, template.endpoint.path())?;
        let headers = template
            .headers
            .iter()
            .map(|(k, v)| {
                let name =
                    HeaderName::try_from(k.as_str()).map_err(|_| ClientError::Header(k.clone()))?;
                let value = HeaderValue::try_from(v.as_str())
                    .map_err(|_| ClientError::Header(k.clone()))?;
                Ok((name, value))
            })
            .collect::<Result<_, ClientError>>()?;
        Ok(Self {
            http: http_client(),
            uri,
            template,
            headers,
            timeout,
        })
    }

    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// Sends `spec` and measures its stream; never fails (failures are outcomes).
    pub async fn send(&self, spec: &RequestSpec) -> Sent {
        let deadline = Instant::now() + self.timeout;
        let body = self.template.body(spec).to_string();
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(CONTENT_TYPE, "application/json");
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        match req.body(Full::new(Bytes::from(body))) {
            Ok(r) => post_stream(&self.http, r, deadline).await,
            Err(e) => failed(Outcome::Connect {
                message: e.to_string(),
            }),
        }
    }
}

/// Sends `req` and measures its SSE stream until `deadline`; never fails (failures are
/// outcomes). Times are offsets from the call.
pub async fn post_stream(http: &HttpClient, req: Request<Full<Bytes>>, deadline: Instant) -> Sent {
    let start = Instant::now();
    let resp = match timeout_at(deadline, http.request(req)).await {
        Err(_) => return failed(Outcome::Timeout),
        Ok(Err(e)) => {
            return failed(Outcome::Connect {
                message: error_chain(&e),
            })
        }
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    let prediction = predicted(resp.headers());
    let answered = |outcome| Sent {
        status: status.as_u16(),
        predicted: prediction,
        ..failed(outcome)
    };
    if status == StatusCode::TOO_MANY_REQUESTS {
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        return answered(Outcome::Rejected { retry_after });
    }
    let mut body = resp.into_body();
    if !status.is_success() {
        let message = match timeout_at(deadline, body.collect()).await {
            Ok(Ok(b)) => truncate(&String::from_utf8_lossy(&b.to_bytes()), 500).to_owned(),
            _ => String::new(),
        };
        return answered(Outcome::HttpError {
            status: status.as_u16(),
            message,
        });
    }
    let mut decoder = SseDecoder::new();
    let mut timer = StreamTimer::default();
    let broken = 'read: loop {
        let frame = match timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Sent {
                    status: status.as_u16(),
                    outcome: Outcome::Timeout,
                    stream: timer.finish(Some("timeout".into())),
                    predicted: prediction,
                }
            }
            Ok(None) => break None,
            Ok(Some(Err(e))) => break Some(format!("connection broke: {}", error_chain(&e))),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let at = start.elapsed();
        for ev in decoder.push_named(&data) {
            if timer.on_chunk(&Chunk::classify(&ev), at) {
                break 'read None;
            }
        }
    };
    let stream = timer.finish(broken);
    let outcome = match &stream.failure {
        None => Outcome::Ok,
        Some(reason) => Outcome::Aborted {
            reason: reason.clone(),
        },
    };
    Sent {
        status: status.as_u16(),
        outcome,
        stream,
        predicted: prediction,
    }
}

fn failed(outcome: Outcome) -> Sent {
    Sent {
        status: 0,
        outcome,
        predicted: None,
        stream: StreamResult {
            ttft: None,
            latency: None,
            itl: Vec::new(),
            output_tokens: None,
            prompt_tokens: None,
            failure: None,
        },
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `base` + `path`, unless `base` already ends with the path (or with `/v1`).
pub fn endpoint_uri(base: &str, path: &str) -> Result<Uri, ClientError> {
    let bad = |m: &str| ClientError::Url(base.to_owned(), m.to_owned());
    let trimmed = base.trim_end_matches('/');
    let full = if trimmed.ends_with(path) {
        trimmed.to_owned()
    } else if let Some(root) = trimmed.strip_suffix("/v1") {
        format!("{root}{path}")
    } else {
        format!("{trimmed}{path}")
    };
    let uri: Uri = full
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(bad("https is not supported (plain http only)")),
        _ => return Err(bad("expected http://host:port")),
    }
    if uri.host().is_none() {
        return Err(bad("no host"));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_uris() {
        let p = "/v1/completions";
        for base in [
            "http://127.0.0.1:8000",
            "http://127.0.0.1:8000/",
            "http://127.0.0.1:8000/v1",
            "http://127.0.0.1:8000/v1/completions",
        ] {
            assert_eq!(
                endpoint_uri(base, p).unwrap().to_string(),
                "http://127.0.0.1:8000/v1/completions",
                "{base}"
            );
        }
        assert!(endpoint_uri("https://x", p).is_err());
        assert!(endpoint_uri("127.0.0.1:80", p).is_err());
        assert!(endpoint_uri("http://a b", p).is_err());
    }

    #[test]
    fn the_gateways_prediction_is_read_from_its_header() {
        let mut h = http::HeaderMap::new();
        assert_eq!(predicted(&h), None);
        h.insert(
            PREDICTED_HEADER,
            HeaderValue::from_static("ttft=412.5;tpot=21"),
        );
        assert_eq!(
            predicted(&h),
            Some(Predicted {
                ttft_ms: Some(412.5),
                tpot_ms: Some(21.0)
            })
        );
        h.insert(PREDICTED_HEADER, HeaderValue::from_static("ttft=-3"));
        assert_eq!(predicted(&h), None);
    }
}
