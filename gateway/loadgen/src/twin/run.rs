//! Sweeps on the twin: every setup × workload × tier × rate, judged and reported like `baton-bench sweep` (the same
//! arrivals and workload sampler, the same records, `RunSummary`, DistServe goodput and report JSON).

use serde::{Deserialize, Serialize};

use super::fleet::{simulate, FleetConfig, PluginCounts, Setup, TwinRequest};
use crate::arrival::Arrivals;
use crate::metrics::RunSummary;
use crate::progress::Progress;
use crate::record::RequestRecord;
use crate::report::{BenchConfig, RateRun, Report};
use crate::slo::Slo;
use crate::sweep::{distserve_goodput, slo_scale_sweep};
use crate::workload::{Sampler, Workload};
use baton_policies::slo::Budget;

/// An SLO tier: the class sent with every request of a run, and what "good" means for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tier {
    pub name: String,
    pub ttft_ms: f64,
    pub tpot_ms: f64,
}

impl Tier {
    pub fn slo(&self) -> Slo {
        Slo {
            ttft_ms: Some(self.ttft_ms),
            tpot_ms: Some(self.tpot_ms),
            e2el_ms: None,
        }
    }

    pub fn budget(&self) -> Budget {
        Budget {
            ttft_ms: Some(self.ttft_ms),
            tpot_ms: Some(self.tpot_ms),
        }
    }
}

/// The tiers: interactive 0.5 s / 30 ms, standard 2 s / 100 ms, TPOT-strict 4 s / 20 ms.
pub const DEFAULT_TIERS: &str = "interactive=500:30,standard=2000:100,strict=4000:20";

/// `NAME=TTFT_MS:TPOT_MS,...`
pub fn parse_tiers(s: &str) -> Result<Vec<Tier>, String> {
    s.split(',')
        .filter(|t| !t.trim().is_empty())
        .map(|t| {
            let bad = || format!("bad tier {t:?}: expected NAME=TTFT_MS:TPOT_MS");
            let (name, ms) = t.split_once('=').ok_or_else(bad)?;
            let (a, b) = ms.split_once(':').ok_or_else(bad)?;
            let num = |x: &str| {
                x.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v > 0.0)
            };
            Ok(Tier {
                name: name.trim().to_owned(),
                ttft_ms: num(a).ok_or_else(bad)?,
                tpot_ms: num(b).ok_or_else(bad)?,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(|v| {
            if v.is_empty() {
                Err("no tiers".to_owned())
            } else {
                Ok(v)
            }
        })
}

/// How prompt tokens follow from a drawn prompt.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Tokens {
    /// Words × factor (4.7 for the headline's byte-level dummy tokenizer).
    PerWord(f64),
    /// The prompt's UTF-8 bytes plus one (BOS): exactly what a byte-level tokenizer makes of it.
    Bytes,
}

/// One workload of a sweep.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkloadRun {
    pub name: String,
    /// A `baton-bench sweep --workload` spec.
    pub spec: String,
    pub rates: Vec<f64>,
    /// Rate point `i` uses `seed + i`, as `baton-bench sweep` does.
    pub seed: u64,
}

/// What a sweep needs besides the fleet.
#[derive(Clone, Debug)]
pub struct SweepPlan {
    pub setups: Vec<Setup>,
    pub workloads: Vec<WorkloadRun>,
    pub tiers: Vec<Tier>,
    pub duration_s: f64,
    pub max_requests: usize,
    pub burstiness: f64,
    pub tokens: Tokens,
    pub attainment_target: f64,
    /// Names the profile in the reports.
    pub profile_name: String,
}

/// One setup × workload × tier.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cell {
    pub setup: String,
    pub gpus: usize,
    pub workload: String,
    pub tier: String,
    /// DistServe goodput (interpolated, at the attainment target) ÷ GPUs.
    pub goodput_per_gpu: Option<f64>,
    /// False when no tested rate failed (a lower bound).
    pub bounded: bool,
    /// SLO placement: requests served on one engine / split across two (summed over the rates).
    #[serde(default)]
    pub local: u64,
    #[serde(default)]
    pub split: u64,
    /// Plugin pipeline setups: fallbacks, 503s and sheds (summed over the rates).
    #[serde(default)]
    pub plugin: PluginCounts,
    pub report: Report,
}

