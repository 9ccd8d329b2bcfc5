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
}
