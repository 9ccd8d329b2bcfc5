//! Goodput: SLO classes, per-request budgets, live accounting, and
//! SLO-aware placement/admission.
//!
//! `classify` decides which targets a request is held to; `LoadTracker`
//! keeps this replica's view of worker load; `place` asks the pure policy in
//! `baton_policies::slo` where the request should run (or whether to reject
//! it early); `Accounting` counts every request once when it ends.

pub mod accounting;
pub mod classify;
pub mod config;
pub mod excluded;
pub mod shared;
pub mod tracker;

use std::sync::Arc;
use std::time::Duration;

use baton_policies::slo::{
    self as policy, AdmissionMode, Budget, Decision, EngineSnapshot, EngineView, Placement,
    Prediction, SloRequest, StepLimits, StepModel,
};
use baton_protocol::ClientRequest;
use tokio::time::Instant;

use crate::config::{Mode, PdProtocol};
use crate::pool::Pools;
use crate::worker::Worker;
use accounting::{Accounting, Verdict};
use classify::SloTarget;
use config::SloConfig;
use tracker::LoadTracker;

/// The SLO machinery of one gateway replica.
#[derive(Debug)]
pub struct SloEngine {
    pub config: SloConfig,
    metrics: Arc<crate::metrics::Metrics>,
    pub tracker: Arc<LoadTracker>,
    pub accounting: Accounting,
    /// Client errors and cancellations, apart from attainment.
    pub excluded: excluded::ExcludedWindow,
    pub shared: Arc<shared::Shared>,
    /// Requests held in queue mode, by (TTFT deadline, arrival).
    waiters: std::sync::Mutex<std::collections::BTreeSet<(Instant, u64)>>,
    next_waiter: std::sync::atomic::AtomicU64,
}

/// A place in the admission queue; leaving (admitted, rejected, or the
/// client gone) removes it.
struct WaitTicket<'a> {
    engine: &'a SloEngine,
    key: (Instant, u64),
}

impl WaitTicket<'_> {
    fn is_head(&self) -> bool {
        let w = self
            .engine
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        w.first() == Some(&self.key)
    }
}

impl Drop for WaitTicket<'_> {
    fn drop(&mut self) {
        self.engine
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// Where the SLO policy put a request.
#[derive(Debug, Clone)]
pub struct Forced {
    /// `None`: the decode worker prefills by itself (local path).
    pub prefill: Option<Arc<Worker>>,
    pub decode: Arc<Worker>,
    /// What the policy predicted for it there.
    pub prediction: Prediction,
}

/// Header on the client response of a request the SLO engine placed:
/// `ttft=<ms>;tpot=<ms>` (the syntax of `x-baton-slo`), so a benchmark can
/// compare predicted with measured per request.
pub const PREDICTED_HEADER: &str = "x-baton-predicted";

impl Forced {
    /// The [`PREDICTED_HEADER`] value; `None` when a prediction is not finite.
    pub fn predicted_header(&self) -> Option<http::HeaderValue> {
        let p = &self.prediction;
        let round = |ms: f64| (ms.is_finite() && ms >= 0.0).then(|| (ms * 10.0).round() / 10.0);
        let v = format!("ttft={};tpot={}", round(p.ttft_ms)?, round(p.tpot_ms)?);
        http::HeaderValue::from_str(&v).ok()
    }
}

/// `x-baton-slo` for a request that arrived at `start` with `budget`: its
/// TTFT and TPOT budgets and the unix time (ms) its first token is due;
/// `None` without a budget.
pub fn engine_slo_header(start: Instant, budget: Budget) -> Option<http::HeaderValue> {
    if budget.ttft_ms.is_none() && budget.tpot_ms.is_none() {
        return None;
    }
    let arrived = shared::now_ms()
        .saturating_sub(u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX));
    let slo = baton_protocol::engine_slo::EngineSlo {
        ttft_ms: budget.ttft_ms,
        tpot_ms: budget.tpot_ms,
        deadline_unix_ms: budget
            .ttft_ms
            .map(|t| arrived.saturating_add(t.round() as u64)),
    };
    http::HeaderValue::from_str(&slo.to_string()).ok()
}

/// How a request ended, as the SLO accounting sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SloEnd {
    /// Served to the end, with what was measured.
    Served {
        ttft_ms: Option<f64>,
        tpot_ms: Option<f64>,
    },
    /// Refused at admission: a miss.
    Rejected,
    /// The fleet or the gateway could not serve it: a miss.
    Failed,
    /// Refused as invalid: counted apart, no miss.
    ClientError,
    /// The client left before the end: counted apart, no miss.
    Cancelled,
}

