use super::*;
use crate::slo::AdmissionMode;
use crate::step::{StepLimits, StepModel};

fn model() -> StepModel {
    StepModel {
        fixed_ms: 10.0,
        per_seq_ms: 0.5,
        per_prefill_token_ms: 0.05,
        per_kctx_ms: 0.0,
    }
}

/// An idle engine that reports its state (EDF, TPOT-safe chunks).
fn engine(url: &str) -> EngineSnapshot<'_> {
    EngineSnapshot {
        url,
        available: true,
        step: model(),
        limits: StepLimits::default(),
        slo_aware: true,
        decoding: 0,
        context_tokens: 0,
        tightest_tpot_ms: None,
        queue: Vec::new(),
        kv_usage: None,
        decode_step_ms: None,
    }
}

fn decoding(url: &str, seqs: u64, tightest: f64) -> EngineSnapshot<'_> {
    EngineSnapshot {
        decoding: seqs,
        tightest_tpot_ms: Some(tightest),
        ..engine(url)
    }
}

/// Waiting prompts; without a deadline they are someone else's backlog, served first (as
/// [`crate::slo::engine_snapshot`] puts it).
fn backlog(tokens: u64, deadline_ms: Option<f64>) -> WaitingPrompt {
    WaitingPrompt {
        arrival_ms: -crate::step::NO_DEADLINE_MS,
        deadline_ms,
        remaining_tokens: tokens,
    }
}

fn req(prompt: u64, out: u64, ttft: f64, tpot: f64) -> SloRequest {
    SloRequest {
        prompt_tokens: prompt,
        output_tokens: out,
        budget: Budget {
            ttft_ms: Some(ttft),
            tpot_ms: Some(tpot),
        },
        arrival_ms: 0.0,
    }
}

/// No tolerance: budgets are exact in these tests.
fn strict() -> SloPolicyConfig {
    SloPolicyConfig {
        min_slack: 0.0,
        ..Default::default()
    }
}

fn admitted(d: Decision) -> (Placement, Prediction) {
    match d {
        Decision::Admit {
            placement,
            prediction,
        } => (placement, prediction),
        v => panic!("{v:?}"),
    }
}

#[test]
fn a_placement_that_would_break_in_flight_budgets_is_refused_even_when_it_maximizes_the_new_requests_slack(
) {
    let cfg = strict();
    // `a`: 24 sequences decoding at 22 ms a step, the tightest of them allowed 22 ms: one more breaks it.
    // `b`: idle but with 8000 tokens of someone else's prompts to prefill first.
    let a = decoding("a", 24, 22.0);
    let mut b = engine("b");
    b.queue.push(backlog(8000, None));
    let r = req(100, 100, 1000.0, 100.0);
    let (_, on_a) = match decide(&cfg, &r, &[], std::slice::from_ref(&a), 0.0) {
        Decision::Reject { best: Some(p), .. } => ((), p),
        v => panic!("{v:?}"),
    };
    assert!(!on_a.harmless);
    let (_, on_b) = admitted(decide(&cfg, &r, &[], std::slice::from_ref(&b), 0.0));
    assert!(
        on_a.slack > on_b.slack,
        "`a` is the new request's best: {on_a:?} vs {on_b:?}"
    );
    let (placement, p) = admitted(decide(&cfg, &r, &[], &[a, b], 0.0));
    assert_eq!(placement, Placement::Local { decode: 1 });
    assert!(p.harmless && p.slack >= 0.0);
}

#[test]
fn colocation_wins_when_it_suffices() {
    let cfg = strict();
    let ps = [engine("p")];
    let ds = [decoding("d", 10, 100.0)];
    let (placement, p) = admitted(decide(&cfg, &req(200, 100, 1000.0, 100.0), &ps, &ds, 0.0));
    assert_eq!(placement, Placement::Local { decode: 0 });
    // Its prefill rides on the batch's steps: one 200-token step.
    assert!(
        (p.ttft_ms - (10.0 + 11.0 * 0.5 + 200.0 * 0.05)).abs() < 1e-9,
        "{p:?}"
    );
}

#[test]
fn the_prefill_moves_across_when_the_decode_engines_tpot_would_break() {
    let cfg = strict();
    let ps = [engine("p")];
    // An engine without reports prefills a prompt in one step that stalls its batch: 500 tokens spread over 10
    // output tokens add 2.5 ms a token, past the tightest 17 ms (15 ms now).
    let mut fifo = decoding("d", 10, 17.0);
    fifo.slo_aware = false;
    let r = req(500, 10, 1000.0, 100.0);
    let (placement, _) = admitted(decide(&cfg, &r, &ps, std::slice::from_ref(&fifo), 0.0));
    assert_eq!(
        placement,
        Placement::Disaggregated {
            prefill: 0,
            decode: 0
        }
    );
    // Alone, colocation would be refused for what it does to the batch, not for the request itself.
    match decide(&cfg, &r, &[], std::slice::from_ref(&fifo), 0.0) {
        Decision::Reject { best: Some(p), .. } => assert!(!p.harmless && p.slack > 0.0, "{p:?}"),
        v => panic!("{v:?}"),
    }
    // An engine that chunks TPOT-safely keeps its batch's budget, but its chunks are small when the batch is
    // near its limit: a 2000-token prompt would take seconds there, so it is prefilled elsewhere.
    let busy = decoding("d", 40, 35.0);
    let r = req(2000, 100, 1000.0, 100.0);
    let (placement, p) = admitted(decide(&cfg, &r, &ps, std::slice::from_ref(&busy), 0.0));
    assert!(
        matches!(placement, Placement::Disaggregated { .. }),
        "{p:?}"
    );
    match decide(&cfg, &r, &[], std::slice::from_ref(&busy), 0.0) {
        Decision::Reject { best: Some(p), .. } => assert!(p.ttft_ms > 1000.0, "{p:?}"),
        v => panic!("{v:?}"),
    }
}

