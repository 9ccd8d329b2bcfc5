//! The subcommands: turn CLI arguments into runs, and runs into reports on disk.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{Map, Value};

use crate::cli::{CommonArgs, PlotArgs, RunArgs, SweepArgs};
use crate::client::BenchClient;
use crate::metrics::RunSummary;
use crate::plot::{self, Metric};
use crate::progress::Progress;
use crate::report::{rate_text, text_summary, unix_now, BenchConfig, RateRun, Report};
use crate::request::RequestTemplate;
use crate::runner::{self, RunConfig, Stop};
use crate::slo::Slo;
use crate::sweep::{distserve_goodput, parse_rates, parse_scales, slo_scale_sweep};
use crate::workload::Workload;

/// Everything a run needs, validated.
struct Prepared {
    client: BenchClient,
    workload: Workload,
    slo: Slo,
    stop: Stop,
    label: String,
    config: BenchConfig,
}

fn prepare(c: &CommonArgs) -> anyhow::Result<Prepared> {
    let workload = Workload::parse(&c.workload)?;
    let slo = Slo::parse(&c.goodput)?;
    if !(c.timeout.is_finite() && c.timeout > 0.0) {
        bail!("--timeout must be > 0 seconds");
    }
    if !(c.burstiness.is_finite() && c.burstiness > 0.0) {
        bail!("--burstiness must be > 0");
    }
    let stop = match c.duration {
        Some(d) if d.is_finite() && d > 0.0 => Stop::Duration {
            secs: d,
            max_requests: c.max_requests,
        },
        Some(_) => bail!("--duration must be > 0 seconds"),
        None => Stop::Requests(c.num_requests),
    };
    if stop.max_requests() == 0 {
        bail!("nothing to send: --num-requests / --max-requests is 0");
    }
    let mut headers = Vec::new();
    if let Some(class) = &c.slo_class {
        headers.push(("x-slo-class".to_owned(), class.clone()));
    }
    if let Some(ms) = c.slo_ttft_ms {
        headers.push(("x-slo-ttft-ms".to_owned(), ms.to_string()));
    }
    if let Some(ms) = c.slo_tpot_ms {
        headers.push(("x-slo-tpot-ms".to_owned(), ms.to_string()));
    }
    if let Some(key) = &c.api_key {
        headers.push(("authorization".to_owned(), format!("Bearer {key}")));
    }
    for h in &c.headers {
        let (k, v) = h
            .split_once(':')
            .with_context(|| format!("--header {h:?}: expected NAME:VALUE"))?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let extra_body = match &c.extra_body {
        None => Map::new(),
        Some(s) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(m)) => m,
            _ => bail!("--extra-body must be a JSON object"),
        },
    };
    let template = RequestTemplate {
        endpoint: c.endpoint,
        model: c.model.clone(),
        ignore_eos: !c.no_ignore_eos,
        min_tokens: c.min_tokens,
        temperature: c.temperature,
        extra_body,
        headers,
    };
    let client = BenchClient::new(&c.url, template, Duration::from_secs_f64(c.timeout))?;
    plot::init_fonts(c.font.as_deref());
    Ok(Prepared {
        client,
        workload,
        slo,
        stop,
        label: c.label.clone().unwrap_or_else(|| c.workload.clone()),
        config: BenchConfig {
            url: c.url.clone(),
            endpoint: format!("{:?}", c.endpoint).to_lowercase(),
            model: c.model.clone(),
            workload: c.workload.clone(),
            burstiness: c.burstiness,
            seed: c.seed,
            num_requests: c.duration.is_none().then_some(c.num_requests),
            duration_s: c.duration,
            max_concurrency: c.max_concurrency,
            slo_class: c.slo_class.clone(),
        },
    })
}

async fn run_at(p: &Prepared, c: &CommonArgs, rate: f64, seed: u64) -> anyhow::Result<RateRun> {
    let total = match p.stop {
        Stop::Requests(n) => Some(n as u64),
        Stop::Duration { .. } => None,
    };
    let progress = Progress::new(total, c.quiet, &format!("{} req/s", rate_text(rate)));
    let cfg = RunConfig {
        rate,
        burstiness: c.burstiness,
        seed,
        stop: p.stop,
        max_concurrency: c.max_concurrency,
    };
    let out = runner::run(&p.client, p.workload.clone(), &p.label, &cfg, &progress).await?;
    progress.done();
    let summary = RunSummary::compute(&out.records, out.duration_s, &p.slo);
    if !c.quiet {
        print!("{}", text_summary(&p.label, rate, &summary));
    }
    Ok(RateRun {
        rate,
        summary,
        records: out.records,
    })
}

