//! `baton-native`: an inference engine for Llama-family models with a CPU backend (GGUF weights kept in their 4/8-bit
//! block form, or dequantized to f32; f32 math) and, with the `cuda` feature, an NVIDIA GPU backend (bf16 weights),
//! a paged KV cache, continuous batching, an OpenAI-compatible HTTP server and vLLM-style prefill/decode roles that
//! move KV blocks over TCP (or GPU to GPU with CUDA IPC).

pub mod chat_template;
pub mod cli;
pub mod cpu_ops;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod engine;
pub mod error;
pub mod gguf;
pub mod kv;
pub mod loader;
pub mod metrics;
pub mod model;
pub mod profile;
pub mod quant;
pub mod safetensors_dir;
pub mod sampling;
pub mod server;
#[cfg(test)]
mod test_support;
pub mod tokenizer;
pub mod transfer;

pub use error::{Error, Result};
