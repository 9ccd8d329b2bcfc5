//! Hostile-client checks against the `baton-engine` binary serving the real SmolLM2 model over HTTP: prefix-cache
//! isolation by `cache_salt`, no engine internals in plain replies, and the request caps.

// Only `model_path` of the shared helpers is used here.
#[allow(dead_code)]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

/// Kills the engine when the test ends, pass or fail.
struct Engine {
    child: Child,
    port: u16,
    /// The KV pull listener's `host:port`, when the engine started one.
    kv_addr: Option<String>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const ENGINE_ID: &str = "engine-b7e1d2";

fn start(extra: &[&str]) -> Engine {
    let model = common::model_path();
    let mut child = Command::new(env!("CARGO_BIN_EXE_baton-engine"))
        .args(["--model", model.to_str().unwrap(), "--port", "0"])
        .args(["--engine-id", ENGINE_ID, "--kv-memory-mb", "64"])
        .args(extra)
        // Lets an engine that knows the fleet key start its KV listener (role both), so that the test can check
        // its address never shows in plain replies.
        .env("BATON_FLEET_KEY", "engine-hostile-clients-test-fleet-key")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start baton-engine");
    let stdout = child.stdout.take().unwrap();
    let mut engine = Engine {
        child,
        port: 0,
        kv_addr: None,
    };
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.split("KV pull listener on ").nth(1) {
            engine.kv_addr = Some(rest.trim().to_string());
        }
        if let Some(rest) = line.split("serving on http://").nth(1) {
            engine.port = rest.rsplit(':').next().unwrap().trim().parse().unwrap();
            break;
        }
    }
    assert!(engine.port > 0, "engine never reported its address");
    // Keep draining the log so that the engine never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    engine
}

/// One HTTP/1.1 exchange; returns the status, the raw head and the body.
fn http(port: u16, path: &str, body: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    // The engine may answer (413) before reading a large body, and close: that is not an error here.
    let _ = s.write_all(body.as_bytes());
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

fn post(port: u16, path: &str, body: &Value) -> (u16, Value) {
    let (st, _, text) = http(port, path, &body.to_string());
    (
        st,
        serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text })),
    )
}

const PREAMBLE: &str =
    "You are the customer service assistant of Example Bank, a small savings bank with branches \
    in three towns. You speak English and answer in one or two sentences.";
const POLICY: &str = "Answer questions about opening hours, card limits and branch addresses politely and \
    briefly. Never reveal internal procedures, never discuss other customers, and always remind the customer \
    that staff will never ask for their password or their card PIN over the phone or by email.";

/// A chat whose system prompt carries a secret code early, with plenty of shared text after it.
fn bank_chat(code: &str, salt: Option<&str>) -> Value {
    let mut body = json!({
        "messages": [
            {"role": "system", "content": format!("{PREAMBLE} The vault code is {code}. {POLICY}")},
            {"role": "user", "content": "What are your opening hours on Saturday?"},
        ],
        "max_tokens": 1,
        "temperature": 0,
    });
    if let Some(s) = salt {
        body["cache_salt"] = json!(s);
    }
    body
}

/// `usage.prompt_tokens_details.cached_tokens` (absent means 0).
fn cached(port: u16, body: &Value) -> u64 {
    let (st, r) = post(port, "/v1/chat/completions", body);
    assert_eq!(st, 200, "{r}");
    r["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn cache_salt_stops_cached_tokens_from_revealing_another_salts_prompt() {
    let e = start(&[]);
    let victim = bank_chat("7391", Some("salt-victim"));
    assert_eq!(cached(e.port, &victim), 0, "a cold cache");
    // The cache works within a salt: the victim's repeat reuses its blocks.
    let repeat = cached(e.port, &victim);
    assert!(repeat >= 64, "same salt hits the cache ({repeat} cached)");

    // An attacker's first request, the right guess under another salt (or none): no hit on the victim's blocks.
    assert_eq!(
        cached(e.port, &bank_chat("7391", Some("salt-attacker-fresh"))),
        0
    );
    assert_eq!(cached(e.port, &bank_chat("7391", None)), 0, "no salt");

    // The attack: warm the shared part of the prompt under the attacker's salt, then compare a right
    // and a wrong guess. Before salts, the right guess also hit the victim's blocks after the secret.
    let s = Some("salt-attacker");
    cached(e.port, &bank_chat("5555", s));
    let right = cached(e.port, &bank_chat("7391", s));
    let wrong = cached(e.port, &bank_chat("2046", s));
    assert_eq!(
        right, wrong,
        "cached_tokens tells the right guess apart from the wrong one"
    );
    assert!(
        right > 0 && right < repeat,
        "the attacker hits its own blocks before the secret, none after ({right} of {repeat})"
    );
}

#[test]
fn plain_replies_reveal_no_engine_internals_and_caps_hold() {
    let e = start(&["--max-body-mb", "1"]);
    let mut forbidden = vec![
        ENGINE_ID.to_string(),
        "kv_transfer_params".into(),
        "remote_host".into(),
        "remote_port".into(),
        "system_fingerprint".into(),
    ];
    forbidden.extend(e.kv_addr.clone());
    if let Some(port) = e.kv_addr.as_deref().and_then(|a| a.rsplit(':').next()) {
        forbidden.push(format!(":{port}"));
    }
    for (path, body) in [
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 4}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 4, "stream": true}),
        ),
        (
            "/v1/completions",
            json!({"prompt": "Hello", "max_tokens": 4}),
        ),
    ] {
        let (st, head, text) = http(e.port, path, &body.to_string());
        assert_eq!(st, 200, "{head}\n{text}");
        let seen = format!("{head}\n{text}");
        for f in &forbidden {
            assert!(!seen.contains(f.as_str()), "{f} in {seen}");
        }
    }

    // Caps: stop strings, cache_salt and the body size, each answered in the OpenAI error shape.
    let too_many: Vec<String> = (0..17).map(|i| format!("s{i}")).collect();
    let (st, r) = post(
        e.port,
        "/v1/completions",
        &json!({"prompt": "Hi", "stop": too_many}),
    );
    assert_eq!((st, &r["error"]["param"]), (400, &json!("stop")), "{r}");
    let (st, r) = post(
        e.port,
        "/v1/completions",
        &json!({"prompt": "Hi", "stop": "x".repeat(4000)}),
    );
    assert_eq!((st, &r["error"]["param"]), (400, &json!("stop")), "{r}");
    let (st, r) = post(
        e.port,
        "/v1/completions",
        &json!({"prompt": "Hi", "cache_salt": "s".repeat(257)}),
    );
    assert_eq!(
        (st, &r["error"]["param"]),
        (400, &json!("cache_salt")),
        "{r}"
    );
    let (st, r) = post(
        e.port,
        "/v1/completions",
        &json!({"prompt": "a".repeat(2 * 1024 * 1024)}),
    );
    assert_eq!(st, 413, "{r}");
    assert_eq!(r["error"]["code"], json!(413));
}
