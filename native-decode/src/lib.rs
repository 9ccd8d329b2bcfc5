//! `baton-native`: a CPU inference engine for Llama-family models (f32 math on dequantized GGUF weights) with a
//! paged KV cache, continuous batching, an OpenAI-compatible HTTP server and vLLM-style prefill/decode roles that
//! move KV blocks over TCP.

pub mod chat_template;
pub mod cli;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod engine;
pub mod error;
pub mod gguf;
pub mod kernels;
pub mod kv;
pub mod loader;
pub mod metrics;
pub mod model;
pub mod quant;
pub mod safetensors_dir;
pub mod sampling;
pub mod server;
pub mod tokenizer;
pub mod transfer;

pub use error::{Error, Result};
