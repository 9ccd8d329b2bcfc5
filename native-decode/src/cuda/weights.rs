//! Model weights on the GPU in bf16, with Q/K/V and gate/up fused into one matrix each (one GEMM apiece).

use std::path::Path;

use crate::model::{ModelConfig, Weights};
use crate::quant::TensorType;
use crate::safetensors_dir::SafetensorsDir;

use super::buffer::DevBuf;
use super::device::GpuDevice;
use super::kernels::{launch_1d, Arg};
use super::{CudaError, CudaResult};

/// One transformer block; matrices row-major `[out, in]` bf16.
pub(crate) struct GpuLayer {
    pub attn_norm: DevBuf<u16>,
    /// `[q_dim + 2 kv_dim, hidden]`: rows of wq, then wk, then wv.
    pub wqkv: DevBuf<u16>,
    pub wo: DevBuf<u16>,
    pub ffn_norm: DevBuf<u16>,
    /// `[2 ffn, hidden]`: rows of w_gate, then w_up.
    pub w_gate_up: DevBuf<u16>,
    pub w_down: DevBuf<u16>,
}

pub struct GpuWeights {
    pub(crate) embed: DevBuf<u16>,
    pub(crate) layers: Vec<GpuLayer>,
    pub(crate) output_norm: DevBuf<u16>,
    /// `None` when tied to `embed`.
    pub(crate) lm_head: Option<DevBuf<u16>>,
}

impl std::fmt::Debug for GpuWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuWeights")
            .field("layers", &self.layers.len())
            .field("bytes", &self.bytes())
            .finish()
    }
}

/// Reads an HF `config.json` (also the `rope_parameters` form that transformers 5 writes).
pub fn hf_config(dir: &Path) -> CudaResult<ModelConfig> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| CudaError::Weights(format!("{}: {e}", path.display())))?;
    let mut cfg = ModelConfig::from_hf_json(&text)?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| CudaError::Weights(e.to_string()))?;
    if v.get("rope_theta").is_none() {
        if let Some(t) = v
            .get("rope_parameters")
            .and_then(|r| r.get("rope_theta"))
            .and_then(|t| t.as_f64())
        {
            cfg.rope_theta = t as f32;
        }
    }
    Ok(cfg)
}

/// `to_f32()` for plain f32 tensors, so that [`GpuWeights::from_weights`] reads the CPU weights the same way
/// whether a matrix is a `Vec<f32>` or the CPU engine's `Matrix` (whose inherent `to_f32` dequantizes).
trait ToF32 {
    fn to_f32(&self) -> Vec<f32>;
}

impl ToF32 for [f32] {
    fn to_f32(&self) -> Vec<f32> {
        self.to_vec()
    }
}

fn bf16_bits(x: &[f32]) -> Vec<u16> {
    x.iter()
        .map(|&v| half::bf16::from_f32(v).to_bits())
        .collect()
}

/// Fetches a tensor by HF name and expected shape, as bf16 bits.
type TensorSource<'a> = dyn FnMut(&str, &[usize]) -> CudaResult<Vec<u16>> + 'a;

/// `model.layers.{i}.{part}.weight` → `(i, part)`.
fn layer_part(name: &str) -> Option<(usize, &str)> {
    let r = name.strip_prefix("model.layers.")?;
    let (i, part) = r.split_once('.')?;
    Some((i.parse().ok()?, part.strip_suffix(".weight")?))
}

fn concat(parts: &[Vec<u16>]) -> Vec<u16> {
    parts.concat()
}

impl GpuWeights {
    /// Total bytes on the device.
    pub fn bytes(&self) -> usize {
        let l: usize = self
            .layers
            .iter()
            .map(|l| {
                l.attn_norm.bytes()
                    + l.wqkv.bytes()
                    + l.wo.bytes()
                    + l.ffn_norm.bytes()
                    + l.w_gate_up.bytes()
                    + l.w_down.bytes()
            })
            .sum();
        l + self.embed.bytes()
            + self.output_norm.bytes()
            + self.lm_head.as_ref().map_or(0, DevBuf::bytes)
    }

    /// Bytes a decode step must read whatever the batch: every layer, the final norm and the LM head (the
    /// embedding table only when it is the LM head).
    pub fn bytes_per_step(&self) -> usize {
        let head = self
            .lm_head
            .as_ref()
            .map_or(self.embed.bytes(), DevBuf::bytes);
        self.bytes() - self.embed.bytes() - self.lm_head.as_ref().map_or(0, DevBuf::bytes) + head
    }

    pub(crate) fn lm_head_ptr(&self) -> u64 {
        self.lm_head.as_ref().unwrap_or(&self.embed).ptr()
    }

