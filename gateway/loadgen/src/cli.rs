//! Command-line interface (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::request::Endpoint;

/// Goodput benchmark for OpenAI-compatible LLM servers.
///
/// Sends open-loop streaming requests (Poisson or gamma-bursty arrivals), measures TTFT / TPOT /
/// ITL / E2E the way `vllm bench serve` does, and reports goodput two ways: vLLM's (requests per
/// second meeting every SLO given with --goodput) and DistServe's (the highest request rate at
/// which ≥ 90% of requests meet the SLOs; `sweep`). Rejected (429) and failed requests count as
/// SLO misses.
#[derive(Debug, Parser)]
#[command(name = "baton-bench", version, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One open-loop run at one request rate.
    ///
    /// Example: baton-bench run --url http://127.0.0.1:30000 --model M --workload chat
    /// --num-requests 200 --request-rate 4 --goodput ttft:500 tpot:30 --out r.json
    Run(RunArgs),
    /// A run per request rate; reports DistServe goodput (highest rate with ≥ 90% attainment)
    /// and an SLO-scale sweep.
    ///
    /// Example: baton-bench sweep --url http://127.0.0.1:30000 --model M --rates 1,2,4,8
    /// --num-requests 200 --goodput ttft:500 tpot:30 --out s.json --csv s.csv --plot s
    Sweep(SweepArgs),
    /// Plots saved JSON reports together: attainment vs rate (one line per report) and, for
    /// reports saved with --save-records, TTFT and TPOT CDFs.
    ///
    /// Example: baton-bench plot baton.json rr.json --out attainment.png --cdf cmp
    Plot(PlotArgs),
    /// The calibrated twin: sweeps setups × workloads × SLO tiers × rates on a discrete-event simulation of the
    /// fleet in virtual time (engines driven by a step-time profile, the gateway's real policies), deterministic
    /// for a seed; prints goodput per GPU at 90% attainment per setup.
    ///
    /// Example: baton-bench twin --profile tests/bench/profiles/h200-llama8b-from-headline.json --gpus 2
    /// --setups colocated,disaggregated:1x1,slo --preset headline --out twin.json
    Twin(TwinArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Requests per second (`inf`: send all at once).
    #[arg(long, default_value = "inf")]
    pub request_rate: f64,
}

