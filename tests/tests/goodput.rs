//! Goodput at overload on CPU: the SLO-aware policy with early rejection (and conditional
//! disaggregation) against round_robin, on the same seeded open-loop workload, through the
//! gateway in vLLM PD mode in front of simulated engines (`baton_e2e::sim`) whose step time grows
//! with the prompt tokens prefilled and the decode batch.
//!
//! Goodput = requests/s that streamed to the end within both budgets of their class; a 429 is a
//! miss. `tests/bench/goodput_cpu.rs` runs the same comparison as a rate sweep.

use std::time::Duration;

use baton_e2e::sim::load::{self, Class, RunOptions, Summary, Workload};
use baton_e2e::sim::{LatencyModel, SimEngine, SimHandle, SimRole};
use baton_gateway::config::{GatewayConfig, PdProtocol, PrefillWorker};
use baton_gateway::slo::config::{ClassConfig, SloConfig};
use baton_policies::slo::{AdmissionMode, SloPolicyConfig};
use baton_policies::PolicyKind;

/// Goodput of the SLO-aware setup must be at least this multiple of round_robin's.
/// Observed on a loaded 2-vCPU machine: see docs/BENCHMARKS.md, "Goodput on CPU".
const MARGIN: f64 = 3.0;

const PREFILLS: usize = 1;
const DECODES: usize = 1;

fn classes() -> Vec<Class> {
    vec![
        Class {
            name: "interactive".into(),
            weight: 1.0,
            ttft_ms: 300.0,
            tpot_ms: 25.0,
        },
        Class {
            name: "standard".into(),
            weight: 1.0,
            ttft_ms: 600.0,
            tpot_ms: 40.0,
        },
    ]
}

/// Prefill capacity of one sim engine is ~20k tokens/s, i.e. ~27 req/s of this prompt mix on
/// the prefill pool: 50 req/s is about twice what round_robin can serve.
fn workload() -> Workload {
    let seed = std::env::var("BATON_GOODPUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    Workload {
        seed,
        rate: 50.0,
        requests: 160,
        prompt_tokens: vec![(0.6, 50, 400), (0.4, 1000, 2000)],
        output_tokens: (16, 64),
        classes: classes(),
        chat_fraction: 0.25,
    }
}

fn gateway_config(prefill: &[SimHandle], decode: &[SimHandle], slo_routing: bool) -> GatewayConfig {
    let m = LatencyModel::default();
    let mut c = GatewayConfig {
        port: 0,
        prefill: prefill
            .iter()
            .map(|h| PrefillWorker {
                url: h.url(),
                bootstrap_port: None,
            })
            .collect(),
        decode: decode.iter().map(SimHandle::url).collect(),
        pd_protocol: Some(PdProtocol::Vllm),
        policy: PolicyKind::RoundRobin,
        ..GatewayConfig::default()
    };
    c.retry.initial_backoff_ms = 1;
    c.retry.max_backoff_ms = 5;
    c.health.interval_secs = 3600.0;
    let mut slo = SloConfig {
        classes: classes()
            .into_iter()
            .map(|k| {
                let budget = ClassConfig {
                    ttft_ms: Some(k.ttft_ms),
                    tpot_ms: Some(k.tpot_ms),
                };
                (k.name, budget)
            })
            .collect(),
        default_class: "standard".into(),
        routing: slo_routing,
        policy: SloPolicyConfig {
            admission: AdmissionMode::Reject,
            conditional_disaggregation: true,
            ..SloPolicyConfig::default()
        },
        ..SloConfig::default()
    };
    // The operator's profile of the engines (what the priors are for).
    slo.prior_prefill_tokens_per_s = 1000.0 / m.prefill_ms_per_token;
    slo.prior_tpot_base_ms = m.base_ms;
    slo.prior_tpot_per_seq_ms = m.per_seq_ms;
    c.slo = slo;
    c
}

async fn run_setup(name: &str, slo_routing: bool) -> Summary {
    let mut prefill = Vec::new();
    for _ in 0..PREFILLS {
        prefill.push(SimEngine::new(SimRole::Prefill).spawn().await);
    }
    let mut decode = Vec::new();
    for _ in 0..DECODES {
        decode.push(SimEngine::new(SimRole::Decode).spawn().await);
    }
    let gw = baton_gateway::start(gateway_config(&prefill, &decode, slo_routing))
        .await
        .expect("gateway starts");
    let w = workload();
    let plan = w.plan();
    let results = load::run_open_loop(&gw.url(), &w, &plan, &RunOptions::default()).await;
    let s = load::summarize(&w, &results);
    let local: u64 = decode.iter().map(|d| d.stats().local_prefills).sum();
    println!(
        "{name:>14}: good {}/{} (goodput {:.1} req/s of {:.0}), rejected {}, failed {}, \
         TTFT p50/p99 {:.0}/{:.0} ms, TPOT p50/p99 {:.1}/{:.1} ms, local prefills {local}",
        s.good,
        s.requests,
        s.goodput,
        s.offered_rate,
        s.rejected,
        s.failed,
        s.ttft_p50_ms,
        s.ttft_p99_ms,
        s.tpot_p50_ms,
        s.tpot_p99_ms,
    );
    tokio::time::timeout(Duration::from_secs(5), gw.shutdown())
        .await
        .ok();
    for e in prefill.iter().chain(&decode) {
        e.shutdown();
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slo_policy_with_admission_beats_round_robin_at_overload() {
    let rr = run_setup("round_robin", false).await;
    let slo = run_setup("slo+admission", true).await;
    // The workload is an overload: round_robin cannot serve everyone in budget…
    assert!(rr.attainment < 0.9, "not an overload: {rr:?}");
    // …and the SLO setup rejects some requests early instead of serving them late.
    assert!(slo.rejected > 0, "{slo:?}");
    let ratio = slo.goodput / rr.goodput.max(1e-9);
    println!("goodput ratio slo/rr = {ratio:.2} (margin {MARGIN})");
    assert!(
        slo.goodput >= rr.goodput * MARGIN,
        "goodput slo {:.1} vs round_robin {:.1} req/s (ratio {ratio:.2} < {MARGIN})\n{slo:?}\n{rr:?}",
        slo.goodput,
        rr.goodput
    );
}
