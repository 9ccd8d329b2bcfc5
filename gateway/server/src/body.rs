//! Body types: the response body the gateway serves, and reading a client's
//! request body under a size and time limit.

use std::convert::Infallible;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::Incoming;

/// Every response body: errors inside a stream are turned into SSE error
/// events, so the body itself never fails.
pub type GatewayBody = UnsyncBoxBody<Bytes, Infallible>;

pub fn full(bytes: impl Into<Bytes>) -> GatewayBody {
    Full::new(bytes.into()).boxed_unsync()
}

/// Why a request body could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// More than the limit: reading stopped at the frame that crossed it.
    TooLarge,
    Timeout,
    Broken(hyper::Error),
}

/// Reads a request body of at most `limit` bytes into one buffer.
///
/// `expected` is the declared content length (already checked against
/// `limit`): the buffer is sized once for it, so a large body is copied once
/// and never held twice. A body of one frame is kept as it came. Nothing is
/// read past the frame that crosses the limit.
pub async fn read_limited(
    mut body: Incoming,
    limit: usize,
    expected: Option<usize>,
    timeout: Duration,
) -> Result<Bytes, ReadError> {
    let read = async {
        let mut first: Option<Bytes> = None;
        let mut buf = BytesMut::new();
        let mut len = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(ReadError::Broken)?.into_data() else {
                continue; // trailers
            };
            len = len.saturating_add(data.len());
            if len > limit {
                return Err(ReadError::TooLarge);
            }
            if let Some(f) = first.take() {
                buf.reserve(expected.unwrap_or(0).min(limit).max(len));
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&data);
            } else if buf.is_empty() {
                first = Some(data);
            } else {
                buf.extend_from_slice(&data);
            }
        }
        Ok(first.unwrap_or_else(|| buf.freeze()))
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(ReadError::Timeout))
}
