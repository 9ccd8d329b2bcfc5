//! End-to-end harness for Baton.
//!
//! [`mock`] holds in-process mock LLM engines (plain OpenAI, vLLM NixlConnector prefill/decode, SGLang
//! bootstrap-room prefill/decode) that speak the wire protocols of `docs/PROTOCOLS.md`, with
//! deterministic output, configurable latency and fault injection, and counters that tests await
//! without sleeping. [`sim`] holds simulated engines with a continuous-batching latency model and
//! an open-loop goodput workload (`tests/tests/goodput.rs`, `tests/bench/goodput_cpu.rs`) sent by
//! the load generator's client (`baton_loadgen`).
//!
//! Two families, two roles: the mocks are protocol-faithful (every dialect, PD handshakes,
//! injected faults, fixed delays); the sims are a timing model (batching, interference) for
//! goodput experiments, speaking only OpenAI and vLLM PD. Their HTTP serving, response bodies,
//! error bodies and SSE framing are one code (`engine_http`), and the sims render the mocks'
//! protocol pieces (token text, KV transfer params).

mod engine_http;
pub mod mock;
pub mod sim;

pub use mock::{
    Fault, Flavor, MockEngine, MockHandle, MockStats, RecordedRequest, Rendezvous, RoomKey,
    VllmKvRegistry, VllmPair,
};
