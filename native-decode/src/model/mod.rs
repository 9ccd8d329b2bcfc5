//! The Llama model: configuration, weights, and the batched forward pass over a paged KV cache.

pub mod config;
mod forward;
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

    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let cfg = ModelConfig::from_gguf(file)?;
        let weights = Weights::from_gguf(file, &cfg)?;
        Ok(Self::new(cfg, weights))
    }

    pub fn open_gguf(path: &Path) -> Result<Self> {
        Self::from_gguf(&GgufFile::open(path)?)
    }
}