    /// Uploads tensors named as in HF Llama checkpoints, fetched by `get(name, shape)` as bf16 bits.
    fn build(
        dev: &GpuDevice,
        cfg: &ModelConfig,
        get: &mut TensorSource<'_>,
        has_lm_head: bool,
    ) -> CudaResult<Self> {
        let s = &dev.stream;
        let (h, qd, kvd, f) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.ffn);
        let up = |v: Vec<u16>| DevBuf::from_host(s, &v);
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let mut g =
                |n: &str, shape: &[usize]| get(&format!("model.layers.{i}.{n}.weight"), shape);
            let wqkv = concat(&[
                g("self_attn.q_proj", &[qd, h])?,
                g("self_attn.k_proj", &[kvd, h])?,
                g("self_attn.v_proj", &[kvd, h])?,
            ]);
            let gate_up = concat(&[g("mlp.gate_proj", &[f, h])?, g("mlp.up_proj", &[f, h])?]);
            layers.push(GpuLayer {
                attn_norm: up(g("input_layernorm", &[h])?)?,
                wqkv: up(wqkv)?,
                wo: up(g("self_attn.o_proj", &[h, qd])?)?,
                ffn_norm: up(g("post_attention_layernorm", &[h])?)?,
                w_gate_up: up(gate_up)?,
                w_down: up(g("mlp.down_proj", &[h, f])?)?,
            });
        }
        let lm_head = if cfg.tied_embeddings {
            None
        } else if has_lm_head {
            Some(up(get("lm_head.weight", &[cfg.vocab, h])?)?)
        } else {
            return Err(CudaError::Weights(
                "untied model without `lm_head.weight`".into(),
            ));
        };
        let w = Self {
            embed: up(get("model.embed_tokens.weight", &[cfg.vocab, h])?)?,
            layers,
            output_norm: up(get("model.norm.weight", &[h])?)?,
            lm_head,
        };
        dev.synchronize()?;
        Ok(w)
    }

    /// Converts the CPU engine's weights (f32 or block-quantized, dequantized here) to bf16 (round to nearest even) and uploads them.
    pub fn from_weights(dev: &GpuDevice, cfg: &ModelConfig, w: &Weights) -> CudaResult<Self> {
        let mut get = |name: &str, _shape: &[usize]| -> CudaResult<Vec<u16>> {
            Ok(match name {
                "model.embed_tokens.weight" => bf16_bits(&w.embed.to_f32()),
                "model.norm.weight" => bf16_bits(&w.output_norm.to_f32()),
                "lm_head.weight" => bf16_bits(&w.lm_head().to_f32()),
                _ => {
                    let (i, part) = layer_part(name)
                        .ok_or_else(|| CudaError::Weights(format!("unknown tensor {name}")))?;
                    let l = w
                        .layers
                        .get(i)
                        .ok_or_else(|| CudaError::Weights(format!("no layer {i}")))?;
                    match part {
                        "input_layernorm" => bf16_bits(&l.attn_norm.to_f32()),
                        "post_attention_layernorm" => bf16_bits(&l.ffn_norm.to_f32()),
                        "self_attn.q_proj" => bf16_bits(&l.wq.to_f32()),
                        "self_attn.k_proj" => bf16_bits(&l.wk.to_f32()),
                        "self_attn.v_proj" => bf16_bits(&l.wv.to_f32()),
                        "self_attn.o_proj" => bf16_bits(&l.wo.to_f32()),
                        "mlp.gate_proj" => bf16_bits(&l.w_gate.to_f32()),
                        "mlp.up_proj" => bf16_bits(&l.w_up.to_f32()),
                        "mlp.down_proj" => bf16_bits(&l.w_down.to_f32()),
                        _ => return Err(CudaError::Weights(format!("unknown tensor {name}"))),
                    }
                }
            })
        };
        Self::build(dev, cfg, &mut get, w.output.is_some())
    }

    /// Loads an HF Llama folder (`config.json` + `*.safetensors`); returns the config too.
    pub fn from_hf_dir(dev: &GpuDevice, dir: &Path) -> CudaResult<(ModelConfig, Self)> {
        let cfg = hf_config(dir)?;
        let st = SafetensorsDir::open(dir)?;
        let has_head = st.contains("lm_head.weight");
        let mut get = |name: &str, shape: &[usize]| -> CudaResult<Vec<u16>> {
            let t = st.tensor(name, shape)?;
            Ok(if t.ty == TensorType::BF16 {
                // Already bf16: the bits go up unchanged.
                t.bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect()
            } else {
                bf16_bits(&st.f32(name, shape)?)
            })
        };
        let w = Self::build(dev, &cfg, &mut get, has_head)?;
        Ok((cfg, w))
    }

    /// Random weights generated on the GPU (nothing crosses PCIe): uniform with unit output variance for the
    /// matrices, ones for the norms. For benchmarks at real shapes.
    pub fn dummy(dev: &GpuDevice, cfg: &ModelConfig, seed: u64) -> CudaResult<Self> {
        let s = &dev.stream;
        let (h, qd, kvd, f) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.ffn);
        let mut next = seed;
        let mut mat = |rows: usize, cols: usize, scale: f32| -> CudaResult<DevBuf<u16>> {
            let b = DevBuf::<u16>::zeros(s, rows * cols)?;
            next = next
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            launch_1d(
                s,
                &dev.k.fill_random_bf16,
                b.len(),
                &[
                    Arg::Ptr(b.ptr()),
                    Arg::U64(b.len() as u64),
                    Arg::U64(next),
                    Arg::F32(scale),
                ],
            )?;
            Ok(b)
        };
        let unit = |cols: usize| (3.0 / cols as f32).sqrt();
        let ones = |n: usize| -> CudaResult<DevBuf<u16>> {
            let b = DevBuf::<u16>::zeros(s, n)?;
            launch_1d(
                s,
                &dev.k.fill_const_bf16,
                n,
                &[Arg::Ptr(b.ptr()), Arg::U64(n as u64), Arg::F32(1.0)],
            )?;
            Ok(b)
        };
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for _ in 0..cfg.n_layers {
            layers.push(GpuLayer {
                attn_norm: ones(h)?,
                wqkv: mat(qd + 2 * kvd, h, unit(h))?,
                wo: mat(h, qd, unit(qd))?,
                ffn_norm: ones(h)?,
                w_gate_up: mat(2 * f, h, unit(h))?,
                w_down: mat(h, f, unit(f))?,
            });
        }
        let w = Self {
            embed: mat(cfg.vocab, h, 1.0)?,
            layers,
            output_norm: ones(h)?,
            lm_head: if cfg.tied_embeddings {
                None
            } else {
                Some(mat(cfg.vocab, h, unit(h))?)
            },
        };
        dev.synchronize()?;
        Ok(w)
    }
}
