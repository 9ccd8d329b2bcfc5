//! End-to-end harness for Baton.
//!
//! [`mock`] holds in-process mock LLM engines (plain OpenAI, vLLM NixlConnector prefill/decode, SGLang
//! bootstrap-room prefill/decode) that speak the wire protocols of `shared/reference/protocols.md`, with
//! deterministic output, configurable latency and fault injection, and counters that tests await
//! without sleeping.

pub mod mock;

pub use mock::{
    Fault, Flavor, MockEngine, MockHandle, MockStats, RecordedRequest, Rendezvous, RoomKey,
    VllmKvRegistry,
};
