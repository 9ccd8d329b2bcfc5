//! Replaying the recorded 2× H200 headline (`tests/bench/headline_2gpu.sh`, results in
//! `tests/bench/results/gpu-h200x2-2026-11-27/`) on the twin: the same workloads, seeds, rates, 12 s of arrivals per
//! point, 1000-request cap and 60 s client timeout, setups (a) colocated and (b) disaggregated 1P:1D, judged on the
//! interactive and standard tiers; then goodput per GPU per cell next to what `report.md` recorded.

use super::fleet::Setup;
use super::run::{goodput_text, Cell, SweepPlan, Tier, Tokens, WorkloadRun};

/// The headline's workloads (`WORKLOADS` in `headline_2gpu.sh`).
pub fn headline_workloads() -> Vec<WorkloadRun> {
    let w = |name: &str, spec: &str, rates: &[f64], seed| WorkloadRun {
        name: name.into(),
        spec: spec.into(),
        rates: rates.to_vec(),
        seed,
    };
    vec![
        w(
            "summarization",
            "uniform:350:700:128:256",
            &[4.0, 8.0, 12.0, 16.0, 20.0],
            100,
        ),
        w(
            "chat",
            "uniform:16:80:64:256",
            &[16.0, 32.0, 48.0, 64.0],
            200,
        ),
        w(
            "mix",
            "mix:uniform:350:700:128:256@1,uniform:16:80:64:256@1",
            &[8.0, 16.0, 24.0, 32.0],
            300,
        ),
    ]
}

/// The two tiers the headline judged.
pub fn headline_tiers() -> Vec<Tier> {
    vec![
        Tier {
            name: "interactive".into(),
            ttft_ms: 500.0,
            tpot_ms: 30.0,
        },
        Tier {
            name: "standard".into(),
            ttft_ms: 2000.0,
            tpot_ms: 100.0,
        },
    ]
}

/// The replay's plan: setups (a) and (b), byte-exact prompt tokens (the dummy model's tokenizer is byte-level).
pub fn headline_plan(profile_name: &str) -> SweepPlan {
    SweepPlan {
        setups: vec![
            Setup::Colocated(2),
            Setup::Disaggregated {
                prefill: 1,
                decode: 1,
            },
        ],
        workloads: headline_workloads(),
        tiers: headline_tiers(),
        duration_s: 12.0,
        max_requests: 1000,
        burstiness: 1.0,
        tokens: Tokens::Bytes,
        attainment_target: 0.9,
        profile_name: profile_name.into(),
    }
}

/// One recorded cell of `report.md`.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    pub workload: String,
    pub tier: String,
    pub setup: String,
    pub attainment: Vec<f64>,
    pub goodput_per_gpu: f64,
    /// "(≥, no rate failed)"
    pub lower_bound: bool,
}

/// Parses the headline's `report.md` (`### WORKLOAD, TIER tier (...)` then `| setup | a% | ... | goodput |` rows).
pub fn parse_report_md(text: &str) -> Vec<Recorded> {
    let mut out = Vec::new();
    let mut section: Option<(String, String)> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(h) = line.strip_prefix("### ") {
            section = h.split_once(',').and_then(|(w, rest)| {
                let tier = rest.split_whitespace().next()?;
                Some((w.trim().to_owned(), tier.to_owned()))
            });
            continue;
        }
        let Some((w, t)) = &section else { continue };
        if !line.starts_with('|') || line.starts_with("| setup") || line.starts_with("|---") {
            continue;
        }
        let cols: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cols.len() < 3 {
            continue;
        }
        let attainment = cols[1..cols.len() - 1]
            .iter()
            .filter_map(|c| c.split('%').next()?.trim().parse::<f64>().ok())
            .map(|p| p / 100.0)
            .collect();
        let last = cols[cols.len() - 1];
        let Some(g) = last
            .split_whitespace()
            .next()
            .and_then(|x| x.parse::<f64>().ok())
        else {
            continue;
        };
        out.push(Recorded {
            workload: w.clone(),
            tier: t.clone(),
            setup: cols[0].to_owned(),
            attainment,
            goodput_per_gpu: g,
            lower_bound: last.contains('≥'),
        });
    }
    out
}

