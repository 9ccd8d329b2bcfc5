//! The SLO plan on a tiny CPU model, stepped by hand (no scheduler thread): what each step holds is asserted, never
//! how long it took. The step-time model is frozen (`frozen_model`) so budgets do not depend on measured time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc as tmpsc;

use super::*;

/// The planner's model in these tests (the policy's default prior).
fn model() -> StepModel {
    StepModel::default()
}

fn sched(cfg: EngineConfig) -> Scheduler {
    let backend = Backend::cpu(
        crate::engine::tests::tiny_model(),
        cfg.block_size,
        cfg.num_blocks,
    );
    let mut s = Scheduler::new(
        backend,
        Arc::new(crate::tokenizer::tests::tiny()),
        cfg,
        Arc::new(Stats::default()),
    );
    s.frozen_model = Some(model());
    s
}

fn prompt(seed: u32, n: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|i| 3 + (i * 31 + seed * 17) % 250)
        .collect()
}

fn req(prompt: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    crate::engine::tests::greedy(prompt, max_tokens)
}

/// Queues request `id`; the receiver must be kept (a closed one counts as a client gone).
fn add(
    s: &mut Scheduler,
    id: u64,
    r: GenerateRequest,
    slo: SeqSlo,
) -> tmpsc::UnboundedReceiver<Event> {
    let (events, rx) = tmpsc::unbounded_channel();
    s.add(Admission {
        id,
        req: r,
        slo,
        events,
    });
    rx
}

fn due_in(ms: i64) -> SeqSlo {
    let now = Instant::now();
    let at = if ms >= 0 {
        now + Duration::from_millis(ms as u64)
    } else {
        now.checked_sub(Duration::from_millis((-ms) as u64))
            .unwrap_or(now)
    };
    SeqSlo {
        ttft_ms: Some(ms.max(1) as f64),
        first_token_due: Some(at),
        ..Default::default()
    }
}

/// Steps until nothing is left; returns each request's first step (index), and every step's plan.
fn run(s: &mut Scheduler) -> (Vec<u64>, Vec<Vec<(u64, usize)>>) {
    let mut first = Vec::new();
    let mut plans = Vec::new();
    for _ in 0..1000 {
        if !s.step() {
            break;
        }
        for &(id, _) in &s.last_plan {
            if !first.contains(&id) {
                first.push(id);
            }
        }
        plans.push(s.last_plan.clone());
    }
    assert!(s.running.is_empty() && s.waiting.is_empty(), "all served");
    (first, plans)
}

#[test]
fn prompts_are_prefilled_earliest_deadline_first_and_lost_causes_last() {
    let order = |slo_scheduling: bool| {
        let mut s = sched(EngineConfig {
            max_batched_tokens: 8,
            slo_scheduling,
            ..Default::default()
        });
        let _rx = [
            // Queued in this order; due in 20 s, 1 s, none (= arrival + 10 s), already past.
            add(&mut s, 1, req(prompt(1, 20), 2), due_in(20_000)),
            add(&mut s, 2, req(prompt(2, 20), 2), due_in(1_000)),
            add(&mut s, 3, req(prompt(3, 20), 2), SeqSlo::default()),
            add(&mut s, 4, req(prompt(4, 20), 2), due_in(-1_000)),
        ];
        let (first, plans) = run(&mut s);
        (first, plans[0].clone())
    };
    let (first, step0) = order(true);
    assert_eq!(first, [2, 3, 1, 4], "EDF, the lost cause last");
    assert_eq!(
        step0,
        [(2, 8)],
        "the later request with the earlier deadline first"
    );
    // Off: FIFO, whatever the budgets.
    assert_eq!(order(false).0, [1, 2, 3, 4]);
}

#[test]
fn a_tight_tpot_shrinks_the_prefill_chunk_and_none_leaves_the_fixed_budget() {
    // Request 1 decodes (its first token came out of step 1) while request 2's 200-token prompt waits.
    let second_step = |tpot_ms: Option<f64>| {
        let mut s = sched(EngineConfig::default());
        let slo = SeqSlo {
            tpot_ms,
            ..Default::default()
        };
        let _a = add(&mut s, 1, req(prompt(1, 8), 50), slo);
        assert!(s.step());
        assert_eq!(s.last_plan, [(1, 8)]);
        let _b = add(&mut s, 2, req(prompt(2, 200), 4), SeqSlo::default());
        assert!(s.step());
        let plan = s.last_plan.clone();
        assert_eq!(plan[0], (1, 1), "the decode token first");
        let chunk = plan[1].1;
        (s, chunk)
    };
    // 20 ms TPOT, nothing banked (one token so far): the step may take 0.9 × 20 = 18 ms; with the model's
    // 5 + 0.5 × 2 seqs + 0.05 × 9/1000 ms, that leaves room for 23 prefill tokens at 0.5 ms.
    let (s, tight) = second_step(Some(20.0));
    let limits = s.limits;
    let expected = prefill_budget(
        &model(),
        &limits,
        &StepLoad {
            decode: StepShape {
                seqs: 1,
                prefill_tokens: 0,
                context_tokens: 9,
            },
            tpot_limit_ms: Some(tpot_step_limit_ms(&limits, 20.0, 0.0)),
            ttft_budget_ms: None,
        },
    );
    assert_eq!((tight, expected), (23, 23));
    // A TPOT so tight that decoding alone fills it: the minimum, so the prompt still moves.
    assert_eq!(second_step(Some(1.0)).1, limits.min_prefill_tokens as usize);
    // A loose TPOT, or none at all (the FIFO plan): the whole prompt fits the fixed 512-token budget.
    assert_eq!(second_step(Some(1000.0)).1, 200);
    assert_eq!(second_step(None).1, 200);
}

