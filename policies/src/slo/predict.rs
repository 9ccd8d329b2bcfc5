//! Predicting TTFT/TPOT per placement and choosing one.

use super::{AdmissionMode, Budget, DecodeLoad, PrefillLoad, SloPolicyConfig, SloRequest};

/// Where a request runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Prefill on `prefill`, decode on `decode` (indices into the snapshots).
    Disaggregated { prefill: usize, decode: usize },
    /// The decode worker prefills the prompt itself.
    Local { decode: usize },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    pub ttft_ms: f64,
    pub tpot_ms: f64,
    /// min over the budget's targets of `(target − predicted) / target`;
    /// ≥ 0 means the prediction meets every target. `+∞` without targets.
    pub slack: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    Admit {
        placement: Placement,
        prediction: Prediction,
    },
    /// No placement is predicted to meet the budget (or none is available).
    Reject {
        retry_after_ms: f64,
        best: Option<Prediction>,
    },
}

fn slack(budget: &Budget, ttft_ms: f64, tpot_ms: f64) -> f64 {
    let mut s = f64::INFINITY;
    if let Some(t) = budget.ttft_ms.filter(|t| *t > 0.0) {
        s = s.min((t - ttft_ms) / t);
    }
    if let Some(t) = budget.tpot_ms.filter(|t| *t > 0.0) {
        s = s.min((t - tpot_ms) / t);
    }
    s
}

fn ms_for(tokens: u64, tokens_per_s: f64) -> f64 {
    if tokens_per_s > 0.0 {
        tokens as f64 / tokens_per_s * 1000.0
    } else {
        f64::INFINITY
    }
}

