//! Shared helpers for tests that need the real SmolLM2 GGUF file.

use std::path::PathBuf;

use serde::Deserialize;

pub const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// `BATON_TEST_MODEL`, else the model cache shared with `baton up` and Docker (`$BATON_CACHE_DIR/models`, else
/// `$XDG_CACHE_HOME/baton/models`, else `~/.cache/baton/models`); panics with a clear message when missing
/// (`tests/run-all.sh` downloads the file before running tests).
pub fn model_path() -> PathBuf {
    let path = match std::env::var_os("BATON_TEST_MODEL") {
        Some(p) => PathBuf::from(p),
        None => model_cache_dir().join(MODEL_FILE),
    };
    assert!(
        path.is_file(),
        "test model not found at {}.\nSet BATON_TEST_MODEL to the GGUF path, or run tests/fetch-model.sh \
         (or the whole suite: tests/run-all.sh)",
        path.display()
    );
    path
}

fn model_cache_dir() -> PathBuf {
    let base = match (
        std::env::var_os("BATON_CACHE_DIR"),
        std::env::var_os("XDG_CACHE_HOME"),
    ) {
        (Some(d), _) => PathBuf::from(d),
        (None, Some(x)) => PathBuf::from(x).join("baton"),
        (None, None) => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into()))
            .join(".cache/baton"),
    };
    base.join("models")
}

#[derive(Debug, Deserialize)]
pub struct Case {
    pub name: String,
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub greedy_ids: Vec<u32>,
    pub top5: Vec<Vec<(u32, f64)>>,
}

#[derive(Debug, Deserialize)]
struct RefFile {
    cases: Vec<Case>,
}

pub fn reference(name: &str) -> Vec<Case> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str::<RefFile>(&text)
        .expect("reference JSON")
        .cases
}
