//! From what a caller knows of an engine (its last report plus the caller's own traffic) to the snapshot the
//! placement decides on. Pure: the gateway and the virtual-time twin both call [`engine_snapshot`].

use crate::step::{prefill_order_key, EngineReport, StepLimits, StepModel, WaitingPrompt};

/// The caller's own counts on one engine (this gateway replica plus, where shared, its peers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallerCounts {
    /// Sequences the caller sent there to decode (head received), not yet finished.
    pub decoding: u64,
    /// Sequences headed there whose decode call is not answered yet (prefill elsewhere, or in flight): the batch
    /// the request will meet.
    pub pending_decodes: u64,
    /// Prompt tokens the caller sent there to prefill, not yet prefilled.
    pub prefill_tokens: u64,
}

/// An engine's `/metrics` load (vLLM / SGLang names), for engines that send no report.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MetricsLoad {
    pub running: u64,
    pub waiting: u64,
    /// Fraction of KV blocks in use, when the engine exports it.
    pub kv_usage: Option<f64>,
}

/// Everything the caller knows of one engine; [`engine_snapshot`] turns it into an [`EngineSnapshot`].
#[derive(Debug, Clone, Copy)]
pub struct EngineView<'a> {
    pub url: &'a str,
    /// Healthy and not fenced off by a breaker.
    pub available: bool,
    /// The engine's latest report, if it sends them (`x-baton-load`); a caller drops stale ones.
    pub report: Option<&'a EngineReport>,
    /// The caller's counts when that report was read (after applying the event that brought it).
    pub at_report: CallerCounts,
    /// The caller's counts now.
    pub now: CallerCounts,
    /// The caller's prompts sent there and not known to be prefilled, with their deadlines (the engine reports
    /// only a token total; these say how the backlog is ordered).
    pub prompts: &'a [WaitingPrompt],
    /// Tightest TPOT budget among the caller's sequences decoding (or headed) there.
    pub tightest_tpot_ms: Option<f64>,
    /// `/metrics` load of an engine without reports.
    pub metrics: Option<MetricsLoad>,
    /// The caller's step model for this engine when the report carries none (or there is no report): e.g. a
    /// prior, or one derived from measured TPOT and prefill throughput.
    pub fallback_step: StepModel,
    /// How the engine sizes its steps.
    pub limits: StepLimits,
}

/// One engine's state as the placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSnapshot<'a> {
    pub url: &'a str,
    pub available: bool,
    pub step: StepModel,
    pub limits: StepLimits,
    /// The engine orders prompts earliest-deadline-first and chunks prefills TPOT-safely (it honours
    /// `x-baton-slo`); otherwise FIFO with whole-step prefills.
    pub slo_aware: bool,
    /// Sequences decoding (and about to).
    pub decoding: u64,
    /// KV tokens those sequences attend to.
    pub context_tokens: u64,
    /// Tightest TPOT budget among them.
    pub tightest_tpot_ms: Option<f64>,
    /// Prompts waiting for prefill, in the engine's service order.
    pub queue: Vec<WaitingPrompt>,
    pub kv_usage: Option<f64>,
    /// The engine's recent decoding step time ([`EngineReport::decode_step_ms`]), when it reports one.
    pub decode_step_ms: Option<f64>,
}

impl EngineSnapshot<'_> {
    /// Prompt tokens waiting.
    pub fn queued_tokens(&self) -> u64 {
        self.queue.iter().map(|p| p.remaining_tokens).sum()
    }
}

fn delta(now: u64, then: u64) -> i128 {
    i128::from(now) - i128::from(then)
}

fn apply(base: u64, d: i128) -> u64 {
    (i128::from(base) + d).clamp(0, i128::from(u64::MAX)) as u64
}

