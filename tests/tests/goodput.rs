//! Goodput of the SLO-aware gateway, in two parts.
//!
//! 1. **On the twin** (`baton_loadgen::twin`, virtual time, deterministic): the SLO setup (engines with SLO
//!    scheduling, the gateway's `policies::slo` placement and admission) against colocated serving (round_robin
//!    and least_load) and a 1P:1D split, on the same seeded workload, with the CPU sim engines' step model. The
//!    ratio of DistServe goodputs is a pure function of the code, so it is asserted exactly as computed, whatever
//!    the machine's load.
//! 2. **Through real sockets** (`baton_e2e::sim` engines behind the gateway in vLLM PD mode): the SLO path runs
//!    end to end and every request ends, streamed to `[DONE]` with all its tokens. No timing is asserted.
//!
//! `tests/bench/goodput_cpu.rs` sweeps the real-socket setups; `baton-bench twin` sweeps the twin.

use std::time::Duration;

use baton_e2e::sim::load::{self, RunOptions};
use baton_e2e::sim::LatencyModel;
use baton_loadgen::metrics::attainment;
use baton_loadgen::slo::Slo;
use baton_loadgen::sweep::distserve_goodput;
use baton_loadgen::twin::run::{requests, SweepPlan, Tokens};
use baton_loadgen::twin::{simulate, FleetConfig, Handoff, Profile, Setup, TwinRequest};
use baton_loadgen::workload::Workload;
use baton_policies::slo::{AdmissionMode, Budget};
use baton_policies::step::StepModel;
use baton_policies::PolicyKind;

#[path = "../bench/goodput_setup.rs"]
mod common;

/// The sim engines' latency model as a step model (no per-context cost).
fn cpu_profile() -> Profile {
    let m = LatencyModel::default();
    Profile::from_model(
        "sim-engine latency model",
        StepModel {
            fixed_ms: m.base_ms,
            per_seq_ms: m.per_seq_ms,
            per_prefill_token_ms: m.prefill_ms_per_token,
            per_kctx_ms: 0.0,
        },
    )
}

fn fleet() -> FleetConfig {
    let mut f = FleetConfig::headline(&cpu_profile(), Handoff::fixed(2.0));
    let t = LatencyModel::default().max_batched_tokens as u64;
    (
        f.colocated_tokens,
        f.prefill_tokens,
        f.decode_tokens,
        f.slo_tokens,
    ) = (t, t, t, t);
    f.timeout_s = 10.0;
    f
}

/// The e2e workload (`goodput_setup.rs`): 60% 50–400-token and 40% 1000–2000-token prompts, 16–64 output tokens,
/// classes interactive (300 ms / 25 ms) and standard (600 ms / 40 ms) alternating.
fn workload(rate: f64, seed: u64) -> Vec<TwinRequest> {
    let w = Workload::parse("mix:uniform:50:400:16:64@0.6,uniform:1000:2000:16:64@0.4").unwrap();
    let plan = SweepPlan {
        setups: vec![],
        workloads: vec![],
        tiers: vec![],
        duration_s: 10.0,
        max_requests: 100_000,
        burstiness: 1.0,
        tokens: Tokens::PerWord(1.0),
        attainment_target: 0.9,
        profile_name: "cpu".into(),
    };
    let classes = common::classes();
    let mut reqs = requests(&w, "goodput", rate, seed, &plan, Budget::default()).unwrap();
    for r in &mut reqs {
        let c = &classes[r.index % classes.len()];
        r.budget = Budget {
            ttft_ms: Some(c.ttft_ms),
            tpot_ms: Some(c.tpot_ms),
        };
    }
    reqs
}

/// Good / sent, each request judged against its own class by the load generator's rule.
fn attained(reqs: &[TwinRequest], records: &[baton_loadgen::record::RequestRecord]) -> f64 {
    let good: usize = reqs
        .iter()
        .zip(records)
        .filter(|(q, r)| {
            let slo = Slo {
                ttft_ms: q.budget.ttft_ms,
                tpot_ms: q.budget.tpot_ms,
                e2el_ms: None,
            };
            attainment(std::slice::from_ref(*r), &slo).0 == 1
        })
        .count();
    good as f64 / reqs.len().max(1) as f64
}

