//! End-to-end harness for Baton.
//!
//! [`mock`] holds in-process mock LLM engines (plain OpenAI, vLLM NixlConnector prefill/decode, SGLang
//! bootstrap-room prefill/decode) that speak the wire protocols of `shared/reference/protocols.md`, with
//! deterministic output, configurable latency and fault injection, and counters that tests await
//! without sleeping. [`sim`] holds simulated engines with a continuous-batching latency model and
//! an open-loop goodput client (`tests/tests/goodput.rs`, `tests/bench/goodput_cpu.rs`).

pub mod mock;
pub mod sim;

pub use mock::{
    Fault, Flavor, MockEngine, MockHandle, MockStats, RecordedRequest, Rendezvous, RoomKey,
    VllmKvRegistry,
};