/// Draws a run's requests exactly as `baton-bench` would send them (same arrivals, same sampler, same stop rule).
pub fn requests(
    workload: &Workload,
    label: &str,
    rate: f64,
    seed: u64,
    plan: &SweepPlan,
    budget: Budget,
) -> Result<Vec<TwinRequest>, String> {
    let arrivals = Arrivals::new(rate, plan.burstiness, seed).map_err(|e| e.to_string())?;
    let sampler = Sampler::new(workload.clone(), label, seed);
    let mut out = Vec::new();
    for (index, (offset, spec)) in arrivals.zip(sampler).enumerate().take(plan.max_requests) {
        let at = offset.as_secs_f64();
        if at >= plan.duration_s {
            break;
        }
        let prompt_tokens = match plan.tokens {
            Tokens::PerWord(f) => (f64::from(spec.prompt_len) * f).round().max(1.0) as u64,
            Tokens::Bytes => spec.prompt.len() as u64 + 1,
        };
        out.push(TwinRequest {
            index,
            label: spec.label,
            arrival_ms: at * 1000.0,
            prompt_len: spec.prompt_len,
            prompt_tokens,
            output_tokens: u64::from(spec.output_len),
            budget,
            prompt: spec.prompt,
        });
    }
    Ok(out)
}

/// One tier's runs of a cell: (rate, records, duration) per rate, the SLO placement counts (local, split) and the
/// plugin pipeline's counts.
type TierRuns = (Vec<(f64, Vec<RequestRecord>, f64)>, u64, u64, PluginCounts);

/// Runs the plan; cells in setup, workload, tier order.
pub fn sweep(fleet: &FleetConfig, plan: &SweepPlan, quiet: bool) -> Result<Vec<Cell>, String> {
    let sims: usize = plan
        .setups
        .iter()
        .map(|s| {
            let tiers = if s.uses_budgets() {
                plan.tiers.len()
            } else {
                1
            };
            tiers * plan.workloads.iter().map(|w| w.rates.len()).sum::<usize>()
        })
        .sum();
    let progress = Progress::new(Some(sims as u64), quiet, "twin");
    let mut cells = Vec::new();
    for setup in &plan.setups {
        for w in &plan.workloads {
            let workload = Workload::parse(&w.spec).map_err(|e| e.to_string())?;
            // Per tier: (rate, records, duration) of each run, and the placement counts.
            let mut per_tier: Vec<TierRuns> =
                vec![(Vec::new(), 0, 0, PluginCounts::default()); plan.tiers.len()];
            let runs_per = if setup.uses_budgets() {
                plan.tiers.len()
            } else {
                1
            };
            for t in 0..runs_per {
                for (i, &rate) in w.rates.iter().enumerate() {
                    let label = format!("twin {} {} {}", setup.name(), w.name, plan.tiers[t].name);
                    let reqs = requests(
                        &workload,
                        &label,
                        rate,
                        w.seed.wrapping_add(i as u64),
                        plan,
                        plan.tiers[t].budget(),
                    )?;
                    let out = simulate(fleet, setup.clone(), &reqs)?;
                    progress.finished(true);
                    let targets: Vec<usize> = if setup.uses_budgets() {
                        vec![t]
                    } else {
                        (0..plan.tiers.len()).collect()
                    };
                    for k in targets {
                        per_tier[k]
                            .0
                            .push((rate, out.records.clone(), out.duration_s));
                        per_tier[k].1 += out.local;
                        per_tier[k].2 += out.split;
                        per_tier[k].3.add(&out.plugin);
                    }
                }
            }
            for (tier, (runs, local, split, plugin)) in plan.tiers.iter().zip(per_tier) {
                let slo = tier.slo();
                let rate_runs: Vec<RateRun> = runs
                    .into_iter()
                    .map(|(rate, records, duration)| RateRun {
                        rate,
                        summary: RunSummary::compute(&records, duration, &slo),
                        records,
                    })
                    .collect();
                let points: Vec<(f64, f64)> = rate_runs
                    .iter()
                    .filter_map(|r| Some((r.rate, r.summary.attainment?)))
                    .collect();
                let raw: Vec<(f64, &[RequestRecord])> = rate_runs
                    .iter()
                    .map(|r| (r.rate, r.records.as_slice()))
                    .collect();
                let slo_scale = slo_scale_sweep(
                    &raw,
                    &slo,
                    &[0.5, 0.75, 1.0, 1.25, 1.5, 2.0],
                    plan.attainment_target,
                );
                let distserve = distserve_goodput(&points, plan.attainment_target);
                let report = Report {
                    label: format!("twin {} {} {}", setup.name(), w.name, tier.name),
                    started_at: 0,
                    config: BenchConfig {
                        url: format!("twin:{}", plan.profile_name),
                        endpoint: "completions".into(),
                        model: plan.profile_name.clone(),
                        workload: w.spec.clone(),
                        burstiness: plan.burstiness,
                        seed: w.seed,
                        num_requests: None,
                        duration_s: Some(plan.duration_s),
                        max_concurrency: None,
                        slo_class: Some(tier.name.clone()),
                    },
                    slo: Some(slo),
                    distserve: Some(distserve),
                    distserve_99: Some(distserve_goodput(&points, 0.99)),
                    slo_scale,
                    runs: rate_runs,
                };
                cells.push(Cell {
                    setup: setup.name(),
                    gpus: setup.gpus(),
                    workload: w.name.clone(),
                    tier: tier.name.clone(),
                    goodput_per_gpu: distserve.interpolated_rate.map(|r| r / setup.gpus() as f64),
                    bounded: distserve.bounded,
                    local,
                    split,
                    plugin,
                    report,
                });
            }
        }
    }
    progress.done();
    Ok(cells)
}