/// Result of admission.
#[derive(Debug)]
pub enum Admission {
    Admit(Option<Forced>),
    Reject { retry_after: Duration },
}

/// `ms` milliseconds as a `Duration`; `None` for NaN, negative or
/// unrepresentable values (which must never panic: budgets come from clients).
pub fn ms_duration(ms: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(ms / 1000.0).ok()
}

/// The instant `ms` milliseconds after `start`; `None` when it cannot be
/// represented (no deadline, rather than a panic).
pub fn deadline_after(start: Instant, ms: f64) -> Option<Instant> {
    start.checked_add(ms_duration(ms)?)
}

/// Output tokens assumed when the client sets no limit: the latency model
/// needs a guess, and engines' own defaults range from 128 (SGLang) to the
/// whole context (vLLM).
pub const DEFAULT_OUTPUT_TOKENS: u64 = 256;

/// Prompt length estimate (the gateway does not tokenize): ~4 characters
/// per token for English text, which is what the latency model needs, plus
/// a few template tokens per chat message.
pub fn estimate_prompt_tokens(req: &ClientRequest) -> u64 {
    let chars = req.routing_text().map_or(0, |t| t.chars().count()) as u64;
    (chars / 4 + 4 * req.prompt.messages as u64).max(1)
}

/// The output tokens the latency model plans for: the client's limit in any
/// dialect ([`ClientRequest::max_tokens`]), else [`DEFAULT_OUTPUT_TOKENS`].
pub fn output_tokens(req: &ClientRequest) -> u64 {
    req.max_tokens.map_or(DEFAULT_OUTPUT_TOKENS, u64::from)
}

/// What placement knows of a request: its estimated prompt length, its
/// output limit and the budget of its class.
pub fn slo_request(req: &ClientRequest, prompt_tokens: u64, budget: Budget) -> SloRequest {
    SloRequest {
        prompt_tokens,
        output_tokens: output_tokens(req),
        budget,
        arrival_ms: 0.0,
    }
}

