//! Baton's goodput load generator (`baton-bench`): open-loop arrivals against an
//! OpenAI-compatible server, per-request TTFT / TPOT / ITL / E2E measured the way
//! `vllm bench serve` measures them, goodput by vLLM's definition (good requests per second) and
//! by DistServe's (the highest request rate at which ≥ 90% of requests meet the SLOs), reports
//! as JSON, CSV and PNG plots.
//!
//! Pure pieces (arrivals, workloads, chunk classification, stream timing, metrics, sweeps) are
//! separate from the I/O ones (`client`, `runner`, `report`, `plot`). SSE is read with the
//! protocol crate's decoder. The e2e tests' load runs (`baton_e2e::sim::load`) send through
//! [`client::post_stream`] and judge with [`record::RequestRecord`] and [`slo::Slo`], on tokio's
//! clock like the rest of this crate. [`twin`] runs the same workloads, policies and judging on a
//! discrete-event simulation of a fleet in virtual time (`baton-bench twin`).

pub mod app;
pub mod arrival;
pub mod chunk;
pub mod cli;
pub mod client;
pub mod metrics;
pub mod plot;
pub mod progress;
pub mod record;
pub mod report;
pub mod request;
pub mod runner;
pub mod slo;
pub mod sweep;
pub mod timing;
pub mod twin;
pub mod workload;
