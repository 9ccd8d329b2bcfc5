//! Routing plugins (scripts) run off the async workers, under a wall-clock
//! limit.
//!
//! A pool whose policy reports a [`time_limit`] has each routing decision
//! run on tokio's blocking pool, at most one per core at a time (scripts
//! burn CPU; more of them than cores would only queue), so `/health` and
//! running streams are never stuck behind a looping script. Past the limit
//! the gateway stops waiting and decides as for a failing stage: least load
//! for a pick, admit for admission. It also raises the script's cancel flag,
//! which stops it within a few hundred operations and frees its thread.
//!
//! [`time_limit`]: baton_policies::RoutingPolicy::time_limit

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use baton_policies::pipeline::script::with_cancel_flag;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Decisions running at once, shared by every pool of the process.
fn slots() -> Arc<Semaphore> {
    static SLOTS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    Arc::clone(SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Arc::new(Semaphore::new(cores))
    }))
}

/// Runs one pool's plugin decisions.
#[derive(Debug)]
pub struct PluginRunner {
    limit: Duration,
    overruns: AtomicU64,
}

impl PluginRunner {
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            overruns: AtomicU64::new(0),
        }
    }

    /// Decisions that ran past the limit (or whose script panicked).
    pub fn overruns(&self) -> u64 {
        self.overruns.load(Ordering::Relaxed)
    }

    /// Runs `decide` on the blocking pool; `None` when it did not finish
    /// within the limit (waiting for a free slot included).
    pub async fn run<R: Send + 'static>(
        &self,
        what: &'static str,
        decide: impl FnOnce() -> R + Send + 'static,
    ) -> Option<R> {
        let deadline = Instant::now() + self.limit;
        let Ok(Ok(slot)) = tokio::time::timeout_at(deadline, slots().acquire_owned()).await else {
            self.overran(what, "no free plugin slot");
            return None;
        };
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&cancel);
        let task = tokio::task::spawn_blocking(move || {
            // Held until the script really stops, so a cancelled one still
            // counts against the cores until it does.
            let _slot = slot;
            with_cancel_flag(flag, decide)
        });
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(r)) => Some(r),
            Ok(Err(_panicked)) => {
                self.overran(what, "the plugin panicked");
                None
            }
            Err(_) => {
                cancel.store(true, Ordering::Relaxed);
                self.overran(what, "over its time limit");
                None
            }
        }
    }

    fn overran(&self, what: &'static str, why: &'static str) {
        let n = self.overruns.fetch_add(1, Ordering::Relaxed);
        // The first few, then every 1000th: a broken plugin fails every request.
        if n < 10 || n.is_multiple_of(1000) {
            tracing::warn!(
                decision = what,
                reason = why,
                limit_ms = self.limit.as_millis() as u64,
                overruns = n + 1,
                "routing plugin did not decide in time; using the default"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slow_decision_is_abandoned_and_cancelled() {
        let runner = PluginRunner::new(Duration::from_millis(50));
        assert_eq!(runner.run("pick", || 7).await, Some(7));
        let (tx, rx) = std::sync::mpsc::channel();
        let spin = baton_policies::pipeline::script::ScriptScorer::from_source(
            "spin",
            // Every operation is slow (a 60k-element reverse): only the
            // cancel flag can end this before its budget, minutes later.
            "fn score(w, r) { let a = []; a.pad(60000, 1); loop { a.reverse(); } }",
            baton_policies::pipeline::script::MAX_BUDGET,
        )
        .unwrap();
        let started = Instant::now();
        let out = runner
            .run("pick", move || {
                use baton_policies::pipeline::Scorer;
                let w = baton_policies::WorkerView {
                    url: "a",
                    available: true,
                    in_flight: 0,
                };
                let r = spin.score(&[w], &Default::default());
                let _ = tx.send(r);
            })
            .await;
        assert_eq!(out, None);
        assert_eq!(runner.overruns(), 1);
        // The script itself was stopped by the flag, not by its budget.
        let stopped = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
            .await
            .unwrap()
            .expect("the cancelled script returns");
        assert!(stopped.unwrap_err().to_string().contains("time limit"));
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}