impl SloEngine {
    pub fn new(
        config: SloConfig,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, crate::config::ConfigError> {
        classify::validate(&config).map_err(crate::config::ConfigError::Invalid)?;
        let shared = Arc::new(shared::Shared::new(&config)?);
        let tracker = Arc::new(LoadTracker::new(
            config.prior_prefill_tokens_per_s,
            config.prior_tpot_base_ms,
            config.prior_tpot_per_seq_ms,
        ));
        let accounting = Accounting::new(Duration::from_secs(config.window_secs));
        let excluded = excluded::ExcludedWindow::new(accounting.window());
        Ok(Self {
            excluded,
            config,
            metrics,
            tracker,
            accounting,
            shared,
            waiters: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            next_waiter: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// One placement decision on the current snapshot.
    pub fn decide(
        &self,
        mode: Mode,
        pools: &Pools,
        req: &SloRequest,
    ) -> (Decision, Vec<Arc<Worker>>, Vec<Arc<Worker>>) {
        let now_ms = self.tracker.now_ms();
        let (prefill_workers, decode_workers): (Vec<Arc<Worker>>, Vec<Arc<Worker>>) = match pools {
            Pools::Aggregated(p) => (Vec::new(), p.workers.snapshot().to_vec()),
            Pools::Pd { prefill, decode } => (
                prefill.workers.snapshot().to_vec(),
                decode.workers.snapshot().to_vec(),
            ),
        };
        let max_age = Duration::from_millis(
            self.config
                .engine_metrics_interval_ms
                .saturating_mul(4)
                .max(REPORT_MAX_AGE_MS),
        );
        let view = |w: &Arc<Worker>| {
            let mut v = self.tracker.view(&w.url, max_age);
            if v.report.is_none() {
                // No report covers the other replicas' traffic: add what they
                // published. (A report already counts it, and the changes
                // since are this replica's own.)
                let peer = self.shared.peer_load(&w.url);
                let s = &mut v.stats;
                s.queued_prefill_tokens += peer.queued_prefill_tokens;
                s.active_prefills += peer.active_prefills;
                s.active_decodes += peer.active_decodes;
                s.pending_decodes += peer.pending_decodes;
            }
            v
        };
        let pviews: Vec<_> = prefill_workers.iter().map(view).collect();
        let dviews: Vec<_> = decode_workers.iter().map(view).collect();
        let prior = self.config.prior_prefill_tokens_per_s;
        let prefills = snapshots(&prefill_workers, &pviews, prior, now_ms);
        let decodes = snapshots(&decode_workers, &dviews, prior, now_ms);
        let mut cfg = self.config.policy;
        // SGLang decode servers cannot serve a request without a prefill peer.
        if mode == Mode::Pd(PdProtocol::Sglang) {
            cfg.conditional_disaggregation = false;
        }
        let verdict = policy::decide(&cfg, req, &prefills, &decodes, now_ms);
        (verdict, prefill_workers, decode_workers)
    }

    /// Admits (possibly after waiting, in queue mode) or rejects.
    pub async fn admit(
        &self,
        mode: Mode,
        pools: &Pools,
        req: &SloRequest,
        start: Instant,
    ) -> Admission {
        let req = &SloRequest {
            arrival_ms: self.tracker.ms_at(start),
            ..*req
        };
        let deadline = req.budget.ttft_ms.and_then(|t| deadline_after(start, t));
        let queueing = self.config.policy.admission == AdmissionMode::Queue;
        // In queue mode, waiting requests are served earliest TTFT deadline
        // first (least remaining slack): only the head of the queue may take
        // capacity, and newcomers queue behind earlier deadlines.
        let mut ticket: Option<WaitTicket<'_>> = None;
        loop {
            // Register interest before deciding so a release between the
            // decision and the wait is not missed.
            let freed = self.tracker.freed.notified();
            let my_turn = match &ticket {
                Some(t) => t.is_head(),
                None => !queueing || self.waiters_empty(),
            };
            if my_turn {
                let (verdict, pw, dw) = self.decide(mode, pools, req);
                match verdict {
                    Decision::Admit {
                        placement,
                        prediction,
                    } => {
                        let forced = match placement {
                            Placement::Disaggregated { prefill, decode } => Forced {
                                prefill: pw.get(prefill).cloned(),
                                decode: Arc::clone(&dw[decode]),
                                prediction,
                            },
                            Placement::Local { decode } => Forced {
                                prefill: None,
                                decode: Arc::clone(&dw[decode]),
                                prediction,
                            },
                        };
                        // Leaving the queue lets the next one try at once.
                        drop(ticket);
                        self.tracker.freed.notify_waiters();
                        return Admission::Admit(Some(forced));
                    }
                    Decision::Reject { retry_after_ms, .. } => {
                        let retry_after =
                            ms_duration(retry_after_ms).unwrap_or(Duration::from_secs(1));
                        if !queueing {
                            return Admission::Reject { retry_after };
                        }
                    }
                }
            }
            let Some(deadline) = deadline else {
                return Admission::Reject {
                    retry_after: Duration::from_secs(1),
                };
            };
            if Instant::now() >= deadline {
                drop(ticket);
                self.tracker.freed.notify_waiters();
                return Admission::Reject {
                    retry_after: Duration::from_secs(1),
                };
            }
            if ticket.is_none() {
                ticket = Some(self.enqueue(deadline));
            }
            // Wait for capacity (or re-check periodically: load also changes
            // on other replicas).
            let recheck = Instant::now() + Duration::from_millis(20);
            tokio::select! {
                _ = freed => {}
                _ = tokio::time::sleep_until(recheck.min(deadline)) => {}
            }
        }
    }

    fn waiters_empty(&self) -> bool {
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    fn enqueue(&self, deadline: Instant) -> WaitTicket<'_> {
        let key = (
            deadline,
            self.next_waiter
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        );
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key);
        WaitTicket { engine: self, key }
    }

    /// Records how a request ended (exactly once per request: the request's
    /// lifecycle guard calls it). Served, rejected and failed requests count
    /// towards attainment; client errors and cancellations are counted apart.
    pub fn record(&self, request_id: &str, target: &SloTarget, end: SloEnd) -> Option<Verdict> {
        let (ttft_ms, tpot_ms) = match end {
            SloEnd::Served { ttft_ms, tpot_ms } => (ttft_ms, tpot_ms),
            _ => (None, None),
        };
        let v = match end {
            SloEnd::Served { .. } => {
                let targets = baton_slo::Targets {
                    ttft_ms: target.budget.ttft_ms,
                    tpot_ms: target.budget.tpot_ms,
                };
                Verdict::served(targets, baton_slo::Measured { ttft_ms, tpot_ms })
            }
            SloEnd::Rejected => Verdict::unserved(true, false),
            SloEnd::Failed => Verdict::unserved(false, true),
            SloEnd::ClientError | SloEnd::Cancelled => {
                let (why, result) = if end == SloEnd::ClientError {
                    (excluded::Excluded::ClientError, "client_error")
                } else {
                    (excluded::Excluded::Cancelled, "cancelled")
                };
                self.excluded
                    .add(&target.class, &target.tenant, |c| c.count(why));
                self.count_result(target, result);
                return None;
            }
        };
        self.accounting.record(&target.class, &target.tenant, &v);
        let result = if v.rejected {
            "rejected"
        } else if v.failed {
            "failed"
        } else if !v.ttft_met {
            "ttft_miss"
        } else if !v.tpot_met {
            "tpot_miss"
        } else {
            "good"
        };
        self.count_result(target, result);
        if !self.shared.is_shared() {
            return Some(v);
        }
        self.shared.write_outcome(baton_slo::OutcomeRecord {
            request_id: store_key(request_id, target),
            class: target.class.clone(),
            tenant: target.tenant.clone(),
            finished_at_ms: shared::now_ms(),
            ttft_ms,
            tpot_ms,
            ttft_met: v.ttft_met,
            tpot_met: v.tpot_met,
            rejected: v.rejected,
            failed: v.failed,
        });
        Some(v)
    }

    fn count_result(&self, target: &SloTarget, result: &'static str) {
        self.metrics
            .slo_requests
            .get_or_create(&crate::metrics::SloLabels {
                class: target.class.clone(),
                tenant: target.tenant.clone(),
                result,
            })
            .inc();
    }

    /// Writes the admission record (deadline, budget, phase) to the store.
    pub fn record_admission(
        &self,
        request_id: &str,
        target: &SloTarget,
        prompt_tokens: u64,
        ttl: Duration,
        forced: Option<&Forced>,
    ) {
        if !self.shared.is_shared() {
            return;
        }
        let now = shared::now_ms();
        self.shared.write_admission(baton_slo::AdmissionRecord {
            request_id: store_key(request_id, target),
            replica_id: self.shared.replica_id.clone(),
            class: target.class.clone(),
            tenant: target.tenant.clone(),
            admitted_at_ms: now,
            ttft_deadline_ms: target.budget.ttft_ms.map(|t| now.saturating_add(t as u64)),
            tpot_budget_ms: target.budget.tpot_ms,
            phase: baton_slo::Phase::Queued,
            prefill_worker: forced
                .and_then(|f| f.prefill.as_ref())
                .map(|w| w.url.clone()),
            decode_worker: forced.map(|f| f.decode.url.clone()),
            prompt_tokens,
            ttl,
        });
    }
}

/// Reports stay usable this long without a fresher one: the changes since
/// are this replica's own, which it tracks; what they miss is other clients'
/// traffic (polled `GET /load` refreshes them on idle engines).
const REPORT_MAX_AGE_MS: u64 = 10_000;

/// The policy's snapshots of `workers`, from this replica's view of each
/// (one per worker): the engine's report plus this replica's changes since,
/// or without one its own counts, the engine's `/metrics` and the fallback
/// step model (fitted TPOT, prefill throughput measured over busy time).
fn snapshots<'a>(
    workers: &'a [Arc<Worker>],
    views: &'a [tracker::WorkerView],
    prior_prefill_tps: f64,
    now_ms: f64,
) -> Vec<EngineSnapshot<'a>> {
    workers
        .iter()
        .zip(views)
        .map(|(w, v)| {
            let s = &v.stats;
            let (base, per_seq) = s.tpot.coefficients();
            let rate = s.prefill_rate.get_or(prior_prefill_tps).max(1e-3);
            let view = EngineView {
                url: &w.url,
                available: w.is_available(),
                report: v.report.as_ref().map(|r| &r.report),
                at_report: v.report.map_or(s.counts(), |r| r.counts),
                now: s.counts(),
                prompts: &v.prompts,
                tightest_tpot_ms: v.tightest_tpot_ms,
                metrics: v.metrics,
                fallback_step: StepModel {
                    fixed_ms: base,
                    per_seq_ms: per_seq,
                    per_prefill_token_ms: 1000.0 / rate,
                    per_kctx_ms: 0.0,
                },
                limits: StepLimits::default(),
            };
            policy::engine_snapshot(&view, now_ms)
        })
        .collect()
}

/// The request's key in the shared store: the request id (for operators
/// reading Redis) made unique by the target's nonce.
fn store_key(request_id: &str, target: &SloTarget) -> String {
    format!("{request_id}.{:016x}", target.store_nonce)
}

impl SloEngine {
    /// Window counts per (class, tenant) — this replica's, merged with the
    /// other replicas' when a shared store is configured.
    pub fn report(&self) -> std::collections::BTreeMap<(String, String), accounting::Counts> {
        let Some(rows) = self.shared.cluster_goodput() else {
            return self.accounting.window_counts();
        };
        let mut out = std::collections::BTreeMap::new();
        for r in rows {
            out.insert((r.class.clone(), r.tenant.clone()), r);
        }
        out
    }

