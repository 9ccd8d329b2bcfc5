//! Results on disk and on screen: the JSON report (one shape for a single run and a sweep: a
//! list of runs, one per rate), the CSV (one row per rate) and the text summary.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::metrics::{RunSummary, Stats};
use crate::record::RequestRecord;
use crate::slo::Slo;
use crate::sweep::{DistServeGoodput, ScalePoint};

/// How the benchmark was run (for the record).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BenchConfig {
    pub url: String,
    pub endpoint: String,
    pub model: String,
    pub workload: String,
    pub burstiness: f64,
    pub seed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_requests: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slo_class: Option<String>,
}

/// One run at one rate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RateRun {
    /// Requests per second asked for (`null` in JSON for an infinite rate).
    #[serde(with = "rate_json")]
    pub rate: f64,
    pub summary: RunSummary,
    /// Per-request records (written only with `--save-records`; the CDF plots of `plot` need
    /// them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<RequestRecord>,
}

/// A `run` or `sweep` result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The setup's name in plots and CSV (`--label`).
    pub label: String,
    /// Unix time the benchmark started.
    pub started_at: u64,
    pub config: BenchConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slo: Option<Slo>,
    pub runs: Vec<RateRun>,
    /// DistServe goodput over the runs (when SLOs were given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distserve: Option<DistServeGoodput>,
    /// The same at 99% attainment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distserve_99: Option<DistServeGoodput>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slo_scale: Vec<ScalePoint>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a baton-bench report: {message}")]
    Parse { path: String, message: String },
}

