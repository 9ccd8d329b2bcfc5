//! The Baton gateway: an OpenAI-compatible L7 proxy in front of LLM engine
//! pools, aggregated or prefill/decode-disaggregated (vLLM and SGLang wire
//! protocols). This is the only Baton crate that does network I/O; protocol
//! planning lives in `baton-protocol`, routing in `baton-policies`.

pub mod abort;
pub mod auth;
pub mod body;
pub mod breaker;
pub mod cli;
pub mod coalesce;
pub mod config;
pub mod discovery;
pub mod dispatch;
pub mod engine_load;
pub mod error;
pub mod health;
pub mod lifecycle;
pub mod listener;
pub mod metrics;
pub mod models;
pub mod passthrough;
pub mod periodic;
pub mod plugin_reload;
pub mod plugin_runner;
pub mod pool;
pub mod relay;
pub mod request_id;
pub mod respond;
pub mod secret;
pub mod server;
pub mod slo;
pub mod state;
pub mod sweep;
pub mod upstream;
pub mod worker;
pub mod workers_api;

pub use config::GatewayConfig;
pub use server::{start, RunningGateway, StartError};
