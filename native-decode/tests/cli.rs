//! The `baton-engine` binary end to end: a metadata-only GGUF with `--load-format dummy`, a real socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use baton_native::gguf::writer::write;
use baton_native::gguf::Value;
use baton_native::model::config::to_gguf_metadata;
use baton_native::model::{ModelConfig, RopeStyle};
use baton_native::tokenizer::byte_level::bytes_to_unicode;

/// Kills the engine when the test ends, pass or fail.
struct Engine(Child);

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tiny_gguf() -> Vec<u8> {
    let mut tokens = vec![
        Value::String("<|endoftext|>".into()),
        Value::String("<|im_start|>".into()),
        Value::String("<|im_end|>".into()),
    ];
    tokens.extend(
        bytes_to_unicode()
            .iter()
            .map(|c| Value::String(c.to_string())),
    );
    let n = tokens.len();
    let cfg = ModelConfig {
        n_layers: 2,
        hidden: 32,
        ffn: 64,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 8,
        vocab: n,
        rope_theta: 10_000.0,
        rms_eps: 1e-5,
        context_length: 128,
        tied_embeddings: true,
        rope_style: RopeStyle::Interleaved,
    };
    let mut meta = to_gguf_metadata(&cfg);
    let types = (0..n)
        .map(|i| Value::I32(if i < 3 { 3 } else { 1 }))
        .collect();
    meta.extend([
        (
            "tokenizer.ggml.model".to_string(),
            Value::String("gpt2".into()),
        ),
        (
            "tokenizer.ggml.pre".to_string(),
            Value::String("smollm".into()),
        ),
        ("tokenizer.ggml.tokens".to_string(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".to_string(), Value::Array(types)),
        (
            "tokenizer.ggml.merges".to_string(),
            Value::Array(vec![Value::String("a b".into())]),
        ),
        ("tokenizer.ggml.bos_token_id".to_string(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".to_string(), Value::U32(2)),
    ]);
    write(&meta, &[])
}

fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, resp)
}

#[test]
fn engine_binary_serves_a_dummy_model() {
    let dir = std::env::temp_dir().join(format!("baton-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("tiny.gguf");
    std::fs::write(&model, tiny_gguf()).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_baton-engine"))
        .args([
            "--model",
            model.to_str().unwrap(),
            "--load-format",
            "dummy",
            "--port",
            "0",
        ])
        .args([
            "--served-model-name",
            "tiny",
            "--threads",
            "1",
            "--kv-memory-mb",
            "4",
        ])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start baton-engine");
    let mut engine = Engine(child);
    let stdout = engine.0.stdout.take().unwrap();
    let mut port = 0;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.split("serving on http://").nth(1) {
            port = rest.rsplit(':').next().unwrap().trim().parse().unwrap();
            break;
        }
    }
    assert!(port > 0, "engine never reported its address");
    assert_eq!(http(port, "GET", "/health", "").0, 200);
    let (st, body) = http(
        port,
        "POST",
        "/v1/completions",
        r#"{"model":"tiny","prompt":"ab","max_tokens":3,"temperature":0,"ignore_eos":true}"#,
    );
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("\"completion_tokens\":3"), "{body}");
    let (st, body) = http(
        port,
        "POST",
        "/v1/completions",
        r#"{"prompt":"ab","max_tokens":500}"#,
    );
    assert_eq!(st, 400, "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}
