//! Model weights held as dequantized f32, loaded from GGUF, from an HF safetensors folder, or made up (dummy).

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::model::config::ModelConfig;
use crate::quant::dequantize;

/// One transformer block. Matrices are row-major `[out, in]`.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub wq: Vec<f32>,
    pub wk: Vec<f32>,
    pub wv: Vec<f32>,
    pub wo: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Vec<f32>,
    pub w_up: Vec<f32>,
    pub w_down: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct Weights {
    /// `[vocab, hidden]`
    pub embed: Vec<f32>,
    pub layers: Vec<LayerWeights>,
    pub output_norm: Vec<f32>,
    /// `[vocab, hidden]`; `None` when tied to `embed`.
    pub output: Option<Vec<f32>>,
}

impl Weights {
    /// The `[vocab, hidden]` output projection.
    pub fn lm_head(&self) -> &[f32] {
        self.output.as_deref().unwrap_or(&self.embed)
    }

    /// Loads and dequantizes every tensor of a Llama GGUF file, checking shapes against `cfg`.
    pub fn from_gguf(file: &GgufFile, cfg: &ModelConfig) -> Result<Self> {
        let load = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let (info, bytes) = file.tensor_bytes(name)?;
            // GGUF lists dims innermost-first; `shape` is given outermost-first like PyTorch.
            let expected: Vec<usize> = shape.iter().rev().copied().collect();
            if info.dims != expected {
                return Err(Error::BadShape {
                    name: name.to_string(),
                    got: info.dims.clone(),
                    expected,
                });
            }
            dequantize(info.ty, bytes, info.n_elements())
        };
        let h = cfg.hidden;
        let layers = (0..cfg.n_layers)
            .map(|i| {
                let n = |s: &str| format!("blk.{i}.{s}.weight");
                Ok(LayerWeights {
                    attn_norm: load(&n("attn_norm"), &[h])?,
                    wq: load(&n("attn_q"), &[cfg.q_dim(), h])?,
                    wk: load(&n("attn_k"), &[cfg.kv_dim(), h])?,
                    wv: load(&n("attn_v"), &[cfg.kv_dim(), h])?,
                    wo: load(&n("attn_output"), &[h, cfg.q_dim()])?,
                    ffn_norm: load(&n("ffn_norm"), &[h])?,
                    w_gate: load(&n("ffn_gate"), &[cfg.ffn, h])?,
                    w_up: load(&n("ffn_up"), &[cfg.ffn, h])?,
                    w_down: load(&n("ffn_down"), &[h, cfg.ffn])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed: load("token_embd.weight", &[cfg.vocab, h])?,
            layers,
            output_norm: load("output_norm.weight", &[h])?,
            output: if cfg.tied_embeddings {
                None
            } else {
                Some(load("output.weight", &[cfg.vocab, h])?)
            },
        })
    }

    /// Deterministic pseudo-random weights (`--load-format dummy` and unit tests).
    pub fn dummy(cfg: &ModelConfig, seed: u64) -> Self {
        let mut rng = crate::sampling::rng::SplitMix64::new(seed);
        let mut mat = |rows: usize, cols: usize| -> Vec<f32> {
            let scale = 1.0 / (cols as f32).sqrt();
            (0..rows * cols)
                .map(|_| (rng.next_f32() * 2.0 - 1.0) * scale * 1.7)
                .collect()
        };
        let h = cfg.hidden;
        let layers = (0..cfg.n_layers)
            .map(|_| LayerWeights {
                attn_norm: vec![1.0; h],
                wq: mat(cfg.q_dim(), h),
                wk: mat(cfg.kv_dim(), h),
                wv: mat(cfg.kv_dim(), h),
                wo: mat(h, cfg.q_dim()),
                ffn_norm: vec![1.0; h],
                w_gate: mat(cfg.ffn, h),
                w_up: mat(cfg.ffn, h),
                w_down: mat(h, cfg.ffn),
            })
            .collect();
        let embed = mat(cfg.vocab, h).into_iter().map(|x| x * 8.0).collect();
        Self {
            embed,
            layers,
            output_norm: vec![1.0; h],
            output: if cfg.tied_embeddings {
                None
            } else {
                Some(mat(cfg.vocab, h))
            },
        }
    }
}
