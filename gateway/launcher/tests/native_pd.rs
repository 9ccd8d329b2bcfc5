//! The native engine on the real model behind the gateway: PD output equals
//! one engine alone; cancelled streams give every KV block back; a tiny KV
//! pool (forcing preemption) still answers every request correctly.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton_gateway::config::{GatewayConfig, PdProtocol, PrefillWorker};

mod support;
use support::{free_port, http, model};

struct Engine {
    port: u16,
    child: Child,
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fleet key shared by the gateway and the engines of these tests.
const FLEET_KEY: &str = "native-pd-test-fleet-key-0123456789";

fn engine(role: &str, kv_mb: usize) -> Engine {
    let model = model();
    assert!(
        model.is_file(),
        "test model missing at {} (run tests/fetch-model.sh)",
        model.display()
    );
    // An engine that exits before it is healthy lost its port to another
    // process (the port is only checked free, not held): start it again.
    for _ in 0..5 {
        if let Some(e) = try_engine(&model, role, kv_mb) {
            return e;
        }
    }
    panic!("{role} engine did not start on any of 5 free ports");
}

/// An engine on a fresh port once healthy; `None` if it exited first.
fn try_engine(model: &std::path::Path, role: &str, kv_mb: usize) -> Option<Engine> {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["engine", "--model"])
        .arg(model)
        .args([
            "--role",
            role,
            "--port",
            &port.to_string(),
            "--served-model-name",
            "smollm2",
        ])
        .args(["--kv-memory-mb", &kv_mb.to_string(), "--threads", "1"])
        .env("BATON_FLEET_KEY", FLEET_KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut e = Engine { port, child };
    let deadline = Instant::now() + Duration::from_secs(120);
    while http(e.port, "GET", "/health", "").0 != 200 {
        if e.child.try_wait().unwrap().is_some() {
            return None;
        }
        assert!(Instant::now() < deadline, "{role} engine did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(e)
}

fn completion_text(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["choices"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn kv_usage(port: u16) -> f64 {
    let (_, m) = http(port, "GET", "/metrics", "");
    m.lines()
        .find(|l| l.starts_with("vllm:kv_cache_usage_perc"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

const PROMPTS: &[&str] = &[
    "The three primary colors are",
    "def fibonacci(n):",
    "Paris is the capital of",
    "In 1969, the first humans to walk on the Moon",
];

fn body(prompt: &str, max_tokens: u32, stream: bool) -> String {
    serde_json::json!({"model": "smollm2", "prompt": prompt, "max_tokens": max_tokens,
        "temperature": 0, "stream": stream})
    .to_string()
}

fn gateway_config(prefill: u16, decode: u16) -> GatewayConfig {
    GatewayConfig {
        port: 0,
        prefill: vec![PrefillWorker {
            url: format!("http://127.0.0.1:{prefill}"),
            bootstrap_port: None,
        }],
        decode: vec![format!("http://127.0.0.1:{decode}")],
        pd_protocol: Some(PdProtocol::Vllm),
        fleet_key: Some(baton_gateway::auth::Secret::new(FLEET_KEY)),
        ..GatewayConfig::default()
    }
}

#[test]
fn pd_through_the_gateway_matches_one_engine_and_gives_every_block_back() {
    let prefill = engine("prefill", 64);
    let decode = engine("decode", 64);
    let single = engine("both", 64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let gw = rt
        .block_on(baton_gateway::start(gateway_config(
            prefill.port,
            decode.port,
        )))
        .unwrap();
    let gw_port = gw.addr.port();

    for p in PROMPTS {
        let (s1, pd) = http(gw_port, "POST", "/v1/completions", &body(p, 24, false));
        let (s2, alone) = http(single.port, "POST", "/v1/completions", &body(p, 24, false));
        assert_eq!((s1, s2), (200, 200), "{pd} / {alone}");
        assert_eq!(
            completion_text(&pd),
            completion_text(&alone),
            "prompt {p:?}"
        );
    }
    let (_, m) = http(gw_port, "GET", "/metrics", "");
    assert!(
        m.contains("baton_pd_local_prefills_total 0"),
        "every decode pulled its KV:\n{m}"
    );
    // The engines obeyed the gateway's (fleet-authenticated) transfer params: each decode pulled.
    let (_, dm) = http(decode.port, "GET", "/metrics", "");
    let pulls = dm
        .lines()
        .find(|l| l.starts_with("baton:kv_pulls_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<usize>().ok());
    assert_eq!(pulls, Some(PROMPTS.len()), "{dm}");

    let base_p = kv_usage(prefill.port);
    let base_d = kv_usage(decode.port);
    // 200 streaming requests, 16 at a time; every other one hangs up after
    // its first chunk.
    std::thread::scope(|s| {
        for t in 0..16 {
            s.spawn(move || {
                for i in (t..200).step_by(16) {
                    let mut c = TcpStream::connect(("127.0.0.1", gw_port)).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
                    let b = body(PROMPTS[i % PROMPTS.len()], 8, true);
                    write!(c, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}", b.len()).unwrap();
                    let mut buf = [0u8; 512];
                    if i % 2 == 1 {
                        let _ = c.read(&mut buf);
                        drop(c); // cancel mid-stream
                    } else {
                        let mut all = String::new();
                        let _ = c.read_to_string(&mut all);
                        assert!(all.contains("[DONE]"), "{all}");
                    }
                }
            });
        }
    });
    // Cancellations and leases settle: back to baseline (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(60);
    while kv_usage(prefill.port) > base_p || kv_usage(decode.port) > base_d {
        assert!(
            Instant::now() < deadline,
            "KV not back at baseline: prefill {} (was {base_p}), decode {} (was {base_d})",
            kv_usage(prefill.port),
            kv_usage(decode.port)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    rt.block_on(gw.shutdown());
}

#[test]
fn a_tiny_kv_pool_preempts_but_answers_everything_correctly() {
    let roomy = engine("both", 64);
    // f32 KV is ~45 KiB per token, so 3 MB is 4 blocks of 16 tokens: one
    // request (~22 tokens, 2 blocks) always fits, eight at once cannot.
    let tiny = engine("both", 3);
    let expected: Vec<String> = PROMPTS
        .iter()
        .map(|p| {
            completion_text(&http(roomy.port, "POST", "/v1/completions", &body(p, 16, false)).1)
        })
        .collect();
    std::thread::scope(|s| {
        for (i, p) in PROMPTS.iter().chain(PROMPTS.iter()).enumerate() {
            let want = expected[i % PROMPTS.len()].clone();
            let port = tiny.port;
            s.spawn(move || {
                let (status, got) = http(port, "POST", "/v1/completions", &body(p, 16, false));
                assert_eq!(status, 200, "{got}");
                assert_eq!(completion_text(&got), want, "prompt {p:?}");
            });
        }
    });
    let (_, m) = http(tiny.port, "GET", "/metrics", "");
    let preemptions: f64 = m
        .lines()
        .find(|l| l.starts_with("vllm:num_preemptions_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(
        preemptions > 0.0,
        "the tiny pool should have forced preemption:\n{m}"
    );
}