const RATES: [f64; 10] = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0];

/// DistServe goodput (90%) of a setup over [`RATES`], and its attainment per rate.
fn goodput(setup: &Setup, f: &FleetConfig) -> (f64, Vec<f64>) {
    let att: Vec<f64> = RATES
        .iter()
        .enumerate()
        .map(|(i, &rate)| {
            let reqs = workload(rate, 7 + i as u64);
            let out = simulate(f, setup.clone(), &reqs).expect("the twin runs this setup");
            attained(&reqs, &out.records)
        })
        .collect();
    let pts: Vec<(f64, f64)> = RATES.iter().copied().zip(att.iter().copied()).collect();
    (
        distserve_goodput(&pts, 0.9)
            .interpolated_rate
            .unwrap_or(0.0),
        att,
    )
}

/// The SLO setup's DistServe goodput must be at least this multiple of the best other setup's. What the twin
/// computes (deterministic) is printed by the test; the margin leaves room for policy changes, not for noise.
const MARGIN: f64 = 1.2;

#[test]
fn twin_slo_setup_beats_colocated_and_disaggregated_deterministically() {
    let f = fleet();
    let mut rr = f.clone();
    rr.colocated_policy = PolicyKind::RoundRobin;
    let runs = [
        ("colocated round_robin", Setup::Colocated(2), &rr),
        ("colocated least_load", Setup::Colocated(2), &f),
        (
            "disaggregated 1P:1D",
            Setup::Disaggregated {
                prefill: 1,
                decode: 1,
            },
            &f,
        ),
        ("slo", Setup::Slo(2), &f),
    ];
    let results: Vec<(&str, f64, Vec<f64>)> = runs
        .iter()
        .map(|(name, setup, cfg)| {
            let (g, att) = goodput(setup, cfg);
            println!(
                "{name:>22}: goodput {g:6.2} req/s; attainment {:?}",
                att.iter().map(|a| (a * 100.0).round()).collect::<Vec<_>>()
            );
            (*name, g, att)
        })
        .collect();
    // Determinism: the same inputs give the same records.
    let again = goodput(&Setup::Slo(2), &f);
    assert_eq!(again.1, results[3].2);
    let slo = results[3].1;
    let best = results[..3].iter().map(|r| r.1).fold(0.0, f64::max);
    println!("slo / best other = {:.3} (margin {MARGIN})", slo / best);
    assert!(
        slo >= MARGIN * best,
        "slo {slo:.2} req/s vs best other {best:.2} (ratio {:.3} < {MARGIN})",
        slo / best
    );
}

/// Through the gateway's real SLO path (vLLM PD, sim engines on sockets): every request is placed by the SLO
/// policy and streams to the end. Admission is off, so nothing depends on how fast this machine is: a loaded
/// machine makes requests late, never missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_slo_path_serves_every_request_end_to_end() {
    let (prefill, decode) = common::spawn_pools(1, 1).await;
    let cfg = common::gateway_config(
        &prefill,
        &decode,
        PolicyKind::RoundRobin,
        true,
        AdmissionMode::Off,
    );
    let gw = baton_gateway::start(cfg).await.expect("gateway starts");
    let w = common::workload(7, 20.0, 40);
    let plan = w.plan();
    let opts = RunOptions {
        // Generous: on a loaded machine a request is late, not abandoned.
        give_up_grace: Duration::from_secs(120),
        ..RunOptions::default()
    };
    let results = load::run_open_loop(&gw.url(), &w, &plan, &opts).await;
    let s = load::summarize(&w, &results);
    println!("{s:?}");
    assert_eq!(s.requests, 40);
    assert_eq!(
        (s.rejected, s.failed),
        (0, 0),
        "every request streams to the end: {:?}",
        s.errors
    );
    // Each went through the SLO placement: decoded after a hand-off or prefilled locally on the decoder.
    let d = decode[0].stats();
    assert_eq!(d.kv_pulled + d.local_prefills, 40, "{d:?}");
    assert_eq!(d.completed, 40, "{d:?}");
    tokio::time::timeout(Duration::from_secs(5), gw.shutdown())
        .await
        .ok();
    for e in prefill.iter().chain(&decode) {
        e.shutdown();
    }
}
