//! One upstream engine: identity, health, load and breaker.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::breaker::Breaker;
use crate::config::BreakerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Aggregated mode: does prefill and decode.
    Unified,
    Prefill,
    Decode,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Self::Unified => "unified",
            Self::Prefill => "prefill",
            Self::Decode => "decode",
        }
    }
}

/// Where a worker came from: each discovery source adds and drains only its
/// own workers (a static or API-added worker is never drained because a DNS
/// name stopped listing it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// The config file or the command line.
    Static,
    /// `POST /workers`.
    Api,
    /// A DNS name re-resolved periodically (`[discovery] *_dns`).
    Dns,
    /// The watched workers file (`[discovery] file`).
    File,
}

impl Origin {
    pub fn label(self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Api => "api",
            Self::Dns => "dns",
            Self::File => "file",
        }
    }
}

#[derive(Debug)]
pub struct Worker {
    pub url: String,
    pub role: Role,
    /// SGLang bootstrap port of a prefill worker.
    pub bootstrap_port: Option<u16>,
    pub origin: Origin,
    pub breaker: Breaker,
    /// Removed from its pool: takes no new requests, finishes the ones it has.
    draining: AtomicBool,
    /// Woken when a draining worker's last request ends.
    idle: tokio::sync::Notify,
    healthy: AtomicBool,
    /// A health check has succeeded since start: readiness waits for it, routing does not.
    confirmed: AtomicBool,
    in_flight: AtomicU64,
    health_failures: AtomicU32,
    health_successes: AtomicU32,
    /// Engine-reported load (`vllm:num_requests_running` / `_waiting`) and
    /// when it was read.
    engine_running: AtomicU64,
    engine_waiting: AtomicU64,
    engine_load_at: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// The model ids the engine listed (`GET /v1/models`) at its last health check; `None` until
    /// then, or when it lists none (the gateway then cannot tell an unknown model).
    models: std::sync::RwLock<Option<Arc<[String]>>>,
}

impl Worker {
    pub fn new(
        url: &str,
        role: Role,
        bootstrap_port: Option<u16>,
        breaker: &BreakerConfig,
    ) -> Self {
        Self {
            url: url.trim_end_matches('/').to_owned(),
            role,
            bootstrap_port,
            origin: Origin::Static,
            breaker: Breaker::new(breaker),
            draining: AtomicBool::new(false),
            idle: tokio::sync::Notify::new(),
            // Optimistic until the first check: the breaker catches a dead
            // worker on its first requests anyway.
            healthy: AtomicBool::new(true),
            confirmed: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            health_failures: AtomicU32::new(0),
            health_successes: AtomicU32::new(0),
            engine_running: AtomicU64::new(0),
            engine_waiting: AtomicU64::new(0),
            engine_load_at: std::sync::Mutex::new(None),
            models: std::sync::RwLock::new(None),
        }
    }

    /// The same worker, recorded as coming from `origin`.
    pub fn with_origin(mut self, origin: Origin) -> Self {
        self.origin = origin;
        self
    }

    /// The same worker, unhealthy until a health check passes (workers added
    /// at runtime: an engine still loading its model must get no request).
    pub fn unhealthy_until_checked(self) -> Self {
        self.healthy.store(false, Ordering::Relaxed);
        self
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Removed from its pool and still finishing requests (or done: see [`drained`](Self::drained)).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Marks the worker removed; its pool stops routing to it before this is called.
    pub(crate) fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Returns once no request is in flight on this worker (call after [`begin_drain`](Self::begin_drain)).
    pub async fn drained(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the check: a last request ending in between still wakes us.
            notified.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            // The wake-up is the fast path; the timeout is a backstop, not a poll loop's pace.
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
        }
    }

    /// Healthy, and seen healthy by a health check at least once (what `/readiness` counts: an engine that
    /// is still starting must not make the gateway look ready).
    pub fn is_confirmed_healthy(&self) -> bool {
        self.confirmed.load(Ordering::Relaxed) && self.is_healthy()
    }

    /// Healthy and breaker not open.
    pub fn is_available(&self) -> bool {
        self.is_healthy() && self.breaker.allows()
    }

    /// The models the engine serves, when known (see [`crate::models`]).
    pub fn models(&self) -> Option<Arc<[String]>> {
        self.models.read().map_or(None, |m| m.clone())
    }

    pub fn set_models(&self, models: Option<Vec<String>>) {
        if let Ok(mut m) = self.models.write() {
            *m = models.map(Arc::from);
        }
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn set_engine_load(&self, running: u64, waiting: u64) {
        self.engine_running.store(running, Ordering::Relaxed);
        self.engine_waiting.store(waiting, Ordering::Relaxed);
        *self
            .engine_load_at
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(tokio::time::Instant::now());
    }

    /// `(running, waiting)` as the engine last reported them, if that report
    /// is younger than `max_age` (stale load is worse than none).
    pub fn engine_load(&self, max_age: std::time::Duration) -> Option<(u64, u64)> {
        let at = (*self
            .engine_load_at
            .lock()
            .unwrap_or_else(|p| p.into_inner()))?;
        (at.elapsed() <= max_age).then(|| {
            (
                self.engine_running.load(Ordering::Relaxed),
                self.engine_waiting.load(Ordering::Relaxed),
            )
        })
    }

    /// Counts one request in flight until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> LoadGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        LoadGuard {
            worker: Arc::clone(self),
        }
    }

    /// Feeds one active health check result; flips health after the
    /// configured streak. Returns the new health.
    pub fn record_health(&self, ok: bool, fail_threshold: u32, ok_threshold: u32) -> bool {
        if ok {
            self.confirmed.store(true, Ordering::Relaxed);
            self.health_failures.store(0, Ordering::Relaxed);
            let n = self.health_successes.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= ok_threshold.max(1) {
                self.healthy.store(true, Ordering::Relaxed);
            }
        } else {
            self.health_successes.store(0, Ordering::Relaxed);
            let n = self.health_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= fail_threshold.max(1) {
                self.healthy.store(false, Ordering::Relaxed);
            }
        }
        self.is_healthy()
    }
}

/// RAII in-flight counter of one worker.
#[derive(Debug)]
pub struct LoadGuard {
    worker: Arc<Worker>,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        let w = &self.worker;
        if w.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 && w.draining.load(Ordering::SeqCst) {
            w.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_counts_and_health_streaks() {
        let w = Arc::new(Worker::new(
            "http://a:1/",
            Role::Decode,
            None,
            &BreakerConfig::default(),
        ));
        assert_eq!(w.url, "http://a:1");
        let g1 = w.start_request();
        let g2 = w.start_request();
        assert_eq!(w.in_flight(), 2);
        drop(g1);
        drop(g2);
        assert_eq!(w.in_flight(), 0);
        assert!(w.record_health(false, 2, 2));
        assert!(!w.record_health(false, 2, 2));
        assert!(!w.record_health(true, 2, 2));
        assert!(w.record_health(true, 2, 2));
    }
}