fn min_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Builds the snapshot of one engine: its report plus the caller's changes since (sends not yet reflected,
/// requests finished since), or, without a report, the caller's own counts (and the larger `/metrics` count).
///
/// The waiting prompts are the caller's, in the engine's service order (EDF by [`prefill_order_key`] for
/// reporting engines, arrival order otherwise), scaled so their total is the backlog the engine reports (the
/// caller's token counts are estimates; a prompt partly prefilled is smaller). Backlog the caller did not send
/// (other clients) is put first, due now.
pub fn engine_snapshot<'a>(view: &EngineView<'a>, now_ms: f64) -> EngineSnapshot<'a> {
    let own_tokens: u64 = view.prompts.iter().map(|p| p.remaining_tokens).sum();
    let (decoding, context_tokens, waiting_tokens, step, slo_aware, kv_usage, tightest) =
        match view.report {
            Some(r) => {
                let sent = delta(view.now.decoding, view.at_report.decoding);
                let decoding = apply(r.running, sent);
                let decoding = decoding + view.now.pending_decodes;
                // New sequences are assumed as long as the average reported one.
                let per_seq_ctx = r.context_tokens.checked_div(r.running).unwrap_or(0);
                let ctx = apply(
                    r.context_tokens,
                    (sent + i128::from(view.now.pending_decodes)) * i128::from(per_seq_ctx),
                );
                let tokens = apply(
                    r.waiting_prefill_tokens,
                    delta(view.now.prefill_tokens, view.at_report.prefill_tokens),
                );
                (
                    decoding,
                    ctx,
                    tokens,
                    r.step
                        .filter(StepModel::is_valid)
                        .unwrap_or(view.fallback_step),
                    true,
                    Some(r.kv_usage),
                    min_opt(r.tightest_tpot_ms, view.tightest_tpot_ms),
                )
            }
            None => {
                let own = view.now.decoding + view.now.pending_decodes;
                let m = view.metrics.unwrap_or_default();
                (
                    own.max(m.running),
                    0,
                    view.now.prefill_tokens.max(own_tokens),
                    view.fallback_step,
                    false,
                    view.metrics.and_then(|m| m.kv_usage),
                    view.tightest_tpot_ms,
                )
            }
        };
    let mut queue: Vec<WaitingPrompt> = view
        .prompts
        .iter()
        .filter(|p| p.remaining_tokens > 0)
        .copied()
        .collect();
    if slo_aware {
        queue.sort_by(|a, b| {
            let (ka, kb) = (
                prefill_order_key(&step, a, now_ms),
                prefill_order_key(&step, b, now_ms),
            );
            ka.0.cmp(&kb.0).then(ka.1.total_cmp(&kb.1))
        });
    } else {
        queue.sort_by(|a, b| a.arrival_ms.total_cmp(&b.arrival_ms));
    }
    if own_tokens > 0 && waiting_tokens > 0 && own_tokens != waiting_tokens {
        // Reconcile the caller's estimates with the engine's count, keeping the order.
        let scale = waiting_tokens as f64 / own_tokens as f64;
        let mut left = waiting_tokens;
        let n = queue.len();
        for (i, p) in queue.iter_mut().enumerate() {
            let t = if i + 1 == n {
                left
            } else {
                ((p.remaining_tokens as f64 * scale).round() as u64).min(left)
            };
            p.remaining_tokens = t;
            left -= t;
        }
        queue.retain(|p| p.remaining_tokens > 0);
    } else if own_tokens == 0 && waiting_tokens > 0 {
        // Someone else's backlog: assume it is served first.
        queue.insert(
            0,
            WaitingPrompt {
                arrival_ms: now_ms - crate::step::NO_DEADLINE_MS,
                deadline_ms: None,
                remaining_tokens: waiting_tokens,
            },
        );
    } else if waiting_tokens == 0 {
        queue.clear();
    }
    EngineSnapshot {
        url: view.url,
        available: view.available,
        step,
        limits: view.limits,
        slo_aware,
        decoding,
        context_tokens,
        tightest_tpot_ms: tightest,
        queue,
        kv_usage,
        decode_step_ms: view
            .report
            .and_then(|r| r.decode_step_ms)
            .filter(|m| m.is_finite() && *m > 0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(report: Option<&'a EngineReport>, prompts: &'a [WaitingPrompt]) -> EngineView<'a> {
        EngineView {
            url: "e",
            available: true,
            report,
            at_report: CallerCounts::default(),
            now: CallerCounts::default(),
            prompts,
            tightest_tpot_ms: None,
            metrics: None,
            fallback_step: StepModel::default(),
            limits: StepLimits::default(),
        }
    }

    fn prompt(arrival: f64, deadline: Option<f64>, tokens: u64) -> WaitingPrompt {
        WaitingPrompt {
            arrival_ms: arrival,
            deadline_ms: deadline,
            remaining_tokens: tokens,
        }
    }

    #[test]
    fn report_plus_sends_since_no_double_counting() {
        let r = EngineReport {
            running: 10,
            waiting_prefill_tokens: 1000,
            context_tokens: 10_000,
            tightest_tpot_ms: Some(40.0),
            decode_step_ms: Some(12.0),
            ..Default::default()
        };
        let mut v = view(Some(&r), &[]);
        // When the report came, the caller had 8 decoding and 600 tokens queued there; since, it sent 2 more
        // sequences, one finished, and it sent a 500-token prompt; 3 sequences are headed there.
        v.at_report = CallerCounts {
            decoding: 8,
            pending_decodes: 0,
            prefill_tokens: 600,
        };
        v.now = CallerCounts {
            decoding: 9,
            pending_decodes: 3,
            prefill_tokens: 1100,
        };
        v.tightest_tpot_ms = Some(30.0);
        let s = engine_snapshot(&v, 0.0);
        assert!(s.slo_aware);
        assert_eq!(s.decoding, 10 + 1 + 3);
        assert_eq!(s.context_tokens, 10_000 + 4 * 1000);
        // The 600 tokens the report counted are not added again: 1000 + 500.
        assert_eq!(s.queued_tokens(), 1500);
        assert_eq!(s.tightest_tpot_ms, Some(30.0));
        assert_eq!(s.decode_step_ms, Some(12.0));
        // The caller's finishes since the report are taken off, never below zero.
        v.now.decoding = 0;
        v.now.prefill_tokens = 0;
        v.now.pending_decodes = 0;
        let s = engine_snapshot(&v, 0.0);
        assert_eq!((s.decoding, s.queued_tokens()), (2, 400));
        v.at_report.decoding = 100;
        assert_eq!(engine_snapshot(&v, 0.0).decoding, 0);
    }

    #[test]
    fn prompts_are_ordered_edf_and_scaled_to_the_reported_backlog() {
        let r = EngineReport {
            waiting_prefill_tokens: 300,
            ..Default::default()
        };
        let prompts = [
            prompt(0.0, Some(900.0), 100),
            prompt(5.0, Some(500.0), 100),
            prompt(1.0, None, 100),
        ];
        let mut v = view(Some(&r), &prompts);
        v.now.prefill_tokens = 300;
        v.at_report.prefill_tokens = 300;
        let s = engine_snapshot(&v, 0.0);
        let dl: Vec<_> = s.queue.iter().map(|p| p.deadline_ms).collect();
        assert_eq!(dl, [Some(500.0), Some(900.0), None]);
        // The engine says only 150 are left: each shrinks in proportion.
        let r2 = EngineReport {
            waiting_prefill_tokens: 150,
            ..r
        };
        v.report = Some(&r2);
        let s = engine_snapshot(&v, 0.0);
        assert_eq!(s.queued_tokens(), 150);
        assert!(s.queue.iter().all(|p| p.remaining_tokens == 50));
        // Without a report: FIFO, the caller's own counts.
        v.report = None;
        let s = engine_snapshot(&v, 0.0);
        assert!(!s.slo_aware);
        let arr: Vec<_> = s.queue.iter().map(|p| p.arrival_ms).collect();
        assert_eq!(arr, [0.0, 1.0, 5.0]);
        assert_eq!(s.queued_tokens(), 300);
    }

    #[test]
    fn unknown_backlog_goes_first_and_metrics_raise_the_batch() {
        let r = EngineReport {
            waiting_prefill_tokens: 700,
            ..Default::default()
        };
        let s = engine_snapshot(&view(Some(&r), &[]), 50.0);
        assert_eq!(s.queue.len(), 1);
        assert_eq!(s.queued_tokens(), 700);
        let mut v = view(None, &[]);
        v.now.decoding = 2;
        v.metrics = Some(MetricsLoad {
            running: 5,
            waiting: 0,
            kv_usage: Some(0.5),
        });
        let s = engine_snapshot(&v, 0.0);
        assert_eq!((s.decoding, s.kv_usage), (5, Some(0.5)));
    }
}
