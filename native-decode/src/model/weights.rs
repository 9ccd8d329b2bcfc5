//! Model weights held as dequantized f32, loaded from GGUF, from an HF safetensors folder, or made up (dummy).

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::model::config::ModelConfig;
use crate::model::matrix::Matrix;
use crate::quant::dequantize;

/// One transformer block. Matrices are `[out, in]`.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub wq: Matrix,
    pub wk: Matrix,
    pub wv: Matrix,
    pub wo: Matrix,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Matrix,
    pub w_up: Matrix,
    pub w_down: Matrix,
}

#[derive(Debug, Clone)]
pub struct Weights {
    /// `[vocab, hidden]`
    pub embed: Matrix,
    pub layers: Vec<LayerWeights>,
    pub output_norm: Vec<f32>,
    /// `[vocab, hidden]`; `None` when tied to `embed`.
    pub output: Option<Matrix>,
}

impl Weights {
    /// The `[vocab, hidden]` output projection.
    pub fn lm_head(&self) -> &Matrix {
        self.output.as_ref().unwrap_or(&self.embed)
    }

    /// Loads every tensor of a Llama GGUF file, checking shapes against `cfg`. Matrices are dequantized to f32
    /// unless `keep_quantized`, in which case Q4_0/Q4_1/Q8_0 matrices stay in block form (same values).
    pub fn from_gguf(file: &GgufFile, cfg: &ModelConfig, keep_quantized: bool) -> Result<Self> {
        let check = |name: &str, shape: &[usize]| -> Result<()> {
            let info = file
                .tensor_info(name)
                .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
            let expected: Vec<usize> = shape.iter().rev().copied().collect();
            if info.dims != expected {
                return Err(Error::BadShape {
                    name: name.to_string(),
                    got: info.dims.clone(),
                    expected,
                });
            }
            Ok(())
        };
        let mat = |name: &str, rows: usize, cols: usize| -> Result<Matrix> {
            check(name, &[rows, cols])?;
            let (info, bytes) = file.tensor_bytes(name)?;
            Matrix::from_encoded(info.ty, bytes, rows, cols, keep_quantized)
        };
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
                    wq: mat(&n("attn_q"), cfg.q_dim(), h)?,
                    wk: mat(&n("attn_k"), cfg.kv_dim(), h)?,
                    wv: mat(&n("attn_v"), cfg.kv_dim(), h)?,
                    wo: mat(&n("attn_output"), h, cfg.q_dim())?,
                    ffn_norm: load(&n("ffn_norm"), &[h])?,
                    w_gate: mat(&n("ffn_gate"), cfg.ffn, h)?,
                    w_up: mat(&n("ffn_up"), cfg.ffn, h)?,
                    w_down: mat(&n("ffn_down"), h, cfg.ffn)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embed: mat("token_embd.weight", cfg.vocab, h)?,
            layers,
            output_norm: load("output_norm.weight", &[h])?,
            output: if cfg.tied_embeddings {
                None
            } else {
                Some(mat("output.weight", cfg.vocab, h)?)
            },
        })
    }

    /// Deterministic pseudo-random weights (`--load-format dummy` and unit tests).
    pub fn dummy(cfg: &ModelConfig, seed: u64) -> Self {
        let mut rng = crate::sampling::rng::SplitMix64::new(seed);
        let mut mat = |rows: usize, cols: usize| -> Matrix {
            let scale = 1.0 / (cols as f32).sqrt();
            let data = (0..rows * cols)
                .map(|_| (rng.next_f32() * 2.0 - 1.0) * scale * 1.7)
                .collect();
            Matrix::from_f32(rows, cols, data)
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
        let embed = Matrix::from_f32(
            cfg.vocab,
            h,
            mat(cfg.vocab, h)
                .to_f32()
                .into_iter()
                .map(|x| x * 8.0)
                .collect(),
        );
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
