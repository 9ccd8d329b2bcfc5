//! The Llama model: configuration, weights, and the batched forward pass over a paged KV cache.

pub mod config;
mod forward;
pub mod matrix;
pub mod rope;
pub mod weights;

use std::path::Path;

pub use config::{ModelConfig, RopeStyle};
pub use forward::SeqInput;
pub use weights::Weights;

use crate::error::Result;
use crate::gguf::GgufFile;
use rope::Rope;

/// A loaded model, ready to run.
#[derive(Debug)]
pub struct Model {
    pub cfg: ModelConfig,
    pub weights: Weights,
    rope: Rope,
}

impl Model {
    pub fn new(cfg: ModelConfig, weights: Weights) -> Self {
        let rope = Rope::new(
            cfg.head_dim,
            cfg.rope_theta,
            cfg.context_length,
            cfg.rope_style,
        );
        Self { cfg, weights, rope }
    }

    /// Loads with weights dequantized to f32.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        Self::from_gguf_with(file, false)
    }

    /// Loads; with `keep_quantized`, 4/8-bit matrices stay in block form (see [`matrix::Matrix`]).
    pub fn from_gguf_with(file: &GgufFile, keep_quantized: bool) -> Result<Self> {
        let cfg = ModelConfig::from_gguf(file)?;
        let weights = Weights::from_gguf(file, &cfg, keep_quantized)?;
        Ok(Self::new(cfg, weights))
    }

    pub fn open_gguf(path: &Path) -> Result<Self> {
        Self::from_gguf(&GgufFile::open(path)?)
    }
}
