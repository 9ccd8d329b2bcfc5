//! This replica's live view of worker load, kept by RAII tickets.
//!
//! A [`PrefillTicket`] counts a request's prompt tokens as queued on its
//! prefill worker until the prefill leg ends (then the leg's duration updates
//! the worker's measured prefill rate). A [`DecodeTicket`] counts a sequence
//! as pending on its decode worker while prefill runs, then active while it
//! decodes; at the end its TPOT feeds the worker's batch→TPOT fit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use baton_policies::slo::{Ewma, TpotFit};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Shortest busy time a prefill-rate sample is taken over.
const MIN_RATE_SAMPLE_SECS: f64 = 0.05;

/// Load of one worker as this replica sees it.
#[derive(Debug, Clone, Copy)]
pub struct WorkerStats {
    pub queued_prefill_tokens: u64,
    pub active_prefills: u64,
    pub pending_decodes: u64,
    pub active_decodes: u64,
    pub prefill_rate: Ewma,
    pub tpot: TpotFit,
    pub ttft_ms: Ewma,
    /// Throughput accounting while the worker is busy prefilling: tokens
    /// finished and busy time since the last rate sample. Measuring busy
    /// time (not each leg's duration) keeps queueing out of the rate, and
    /// accumulating over ≥ 50 ms handles prompts that finish together in
    /// one batched step.
    pub busy_mark: Option<Instant>,
    pub acc_tokens: u64,
    pub acc_secs: f64,
}

#[derive(Debug)]
pub struct LoadTracker {
    stats: Mutex<HashMap<String, WorkerStats>>,
    prior: WorkerStats,
    /// Signalled whenever capacity frees up (queued admissions re-check).
    pub freed: Notify,
    /// Origin of the policy's clock (tokio's, so tests can pause it).
    epoch: Instant,
}

impl LoadTracker {
    pub fn new(
        prior_prefill_tps: f64,
        prior_tpot_base_ms: f64,
        prior_tpot_per_seq_ms: f64,
    ) -> Self {
        let mut rate = Ewma::new(0.2);
        rate.observe(prior_prefill_tps);
        // The prior is replaced quickly by the first observations.
        rate.alpha = 0.3;
        Self {
            stats: Mutex::new(HashMap::new()),
            prior: WorkerStats {
                queued_prefill_tokens: 0,
                active_prefills: 0,
                pending_decodes: 0,
                active_decodes: 0,
                prefill_rate: rate,
                tpot: TpotFit::new(prior_tpot_base_ms, prior_tpot_per_seq_ms),
                ttft_ms: Ewma::new(0.2),
                busy_mark: None,
                acc_tokens: 0,
                acc_secs: 0.0,
            },
            freed: Notify::new(),
            epoch: Instant::now(),
        }
    }

    /// `at` in milliseconds on the policy's clock.
    pub fn ms_at(&self, at: Instant) -> f64 {
        match at.checked_duration_since(self.epoch) {
            Some(d) => d.as_secs_f64() * 1000.0,
            None => -(self.epoch.saturating_duration_since(at).as_secs_f64() * 1000.0),
        }
    }

    /// Now on the policy's clock.
    pub fn now_ms(&self) -> f64 {
        self.ms_at(Instant::now())
    }

    fn with<R>(&self, url: &str, f: impl FnOnce(&mut WorkerStats) -> R) -> R {
        let mut g = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        // Look up before inserting: no key allocation on the hot path.
        if let Some(s) = g.get_mut(url) {
            return f(s);
        }
        f(g.entry(url.to_owned()).or_insert(self.prior))
    }

    /// A copy of one worker's stats (the prior for an unseen worker).
    pub fn get(&self, url: &str) -> WorkerStats {
        let g = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        g.get(url).copied().unwrap_or(self.prior)
    }

    pub fn snapshot(&self) -> Vec<(String, WorkerStats)> {
        let g = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        g.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    pub fn start_prefill(self: &Arc<Self>, url: &str, tokens: u64) -> PrefillTicket {
        self.with(url, |s| {
            s.queued_prefill_tokens += tokens;
            s.active_prefills += 1;
            if s.busy_mark.is_none() {
                s.busy_mark = Some(Instant::now());
            }
        });
        PrefillTicket {
            tracker: Arc::clone(self),
            url: url.to_owned(),
            tokens,
            done: false,
        }
    }

    /// Counts a sequence headed for `url` (pending until [`DecodeTicket::activate`]).
    pub fn start_decode(self: &Arc<Self>, url: &str) -> DecodeTicket {
        self.with(url, |s| s.pending_decodes += 1);
        DecodeTicket {
            tracker: Arc::clone(self),
            url: url.to_owned(),
            active: false,
            batch_at_start: 0,
        }
    }
}

#[derive(Debug)]
pub struct PrefillTicket {
    tracker: Arc<LoadTracker>,
    url: String,
    tokens: u64,
    done: bool,
}

impl PrefillTicket {
    /// The prompt is prefilled (the leg answered, or the first token
    /// arrived): updates the worker's measured prefill rate from the service
    /// time, i.e. excluding time queued behind earlier prompts.
    pub fn finish(mut self) {
        let tokens = self.tokens;
        let now = Instant::now();
        self.release(|s| {
            if let Some(mark) = s.busy_mark {
                s.acc_secs += now.saturating_duration_since(mark).as_secs_f64();
                s.busy_mark = Some(now);
            }
            s.acc_tokens += tokens;
            if s.acc_secs >= MIN_RATE_SAMPLE_SECS && s.acc_tokens > 0 {
                s.prefill_rate.observe(s.acc_tokens as f64 / s.acc_secs);
                s.acc_tokens = 0;
                s.acc_secs = 0.0;
            }
        });
        self.done = true;
    }

