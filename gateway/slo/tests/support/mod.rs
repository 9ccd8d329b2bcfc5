//! Test support: a real `redis-server` child per test, killed on drop, and
//! record builders.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use baton_slo::{AdmissionRecord, OutcomeRecord, Phase, ReplicaState, WorkerLoad};

/// A `redis-server` on an ephemeral port, no persistence; killed on drop.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one on a free port. Panics (fails the test) with a clear
    /// message if `redis-server` is not installed.
    pub fn start() -> Self {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
            l.local_addr().expect("local addr").port()
        };
        let mut server = Self { port, child: None };
        server.restart();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts (again) on the same port; waits until it accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `redis-server` ({e}): the Redis tests need it on PATH \
                     (Debian: apt-get install redis-server; .ci/run installs it)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub const TTL: Duration = Duration::from_secs(30);
/// A fixed wall-clock base for goodput buckets.
pub const T0: u64 = 1_700_000_000_000;

pub fn admission(id: &str, replica: &str) -> AdmissionRecord {
    AdmissionRecord {
        request_id: id.into(),
        replica_id: replica.into(),
        class: "chatbot".into(),
        tenant: "acme".into(),
        admitted_at_ms: T0,
        ttft_deadline_ms: Some(T0 + 250),
        tpot_budget_ms: Some(100.0),
        phase: Phase::Queued,
        prefill_worker: Some("http://p0:8000".into()),
        decode_worker: None,
        prompt_tokens: 1234,
        ttl: TTL,
    }
}

pub fn outcome(id: &str, class: &str, tenant: &str, at_ms: u64, good: bool) -> OutcomeRecord {
    OutcomeRecord {
        request_id: id.into(),
        class: class.into(),
        tenant: tenant.into(),
        finished_at_ms: at_ms,
        ttft_ms: Some(120.0),
        tpot_ms: Some(if good { 40.0 } else { 140.0 }),
        ttft_met: true,
        tpot_met: good,
        rejected: false,
        failed: false,
    }
}

pub fn replica_state(id: &str, queued: u64) -> ReplicaState {
    ReplicaState {
        replica_id: id.into(),
        updated_ms: T0,
        workers: vec![
            WorkerLoad {
                url: "http://p0:8000".into(),
                queued_prefill_tokens: queued,
                active_prefills: 2,
                prefill_tokens_per_s: Some(12_345.5),
                ttft_ms_ewma: Some(87.25),
                ..WorkerLoad::default()
            },
            WorkerLoad {
                url: "http://d0:8000".into(),
                active_decodes: 17,
                pending_decodes: 1,
                tpot_ms_ewma: Some(31.5),
                tpot_fit: Some((20.0, 0.75)),
                ..WorkerLoad::default()
            },
        ],
    }
}