#[test]
fn a_ttft_budget_bounds_the_step_that_prefills_it() {
    // Alone, a 200-token prompt with a 100 ms TTFT budget may take 0.25 × 100 = 25 ms per step: 39 tokens after
    // the model's 5 + 0.5 ms.
    let mut s = sched(EngineConfig::default());
    let slo = SeqSlo {
        ttft_ms: Some(100.0),
        first_token_due: Some(Instant::now() + Duration::from_secs(60)),
        ..Default::default()
    };
    let _rx = add(&mut s, 1, req(prompt(1, 200), 1), slo);
    assert!(s.step());
    let n = ((25.0 - 5.5) / 0.5f64).floor() as usize;
    assert_eq!(s.last_plan, [(1, n)]);
}

#[test]
fn without_budgets_the_slo_plan_is_the_fifo_plan() {
    // The same arrivals (some while others run), chunking and preemption on a small pool, with SLO scheduling on
    // and off: identical steps.
    let plans = |slo_scheduling: bool| {
        let mut s = sched(EngineConfig {
            block_size: 4,
            num_blocks: 14,
            max_batched_tokens: 8,
            slo_scheduling,
            ..Default::default()
        });
        let mut rxs = Vec::new();
        let mut plans = Vec::new();
        for i in 0..5u64 {
            rxs.push(add(
                &mut s,
                i + 1,
                req(prompt(i as u32, 10 + 7 * i as usize), 12),
                SeqSlo::default(),
            ));
            for _ in 0..3 {
                s.step();
                plans.push(s.last_plan.clone());
            }
        }
        let (_, rest) = run(&mut s);
        plans.extend(rest);
        (plans, s.stats.preemptions.load(Ordering::Relaxed))
    };
    let (on, preempted) = plans(true);
    assert!(preempted > 0, "the pool is small enough to preempt");
    assert_eq!(on, plans(false).0);
}

#[test]
fn the_report_counts_decoding_context_and_waiting_prefill() {
    let mut s = sched(EngineConfig {
        max_batched_tokens: 8,
        ..Default::default()
    });
    let slo = SeqSlo {
        tpot_ms: Some(40.0),
        ..Default::default()
    };
    let _a = add(&mut s, 1, req(prompt(1, 6), 50), slo);
    assert!(s.step());
    // 1 decodes (6 prompt tokens + 1 output); 2 is mid-prefill after this step; 3 waits.
    let _b = add(&mut s, 2, req(prompt(2, 20), 4), SeqSlo::default());
    let _c = add(&mut s, 3, req(prompt(3, 30), 4), SeqSlo::default());
    assert!(s.step());
    assert_eq!(s.last_plan, [(1, 1), (2, 7)]);
    s.publish();
    let r = s.stats.report();
    assert_eq!((r.running, r.waiting), (2, 1));
    assert_eq!(r.context_tokens, 8, "request 1: 6 prompt + 2 output tokens");
    assert_eq!(r.waiting_prefill_tokens, 13 + 30);
    assert_eq!(r.tightest_tpot_ms, Some(40.0));
    assert_eq!(r.step, Some(model()));
    assert!(r.kv_usage > 0.0 && r.kv_usage <= 1.0);
    // The second step decoded request 1: its measured time is the recent decoding step time.
    assert!(r.decode_step_ms.is_some_and(|m| m >= 0.0), "{r:?}");
}

#[test]
fn only_steps_that_decode_move_the_decode_step_average() {
    let mut s = sched(EngineConfig::default());
    let _a = add(&mut s, 1, req(prompt(1, 8), 3), SeqSlo::default());
    // The first step only prefills.
    assert!(s.step());
    assert_eq!(s.decode_step_ms, None);
    assert!(s.step());
    assert!(s.decode_step_ms.is_some());
}

#[test]
fn the_fit_observes_every_step() {
    let mut s = sched(EngineConfig::default());
    let _a = add(&mut s, 1, req(prompt(1, 8), 3), SeqSlo::default());
    let (_, plans) = run(&mut s);
    assert_eq!(s.fit.steps(), plans.len() as u64);
    let text = s.stats.render("m");
    assert!(text.contains(&format!(
        "baton:step_duration_seconds_count{{model_name=\"m\",engine=\"0\"}} {}",
        plans.len()
    )));
}

#[test]
fn the_ttft_budget_is_that_of_the_prompts_the_step_reaches() {
    let c = |remaining, ttft_ms| Candidate {
        id: 0,
        waiting: true,
        remaining,
        ttft_ms,
        key: (true, false, 0.0),
    };
    let order = [c(100, Some(800.0)), c(50, None), c(10, Some(200.0))];
    assert_eq!(reached_ttft_budget(&order, 100), Some(800.0));
    assert_eq!(reached_ttft_budget(&order, 150), Some(800.0));
    assert_eq!(reached_ttft_budget(&order, 151), Some(200.0));
    assert_eq!(reached_ttft_budget(&order, 0), None);
}
