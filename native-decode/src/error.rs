//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while loading a model or serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a GGUF file (bad magic {0:?})")]
    BadMagic([u8; 4]),
    #[error("unsupported GGUF version {0} (only 2 and 3 are supported)")]
    UnsupportedVersion(u32),
    #[error("GGUF file is truncated or corrupt: {0}")]
    Corrupt(String),
    #[error("unsupported tensor type {0}")]
    UnsupportedTensorType(String),
    #[error("missing metadata key `{0}`")]
    MissingKey(String),
    #[error("metadata key `{key}` has the wrong type (expected {expected})")]
    WrongType { key: String, expected: &'static str },
    #[error("missing tensor `{0}`")]
    MissingTensor(String),
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?}")]
    BadShape {
        name: String,
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("unsupported model: {0}")]
    UnsupportedModel(String),
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error("chat template error: {0}")]
    Template(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("prompt has {prompt} tokens; with max_tokens {max_tokens} this exceeds the context length {context}")]
    ContextOverflow {
        prompt: usize,
        max_tokens: usize,
        context: usize,
    },
    #[error("KV transfer failed: {0}")]
    Transfer(String),
    #[error("device backend: {0}")]
    Backend(String),
    #[error("engine is shutting down")]
    Shutdown,
}

impl Error {
    pub(crate) fn corrupt(msg: impl Into<String>) -> Self {
        Self::Corrupt(msg.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
