//! Helpers shared by the launcher's integration tests (real model, real processes).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

/// `BATON_TEST_MODEL`, else the model in the cache `baton up` and `tests/fetch-model.sh` share
/// (`$BATON_CACHE_DIR`, else `$XDG_CACHE_HOME/baton`, else `~/.cache/baton`).
pub fn model() -> PathBuf {
    if let Some(p) = std::env::var_os("BATON_TEST_MODEL") {
        return PathBuf::from(p);
    }
    let base = match (
        std::env::var_os("BATON_CACHE_DIR"),
        std::env::var_os("XDG_CACHE_HOME"),
    ) {
        (Some(d), _) => PathBuf::from(d),
        (None, Some(x)) => PathBuf::from(x).join("baton"),
        (None, None) => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| ".".into()))
            .join(".cache/baton"),
    };
    base.join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

// The engines and `baton up` are child processes: they take port numbers, not listeners.
#[path = "../../../slo/tests/support/port.rs"]
mod port;
pub use port::free_port;

/// A blocking HTTP/1.1 call (status, body); (0, "") when unreachable.
pub fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
