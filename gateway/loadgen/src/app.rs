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
