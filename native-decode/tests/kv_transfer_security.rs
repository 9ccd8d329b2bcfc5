//! Imported KV never answers for anyone else, on the real model through the engines' HTTP interfaces.
//!
//! The attack (issue 13, finding 2): prompt A ("...capital city of Japan...") is prefilled for a remote decoder;
//! a request for prompt V (the same text with "France", the same token count) then carries A's
//! `kv_transfer_params`. Even when that request is fleet-authenticated (a gateway bug, say), V is answered from
//! V's own tokens (the holder's prompt digest does not match, so the import is refused), and later plain requests
//! for V answer exactly as on a clean engine. (Imported KV is also never cached, whatever the digest says:
//! `engine::tests::imported_kv_is_never_cached_and_must_be_for_the_same_tokens`.)

// Shared helpers; this file needs only `model_path`.
#[allow(dead_code)]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use baton_protocol::fleet::{FleetKey, FLEET_AUTH_HEADER, TENANT_HEADER};
use serde_json::{json, Value};

const KEY: &str = "kv-transfer-security-test-fleet-key";

/// Kills the engine when the test ends, pass or fail.
struct Engine {
    child: Child,
    port: u16,
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn engine(role: &str, key: Option<&str>) -> Engine {
    engine_with(role, key, &[])
}

fn engine_with(role: &str, key: Option<&str>, extra: &[&str]) -> Engine {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_baton-engine"));
    cmd.args(extra)
        .arg("--model")
        .arg(common::model_path())
        .args(["--role", role, "--port", "0", "--served-model-name", "m"])
        .args(["--threads", "1", "--kv-memory-mb", "64"])
        .env_remove("BATON_FLEET_KEY")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(k) = key {
        cmd.env("BATON_FLEET_KEY", k);
    }
    let mut child = cmd.spawn().expect("start baton-engine");
    let stdout = child.stdout.take().unwrap();
    let mut port = 0;
    // The engine prints its address once loaded; EOF means it exited.
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.split("serving on http://").nth(1) {
            port = rest.rsplit(':').next().unwrap().trim().parse().unwrap();
            break;
        }
    }
    assert!(port > 0, "{role} engine never reported its address");
    Engine { child, port }
}

fn http(port: u16, path: &str, body: &Value, headers: &[(&str, String)]) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let body = body.to_string();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
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
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// The payload of a chunked HTTP/1.1 body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn fleet_headers(request_id: &str) -> Vec<(&'static str, String)> {
    let key = FleetKey::from_bytes(KEY.as_bytes()).unwrap();
    vec![
        ("x-request-id", request_id.to_string()),
        (FLEET_AUTH_HEADER, key.request_tag(request_id)),
        (TENANT_HEADER, "tenant-a".to_string()),
    ]
}

fn metric(port: u16, name: &str) -> f64 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The country appears in the first 16-token block, so a poisoned prefix cache would serve it.
fn prompt(country: &str) -> String {
    format!(
        "The capital city of {country} is a famous place. Everyone knows the capital city of {country}. \
         Question: what is the capital city of {country}? Answer in one word:"
    )
}

fn completion(prompt: &str) -> Value {
    json!({"model": "m", "prompt": prompt, "max_tokens": 4, "temperature": 0})
}

#[test]
fn imported_kv_never_poisons_later_requests() {
    let (japan, france) = (prompt("Japan"), prompt("France"));
    let clean = engine("both", None);
    let count =
        |p: &str| http(clean.port, "/tokenize", &json!({ "prompt": p }), &[]).1["count"].clone();
    assert_eq!(count(&japan), count(&france), "same token count");
    assert!(count(&france).as_u64().unwrap() > 32);
    let (st, expected) = http(clean.port, "/v1/completions", &completion(&france), &[]);
    assert_eq!(st, 200, "{expected}");
    let expected = expected["choices"][0]["text"].clone();

    let prefill = engine("prefill", Some(KEY));
    let decode = engine("decode", Some(KEY));
    // A is prefilled and kept for a remote decoder.
    let mut pre = completion(&japan);
    pre["max_tokens"] = json!(1);
    pre["kv_transfer_params"] = json!({"do_remote_decode": true});
    let (st, a) = http(prefill.port, "/v1/completions", &pre, &fleet_headers("a-1"));
    assert_eq!(st, 200, "{a}");
    let params = a["kv_transfer_params"].clone();
    assert_eq!(params["do_remote_prefill"], json!(true), "{a}");
    // V arrives with A's params, authenticated: the decode engine pulls A's KV, sees from the holder's prompt
    // digest that it is not V's, and computes V itself.
    let mut v = completion(&france);
    v["kv_transfer_params"] = params;
    let (st, attacked) = http(decode.port, "/v1/completions", &v, &fleet_headers("v-1"));
    assert_eq!(st, 200, "{attacked}");
    assert_eq!(attacked["choices"][0]["text"], expected, "{attacked}");
    assert_eq!(metric(decode.port, "baton:kv_pulls_total"), 1.0);
    assert_eq!(metric(decode.port, "baton:kv_pull_recomputes_total"), 1.0);
    // Every later plain request for V answers as a clean engine does (what they find cached is V's own KV,
    // computed for the request above).
    for _ in 0..2 {
        let (st, later) = http(decode.port, "/v1/completions", &completion(&france), &[]);
        assert_eq!(st, 200, "{later}");
        assert_eq!(later["choices"][0]["text"], expected, "{later}");
    }
}

#[test]
fn disaggregated_roles_refuse_to_start_without_a_fleet_key() {
    for role in ["prefill", "decode"] {
        let out = Command::new(env!("CARGO_BIN_EXE_baton-engine"))
            .arg("--model")
            .arg(common::model_path())
            .args(["--role", role, "--port", "0"])
            .env_remove("BATON_FLEET_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{role} started without a key");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--fleet-key-file") && err.contains("BATON_FLEET_KEY"),
            "{role}: {err}"
        );
    }
    // A key that is too short is refused with a clear message, and never echoed.
    let out = Command::new(env!("CARGO_BIN_EXE_baton-engine"))
        .arg("--model")
        .arg(common::model_path())
        .args(["--role", "prefill", "--port", "0"])
        .env("BATON_FLEET_KEY", "short-secret")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 16"), "{err}");
    assert!(!err.contains("short-secret"), "{err}");
    // From a file (its trailing newline trimmed), a prefill engine starts and authenticates the fleet with it.
    let dir = std::env::temp_dir().join(format!("baton-fleet-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("fleet.key");
    std::fs::write(&file, format!("{KEY}\n")).unwrap();
    let prefill = engine_with(
        "prefill",
        None,
        &["--fleet-key-file", file.to_str().unwrap()],
    );
    let mut pre = completion(&prompt("Italy"));
    pre["max_tokens"] = json!(1);
    pre["kv_transfer_params"] = json!({"do_remote_decode": true});
    let (st, r) = http(
        prefill.port,
        "/v1/completions",
        &pre,
        &fleet_headers("file-1"),
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        r["kv_transfer_params"]["do_remote_prefill"],
        json!(true),
        "{r}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
