//! Loading a model and its tokenizer from a GGUF file, an HF folder (config.json + *.safetensors +
//! tokenizer.json), or as random weights (`dummy`) shaped by either.

use std::path::Path;

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::model::matrix::Matrix;
use crate::model::{Model, ModelConfig, Weights};
use crate::safetensors_dir::SafetensorsDir;
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
    let tensors = SafetensorsDir::open(dir)?;
    let load = |name: &str, shape: &[usize]| tensors.f32(name, shape);
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
    let has_head = tensors.contains("lm_head.weight");
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