#[test]
fn rejects_only_when_nothing_is_admissible() {
    let cfg = strict();
    let mut late = engine("late");
    late.queue.push(backlog(100_000, None));
    let r = req(1000, 100, 500.0, 50.0);
    match decide(&cfg, &r, &[], std::slice::from_ref(&late), 0.0) {
        Decision::Reject {
            retry_after_ms,
            best: Some(b),
        } => {
            assert!(b.slack < 0.0 && b.harmless);
            assert!((retry_after_ms - (b.ttft_ms - 500.0)).abs() < 1e-6);
        }
        v => panic!("{v:?}"),
    }
    // One admissible engine is enough.
    let (placement, _) = admitted(decide(&cfg, &r, &[], &[late.clone(), engine("idle")], 0.0));
    assert_eq!(placement, Placement::Local { decode: 1 });
    // With admission off it is placed anyway, on the least bad.
    let off = SloPolicyConfig {
        admission: AdmissionMode::Off,
        ..cfg
    };
    assert!(matches!(
        decide(&off, &r, &[], std::slice::from_ref(&late), 0.0),
        Decision::Admit { .. }
    ));
    // Requests without targets are never rejected, even where they harm.
    let harmed = decoding("h", 24, 22.0);
    let batch = SloRequest {
        budget: Budget::default(),
        ..r
    };
    assert!(matches!(
        decide(&cfg, &batch, &[], &[harmed], 0.0),
        Decision::Admit { .. }
    ));
}

#[test]
fn a_prompt_jumping_the_edf_queue_may_not_make_a_waiting_one_late() {
    let cfg = SloPolicyConfig {
        harm_weight: 0.0,
        ..strict()
    };
    let limits = StepLimits {
        ttft_share: 1.0,
        ..StepLimits::default()
    };
    // p0: a 3000-token prompt due in 200 ms, on time alone (171 ms); the new one (due in 150 ms) goes first and
    // would make it late. p1 is slower but has nothing waiting.
    let mut p0 = EngineSnapshot {
        limits,
        ..engine("p0")
    };
    p0.queue.push(backlog(3000, Some(200.0)));
    let p1 = EngineSnapshot {
        limits,
        step: StepModel {
            per_prefill_token_ms: 0.07,
            ..model()
        },
        ..engine("p1")
    };
    let ds = [engine("d")];
    let cfg_pd = SloPolicyConfig {
        conditional_disaggregation: false,
        ..cfg
    };
    let r = req(1000, 100, 150.0, 100.0);
    let (placement, _) = admitted(decide(&cfg_pd, &r, &[p0.clone(), p1.clone()], &ds, 0.0));
    assert_eq!(
        placement,
        Placement::Disaggregated {
            prefill: 1,
            decode: 0
        }
    );
    // A later deadline queues behind it and harms nobody.
    let r = req(1000, 100, 400.0, 100.0);
    let (placement, p) = admitted(decide(&cfg_pd, &r, &[p0, p1], &ds, 0.0));
    assert!(p.harmless);
    assert!(matches!(placement, Placement::Disaggregated { .. }));
}

#[test]
fn predictions_follow_the_step_model() {
    let cfg = SloPolicyConfig {
        conditional_disaggregation: false,
        ..strict()
    };
    let r = SloRequest {
        prompt_tokens: 1000,
        output_tokens: 100,
        budget: Budget::default(),
        arrival_ms: 0.0,
    };
    // Prefill alone: one 1000-token step; hand-off; the decode engine's first step.
    let (_, p) = admitted(decide(&cfg, &r, &[engine("p")], &[engine("d")], 0.0));
    assert!((p.ttft_ms - (60.5 + 2.0 + 10.5)).abs() < 1e-9, "{p:?}");
    assert!((p.tpot_ms - 10.5).abs() < 1e-9, "{p:?}");
    assert!(p.slack.is_infinite());
    // Time already spent counts.
    let r = SloRequest {
        arrival_ms: -40.0,
        ..r
    };
    let (_, p) = admitted(decide(&cfg, &r, &[engine("p")], &[engine("d")], 0.0));
    assert!((p.ttft_ms - 113.0).abs() < 1e-9, "{p:?}");
}

