//! `baton-native`: a CPU inference engine for Llama-family models (f32 math on dequantized GGUF or safetensors
//! weights) with a paged KV cache, continuous batching, an OpenAI-compatible HTTP server and vLLM-style
//! prefill/decode roles that move KV blocks over TCP.

pub mod error;
pub mod gguf;
pub mod kernels;
pub mod kv;
pub mod model;
pub mod quant;
pub mod sampling;

pub use error::{Error, Result};
pub mod tokenizer;
