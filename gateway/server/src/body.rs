//! The response body type the gateway serves.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};

/// Every response body: errors inside a stream are turned into SSE error
/// events, so the body itself never fails.
pub type GatewayBody = UnsyncBoxBody<Bytes, Infallible>;

pub fn full(bytes: impl Into<Bytes>) -> GatewayBody {
    Full::new(bytes.into()).boxed_unsync()
}