/// `baton-bench run`.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let c = &args.common;
    let p = prepare(c)?;
    if args.request_rate.is_nan() || args.request_rate <= 0.0 {
        bail!("--request-rate must be > 0 (or inf)");
    }
    if args.request_rate.is_infinite() && matches!(p.stop, Stop::Duration { .. }) {
        bail!("--duration needs a finite --request-rate");
    }
    let started_at = unix_now();
    let run = run_at(&p, c, args.request_rate, c.seed).await?;
    let report = Report {
        label: p.label.clone(),
        started_at,
        config: p.config.clone(),
        slo: (!p.slo.is_empty()).then_some(p.slo),
        runs: vec![run],
        distserve: None,
        distserve_99: None,
        slo_scale: Vec::new(),
    };
    write_outputs(&report, c, 0.9)
}

/// `baton-bench sweep`.
pub async fn sweep(args: SweepArgs) -> anyhow::Result<()> {
    let c = &args.common;
    let p = prepare(c)?;
    if p.slo.is_empty() {
        bail!("sweep needs SLOs: --goodput ttft:MS tpot:MS");
    }
    let rates = parse_rates(&args.rates)?;
    if rates.iter().any(|r| r.is_infinite()) && matches!(p.stop, Stop::Duration { .. }) {
        bail!("--duration needs finite rates");
    }
    let scales = parse_scales(&args.slo_scales)?;
    let target = args.attainment_target;
    if !(target > 0.0 && target <= 1.0) {
        bail!("--attainment-target must be in (0, 1]");
    }
    if !(args.cooldown.is_finite() && args.cooldown >= 0.0) {
        bail!("--cooldown must be ≥ 0 seconds");
    }
    let started_at = unix_now();
    let mut runs = Vec::new();
    for (i, &rate) in rates.iter().enumerate() {
        if i > 0 && args.cooldown > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(args.cooldown)).await;
        }
        // A seed per rate point: repeating the same prompts would turn every later point into prefix-cache
        // hits on engines that cache (and flatter TTFT the more points ran before).
        runs.push(run_at(&p, c, rate, c.seed.wrapping_add(i as u64)).await?);
    }
    let points: Vec<(f64, f64)> = runs
        .iter()
        .filter_map(|r| Some((r.rate, r.summary.attainment?)))
        .collect();
    let raw: Vec<(f64, &[crate::record::RequestRecord])> = runs
        .iter()
        .map(|r| (r.rate, r.records.as_slice()))
        .collect();
    let slo_scale = slo_scale_sweep(&raw, &p.slo, &scales, target);
    let report = Report {
        label: p.label.clone(),
        started_at,
        config: p.config.clone(),
        slo: Some(p.slo),
        distserve: Some(distserve_goodput(&points, target)),
        distserve_99: Some(distserve_goodput(&points, 0.99)),
        slo_scale,
        runs,
    };
    if !c.quiet {
        print!("{}", sweep_summary(&report));
    }
    write_outputs(&report, c, target)
}

fn sweep_summary(r: &Report) -> String {
    let show = |x: Option<f64>| x.map_or("none".to_owned(), |v| format!("{v:.2}"));
    let mut out = String::from("============ DistServe goodput ============\n");
    for g in [r.distserve, r.distserve_99].into_iter().flatten() {
        out.push_str(&format!(
            "≥{:.0}% attainment: highest passing rate {} req/s, interpolated {} req/s{}\n",
            g.target * 100.0,
            show(g.highest_passing_rate),
            show(g.interpolated_rate),
            if g.bounded {
                ""
            } else {
                " (no tested rate failed: a lower bound)"
            },
        ));
    }
    if !r.slo_scale.is_empty() {
        out.push_str("SLO scale  SLOs                         goodput (interpolated, req/s)\n");
        for s in &r.slo_scale {
            out.push_str(&format!(
                "{:>8.2}×  {:<28} {}\n",
                s.scale,
                s.slo.to_string(),
                show(s.goodput.interpolated_rate)
            ));
        }
    }
    out
}

fn write_outputs(report: &Report, c: &CommonArgs, target: f64) -> anyhow::Result<()> {
    if let Some(path) = &c.out {
        report.write_json(path, c.save_records)?;
    }
    if let Some(path) = &c.csv {
        report.write_csv(path)?;
    }
    if let Some(prefix) = &c.plot {
        let reports = std::slice::from_ref(report);
        if report.slo.is_some() {
            plot::attainment_vs_rate(reports, target, &suffixed(prefix, "attainment"))?;
        }
        plot::latency_cdf(reports, Metric::Ttft, &suffixed(prefix, "ttft-cdf"))?;
        plot::latency_cdf(reports, Metric::Tpot, &suffixed(prefix, "tpot-cdf"))?;
        warn_fonts();
    }
    Ok(())
}

