//! Loading a model and its tokenizer from a GGUF file, an HF folder (config.json + *.safetensors +
//! tokenizer.json), or as random weights (`dummy`) shaped by either.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::model::matrix::Matrix;
use crate::model::{Model, ModelConfig, Weights};
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadFormat {
    /// A directory is an HF folder; anything else GGUF.
    Auto,
    Gguf,
    Hf,
    /// Random weights with the configuration (and tokenizer) of the given GGUF file or HF folder.
    Dummy,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn hf_tokenizer(dir: &Path) -> Result<Tokenizer> {
    let tj = read(&dir.join("tokenizer.json"))?;
    let cfg_path = dir.join("tokenizer_config.json");
    let cfg = if cfg_path.is_file() {
        Some(read(&cfg_path)?)
    } else {
        None
    };
    Tokenizer::from_hf_json(&tj, cfg.as_deref())
}

/// Loads model and tokenizer. `keep_quantized` keeps GGUF 4/8-bit matrices in block form (same values, fewer
/// bytes per token); `seed` drives dummy weights.
pub fn load(
    path: &Path,
    format: LoadFormat,
    keep_quantized: bool,
    seed: u64,
) -> Result<(Model, Tokenizer)> {
    let is_dir = path.is_dir();
    match format {
        LoadFormat::Auto if is_dir => load(path, LoadFormat::Hf, keep_quantized, seed),
        LoadFormat::Auto | LoadFormat::Gguf => {
            let file = GgufFile::open(path)?;
            Ok((
                Model::from_gguf_with(&file, keep_quantized)?,
                Tokenizer::from_gguf(&file)?,
            ))
        }
        LoadFormat::Hf => {
            let cfg = ModelConfig::from_hf_json(&read(&path.join("config.json"))?)?;
            let weights = hf_weights(path, &cfg)?;
            Ok((Model::new(cfg, weights), hf_tokenizer(path)?))
        }
        LoadFormat::Dummy if is_dir => {
            let cfg = ModelConfig::from_hf_json(&read(&path.join("config.json"))?)?;
            let w = Weights::dummy(&cfg, seed);
            Ok((Model::new(cfg, w), hf_tokenizer(path)?))
        }
        LoadFormat::Dummy => {
            let file = GgufFile::open(path)?;
            let cfg = ModelConfig::from_gguf(&file)?;
            let w = Weights::dummy(&cfg, seed);
            Ok((Model::new(cfg, w), Tokenizer::from_gguf(&file)?))
        }
    }
}

/// Config and tokenizer only, without weights (for a backend that loads the weights itself).
pub fn load_config(path: &Path, format: LoadFormat) -> Result<(ModelConfig, Tokenizer)> {
    let hf = match format {
        LoadFormat::Hf => true,
        LoadFormat::Gguf => false,
        LoadFormat::Auto | LoadFormat::Dummy => path.is_dir(),
    };
    if hf {
        let cfg = ModelConfig::from_hf_json(&read(&path.join("config.json"))?)?;
        Ok((cfg, hf_tokenizer(path)?))
    } else {
        let file = GgufFile::open(path)?;
        Ok((ModelConfig::from_gguf(&file)?, Tokenizer::from_gguf(&file)?))
    }
}

fn hf_weights(dir: &Path, cfg: &ModelConfig) -> Result<Weights> {
    use safetensors::SafeTensors;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::UnsupportedModel(format!(
            "no *.safetensors in {}",
            dir.display()
        )));
    }
    let buffers = files
        .iter()
        .map(|p| {
            std::fs::read(p).map_err(|source| Error::Io {
                path: p.clone(),
                source,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let tensors = buffers
        .iter()
        .map(|b| {
            SafeTensors::deserialize(b).map_err(|e| Error::corrupt(format!("safetensors: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let load = |name: &str, shape: &[usize]| load_tensor(&tensors, name, shape);
    let mat = |name: &str, rows: usize, cols: usize| -> Result<Matrix> {
        Ok(Matrix::from_f32(rows, cols, load(name, &[rows, cols])?))
    };
    let h = cfg.hidden;
    let layers = (0..cfg.n_layers)
        .map(|i| {
            let n = |s: &str| format!("model.layers.{i}.{s}.weight");
            Ok(crate::model::weights::LayerWeights {
                attn_norm: load(&n("input_layernorm"), &[h])?,
                wq: mat(&n("self_attn.q_proj"), cfg.q_dim(), h)?,
                wk: mat(&n("self_attn.k_proj"), cfg.kv_dim(), h)?,
                wv: mat(&n("self_attn.v_proj"), cfg.kv_dim(), h)?,
                wo: mat(&n("self_attn.o_proj"), h, cfg.q_dim())?,
                ffn_norm: load(&n("post_attention_layernorm"), &[h])?,
                w_gate: mat(&n("mlp.gate_proj"), cfg.ffn, h)?,
                w_up: mat(&n("mlp.up_proj"), cfg.ffn, h)?,
                w_down: mat(&n("mlp.down_proj"), h, cfg.ffn)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let has_head = tensors.iter().any(|st| st.tensor("lm_head.weight").is_ok());
    Ok(Weights {
        embed: mat("model.embed_tokens.weight", cfg.vocab, h)?,
        layers,
        output_norm: load("model.norm.weight", &[h])?,
        output: if cfg.tied_embeddings && !has_head {
            None
        } else {
            Some(mat("lm_head.weight", cfg.vocab, h)?)
        },
    })
}

fn load_tensor(
    tensors: &[safetensors::SafeTensors<'_>],
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>> {
    use safetensors::Dtype;
    {
        let t = tensors
            .iter()
            .find_map(|st| st.tensor(name).ok())
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        if t.shape() != shape {
            return Err(Error::BadShape {
                name: name.to_string(),
                got: t.shape().to_vec(),
                expected: shape.to_vec(),
            });
        }
        let ty = match t.dtype() {
            Dtype::F32 => crate::quant::TensorType::F32,
            Dtype::F16 => crate::quant::TensorType::F16,
            Dtype::BF16 => crate::quant::TensorType::BF16,
            other => {
                return Err(Error::UnsupportedTensorType(format!(
                    "safetensors {other:?}"
                )))
            }
        };
        crate::quant::dequantize(ty, t.data(), shape.iter().product())
    }
}
