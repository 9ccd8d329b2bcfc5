//! Baton's wire protocols, without I/O.
//!
//! Everything here is a pure function of bytes and JSON values so it can be
//! tested on golden fixtures: parsing and validating client requests
//! ([`request`]), planning the upstream calls of each serving mode
//! ([`vllm`], [`sglang`]), decoding and inspecting SSE streams ([`sse`]),
//! the OpenAI error shape ([`openai_error`]) and the fleet key that authenticates
//! gateway-to-engine calls ([`fleet`]). The gateway crate executes the
//! plans; nothing in this crate touches a socket or a clock.

pub mod endpoint;
pub mod engine_slo;
pub mod error;
pub mod fleet;
pub mod openai_error;
pub mod request;
pub mod sanitize;
pub mod sglang;
pub mod sse;
pub mod vllm;

pub use endpoint::Endpoint;
pub use engine_slo::EngineSlo;
pub use error::ProtocolError;
pub use fleet::FleetKey;
pub use openai_error::OpenAiError;
pub use request::{ClientRequest, Prompt};
