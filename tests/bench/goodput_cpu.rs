//! Goodput on CPU: a rate sweep of the same seeded open-loop workload through the gateway in vLLM
//! PD mode in front of simulated engines (`baton_e2e::sim`), per setup:
//!
//! - `round_robin`: the pools' round_robin policy, no SLO routing;
//! - `least_load`: the pools' least_load policy, no SLO routing;
//! - `slo`: SLO-aware placement with conditional disaggregation, admission off (never rejects);
//! - `slo+admission`: the same with early rejection (429) when no placement meets the budget;
//! - `slo+queue` (not in the default set): the same, holding requests until they fit or their
//!   TTFT deadline passes.
//!
//! Prints a table (rate, setup, attainment, goodput, rejections, TTFT and TPOT percentiles) and
//! the DistServe goodput of each setup (highest rate with ≥ 90% of requests meeting both SLOs;
//! rejections are misses), and writes everything as JSON.
//!
//! ```sh
//! cargo run -p baton-e2e --example goodput_cpu -- --out target/bench/goodput_cpu.json
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use baton_e2e::sim::load::{self, RunOptions, Summary, Workload};
use baton_e2e::sim::{LatencyModel, SimHandle, SimStats};
use baton_policies::slo::AdmissionMode;
use baton_policies::PolicyKind;
use clap::Parser;
use serde::Serialize;
use serde_json::json;

#[path = "goodput_setup.rs"]
mod common;

#[derive(Parser, Debug)]
#[command(about = "Goodput rate sweep on simulated engines (see docs/BENCHMARKS.md)")]
struct Args {
    /// Request rates to sweep (req/s, Poisson).
    #[arg(long, value_delimiter = ',', default_values_t = vec![10.0, 20.0, 35.0, 50.0, 70.0])]
    rates: Vec<f64>,
    /// Seconds of arrivals per rate (requests = rate × secs, at least 100).
    #[arg(long, default_value_t = 6.0)]
    secs: f64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    #[arg(long, default_value_t = 2)]
    prefill: usize,
    #[arg(long, default_value_t = 2)]
    decode: usize,
    /// Setups to run, in order.
    #[arg(long, value_delimiter = ',', default_values_t = vec![
        "round_robin".to_owned(), "least_load".to_owned(), "slo".to_owned(), "slo+admission".to_owned()])]
    setups: Vec<String>,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/goodput_cpu.json")]
    out: PathBuf,
}

#[derive(Clone, Copy, Debug, Serialize)]
struct Setup {
    name: &'static str,
    #[serde(skip)]
    policy: PolicyKind,
    slo_routing: bool,
    #[serde(skip)]
    admission: AdmissionMode,
}

const SETUPS: [Setup; 5] = [
    Setup {
        name: "round_robin",
        policy: PolicyKind::RoundRobin,
        slo_routing: false,
        admission: AdmissionMode::Off,
    },
    Setup {
        name: "least_load",
        policy: PolicyKind::LeastLoad,
        slo_routing: false,
        admission: AdmissionMode::Off,
    },
    Setup {
        name: "slo",
        policy: PolicyKind::RoundRobin,
        slo_routing: true,
        admission: AdmissionMode::Off,
    },
    Setup {
        name: "slo+admission",
        policy: PolicyKind::RoundRobin,
        slo_routing: true,
        admission: AdmissionMode::Reject,
    },
    Setup {
        name: "slo+queue",
        policy: PolicyKind::RoundRobin,
        slo_routing: true,
        admission: AdmissionMode::Queue,
    },
];

fn workload(seed: u64, rate: f64, secs: f64) -> Workload {
    common::workload(seed, rate, ((rate * secs).round() as usize).max(100))
}

#[derive(Serialize)]
struct Run {
    rate: f64,
    setup: &'static str,
    summary: Summary,
    /// Decode requests that came without KV params (prefilled on the decoder).
    local_prefills: u64,
    kv_pulls: u64,
    /// Largest decode batch seen.
    max_decode_batch: u64,
    /// What the gateway learned per worker: prefill tokens/s (EWMA) and TPOT fit (base, per seq).
    learned: Vec<serde_json::Value>,
}

fn sum(stats: &[SimStats], f: impl Fn(&SimStats) -> u64) -> u64 {
    stats.iter().map(f).sum()
}

async fn run(args: &Args, setup: &Setup, rate: f64) -> Run {
    let (prefill, decode) = common::spawn_pools(args.prefill, args.decode).await;
    let cfg = common::gateway_config(
        &prefill,
        &decode,
        setup.policy,
        setup.slo_routing,
        setup.admission,
    );
    let gw = baton_gateway::start(cfg).await.expect("gateway starts");
    let w = workload(args.seed, rate, args.secs);
    let plan = w.plan();
    let results = load::run_open_loop(&gw.url(), &w, &plan, &RunOptions::default()).await;
    let summary = load::summarize(&w, &results);
    let learned = gw
        .state
        .slo
        .tracker
        .snapshot()
        .into_iter()
        .map(|(url, s)| {
            let (base, per_seq) = s.tpot.coefficients();
            json!({"url": url, "prefill_tokens_per_s": s.prefill_rate.value,
                   "tpot_base_ms": base, "tpot_per_seq_ms": per_seq})
        })
        .collect();
    let _ = tokio::time::timeout(Duration::from_secs(5), gw.shutdown()).await;
    for e in prefill.iter().chain(&decode) {
        e.shutdown();
    }
    let ds: Vec<SimStats> = decode.iter().map(SimHandle::stats).collect();
    Run {
        rate,
        setup: setup.name,
        summary,
        local_prefills: sum(&ds, |s| s.local_prefills),
        kv_pulls: sum(&ds, |s| s.kv_pulled),
        max_decode_batch: ds.iter().map(|s| s.max_batch).max().unwrap_or(0),
        learned,
    }
}

