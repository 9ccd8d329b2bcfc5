//! Baton's wire protocols, without I/O.
//!
//! Everything here is a pure function of bytes and JSON values so it can be
//! tested on golden fixtures: parsing and validating client requests
//! ([`request`]), planning the upstream calls of each serving mode
//! ([`vllm`], [`sglang`]), decoding and inspecting SSE streams ([`sse`]) and
//! the OpenAI error shape ([`openai_error`]). The gateway crate executes the
//! plans; nothing in this crate touches a socket or a clock.

pub mod endpoint;
pub mod error;
pub mod openai_error;
pub mod request;
pub mod sglang;
pub mod sse;
pub mod vllm;

pub use endpoint::Endpoint;
pub use error::ProtocolError;
pub use openai_error::OpenAiError;
pub use request::ClientRequest;