#[test]
fn a_worker_in_both_pools_is_not_paired_with_itself() {
    let cfg = SloPolicyConfig {
        conditional_disaggregation: false,
        ..Default::default()
    };
    let mut b = engine("b");
    b.queue.push(backlog(50_000, None));
    let ps = [engine("a"), b.clone()];
    let ds = [engine("a"), b];
    let (placement, _) = admitted(decide(
        &cfg,
        &req(2000, 100, 10_000.0, 100.0),
        &ps,
        &ds,
        0.0,
    ));
    match placement {
        Placement::Disaggregated { prefill, decode } => assert_ne!(prefill, decode),
        p => panic!("{p:?}"),
    }
}

#[test]
fn full_kv_and_unavailable_engines_take_nothing() {
    let cfg = strict();
    let mut full = engine("full");
    full.kv_usage = Some(0.99);
    let r = req(10, 10, 1000.0, 100.0);
    assert!(matches!(
        decide(&cfg, &r, &[], &[full.clone()], 0.0),
        Decision::Reject { .. }
    ));
    let (placement, _) = admitted(decide(&cfg, &r, &[], &[full, engine("ok")], 0.0));
    assert_eq!(placement, Placement::Local { decode: 1 });
    let mut gone = engine("gone");
    gone.available = false;
    assert!(matches!(
        decide(&cfg, &r, &[gone.clone()], &[gone], 0.0),
        Decision::Reject { best: None, .. }
    ));
    assert!(matches!(
        decide(&cfg, &r, &[], &[], 0.0),
        Decision::Reject { best: None, .. }
    ));
}

#[test]
fn long_prompts_are_not_colocated_on_engines_that_stall_their_batch() {
    let cfg = SloPolicyConfig::default();
    let mut fifo = engine("d");
    fifo.slo_aware = false;
    let (placement, _) = admitted(decide(
        &cfg,
        &req(2000, 100, 3000.0, 100.0),
        &[engine("p")],
        &[fifo.clone()],
        0.0,
    ));
    assert!(matches!(placement, Placement::Disaggregated { .. }));
    // Without a prefill pool there is nothing else.
    let (placement, _) = admitted(decide(
        &cfg,
        &req(2000, 100, 3000.0, 100.0),
        &[],
        &[fifo],
        0.0,
    ));
    assert_eq!(placement, Placement::Local { decode: 0 });
}

#[test]
fn prompts_go_where_their_own_wait_is_shortest_when_both_engines_would_do() {
    // Both engines decode alike and both placements meet every budget; the first has a backlog of prompts due
    // before this one (each still on time), so this prompt would wait behind it there.
    let cfg = strict();
    let mut backed_up = decoding("a", 20, 50.0);
    for _ in 0..4 {
        backed_up.queue.push(backlog(2000, Some(5_000.0)));
    }
    let idle = decoding("b", 20, 50.0);
    let ds = [backed_up, idle];
    let r = req(200, 100, 10_000.0, 50.0);
    let (placement, p) = admitted(decide(&cfg, &r, &[], &ds, 0.0));
    assert_eq!(placement, Placement::Local { decode: 1 }, "{p:?}");
    // On the backed-up engine its TTFT would have been the backlog's 8000 tokens later.
    let alone = admitted(decide(&cfg, &r, &[], &ds[..1], 0.0)).1;
    assert!(alone.ttft_ms > p.ttft_ms + 8000.0 * 0.05, "{alone:?} {p:?}");
}

#[test]
fn tpot_follows_what_the_engines_decoding_steps_take_now() {
    // 10 sequences decode in 15 ms steps by the model; the engine says its decoding steps took 24 ms lately
    // (prefill of arriving prompts between them): the new request's TPOT is that plus its own share.
    let cfg = strict();
    let mut e = decoding("d", 10, 100.0);
    let r = req(100, 100, 10_000.0, 100.0);
    let (_, model_only) = admitted(decide(&cfg, &r, &[], std::slice::from_ref(&e), 0.0));
    e.decode_step_ms = Some(24.0);
    let (_, p) = admitted(decide(&cfg, &r, &[], std::slice::from_ref(&e), 0.0));
    // One more sequence (0.5 ms) and its own 100-token prefill spread over 100 tokens (0.05 ms).
    assert!((p.tpot_ms - (24.0 + 0.5 + 0.05)).abs() < 1e-9, "{p:?}");
    assert!(model_only.tpot_ms < 16.0, "{model_only:?}");
    // An engine that chunks TPOT-safely still keeps the tightest budget's step limit.
    let tight = EngineSnapshot {
        decode_step_ms: Some(40.0),
        ..decoding("t", 10, 30.0)
    };
    let (_, p) = admitted(decide(
        &cfg,
        &req(100, 100, 10_000.0, 100.0),
        &[],
        &[tight],
        0.0,
    ));
    assert!((p.tpot_ms - 27.0).abs() < 1e-9, "{p:?}");
}