/// DistServe goodput: the highest swept rate at which attainment ≥ `target` (and every lower
/// rate too), plus the rate where attainment crosses `target` by linear interpolation.
fn goodput_at(runs: &[&Run], target: f64) -> (f64, f64) {
    let mut best = 0.0;
    let mut crossing = 0.0;
    let mut prev: Option<&Run> = None;
    for r in runs {
        let a = r.summary.attainment;
        if a >= target {
            best = r.rate;
            crossing = r.rate;
        } else {
            if let Some(p) = prev.filter(|p| p.summary.attainment >= target) {
                let (a0, a1) = (p.summary.attainment, a);
                crossing = p.rate + (r.rate - p.rate) * (a0 - target) / (a0 - a1);
            }
            break;
        }
        prev = Some(r);
    }
    (best, crossing)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let setups: Vec<Setup> = args
        .setups
        .iter()
        .map(|n| {
            *SETUPS
                .iter()
                .find(|s| s.name == n)
                .unwrap_or_else(|| panic!("unknown setup {n}"))
        })
        .collect();
    let m = LatencyModel::default();
    println!(
        "sim: {} prefill + {} decode, base {} ms, per_seq {} ms, prefill {} ms/token, \
         {} tokens/step, {} seqs; seed {}, {} s per rate",
        args.prefill,
        args.decode,
        m.base_ms,
        m.per_seq_ms,
        m.prefill_ms_per_token,
        m.max_batched_tokens,
        m.max_num_seqs,
        args.seed,
        args.secs
    );
    println!(
        "| rate | setup | attainment | goodput | rejected | failed | TTFT p50 | TTFT p99 | TPOT p50 | TPOT p99 | local prefills |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut runs = Vec::new();
    for &rate in &args.rates {
        for s in &setups {
            let r = run(&args, s, rate).await;
            let x = &r.summary;
            println!(
                "| {:.0} | {} | {:.1}% | {:.1} | {} ({:.0}%) | {} | {:.0} | {:.0} | {:.1} | {:.1} | {} |",
                rate,
                s.name,
                100.0 * x.attainment,
                x.goodput,
                x.rejected,
                100.0 * x.rejected as f64 / x.requests.max(1) as f64,
                x.failed,
                x.ttft_p50_ms,
                x.ttft_p99_ms,
                x.tpot_p50_ms,
                x.tpot_p99_ms,
                r.local_prefills,
            );
            runs.push(r);
        }
    }
    println!();
    println!("| setup | goodput @90% (swept) | @90% (interpolated) | @99% (swept) | best good req/s (rate) |");
    println!("|---|---:|---:|---:|---:|");
    let mut by_setup = BTreeMap::new();
    for s in &setups {
        let mine: Vec<&Run> = runs.iter().filter(|r| r.setup == s.name).collect();
        let (g90, x90) = goodput_at(&mine, 0.9);
        let (g99, _) = goodput_at(&mine, 0.99);
        let best = mine
            .iter()
            .max_by(|a, b| a.summary.goodput.total_cmp(&b.summary.goodput))
            .map_or((0.0, 0.0), |r| (r.summary.goodput, r.rate));
        println!(
            "| {} | {:.0} | {:.1} | {:.0} | {:.1} ({:.0}) |",
            s.name, g90, x90, g99, best.0, best.1
        );
        by_setup.insert(
            s.name,
            json!({"goodput90_swept": g90, "goodput90_interpolated": x90,
                   "goodput99_swept": g99, "best_goodput": best.0, "best_goodput_rate": best.1}),
        );
    }
    let w = workload(args.seed, 1.0, args.secs);
    let out = json!({
        "command": std::env::args().collect::<Vec<_>>(),
        "topology": {"prefill": args.prefill, "decode": args.decode, "protocol": "vllm"},
        "latency_model": {
            "base_ms": m.base_ms, "per_seq_ms": m.per_seq_ms,
            "prefill_ms_per_token": m.prefill_ms_per_token,
            "max_batched_tokens": m.max_batched_tokens, "max_num_seqs": m.max_num_seqs,
        },
        "workload": {"seed": args.seed, "secs_per_rate": args.secs,
                     "prompt_tokens": w.prompt_tokens, "output_tokens": w.output_tokens,
                     "classes": w.classes, "chat_fraction": w.chat_fraction},
        "setups": setups,
        "goodput": by_setup,
        "runs": runs,
    });
    if let Some(dir) = args.out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&out).expect("json"))
        .unwrap_or_else(|e| panic!("writing {}: {e}", args.out.display()));
    println!("\nwrote {}", args.out.display());
}