fn pct(a: Option<f64>) -> String {
    a.map_or("-".into(), |a| format!("{:.0}%", a * 100.0))
}

/// Goodput per GPU as a table cell: "≥" marks a lower bound (no tested rate failed).
pub fn goodput_text(c: &Cell) -> String {
    match c.goodput_per_gpu {
        None => "0.00".into(),
        Some(g) if !c.bounded => format!("≥{g:.2}"),
        Some(g) => format!("{g:.2}"),
    }
}

/// Per workload × tier: attainment per rate and goodput per GPU of every setup; then one line per workload × tier
/// with each setup's goodput per GPU and the SLO setup's ratio to the best other setup.
pub fn table(cells: &[Cell]) -> String {
    let mut out = String::new();
    let mut keys: Vec<(String, String)> = Vec::new();
    for c in cells {
        let k = (c.workload.clone(), c.tier.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    for (w, t) in &keys {
        let rows: Vec<&Cell> = cells
            .iter()
            .filter(|c| &c.workload == w && &c.tier == t)
            .collect();
        let Some(first) = rows.first() else { continue };
        let slo = first.report.slo.unwrap_or_default();
        out.push_str(&format!("\n### {w}, {t} ({slo})\n\n| setup |"));
        for r in &first.report.runs {
            out.push_str(&format!(" {} req/s |", r.rate));
        }
        out.push_str(" goodput/GPU | TTFT p50/p90 ms | TPOT p50/p90 ms |\n|---|");
        for _ in &first.report.runs {
            out.push_str("---:|");
        }
        out.push_str("---:|---:|---:|\n");
        for c in rows {
            out.push_str(&format!("| {} |", c.setup));
            for r in &c.report.runs {
                let rej = if r.summary.rejected > 0 {
                    format!(" ({} rej.)", r.summary.rejected)
                } else {
                    String::new()
                };
                out.push_str(&format!(" {}{rej} |", pct(r.summary.attainment)));
            }
            // Latencies at the highest rate that met the target (else the lowest rate).
            let target = c.report.distserve.and_then(|d| d.highest_passing_rate);
            let run = c
                .report
                .runs
                .iter()
                .rev()
                .find(|r| Some(r.rate) == target)
                .or(c.report.runs.first());
            let lat = |s: Option<crate::metrics::Stats>| {
                s.map_or("-".into(), |s| format!("{:.0}/{:.0}", s.p50, s.p90))
            };
            let lat1 = |s: Option<crate::metrics::Stats>| {
                s.map_or("-".into(), |s| format!("{:.1}/{:.1}", s.p50, s.p90))
            };
            out.push_str(&format!(
                " {} | {} | {} |\n",
                goodput_text(c),
                run.map_or("-".into(), |r| lat(r.summary.ttft_ms)),
                run.map_or("-".into(), |r| lat1(r.summary.tpot_ms)),
            ));
        }
    }
    out.push_str(&summary_table(cells));
    out.push_str(&plugin_table(cells));
    out.push_str(&prediction_table(cells));
    out
}

/// One row per plugin pipeline cell (once per workload: tiers share the runs): requests, decisions that fell back
/// (a script failed or ran over its budget: least load / admit, as the gateway does), 503s and sheds.
pub fn plugin_table(cells: &[Cell]) -> String {
    let mut seen: Vec<(&str, &str)> = Vec::new();
    let rows: Vec<&Cell> = cells
        .iter()
        .filter(|c| c.setup.starts_with("pipeline:"))
        .filter(|c| {
            let k = (c.setup.as_str(), c.workload.as_str());
            !seen.contains(&k) && {
                seen.push(k);
                true
            }
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "\n### plugin pipelines: fallbacks and refusals (all rates)\n\n\
         | setup | workload | requests | pick fallbacks | admission fallbacks | no worker (503) | shed (429) |\n\
         |---|---|---:|---:|---:|---:|---:|\n",
    );
    for c in rows {
        let sent: usize = c.report.runs.iter().map(|r| r.summary.sent).sum();
        let p = c.plugin;
        out.push_str(&format!(
            "| {} | {} | {sent} | {} | {} | {} | {} |\n",
            c.setup, c.workload, p.pick_fallbacks, p.admit_fallbacks, p.no_worker, p.shed
        ));
    }
    out
}

/// Median |predicted − measured| / measured (in %) of TTFT and TPOT over the completed requests the SLO policy
/// predicted, pooled over the cell's rate points at 70–100% of its 90%-attainment rate ("near capacity"); with
/// the number of such requests. `None` when the cell has no such rate point or no prediction.
pub fn prediction_error_near_capacity(c: &Cell) -> Option<(Option<f64>, Option<f64>, usize)> {
    let cap = c.report.distserve.and_then(|d| d.interpolated_rate)?;
    let mut ttft = Vec::new();
    let mut tpot = Vec::new();
    for run in c
        .report
        .runs
        .iter()
        .filter(|r| r.rate >= 0.7 * cap - 1e-9 && r.rate <= cap + 1e-9)
    {
        for r in run.records.iter().filter(|r| r.outcome.is_ok()) {
            let Some(p) = r.predicted else { continue };
            if let (Some(pt), Some(m)) = (p.ttft_ms, r.ttft_s) {
                if m > 0.0 {
                    ttft.push((pt - m * 1000.0).abs() / (m * 1000.0) * 100.0);
                }
            }
            if let (Some(pt), Some(m)) = (p.tpot_ms, r.tpot_s()) {
                if m > 0.0 {
                    tpot.push((pt - m * 1000.0).abs() / (m * 1000.0) * 100.0);
                }
            }
        }
    }
    let median = |mut v: Vec<f64>| {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        Some(if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        })
    };
    let n = ttft.len().max(tpot.len());
    if n == 0 {
        return None;
    }
    Some((median(ttft), median(tpot), n))
}

/// One row per SLO cell: the policy's median prediction error near capacity.
pub fn prediction_table(cells: &[Cell]) -> String {
    let rows: Vec<&Cell> = cells.iter().filter(|c| c.setup == "slo").collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "\n### slo: median |predicted − measured| / measured near capacity (70–100% of the 90%-attainment rate)\n\n\
         | workload | tier | TTFT error | TPOT error | requests |\n|---|---|---:|---:|---:|\n",
    );
    let pct = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.1}%"));
    for c in rows {
        match prediction_error_near_capacity(c) {
            Some((a, b, n)) => out.push_str(&format!(
                "| {} | {} | {} | {} | {n} |\n",
                c.workload,
                c.tier,
                pct(a),
                pct(b)
            )),
            None => out.push_str(&format!("| {} | {} | - | - | 0 |\n", c.workload, c.tier)),
        }
    }
    out
}

