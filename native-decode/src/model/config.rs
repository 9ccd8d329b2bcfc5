//! Llama hyper-parameters, read from GGUF metadata (`llama.*` keys) or an HF `config.json`.

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Value};

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1): what llama.cpp uses on GGUF weights, whose q/k rows it permuted at conversion.
    Interleaved,
    /// First half with second half: HF transformers' layout on unpermuted weights.
    HalfSplit,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub n_layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    pub context_length: usize,
    pub tied_embeddings: bool,
    pub rope_style: RopeStyle,
}

impl ModelConfig {
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Checks the relations the forward pass relies on.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        if self.n_layers == 0 || self.hidden == 0 || self.ffn == 0 || self.vocab == 0 {
            return bad("layer count, hidden size, FFN size and vocabulary must be positive");
        }
        if self.n_heads == 0
            || self.n_kv_heads == 0
            || !self.n_heads.is_multiple_of(self.n_kv_heads)
        {
            return bad("head_count must be a positive multiple of head_count_kv");
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad("head dimension must be positive and even");
        }
        if self.context_length == 0 {
            return bad("context length must be positive");
        }
        if self.rope_theta.is_nan()
            || self.rope_theta <= 0.0
            || self.rms_eps.is_nan()
            || self.rms_eps <= 0.0
        {
            return bad("rope theta and RMS epsilon must be positive");
        }
        Ok(())
    }

    /// Reads the `llama.*` keys of a GGUF file.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let arch = get_str(file, "general.architecture")?;
        if arch != "llama" {
            return Err(Error::UnsupportedModel(format!(
                "architecture `{arch}` (only `llama`)"
            )));
        }
        let u = |k: &str| get_usize(file, &format!("llama.{k}"));
        let hidden = u("embedding_length")?;
        let n_heads = u("attention.head_count")?;
        let n_kv_heads = match file.metadata("llama.attention.head_count_kv") {
            Some(_) => u("attention.head_count_kv")?,
            None => n_heads,
        };
        let head_dim = match file.metadata("llama.attention.key_length") {
            Some(_) => u("attention.key_length")?,
            None if n_heads > 0 => hidden / n_heads,
            None => 0,
        };
        let f = |k: &str, default: f32| -> Result<f32> {
            match file.metadata(&format!("llama.{k}")) {
                None => Ok(default),
                Some(v) => v.as_f64().map(|x| x as f32).ok_or(Error::WrongType {
                    key: format!("llama.{k}"),
                    expected: "number",
                }),
            }
        };
        let vocab = match file.metadata("llama.vocab_size") {
            Some(_) => u("vocab_size")?,
            None => file
                .tensor_info("token_embd.weight")
                .and_then(|t| t.dims.get(1).copied())
                .ok_or_else(|| Error::MissingTensor("token_embd.weight".into()))?,
        };
        let cfg = Self {
            n_layers: u("block_count")?,
            hidden,
            ffn: u("feed_forward_length")?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab,
            rope_theta: f("rope.freq_base", 10_000.0)?,
            rms_eps: f("attention.layer_norm_rms_epsilon", 1e-5)?,
            context_length: u("context_length")?,
            tied_embeddings: file.tensor_info("output.weight").is_none(),
            rope_style: RopeStyle::Interleaved,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads an HF `config.json` (Llama family).
    pub fn from_hf_json(text: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Hf {
            num_hidden_layers: usize,
            hidden_size: usize,
            intermediate_size: usize,
            num_attention_heads: usize,
            num_key_value_heads: Option<usize>,
            head_dim: Option<usize>,
            vocab_size: usize,
            rope_theta: Option<f32>,
            rms_norm_eps: Option<f32>,
            max_position_embeddings: Option<usize>,
            tie_word_embeddings: Option<bool>,
        }
        let hf: Hf =
            serde_json::from_str(text).map_err(|e| Error::Config(format!("config.json: {e}")))?;
        let cfg = Self {
            n_layers: hf.num_hidden_layers,
            hidden: hf.hidden_size,
            ffn: hf.intermediate_size,
            n_heads: hf.num_attention_heads,
            n_kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim: hf
                .head_dim
                .unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1)),
            vocab: hf.vocab_size,
            rope_theta: hf.rope_theta.unwrap_or(10_000.0),
            rms_eps: hf.rms_norm_eps.unwrap_or(1e-5),
            context_length: hf.max_position_embeddings.unwrap_or(2048),
            tied_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            rope_style: RopeStyle::HalfSplit,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

pub(crate) fn get_str<'a>(file: &'a GgufFile, key: &str) -> Result<&'a str> {
    file.metadata(key)
        .ok_or_else(|| Error::MissingKey(key.to_string()))?
        .as_str()
        .ok_or(Error::WrongType {
            key: key.to_string(),
            expected: "string",
        })
}

pub(crate) fn get_usize(file: &GgufFile, key: &str) -> Result<usize> {
    file.metadata(key)
        .ok_or_else(|| Error::MissingKey(key.to_string()))?
        .as_u64()
        .and_then(|v| usize::try_from(v).ok())
        .ok_or(Error::WrongType {
            key: key.to_string(),
            expected: "unsigned integer",
        })
}

/// Metadata entries describing `cfg` (the inverse of [`ModelConfig::from_gguf`]).
pub fn to_gguf_metadata(cfg: &ModelConfig) -> Vec<(String, Value)> {
    let u = |k: &str, v: usize| (format!("llama.{k}"), Value::U32(v as u32));
    vec![
        ("general.architecture".into(), Value::String("llama".into())),
        u("block_count", cfg.n_layers),
        u("embedding_length", cfg.hidden),
        u("feed_forward_length", cfg.ffn),
        u("attention.head_count", cfg.n_heads),
        u("attention.head_count_kv", cfg.n_kv_heads),
        u("context_length", cfg.context_length),
        u("vocab_size", cfg.vocab),
        ("llama.rope.freq_base".into(), Value::F32(cfg.rope_theta)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(cfg.rms_eps),
        ),
    ]
}