impl Report {
    pub fn to_json(&self, with_records: bool) -> String {
        let json = if with_records {
            serde_json::to_string_pretty(self)
        } else {
            let mut slim = self.clone();
            slim.runs.iter_mut().for_each(|r| r.records.clear());
            serde_json::to_string_pretty(&slim)
        };
        json.unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    pub fn write_json(&self, path: &Path, with_records: bool) -> Result<(), ReportError> {
        write(path, self.to_json(with_records) + "\n")
    }

    pub fn read_json(path: &Path) -> Result<Self, ReportError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReportError::Read {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| ReportError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    pub fn to_csv(&self) -> String {
        let mut out = String::from(CSV_HEADER);
        out.push('\n');
        for run in &self.runs {
            out.push_str(&csv_row(&self.label, run));
            out.push('\n');
        }
        out
    }

    pub fn write_csv(&self, path: &Path) -> Result<(), ReportError> {
        write(path, self.to_csv())
    }
}

const CSV_HEADER: &str = "label,rate,sent,completed,failed,rejected,timed_out,duration_s,\
request_throughput,output_throughput,good,goodput,attainment,\
ttft_mean_ms,ttft_p50_ms,ttft_p90_ms,ttft_p99_ms,\
tpot_mean_ms,tpot_p50_ms,tpot_p90_ms,tpot_p99_ms,\
itl_mean_ms,itl_p50_ms,itl_p90_ms,itl_p99_ms,\
e2el_mean_ms,e2el_p50_ms,e2el_p90_ms,e2el_p99_ms";

fn csv_row(label: &str, run: &RateRun) -> String {
    let s = &run.summary;
    let opt = |x: Option<f64>| x.map_or(String::new(), |v| format!("{v:.6}"));
    let stats = |st: &Option<Stats>| match st {
        Some(st) => format!("{:.3},{:.3},{:.3},{:.3}", st.mean, st.p50, st.p90, st.p99),
        None => ",,,".to_owned(),
    };
    let label = if label.contains([',', '"', '\n']) {
        format!("\"{}\"", label.replace('"', "\"\""))
    } else {
        label.to_owned()
    };
    format!(
        "{label},{},{},{},{},{},{},{:.3},{:.6},{:.3},{},{},{},{},{},{},{}",
        rate_text(run.rate),
        s.sent,
        s.completed,
        s.failed,
        s.rejected,
        s.timed_out,
        s.duration_s,
        s.request_throughput,
        s.output_throughput,
        s.good.map_or(String::new(), |g| g.to_string()),
        opt(s.goodput),
        opt(s.attainment),
        stats(&s.ttft_ms),
        stats(&s.tpot_ms),
        stats(&s.itl_ms),
        stats(&s.e2el_ms),
    )
}

pub fn rate_text(rate: f64) -> String {
    if rate.is_finite() {
        format!("{rate}")
    } else {
        "inf".to_owned()
    }
}

/// A human summary of one run, shaped like `vllm bench serve`'s.
pub fn text_summary(label: &str, rate: f64, s: &RunSummary) -> String {
    let mut out = format!(
        "============ {label} @ {} req/s ============\n",
        rate_text(rate)
    );
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<36}{v:>12}\n"));
    line("Requests sent:", s.sent.to_string());
    line("Completed:", s.completed.to_string());
    line("Failed:", s.failed.to_string());
    line("Rejected (429):", s.rejected.to_string());
    line("Duration (s):", format!("{:.2}", s.duration_s));
    line(
        "Request throughput (req/s):",
        format!("{:.2}", s.request_throughput),
    );
    line(
        "Output token throughput (tok/s):",
        format!("{:.2}", s.output_throughput),
    );
    if let (Some(slo), Some(g), Some(a)) = (s.slo, s.goodput, s.attainment) {
        line("SLOs (ms):", slo.to_string());
        line("Goodput (req/s):", format!("{g:.2}"));
        line("SLO attainment (good/sent):", format!("{:.1}%", a * 100.0));
    }
    for (name, st) in [
        ("TTFT", &s.ttft_ms),
        ("TPOT", &s.tpot_ms),
        ("ITL", &s.itl_ms),
        ("E2E", &s.e2el_ms),
    ] {
        if let Some(st) = st {
            line(
                &format!("{name} mean/p50/p90/p99 (ms):"),
                format!("{:.1}/{:.1}/{:.1}/{:.1}", st.mean, st.p50, st.p90, st.p99),
            );
        }
    }
    out
}

/// Infinite rates are `null` in JSON (which has no infinity).
mod rate_json {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(rate: &f64, s: S) -> Result<S::Ok, S::Error> {
        if rate.is_finite() {
            s.serialize_f64(*rate)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
    }
}

fn write(path: &Path, text: String) -> Result<(), ReportError> {
    std::fs::write(path, text).map_err(|source| ReportError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::ok;

    fn report() -> Report {
        let slo = Slo::parse(&["ttft:500"]).unwrap();
        let recs = vec![ok(0.1, 0.5, 5), ok(0.9, 1.0, 5)];
        Report {
            label: "a,b".into(),
            started_at: 1,
            config: BenchConfig::default(),
            slo: Some(slo),
            runs: vec![
                RateRun {
                    rate: 2.0,
                    summary: RunSummary::compute(&recs, 1.0, &slo),
                    records: recs.clone(),
                },
                RateRun {
                    rate: f64::INFINITY,
                    summary: RunSummary::compute(&[], 0.0, &slo),
                    records: vec![],
                },
            ],
            distserve: None,
            distserve_99: None,
            slo_scale: vec![],
        }
    }

    #[test]
    fn json_round_trip_with_and_without_records() {
        let r = report();
        let back: Report = serde_json::from_str(&r.to_json(true)).unwrap();
        assert_eq!(back, r);
        let slim: Report = serde_json::from_str(&r.to_json(false)).unwrap();
        assert!(slim.runs[0].records.is_empty());
        assert_eq!(slim.runs[1].rate, f64::INFINITY);
    }

    #[test]
    fn csv_has_a_row_per_rate() {
        let csv = report().to_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3);
        let cols = lines[0].split(',').count();
        assert!(lines[1].starts_with("\"a,b\",2,2,2,0,0,0,"), "{}", lines[1]);
        assert!(lines[2].starts_with("\"a,b\",inf,0,"));
        // The quoted label holds one comma.
        assert_eq!(lines[1].split(',').count(), cols + 1);
        assert!(text_summary("x", 2.0, &report().runs[0].summary).contains("50.0%"));
    }
}
