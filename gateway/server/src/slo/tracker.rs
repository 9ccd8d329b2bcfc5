//! This replica's live view of worker load, kept by RAII tickets, and the
//! engines' own reports.
//!
//! A [`PrefillTicket`] counts a request's prompt (tokens, arrival, deadline)
//! as queued on its prefill worker until the prefill ends. A [`DecodeTicket`]
//! counts a sequence (and its TPOT budget) as pending on its decode worker
//! while prefill runs, then active while it decodes; at the end its TPOT
//! feeds the worker's batch→TPOT fit.
//!
//! An engine that reports its state (`x-baton-load` on every response head,
//! `GET /load`) is predicted from that report plus this replica's changes
//! since ([`LoadTracker::record_report`] keeps the counts at the report):
//! nothing is then estimated from how long legs took. Engines without reports
//! (vLLM, SGLang) fall back to their `/metrics` counts, the TPOT fit and the
//! prefill throughput measured over busy time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use baton_policies::slo::{CallerCounts, EngineReport, Ewma, MetricsLoad, TpotFit, WaitingPrompt};
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

impl WorkerStats {
    /// The counts the policy compares with an engine's report.
    pub fn counts(&self) -> CallerCounts {
        CallerCounts {
            decoding: self.active_decodes,
            pending_decodes: self.pending_decodes,
            prefill_tokens: self.queued_prefill_tokens,
        }
    }
}

/// What a ticket knows of its request's SLO, on the tracker's clock.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stamp {
    pub arrival_ms: f64,
    /// When its first token is due.
    pub deadline_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
}

/// An engine's report and this replica's counts when it was read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reported {
    pub report: EngineReport,
    pub at: Instant,
    pub counts: CallerCounts,
}

/// Everything placement needs of one worker, copied out of the tracker.
#[derive(Debug, Clone)]
pub struct WorkerView {
    pub stats: WorkerStats,
    /// This replica's prompts queued there.
    pub prompts: Vec<WaitingPrompt>,
    /// Tightest TPOT budget among this replica's sequences decoding (or headed) there.
    pub tightest_tpot_ms: Option<f64>,
    pub report: Option<Reported>,
    pub metrics: Option<MetricsLoad>,
}

#[derive(Debug, Clone)]
struct Entry {
    stats: WorkerStats,
    prompts: Vec<(u64, WaitingPrompt)>,
    tpots: Vec<(u64, f64)>,
    report: Option<Reported>,
    metrics: Option<(MetricsLoad, Instant)>,
}

#[derive(Debug)]
pub struct LoadTracker {
    stats: Mutex<HashMap<String, Entry>>,
    next_id: std::sync::atomic::AtomicU64,
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
            next_id: std::sync::atomic::AtomicU64::new(0),
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

    fn entry<R>(&self, url: &str, f: impl FnOnce(&mut Entry) -> R) -> R {
        let mut g = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        // Look up before inserting: no key allocation on the hot path.
        if let Some(e) = g.get_mut(url) {
            return f(e);
        }
        f(g.entry(url.to_owned()).or_insert_with(|| Entry {
            stats: self.prior,
            prompts: Vec::new(),
            tpots: Vec::new(),
            report: None,
            metrics: None,
        }))
    }

    fn with<R>(&self, url: &str, f: impl FnOnce(&mut WorkerStats) -> R) -> R {
        self.entry(url, |e| f(&mut e.stats))
    }

    /// A copy of one worker's stats (the prior for an unseen worker).
    pub fn get(&self, url: &str) -> WorkerStats {
        let g = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        g.get(url).map_or(self.prior, |e| e.stats)
    }

    /// What placement needs of one worker; reports and metrics older than
    /// `max_age` are left out (stale load is worse than none).
    pub fn view(&self, url: &str, max_age: std::time::Duration) -> WorkerView {
        let g = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let Some(e) = g.get(url) else {
            return WorkerView {
                stats: self.prior,
                prompts: Vec::new(),
                tightest_tpot_ms: None,
                report: None,
                metrics: None,
            };
        };
        let fresh = |at: Instant| at.elapsed() <= max_age;
        WorkerView {
            stats: e.stats,
            prompts: e.prompts.iter().map(|(_, p)| *p).collect(),
            tightest_tpot_ms: e.tpots.iter().map(|(_, t)| *t).reduce(f64::min),
            report: e.report.filter(|r| fresh(r.at)),
            metrics: e.metrics.filter(|(_, at)| fresh(*at)).map(|(m, _)| m),
        }
    }

    /// An engine's own report (`x-baton-load`, `GET /load`), read now. Call it
    /// after this replica's counts reflect the event that brought it (the
    /// answering sequence activated, the prefill finished): placement adds
    /// only what changed since.
    pub fn record_report(&self, url: &str, report: EngineReport) {
        self.entry(url, |e| {
            e.report = Some(Reported {
                report,
                at: Instant::now(),
                counts: e.stats.counts(),
            });
        });
    }

    /// The `x-baton-load` header of an engine's response head, if it has a
    /// valid one (engines that do not report send none).
    pub fn record_report_header(&self, url: &str, headers: &http::HeaderMap) {
        if let Some(r) = parse_report(headers) {
            self.record_report(url, r);
        }
    }

    /// `/metrics` load of an engine without reports.
    pub fn record_metrics(&self, url: &str, m: MetricsLoad) {
        self.entry(url, |e| e.metrics = Some((m, Instant::now())));
    }

    pub fn snapshot(&self) -> Vec<(String, WorkerStats)> {
        let g = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        g.iter().map(|(k, v)| (k.clone(), v.stats)).collect()
    }