/// Twin setup names → the headline's.
fn headline_name(setup: &str) -> &str {
    match setup {
        "colocated" => "colocated",
        "disaggregated:1x1" => "disaggregated",
        s => s,
    }
}

/// Relative difference of the twin's goodput per GPU from the recorded one (`None` when the recorded one is 0).
pub fn rel_diff(twin: f64, recorded: f64) -> Option<f64> {
    (recorded > 0.0).then(|| (twin - recorded) / recorded)
}

/// The comparison table: per cell, measured vs twin goodput per GPU and attainment per rate.
pub fn compare(cells: &[Cell], recorded: &[Recorded], tolerance: f64) -> String {
    let mut out = String::from(
        "| workload | tier | setup | measured goodput/GPU | twin goodput/GPU | diff | within | attainment per rate: measured → twin |\n\
         |---|---|---|---:|---:|---:|---|---|\n",
    );
    let mut within = 0;
    let mut total = 0;
    for c in cells {
        let name = headline_name(&c.setup);
        let Some(r) = recorded
            .iter()
            .find(|r| r.workload == c.workload && r.tier == c.tier && r.setup == name)
        else {
            continue;
        };
        total += 1;
        let twin = c.goodput_per_gpu.unwrap_or(0.0);
        let (diff, ok) = match rel_diff(twin, r.goodput_per_gpu) {
            Some(d) => (format!("{:+.0}%", d * 100.0), d.abs() <= tolerance),
            None => (format!("{:+.2} abs", twin - r.goodput_per_gpu), twin < 0.5),
        };
        // Both lower bounds at the same top rate: equal by construction.
        let ok = ok || (r.lower_bound && !c.bounded && (twin - r.goodput_per_gpu).abs() < 1e-9);
        if ok {
            within += 1;
        }
        let att: Vec<String> = r
            .attainment
            .iter()
            .zip(&c.report.runs)
            .map(|(m, t)| {
                format!(
                    "{:.0}→{:.0}",
                    m * 100.0,
                    t.summary.attainment.unwrap_or(0.0) * 100.0
                )
            })
            .collect();
        out.push_str(&format!(
            "| {} | {} | {} | {}{:.2} | {} | {} | {} | {} |\n",
            c.workload,
            c.tier,
            name,
            if r.lower_bound { "≥" } else { "" },
            r.goodput_per_gpu,
            goodput_text(c),
            diff,
            if ok { "yes" } else { "**no**" },
            att.join(", "),
        ));
    }
    out.push_str(&format!(
        "\n{within} of {total} cells within {:.0}% (a recorded 0 counts as matched when the twin is under 0.5 req/s/GPU)\n",
        tolerance * 100.0
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_recorded_report() {
        let md = "\
### summarization, interactive tier (TTFT 0.5 s, TPOT 30 ms)

| setup | 4 req/s | 8 req/s | goodput/GPU (req/s) |
|---|---:|---:|---:|
| colocated | 100% | 36% | 4.28 |
| slo_aware | 100% | 0% (18 rej.) | 4.22 |

### chat, standard tier (TTFT 2.0 s, TPOT 100 ms)

| setup | 16 req/s | goodput/GPU (req/s) |
|---|---:|---:|
| disaggregated | 100% | 32.00 (≥, no rate failed) |
";
        let r = parse_report_md(md);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].workload, "summarization");
        assert_eq!(r[0].tier, "interactive");
        assert_eq!(r[0].attainment, vec![1.0, 0.36]);
        assert_eq!(r[1].attainment, vec![1.0, 0.0]);
        assert_eq!(r[1].goodput_per_gpu, 4.22);
        assert!(r[2].lower_bound && r[2].goodput_per_gpu == 32.0);
        assert_eq!(rel_diff(4.0, 5.0), Some(-0.2));
        assert_eq!(rel_diff(1.0, 0.0), None);
    }
}