    fn release(&mut self, extra: impl FnOnce(&mut WorkerStats)) {
        let tokens = self.tokens;
        self.tracker.with(&self.url, |s| {
            s.queued_prefill_tokens = s.queued_prefill_tokens.saturating_sub(tokens);
            s.active_prefills = s.active_prefills.saturating_sub(1);
            extra(s);
            if s.active_prefills == 0 {
                s.busy_mark = None;
            }
        });
        self.tracker.freed.notify_waiters();
    }
}

impl Drop for PrefillTicket {
    fn drop(&mut self) {
        if !self.done {
            self.release(|_| {});
        }
    }
}

#[derive(Debug)]
pub struct DecodeTicket {
    tracker: Arc<LoadTracker>,
    url: String,
    active: bool,
    batch_at_start: u64,
}

impl DecodeTicket {
    /// The sequence started decoding.
    pub fn activate(&mut self) {
        if self.active {
            return;
        }
        self.active = true;
        self.batch_at_start = self.tracker.with(&self.url, |s| {
            s.pending_decodes = s.pending_decodes.saturating_sub(1);
            s.active_decodes += 1;
            s.active_decodes
        });
    }

    /// The sequence finished with this TPOT (and TTFT).
    pub fn observe(&mut self, ttft_ms: Option<f64>, tpot_ms: Option<f64>) {
        let start = self.batch_at_start as f64;
        self.tracker.with(&self.url, |s| {
            let batch = (start + s.active_decodes as f64) / 2.0;
            if let Some(t) = tpot_ms {
                s.tpot.observe(batch.max(1.0), t);
            }
            if let Some(t) = ttft_ms {
                s.ttft_ms.observe(t);
            }
        });
    }
}

impl Drop for DecodeTicket {
    fn drop(&mut self) {
        let active = self.active;
        self.tracker.with(&self.url, |s| {
            if active {
                s.active_decodes = s.active_decodes.saturating_sub(1);
            } else {
                s.pending_decodes = s.pending_decodes.saturating_sub(1);
            }
        });
        self.tracker.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn tickets_count_and_release() {
        let t = Arc::new(LoadTracker::new(1000.0, 20.0, 1.0));
        let p = t.start_prefill("p", 500);
        let mut d = t.start_decode("d");
        assert_eq!(t.get("p").queued_prefill_tokens, 500);
        assert_eq!(t.get("d").pending_decodes, 1);
        tokio::time::advance(Duration::from_millis(100)).await;
        p.finish();
        assert_eq!(t.get("p").queued_prefill_tokens, 0);
        // 500 tokens / 0.1 s moved the rate from the 1000 tok/s prior.
        assert!(t.get("p").prefill_rate.get_or(0.0) > 1000.0);
        d.activate();
        assert_eq!(
            (t.get("d").pending_decodes, t.get("d").active_decodes),
            (0, 1)
        );
        d.observe(Some(50.0), Some(25.0));
        drop(d);
        assert_eq!(t.get("d").active_decodes, 0);
        let dropped = t.start_prefill("p", 7);
        drop(dropped);
        assert_eq!(t.get("p").queued_prefill_tokens, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn queueing_is_not_counted_as_prefill_time() {
        let t = Arc::new(LoadTracker::new(1.0, 20.0, 1.0));
        // Two 1000-token prompts arrive together; each takes 100 ms to
        // prefill, the second waits 100 ms behind the first.
        let a = t.start_prefill("p", 1000);
        let b = t.start_prefill("p", 1000);
        tokio::time::advance(Duration::from_millis(100)).await;
        a.finish();
        tokio::time::advance(Duration::from_millis(100)).await;
        b.finish();
        // Both observed 10k tokens/s (the prior of 1 tok/s fades out).
        let rate = t.get("p").prefill_rate.get_or(0.0);
        assert!(rate > 4_000.0, "{rate}");
        let mut fresh = LoadTracker::new(1.0, 20.0, 1.0);
        fresh.prior.prefill_rate = Ewma::new(1.0);
        let fresh = Arc::new(fresh);
        let a = fresh.start_prefill("p", 1000);
        let b = fresh.start_prefill("p", 1000);
        tokio::time::advance(Duration::from_millis(100)).await;
        a.finish();
        tokio::time::advance(Duration::from_millis(100)).await;
        b.finish();
        assert!((fresh.get("p").prefill_rate.get_or(0.0) - 10_000.0).abs() < 1.0);
    }
}
