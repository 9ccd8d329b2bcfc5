//! A tower layer that gives every request an id and echoes it back.
//!
//! The client's `x-request-id` is kept when it is sane (it shows up in logs
//! and is forwarded to engines as `x-baton-request-id`), otherwise one is
//! generated. It is never used as a KV-transfer key.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use rand::Rng;
use tower::{Layer, Service};

pub const HEADER: &str = "x-request-id";

/// The request's id, in the request extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

fn acceptable(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    let ok = !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| s.to_owned())
}

fn generate() -> String {
    format!("req-{:016x}", rand::rng().random::<u64>())
}

impl<S, B, ResB> Service<Request<B>> for RequestIdService<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Future: Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = req
            .headers()
            .get(HEADER)
            .and_then(acceptable)
            .unwrap_or_else(generate);
        req.extensions_mut().insert(RequestId(id.clone()));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            if let Ok(v) = HeaderValue::from_str(&id) {
                resp.headers_mut().insert(HEADER, v);
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{service_fn, ServiceExt};

    async fn echo(req: Request<()>) -> Result<Response<String>, Infallible> {
        let id = req.extensions().get::<RequestId>().map(|r| r.0.clone());
        Ok(Response::new(id.unwrap_or_default()))
    }

    #[tokio::test]
    async fn keeps_sane_ids_and_replaces_bad_ones() {
        let svc = RequestIdLayer.layer(service_fn(echo));
        let req = Request::builder()
            .header(HEADER, "abc-123")
            .body(())
            .unwrap();
        let resp = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.headers()[HEADER], "abc-123");
        assert_eq!(resp.body(), "abc-123");
        let req = Request::builder()
            .header(HEADER, "has space")
            .body(())
            .unwrap();
        let resp = svc.clone().oneshot(req).await.unwrap();
        assert!(resp.body().starts_with("req-"));
        let resp = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(resp.headers()[HEADER], resp.body().as_str());
    }
}