    /// Replicas contributing to [`report`](Self::report).
    pub fn replica_count(&self) -> usize {
        self.shared.live_replicas()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BreakerConfig;
    use crate::pool::Pool;
    use crate::worker::Role;
    use baton_protocol::Endpoint;
    use std::sync::Mutex;

    fn engine_and_pools() -> (Arc<SloEngine>, Arc<Pools>, String) {
        let mut cfg = SloConfig::default();
        cfg.policy.admission = AdmissionMode::Queue;
        cfg.prior_prefill_tokens_per_s = 1000.0;
        let engine =
            Arc::new(SloEngine::new(cfg, Arc::new(crate::metrics::Metrics::new())).unwrap());
        let w = Arc::new(Worker::new(
            "http://w:1",
            Role::Unified,
            None,
            &BreakerConfig::default(),
        ));
        let url = w.url.clone();
        let pools = Arc::new(Pools::Aggregated(Pool::new(
            Role::Unified,
            vec![w],
            Box::new(baton_policies::LeastLoad::new()),
        )));
        (engine, pools, url)
    }

    fn req(ttft_ms: f64) -> SloRequest {
        SloRequest {
            prompt_tokens: 10,
            output_tokens: 4,
            budget: Budget {
                ttft_ms: Some(ttft_ms),
                tpot_ms: None,
            },
            arrival_ms: 0.0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn queued_requests_are_admitted_earliest_deadline_first() {
        let (engine, pools, url) = engine_and_pools();
        // A 1000-token backlog: ~1 s of predicted queueing.
        let backlog = engine
            .tracker
            .start_prefill(&url, 1000, tracker::Stamp::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        let spawn = |name: &'static str, ttft: f64| {
            let (engine, pools, order) =
                (Arc::clone(&engine), Arc::clone(&pools), Arc::clone(&order));
            tokio::spawn(async move {
                let start = Instant::now();
                let a = engine
                    .admit(Mode::Aggregated, &pools, &req(ttft), start)
                    .await;
                order
                    .lock()
                    .unwrap()
                    .push((name, matches!(a, Admission::Admit(_))));
            })
        };
        let lax = spawn("lax", 800.0);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let tight = spawn("tight", 500.0);
        let hopeless = spawn("hopeless", 50.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(backlog);
        let _ = tokio::join!(lax, tight, hopeless);
        let order = order.lock().unwrap().clone();
        assert_eq!(
            order,
            vec![("hopeless", false), ("tight", true), ("lax", true)]
        );
        assert!(engine.waiters_empty());
    }

    /// SGLang's `sampling_params.max_new_tokens` is the output length the
    /// placement plans for: a short answer cannot hide a local prefill's
    /// stall, so the same prompt that fits a TPOT budget with the default
    /// length is refused with 4 new tokens.
    #[test]
    fn sglang_max_new_tokens_reaches_placement() {
        let cfg = SloConfig {
            prior_prefill_tokens_per_s: 1000.0,
            ..SloConfig::default()
        };
        let engine = SloEngine::new(cfg, Arc::new(crate::metrics::Metrics::new())).unwrap();
        let (_, pools, _) = engine_and_pools();
        let budget = Budget {
            ttft_ms: None,
            tpot_ms: Some(50.0),
        };
        let text = "x".repeat(1600);
        let decide = |params: &str| {
            let body = format!(r#"{{"text":"{text}","sampling_params":{params}}}"#);
            let req = ClientRequest::parse(Endpoint::Generate, body.as_bytes()).unwrap();
            let sreq = slo_request(&req, estimate_prompt_tokens(&req), budget);
            (sreq, engine.decide(Mode::Aggregated, &pools, &sreq).0)
        };
        let (short, verdict) = decide(r#"{"max_new_tokens":4}"#);
        assert_eq!((short.prompt_tokens, short.output_tokens), (400, 4));
        // 400 ms of local prefill spread over 4 tokens: ~100 ms a token.
        assert!(
            matches!(verdict, Decision::Reject { best: Some(p), .. } if p.tpot_ms > 100.0),
            "{verdict:?}"
        );
        let (long, verdict) = decide("{}");
        assert_eq!(long.output_tokens, DEFAULT_OUTPUT_TOKENS);
        assert!(
            matches!(verdict, Decision::Admit { prediction, .. } if prediction.tpot_ms < 50.0),
            "{verdict:?}"
        );
    }
}