/// One row per workload × tier: goodput per GPU of each setup, and slo ÷ max(others), slo ÷ colocated.
pub fn summary_table(cells: &[Cell]) -> String {
    let mut setups: Vec<String> = Vec::new();
    let mut keys: Vec<(String, String)> = Vec::new();
    for c in cells {
        if !setups.contains(&c.setup) {
            setups.push(c.setup.clone());
        }
        let k = (c.workload.clone(), c.tier.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let gpus = cells.iter().map(|c| c.gpus).max().unwrap_or(0);
    let mut out =
        format!("\n### goodput per GPU at 90% attainment ({gpus} GPUs)\n\n| workload | tier |");
    for s in &setups {
        out.push_str(&format!(" {s} |"));
    }
    let has_slo = setups.iter().any(|s| s == "slo");
    if has_slo {
        out.push_str(" slo ÷ best other | slo ÷ colocated |");
    }
    out.push_str("\n|---|---|");
    for _ in &setups {
        out.push_str("---:|");
    }
    if has_slo {
        out.push_str("---:|---:|");
    }
    out.push('\n');
    for (w, t) in &keys {
        out.push_str(&format!("| {w} | {t} |"));
        let find = |s: &str| {
            cells
                .iter()
                .find(|c| &c.workload == w && &c.tier == t && c.setup == s)
        };
        for s in &setups {
            out.push_str(&format!(" {} |", find(s).map_or("-".into(), goodput_text)));
        }
        if has_slo {
            let g = |c: Option<&Cell>| c.map_or(0.0, |c| c.goodput_per_gpu.unwrap_or(0.0));
            let slo = g(find("slo"));
            let best = setups
                .iter()
                .filter(|s| *s != "slo")
                .map(|s| g(find(s)))
                .fold(0.0, f64::max);
            let colo = g(find("colocated"));
            let ratio = |a: f64, b: f64| {
                if b > 0.0 {
                    format!("{:.2}×", a / b)
                } else if a > 0.0 {
                    "∞".into()
                } else {
                    "-".into()
                }
            };
            out.push_str(&format!(" {} | {} |", ratio(slo, best), ratio(slo, colo)));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_parse() {
        let t = parse_tiers(DEFAULT_TIERS).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t[2].name, "strict");
        assert_eq!((t[2].ttft_ms, t[2].tpot_ms), (4000.0, 20.0));
        for bad in ["", "x", "x=1", "x=1:0", "x=a:1"] {
            assert!(parse_tiers(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn requests_follow_the_load_generator() {
        // The same arrivals and lengths as `baton-bench sweep` draws for this seed.
        let plan = SweepPlan {
            setups: vec![],
            workloads: vec![],
            tiers: vec![],
            duration_s: 5.0,
            max_requests: 1000,
            burstiness: 1.0,
            tokens: Tokens::PerWord(4.7),
            attainment_target: 0.9,
            profile_name: "p".into(),
        };
        let w = Workload::parse("uniform:350:700:128:256").unwrap();
        let reqs = requests(&w, "l", 4.0, 100, &plan, Budget::default()).unwrap();
        let arr: Vec<_> = Arrivals::new(4.0, 1.0, 100).unwrap().take_n(reqs.len() + 1);
        let specs: Vec<_> = Sampler::new(w, "l", 100).take(reqs.len()).collect();
        for (i, r) in reqs.iter().enumerate() {
            assert_eq!(r.arrival_ms, arr[i].as_secs_f64() * 1000.0);
            assert_eq!(r.prompt_len, specs[i].prompt_len);
            assert_eq!(
                r.prompt_tokens,
                (f64::from(specs[i].prompt_len) * 4.7).round() as u64
            );
            assert_eq!(r.output_tokens, u64::from(specs[i].output_len));
        }
        assert!(arr[reqs.len()].as_secs_f64() >= 5.0);
    }
}