/// Chooses a placement for `req`, or rejects it.
pub fn decide(
    cfg: &SloPolicyConfig,
    req: &SloRequest,
    prefills: &[PrefillLoad<'_>],
    decodes: &[DecodeLoad<'_>],
) -> Decision {
    let mut best: Option<(Placement, Prediction)> = None;
    let mut consider = |placement: Placement, p: Prediction| {
        let better = match &best {
            None => true,
            Some((_, b)) => {
                p.slack > b.slack
                    || (p.slack == b.slack && p.ttft_ms + p.tpot_ms < b.ttft_ms + b.tpot_ms)
            }
        };
        if better {
            best = Some((placement, p));
        }
    };
    for (di, d) in decodes.iter().enumerate().filter(|(_, d)| d.available) {
        // The batch this request will meet when it reaches the decoder.
        let batch = (d.active + d.pending + 1) as f64;
        let tpot = d.tpot.predict(batch);
        // A worker listed in both pools never hands off to itself: that is the local path plus a copy.
        for (pi, p) in prefills
            .iter()
            .enumerate()
            .filter(|(_, p)| p.available && p.url != d.url)
        {
            let ttft = ms_for(p.queued_tokens + req.prompt_tokens, p.tokens_per_s) + cfg.handoff_ms;
            consider(
                Placement::Disaggregated {
                    prefill: pi,
                    decode: di,
                },
                Prediction {
                    ttft_ms: ttft,
                    tpot_ms: tpot,
                    slack: slack(&req.budget, ttft, tpot),
                },
            );
        }
        let local_allowed = cfg.conditional_disaggregation || prefills.iter().all(|p| !p.available);
        if local_allowed && req.prompt_tokens <= cfg.local_prefill_max_tokens {
            // Prefilling here stalls this worker's decode steps: the stall is
            // paid by every sequence in the batch, spread over our output.
            let own = ms_for(req.prompt_tokens, d.local_prefill_tokens_per_s);
            let queue = ms_for(d.local_queued_tokens, d.local_prefill_tokens_per_s);
            let ttft = queue + own + d.tpot.predict(batch);
            let interference = own / req.output_tokens.max(1) as f64;
            let tpot_local = tpot + interference;
            consider(
                Placement::Local { decode: di },
                Prediction {
                    ttft_ms: ttft,
                    tpot_ms: tpot_local,
                    slack: slack(&req.budget, ttft, tpot_local),
                },
            );
        }
    }
    match best {
        None => Decision::Reject {
            retry_after_ms: cfg.min_retry_after_ms,
            best: None,
        },
        Some((placement, prediction)) => {
            if cfg.admission == AdmissionMode::Off || prediction.slack >= cfg.min_slack {
                Decision::Admit {
                    placement,
                    prediction,
                }
            } else {
                // How late the best placement is predicted to be is a fair
                // estimate of how long the backlog needs to drain.
                let late = req
                    .budget
                    .ttft_ms
                    .map_or(0.0, |t| (prediction.ttft_ms - t).max(0.0));
                Decision::Reject {
                    retry_after_ms: late.max(cfg.min_retry_after_ms),
                    best: Some(prediction),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slo::TpotFit;

    fn prefill(url: &str, queued: u64) -> PrefillLoad<'_> {
        PrefillLoad {
            url,
            available: true,
            queued_tokens: queued,
            tokens_per_s: 10_000.0,
        }
    }

    fn decode(url: &str, active: u64) -> DecodeLoad<'_> {
        DecodeLoad {
            url,
            available: true,
            active,
            pending: 0,
            tpot: TpotFit::new(10.0, 1.0),
            local_prefill_tokens_per_s: 10_000.0,
            local_queued_tokens: 0,
        }
    }

    fn req(prompt: u64, ttft: f64, tpot: f64) -> SloRequest {
        SloRequest {
            prompt_tokens: prompt,
            output_tokens: 128,
            budget: Budget {
                ttft_ms: Some(ttft),
                tpot_ms: Some(tpot),
            },
        }
    }

    #[test]
    fn a_worker_in_both_pools_is_not_paired_with_itself() {
        // Two engines serving both phases: long prompts go across, never prefill-then-pull on one worker.
        let cfg = SloPolicyConfig {
            local_prefill_max_tokens: 0,
            ..Default::default()
        };
        let ps = [prefill("a", 0), prefill("b", 50_000)];
        let ds = [decode("a", 0), decode("b", 40)];
        match decide(&cfg, &req(2000, 10_000.0, 100.0), &ps, &ds) {
            Decision::Admit { placement, .. } => assert_eq!(
                placement,
                Placement::Disaggregated {
                    prefill: 0,
                    decode: 1
                }
            ),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn picks_the_pair_with_most_slack() {
        let cfg = SloPolicyConfig {
            conditional_disaggregation: false,
            ..Default::default()
        };
        let ps = [prefill("p0", 20_000), prefill("p1", 0)];
        let ds = [decode("d0", 30), decode("d1", 2)];
        match decide(&cfg, &req(2000, 500.0, 50.0), &ps, &ds) {
            Decision::Admit {
                placement,
                prediction,
            } => {
                assert_eq!(
                    placement,
                    Placement::Disaggregated {
                        prefill: 1,
                        decode: 1
                    }
                );
                // 2000 tokens at 10k tok/s + 2 ms hand-off.
                assert!((prediction.ttft_ms - 202.0).abs() < 1e-9);
                assert!((prediction.tpot_ms - 13.0).abs() < 1e-9);
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn rejects_early_when_no_placement_meets_the_budget() {
        let cfg = SloPolicyConfig::default();
        let ps = [prefill("p0", 100_000)];
        let ds = [decode("d0", 0)];
        match decide(&cfg, &req(4000, 500.0, 50.0), &ps, &ds) {
            Decision::Reject {
                retry_after_ms,
                best,
            } => {
                let b = best.unwrap();
                assert!(b.slack < 0.0);
                assert!((retry_after_ms - (b.ttft_ms - 500.0)).abs() < 1e-9);
            }
            v => panic!("{v:?}"),
        }
        // With admission off it is placed anyway.
        let off = SloPolicyConfig {
            admission: AdmissionMode::Off,
            ..cfg
        };
        assert!(matches!(
            decide(&off, &req(4000, 500.0, 50.0), &ps, &ds),
            Decision::Admit { .. }
        ));
    }

    #[test]
    fn short_prompts_prefill_locally_when_the_prefill_pool_is_busy() {
        let cfg = SloPolicyConfig::default();
        let ps = [prefill("p0", 5_000)]; // 500 ms queue
        let ds = [decode("d0", 4)];
        match decide(&cfg, &req(100, 300.0, 50.0), &ps, &ds) {
            Decision::Admit { placement, .. } => {
                assert_eq!(placement, Placement::Local { decode: 0 })
            }
            v => panic!("{v:?}"),
        }
        // Long prompts never take the local path.
        match decide(&cfg, &req(2000, 3000.0, 50.0), &ps, &ds) {
            Decision::Admit { placement, .. } => {
                assert!(matches!(placement, Placement::Disaggregated { .. }))
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn pending_prefills_count_towards_the_decode_batch() {
        let cfg = SloPolicyConfig {
            conditional_disaggregation: false,
            ..Default::default()
        };
        let ps = [prefill("p0", 0)];
        let mut busy = decode("d0", 2);
        busy.pending = 30;
        let ds = [busy, decode("d1", 10)];
        match decide(&cfg, &req(10, 500.0, 50.0), &ps, &ds) {
            Decision::Admit { placement, .. } => {
                assert_eq!(
                    placement,
                    Placement::Disaggregated {
                        prefill: 0,
                        decode: 1
                    }
                )
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn nothing_available_is_a_reject_not_a_panic() {
        let cfg = SloPolicyConfig::default();
        let mut p = prefill("p0", 0);
        p.available = false;
        let mut d = decode("d0", 0);
        d.available = false;
        assert!(matches!(
            decide(&cfg, &req(10, 1.0, 1.0), &[p], &[d]),
            Decision::Reject { best: None, .. }
        ));
        assert!(matches!(
            decide(&cfg, &req(10, 1.0, 1.0), &[], &[]),
            Decision::Reject { .. }
        ));
    }

    #[test]
    fn no_budget_means_infinite_slack_and_lowest_latency() {
        let cfg = SloPolicyConfig::default();
        let ps = [prefill("p0", 50_000), prefill("p1", 0)];
        let ds = [decode("d0", 0)];
        let r = SloRequest {
            prompt_tokens: 1000,
            output_tokens: 10,
            budget: Budget::default(),
        };
        match decide(&cfg, &r, &ps, &ds) {
            Decision::Admit {
                placement,
                prediction,
            } => {
                assert!(prediction.slack.is_infinite());
                assert_ne!(
                    placement,
                    Placement::Disaggregated {
                        prefill: 0,
                        decode: 0
                    }
                );
            }
            v => panic!("{v:?}"),
        }
    }
}
