//! Goodput at overload on CPU: the SLO-aware policy with early rejection (and conditional
//! disaggregation) against round_robin, on the same seeded open-loop workload, through the
//! gateway in vLLM PD mode in front of simulated engines (`baton_e2e::sim`) whose step time grows
//! with the prompt tokens prefilled and the decode batch.
//!
//! Goodput = requests/s that streamed to the end within both budgets of their class; a 429 is a
//! miss. `tests/bench/goodput_cpu.rs` runs the same comparison as a rate sweep.

use std::time::Duration;

use baton_e2e::sim::load::{self, RunOptions, Summary, Workload};
use baton_policies::slo::AdmissionMode;
use baton_policies::PolicyKind;

#[path = "../bench/goodput_setup.rs"]
mod common;

/// Goodput of the SLO-aware setup must be at least this multiple of round_robin's.
/// Observed on a loaded 2-vCPU machine: see docs/BENCHMARKS.md, "Goodput on CPU".
const MARGIN: f64 = 3.0;

const PREFILLS: usize = 1;
const DECODES: usize = 1;

/// About twice what round_robin can serve on one prefill engine.
fn workload() -> Workload {
    let seed = std::env::var("BATON_GOODPUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    common::workload(seed, 50.0, 160)
}

async fn run_setup(name: &str, slo_routing: bool) -> Summary {
    let (prefill, decode) = common::spawn_pools(PREFILLS, DECODES).await;
    let cfg = common::gateway_config(
        &prefill,
        &decode,
        PolicyKind::RoundRobin,
        slo_routing,
        AdmissionMode::Reject,
    );
    let gw = baton_gateway::start(cfg).await.expect("gateway starts");
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