fn suffixed(prefix: &str, what: &str) -> PathBuf {
    PathBuf::from(format!("{prefix}-{what}.png"))
}

fn warn_fonts() {
    if let Some(w) = plot::init_fonts(None).warning() {
        eprintln!("warning: {w}");
    }
}

/// `baton-bench plot`.
pub fn plot(args: PlotArgs) -> anyhow::Result<()> {
    plot::init_fonts(args.font.as_deref());
    let reports = args
        .reports
        .iter()
        .map(|p| Report::read_json(Path::new(p)))
        .collect::<Result<Vec<_>, _>>()?;
    plot::attainment_vs_rate(&reports, args.attainment_target, &args.out)?;
    if let Some(prefix) = &args.cdf {
        if reports
            .iter()
            .all(|r| r.runs.iter().all(|run| run.records.is_empty()))
        {
            bail!("no per-request records in these reports (save them with --save-records)");
        }
        plot::latency_cdf(&reports, Metric::Ttft, &suffixed(prefix, "ttft-cdf"))?;
        plot::latency_cdf(&reports, Metric::Tpot, &suffixed(prefix, "tpot-cdf"))?;
    }
    warn_fonts();
    Ok(())
}

/// `baton-bench twin`.
pub fn twin(args: crate::cli::TwinArgs) -> anyhow::Result<()> {
    use crate::twin::replay;
    use crate::twin::run::{parse_tiers, table, Tokens, WorkloadRun};
    use crate::twin::{sweep, FleetConfig, Handoff, Profile, Setup, SweepPlan, TwinReport};

    let profile = Profile::read(&args.profile)?;
    let handoff = if args.handoff_json == "none" {
        Handoff::fixed(args.handoff_ms)
    } else {
        match std::fs::read_to_string(&args.handoff_json) {
            Ok(text) => Handoff::from_bench_json(&text, args.handoff_ms)
                .with_context(|| format!("{}: no handoff rows", args.handoff_json))?,
            Err(e) => {
                if !args.quiet {
                    eprintln!(
                        "warning: {}: {e}; the hand-off costs only --handoff-ms",
                        args.handoff_json
                    );
                }
                Handoff::fixed(args.handoff_ms)
            }
        }
    };
    if args.gpus == 0 {
        bail!("--gpus must be ≥ 1");
    }
    if !(args.duration.is_finite() && args.duration > 0.0) {
        bail!("--duration must be > 0 seconds");
    }
    let mut fleet = FleetConfig::headline(&profile, handoff.clone());
    fleet.colocated_tokens = args.colocated_tokens.max(1);
    fleet.prefill_tokens = args.prefill_tokens.max(1);
    fleet.decode_tokens = args.decode_tokens.max(1);
    fleet.slo_tokens = args.slo_tokens.max(1);
    fleet.max_num_seqs = args.max_num_seqs.max(1);
    if let Some(kv) = args.kv_tokens {
        fleet.kv_capacity_tokens = kv;
    }
    fleet.overhead_ms = args.overhead_ms.max(0.0);
    fleet.pool_policy = args
        .pool_policy
        .parse()
        .map_err(|e| anyhow::anyhow!("--pool-policy: {e}"))?;
    fleet.timeout_s = args.timeout;
    let tokens = if args.byte_tokens {
        Tokens::Bytes
    } else {
        if !(args.tokens_per_word.is_finite() && args.tokens_per_word > 0.0) {
            bail!("--tokens-per-word must be > 0");
        }
        Tokens::PerWord(args.tokens_per_word)
    };
    let profile_name = args
        .profile
        .file_stem()
        .map_or("profile".into(), |s| s.to_string_lossy().into_owned());
    plot::init_fonts(args.font.as_deref());

    let plan = if args.replay.is_some() {
        replay::headline_plan(&profile_name)
    } else {
        let setups = args
            .setups
            .split(',')
            .map(|s| Setup::parse(s, args.gpus))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("--setups: {e}"))?;
        let scale = if args.per_gpu { args.gpus as f64 } else { 1.0 };
        let workloads: Vec<WorkloadRun> = match args.preset.as_deref() {
            Some("headline") => replay::headline_workloads()
                .into_iter()
                .zip([
                    (1.0f64, 12.0f64, 1.0f64),
                    (4.0, 64.0, 4.0),
                    (2.0, 24.0, 2.0),
                ])
                .map(|(w, (a, b, s))| {
                    let n = ((b - a) / s).round() as usize + 1;
                    WorkloadRun {
                        rates: (0..n)
                            .map(|i| (a + s * i as f64) * args.gpus as f64)
                            .collect(),
                        ..w
                    }
                })
                .collect(),
            Some(p) => bail!("unknown --preset {p:?} (expected headline)"),
            None => {
                if args.workloads.is_empty() {
                    bail!("give --workload (and --rates), --preset headline or --replay");
                }
                if args.rates.len() != 1 && args.rates.len() != args.workloads.len() {
                    bail!("give one --rates for all workloads or one per --workload");
                }
                args.workloads
                    .iter()
                    .enumerate()
                    .map(|(i, w)| {
                        let (name, spec) = match w.split_once('=') {
                            Some((n, s)) if !n.contains(':') => (n.to_owned(), s.to_owned()),
                            _ => (w.clone(), w.clone()),
                        };
                        Workload::parse(&spec)?;
                        let rates = parse_rates(&args.rates[i.min(args.rates.len() - 1)])?;
                        Ok(WorkloadRun {
                            name,
                            spec,
                            rates: rates.iter().map(|r| r * scale).collect(),
                            seed: args.seed.wrapping_add(100 * i as u64),
                        })
                    })
                    .collect::<anyhow::Result<_>>()?
            }
        };
        if workloads
            .iter()
            .flat_map(|w| &w.rates)
            .any(|r| !r.is_finite())
        {
            bail!("the twin needs finite rates");
        }
        SweepPlan {
            setups,
            workloads,
            tiers: parse_tiers(&args.tiers).map_err(|e| anyhow::anyhow!("--tiers: {e}"))?,
            duration_s: args.duration,
            max_requests: args.max_requests.max(1),
            burstiness: args.burstiness,
            tokens,
            attainment_target: args.attainment_target,
            profile_name: profile_name.clone(),
        }
    };
    let started = std::time::Instant::now();
    let cells = sweep(&fleet, &plan, args.quiet).map_err(|e| anyhow::anyhow!(e))?;
    let wall = started.elapsed().as_secs_f64();
    let simulated: usize = cells
        .iter()
        .flat_map(|c| &c.report.runs)
        .map(|r| r.summary.sent)
        .sum();
    if !args.quiet {
        println!(
            "twin: profile {} ({}), {} cells, {simulated} request records in {wall:.1} s of wall time",
            profile.name,
            if profile.measured {
                "measured"
            } else {
                "derived, not measured"
            },
            cells.len(),
        );
        print!("{}", table(&cells));
    }
    if let Some(dir) = &args.replay {
        let md = dir.join("report.md");
        let text =
            std::fs::read_to_string(&md).with_context(|| format!("reading {}", md.display()))?;
        let recorded = replay::parse_report_md(&text);
        println!(
            "\n### replay of {} (setups a, b)\n\n{}",
            dir.display(),
            replay::compare(&cells, &recorded, args.tolerance)
        );
    }
    let strip = |c: &crate::twin::Cell| {
        let mut c = c.clone();
        if !args.save_records {
            c.report.runs.iter_mut().for_each(|r| r.records.clear());
        }
        c
    };
    if let Some(dir) = &args.reports_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for c in &cells {
            let name =
                format!("{}-{}-{}.json", c.setup, c.workload, c.tier).replace([':', '/'], "_");
            c.report.write_json(&dir.join(name), args.save_records)?;
        }
    }
    if let Some(prefix) = &args.plot {
        let mut keys: Vec<(String, String)> = Vec::new();
        for c in &cells {
            if !keys.contains(&(c.workload.clone(), c.tier.clone())) {
                keys.push((c.workload.clone(), c.tier.clone()));
            }
        }
        for (w, t) in keys {
            let reports: Vec<Report> = cells
                .iter()
                .filter(|c| c.workload == w && c.tier == t)
                .map(|c| Report {
                    label: c.setup.clone(),
                    ..c.report.clone()
                })
                .collect();
            plot::attainment_vs_rate(
                &reports,
                args.attainment_target,
                &PathBuf::from(format!("{prefix}-{w}-{t}.png")),
            )?;
        }
        warn_fonts();
    }
    if let Some(path) = &args.out {
        let out = TwinReport {
            profile,
            handoff,
            colocated_tokens: fleet.colocated_tokens,
            prefill_tokens: fleet.prefill_tokens,
            decode_tokens: fleet.decode_tokens,
            slo_tokens: fleet.slo_tokens,
            max_num_seqs: fleet.max_num_seqs,
            overhead_ms: fleet.overhead_ms,
            tokens: plan.tokens,
            duration_s: plan.duration_s,
            cells: cells.iter().map(strip).collect(),
        };
        let json = serde_json::to_string_pretty(&out)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