    fn id(&self) -> u64 {
        self.next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts a prompt queued on `url` until it is prefilled.
    pub fn start_prefill(self: &Arc<Self>, url: &str, tokens: u64, stamp: Stamp) -> PrefillTicket {
        let id = self.id();
        self.entry(url, |e| {
            let s = &mut e.stats;
            s.queued_prefill_tokens += tokens;
            s.active_prefills += 1;
            if s.busy_mark.is_none() {
                s.busy_mark = Some(Instant::now());
            }
            e.prompts.push((
                id,
                WaitingPrompt {
                    arrival_ms: stamp.arrival_ms,
                    deadline_ms: stamp.deadline_ms,
                    remaining_tokens: tokens,
                },
            ));
        });
        PrefillTicket {
            tracker: Arc::clone(self),
            url: url.to_owned(),
            tokens,
            id,
            done: false,
        }
    }

    /// Counts a sequence headed for `url` (pending until [`DecodeTicket::activate`]).
    pub fn start_decode(self: &Arc<Self>, url: &str, stamp: Stamp) -> DecodeTicket {
        let id = self.id();
        self.entry(url, |e| {
            e.stats.pending_decodes += 1;
            if let Some(t) = stamp.tpot_ms {
                e.tpots.push((id, t));
            }
        });
        DecodeTicket {
            tracker: Arc::clone(self),
            url: url.to_owned(),
            active: false,
            batch_at_start: 0,
            id,
        }
    }
}

/// An `x-baton-load` header's report; `None` when absent or malformed.
pub fn parse_report(headers: &http::HeaderMap) -> Option<EngineReport> {
    let v = headers.get(baton_protocol::engine_slo::LOAD_HEADER)?;
    if v.len() > 4096 {
        return None;
    }
    serde_json::from_slice(v.as_bytes()).ok()
}

#[derive(Debug)]
pub struct PrefillTicket {
    tracker: Arc<LoadTracker>,
    url: String,
    tokens: u64,
    id: u64,
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
        let (tokens, id) = (self.tokens, self.id);
        self.tracker.entry(&self.url, |e| {
            e.prompts.retain(|(i, _)| *i != id);
            let s = &mut e.stats;
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
    id: u64,
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
        let (active, id) = (self.active, self.id);
        self.tracker.entry(&self.url, |e| {
            e.tpots.retain(|(i, _)| *i != id);
            let s = &mut e.stats;
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
        let p = t.start_prefill("p", 500, Stamp::default());
        let mut d = t.start_decode("d", Stamp::default());
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
        let dropped = t.start_prefill("p", 7, Stamp::default());
        drop(dropped);
        assert_eq!(t.get("p").queued_prefill_tokens, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn queueing_is_not_counted_as_prefill_time() {
        let t = Arc::new(LoadTracker::new(1.0, 20.0, 1.0));
        // Two 1000-token prompts arrive together; each takes 100 ms to
        // prefill, the second waits 100 ms behind the first.
        let a = t.start_prefill("p", 1000, Stamp::default());
        let b = t.start_prefill("p", 1000, Stamp::default());
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
        let a = fresh.start_prefill("p", 1000, Stamp::default());
        let b = fresh.start_prefill("p", 1000, Stamp::default());
        tokio::time::advance(Duration::from_millis(100)).await;
        a.finish();
        tokio::time::advance(Duration::from_millis(100)).await;
        b.finish();
        assert!((fresh.get("p").prefill_rate.get_or(0.0) - 10_000.0).abs() < 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn prompts_budgets_and_reports_are_kept_per_worker() {
        let t = Arc::new(LoadTracker::new(1000.0, 20.0, 1.0));
        let stamp = |deadline: f64, tpot: f64| Stamp {
            arrival_ms: 0.0,
            deadline_ms: Some(deadline),
            tpot_ms: Some(tpot),
        };
        let p1 = t.start_prefill("e", 100, stamp(500.0, 30.0));
        let _p2 = t.start_prefill("e", 200, stamp(300.0, 30.0));
        let d1 = t.start_decode("e", stamp(500.0, 30.0));
        let _d2 = t.start_decode("e", stamp(300.0, 80.0));
        let v = t.view("e", Duration::from_secs(1));
        assert_eq!(v.prompts.len(), 2);
        assert_eq!(v.tightest_tpot_ms, Some(30.0));
        assert!(v.report.is_none());
        // A report keeps the counts it was read at.
        let mut h = http::HeaderMap::new();
        h.insert(
            baton_protocol::engine_slo::LOAD_HEADER,
            http::HeaderValue::from_static(
                r#"{"running":4,"waiting":0,"waiting_prefill_tokens":250,"context_tokens":0,"kv_usage":0.0}"#,
            ),
        );
        t.record_report_header("e", &h);
        p1.finish();
        drop(d1);
        let v = t.view("e", Duration::from_secs(1));
        let r = v.report.unwrap();
        assert_eq!(
            (r.report.running, r.report.waiting_prefill_tokens),
            (4, 250)
        );
        assert_eq!(r.counts.prefill_tokens, 300);
        assert_eq!(v.stats.queued_prefill_tokens, 200);
        assert_eq!(v.prompts.len(), 1);
        assert_eq!(v.tightest_tpot_ms, Some(80.0));
        // Stale reports are left out; malformed headers are ignored.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(t.view("e", Duration::from_secs(1)).report.is_none());
        h.insert(
            baton_protocol::engine_slo::LOAD_HEADER,
            http::HeaderValue::from_static("{not json"),
        );
        assert!(parse_report(&h).is_none());
    }
}