#[derive(Debug, Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Request rates: a list `1,2,4,8` or `START:STOP:STEP` (STOP included).
    #[arg(long)]
    pub rates: String,
    /// SLO scale factors re-judged on the same runs (DistServe's SLO-scale sweep).
    #[arg(long, default_value = "0.5,0.75,1,1.25,1.5,2")]
    pub slo_scales: String,
    /// Attainment required for DistServe goodput.
    #[arg(long, default_value_t = 0.9)]
    pub attainment_target: f64,
    /// Pause between rates (lets queues drain), seconds.
    #[arg(long, default_value_t = 2.0)]
    pub cooldown: f64,
}

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// JSON reports written by `run` or `sweep`.
    #[arg(required = true)]
    pub reports: Vec<PathBuf>,
    /// Attainment-vs-rate PNG.
    #[arg(long, default_value = "attainment.png")]
    pub out: PathBuf,
    /// Also write PREFIX-ttft-cdf.png and PREFIX-tpot-cdf.png (from saved records).
    #[arg(long)]
    pub cdf: Option<String>,
    /// Dashed reference line on the attainment plot.
    #[arg(long, default_value_t = 0.9)]
    pub attainment_target: f64,
    /// TrueType font for plot text (default: DejaVu Sans; env BATON_BENCH_FONT).
    #[arg(long)]
    pub font: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TwinArgs {
    /// Step-time profile (JSON: a StepModel, or an object with one under step / fit / model).
    #[arg(long)]
    pub profile: PathBuf,
    /// GPUs (one engine each) of the colocated and SLO setups.
    #[arg(long, default_value_t = 2)]
    pub gpus: usize,
    /// Setups: colocated, disaggregated:PxD (P prefill + D decode engines), slo.
    #[arg(long, default_value = "colocated,disaggregated:1x1,slo")]
    pub setups: String,
    /// Workload, as `baton-bench sweep --workload` takes it, optionally named: NAME=SPEC (repeatable).
    #[arg(long = "workload")]
    pub workloads: Vec<String>,
    /// Request rates (list or START:STOP:STEP): one for all workloads, or one per --workload in order.
    #[arg(long = "rates")]
    pub rates: Vec<String>,
    /// Rates are per GPU: multiplied by --gpus.
    #[arg(long)]
    pub per_gpu: bool,
    /// `headline`: the headline's three workloads (summarization, chat, mix) with per-GPU rate grids
    /// (summarization 1..12, chat 4..64 step 4, mix 2..24 step 2, × --gpus) and seeds 100 / 200 / 300.
    #[arg(long, conflicts_with_all = ["workloads", "replay"])]
    pub preset: Option<String>,
    /// SLO tiers NAME=TTFT_MS:TPOT_MS; the SLO setup runs each tier with its class sent.
    #[arg(long, default_value = crate::twin::run::DEFAULT_TIERS)]
    pub tiers: String,
    /// Seconds of arrivals per rate point.
    #[arg(long, default_value_t = 12.0)]
    pub duration: f64,
    /// Cap on requests per rate point.
    #[arg(long, default_value_t = 100_000)]
    pub max_requests: usize,
    /// Seed of the first workload (workload i uses seed + 100 i; rate point j adds j, as sweep does).
    #[arg(long, default_value_t = 100)]
    pub seed: u64,
    /// Gamma shape of inter-arrival times (1 = Poisson).
    #[arg(long, default_value_t = 1.0)]
    pub burstiness: f64,
    /// Prompt tokens per workload word (4.7: the headline's byte-level dummy tokenizer).
    #[arg(long, default_value_t = 4.7)]
    pub tokens_per_word: f64,
    /// Prompt tokens = the prompt's bytes + 1 (a byte-level tokenizer), instead of --tokens-per-word.
    #[arg(long)]
    pub byte_tokens: bool,
    /// Step tokens of colocated engines (--max-num-batched-tokens).
    #[arg(long, default_value_t = 2048)]
    pub colocated_tokens: u64,
    /// Step tokens of prefill engines.
    #[arg(long, default_value_t = 8192)]
    pub prefill_tokens: u64,
    /// Step tokens of decode engines.
    #[arg(long, default_value_t = 2048)]
    pub decode_tokens: u64,
    /// Step-token cap of SLO-scheduled engines (the SLO budget sizes each step below it).
    #[arg(long, default_value_t = 8192)]
    pub slo_tokens: u64,
    #[arg(long, default_value_t = 128)]
    pub max_num_seqs: usize,
    /// KV capacity per engine in tokens (default: the profile's, else unbounded).
    #[arg(long)]
    pub kv_tokens: Option<u64>,
    /// KV import bandwidth per prompt length (`baton-cuda-bench handoff` JSON), or `none`.
    #[arg(
        long,
        default_value = "tests/bench/results/gpu-h200x2-2026-11-27/handoff.json"
    )]
    pub handoff_json: String,
    /// Fixed part of the KV hand-off: prefill answer → decode request (ms).
    #[arg(long, default_value_t = 1.0)]
    pub handoff_ms: f64,
    /// Client ↔ gateway ↔ engine overhead added to every TTFT and latency (ms).
    #[arg(long, default_value_t = 1.0)]
    pub overhead_ms: f64,
    /// Pool policy of disaggregated pools (the gateway's default: cache_aware; prompts carry no text here, so it
    /// routes by requests in flight).
    #[arg(long, default_value = "cache_aware")]
    pub pool_policy: String,
    /// The client gives up after this many seconds (a miss).
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    #[arg(long, default_value_t = 0.9)]
    pub attainment_target: f64,
    /// Replay the recorded headline (setups a and b) and compare goodput per GPU with this results folder's
    /// report.md (e.g. tests/bench/results/gpu-h200x2-2026-11-27).
    #[arg(long)]
    pub replay: Option<PathBuf>,
    /// Tolerance of the replay comparison.
    #[arg(long, default_value_t = 0.15)]
    pub tolerance: f64,
    /// Write the twin's JSON (every cell's report) here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write each cell's report as its own baton-bench JSON in this folder (`baton-bench plot` reads them).
    #[arg(long)]
    pub reports_dir: Option<PathBuf>,
    /// Include per-request records in the JSON outputs.
    #[arg(long)]
    pub save_records: bool,
    /// Write PREFIX-WORKLOAD-TIER.png: attainment vs rate, one line per setup.
    #[arg(long)]
    pub plot: Option<String>,
    /// TrueType font for plot text (default: DejaVu Sans; env BATON_BENCH_FONT).
    #[arg(long)]
    pub font: Option<PathBuf>,
    /// No progress bar and no tables.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Server base URL (plain http).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Which API to call.
    #[arg(long, value_enum, default_value = "completions")]
    pub endpoint: Endpoint,
    /// The `model` field of every request.
    #[arg(long)]
    pub model: String,
    /// chat | summarization | mixed | fixed:IN:OUT | uniform:IN_MIN:IN_MAX:OUT_MIN:OUT_MAX |
    /// lognormal:IN_MEAN:IN_SIGMA:OUT_MEAN:OUT_SIGMA | jsonl:PATH | mix:SPEC@WEIGHT,SPEC@WEIGHT.
    /// Lengths in tokens; a JSONL line is {"prompt": "...", "output_len": N}.
    #[arg(long, default_value = "chat")]
    pub workload: String,
    /// Requests per run.
    #[arg(long, conflicts_with = "duration", default_value_t = 200)]
    pub num_requests: usize,
    /// Seconds of arrivals per run instead of a request count (bounded by --max-requests).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Cap on requests of a --duration run.
    #[arg(long, default_value_t = 100_000)]
    pub max_requests: usize,
    /// Gamma shape of inter-arrival times: 1 = Poisson, < 1 burstier, > 1 more regular.
    #[arg(long, default_value_t = 1.0)]
    pub burstiness: f64,
    /// Seed of arrivals and workload. A sweep's i-th rate point uses seed + i, so its prompts differ from the
    /// other points' (repeated prompts would be prefix-cache hits).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// SLOs in ms, like vLLM: `--goodput ttft:500 tpot:30 [e2el:MS]`. A request is good only if
    /// it completes within all of them.
    #[arg(long, num_args = 1..)]
    pub goodput: Vec<String>,
    /// Most requests in flight (later arrivals wait; their TTFT counts from sending).
    #[arg(long)]
    pub max_concurrency: Option<usize>,
    /// Per-request timeout, seconds (a timed-out request is a failure).
    #[arg(long, default_value_t = 600.0)]
    pub timeout: f64,
    /// Sent as header x-slo-class.
    #[arg(long)]
    pub slo_class: Option<String>,
    /// Sent as header x-slo-ttft-ms.
    #[arg(long)]
    pub slo_ttft_ms: Option<u64>,
    /// Sent as header x-slo-tpot-ms.
    #[arg(long)]
    pub slo_tpot_ms: Option<u64>,
    /// Bearer token (header authorization).
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Extra header `NAME:VALUE` (repeatable).
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// Let the model stop at EOS (default: `ignore_eos: true`, output length = max_tokens).
    #[arg(long)]
    pub no_ignore_eos: bool,
    /// Also send `min_tokens` = the output length.
    #[arg(long)]
    pub min_tokens: bool,
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// JSON object merged into every request body.
    #[arg(long)]
    pub extra_body: Option<String>,
    /// Name of this setup in reports and plots (default: the workload).
    #[arg(long)]
    pub label: Option<String>,
    /// Write the JSON report here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Include per-request records in the JSON report.
    #[arg(long)]
    pub save_records: bool,
    /// Write the CSV (one row per rate) here.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Write PREFIX-attainment.png, PREFIX-ttft-cdf.png, PREFIX-tpot-cdf.png.
    #[arg(long)]
    pub plot: Option<String>,
    /// TrueType font for plot text (default: DejaVu Sans; env BATON_BENCH_FONT).
    #[arg(long)]
    pub font: Option<PathBuf>,
    /// No progress bar and no summary table.
    #[arg(long, short)]
    pub quiet: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_vllm_style_goodput() {
        let cli = Cli::try_parse_from([
            "baton-bench",
            "run",
            "--model",
            "m",
            "--goodput",
            "ttft:500",
            "tpot:30",
            "--request-rate",
            "4",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.common.goodput, vec!["ttft:500", "tpot:30"]);
        assert_eq!(run.request_rate, 4.0);
        assert!(Cli::try_parse_from([
            "baton-bench",
            "run",
            "--model",
            "m",
            "--num-requests",
            "3",
            "--duration",
            "2"
        ])
        .is_err());
    }

    #[test]
    fn twin_takes_a_pipeline_setup() {
        let cli = Cli::try_parse_from([
            "baton-bench",
            "twin",
            "--profile",
            "p.json",
            "--gpus",
            "2",
            "--setups",
            "colocated,pipeline:policies/examples/plugins/worked_example.toml,slo",
            "--preset",
            "headline",
        ])
        .unwrap();
        let Command::Twin(twin) = cli.command else {
            panic!("not twin")
        };
        let setups: Vec<&str> = twin.setups.split(',').collect();
        assert_eq!(
            setups,
            [
                "colocated",
                "pipeline:policies/examples/plugins/worked_example.toml",
                "slo"
            ]
        );
    }
}
