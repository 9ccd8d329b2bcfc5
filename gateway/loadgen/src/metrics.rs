//! Aggregates a run's records: counts, latency percentiles (numpy's linear interpolation, as
//! `vllm bench serve` reports them), throughput, vLLM goodput (good requests per second) and SLO
//! attainment (good / sent: rejected and failed requests are misses).

use serde::{Deserialize, Serialize};

use crate::record::{Outcome, RequestRecord};
use crate::slo::Slo;

/// Distribution summary of one latency metric, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Stats {
    /// `None` when there are no samples. Input in seconds.
    pub fn from_secs(samples: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut ms: Vec<f64> = samples
            .into_iter()
            .filter(|x| x.is_finite())
            .map(|s| s * 1000.0)
            .collect();
        if ms.is_empty() {
            return None;
        }
        ms.sort_by(f64::total_cmp);
        Some(Self {
            count: ms.len(),
            mean: ms.iter().sum::<f64>() / ms.len() as f64,
            p50: percentile(&ms, 50.0),
            p90: percentile(&ms, 90.0),
            p99: percentile(&ms, 99.0),
            max: ms[ms.len() - 1],
        })
    }
}

/// numpy's default (linear) percentile of sorted, non-empty data.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = (rank.floor() as usize).min(sorted.len() - 1);
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// Everything one run measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub sent: usize,
    pub completed: usize,
    /// Neither completed nor rejected: HTTP errors, aborted streams, connection failures, timeouts.
    pub failed: usize,
    /// HTTP 429.
    pub rejected: usize,
    pub timed_out: usize,
    /// From the first send to the last answer, seconds.
    pub duration_s: f64,
    /// Completed requests per second.
    pub request_throughput: f64,
    /// Output tokens of completed requests per second.
    pub output_throughput: f64,
    pub total_input_tokens: u64,
    pub total_output_tokens: u64,
    pub ttft_ms: Option<Stats>,
    pub tpot_ms: Option<Stats>,
    pub itl_ms: Option<Stats>,
    pub e2el_ms: Option<Stats>,
    /// The SLOs goodput and attainment were judged against (absent: none given).
    pub slo: Option<Slo>,
    pub good: Option<usize>,
    /// vLLM goodput: good requests per second of the run.
    pub goodput: Option<f64>,
    /// Good / sent.
    pub attainment: Option<f64>,
    /// |predicted − measured| / measured of completed requests the gateway made a prediction for
    /// (`x-baton-predicted`), as percentages in the `Stats` fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_prediction_error_pct: Option<Stats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpot_prediction_error_pct: Option<Stats>,
}

/// Relative prediction errors in percent; `Stats` takes seconds, so a percentage is passed as x/1000.
fn prediction_errors<'a>(
    ok: &[&'a RequestRecord],
    pair: impl Fn(&'a RequestRecord) -> Option<(f64, f64)>,
) -> Option<Stats> {
    Stats::from_secs(
        ok.iter()
            .filter_map(|r| pair(r))
            .filter(|&(_, m)| m > 0.0)
            .map(|(p, m)| (p - m).abs() / m * 100.0 / 1000.0),
    )
}

impl RunSummary {
    pub fn compute(records: &[RequestRecord], duration_s: f64, slo: &Slo) -> Self {
        let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.outcome.is_ok()).collect();
        let rejected = records.iter().filter(|r| r.outcome.is_rejected()).count();
        let timed_out = records
            .iter()
            .filter(|r| r.outcome == Outcome::Timeout)
            .count();
        let per_s = |x: f64| {
            if duration_s > 0.0 {
                x / duration_s
            } else {
                0.0
            }
        };
        let total_output_tokens: u64 = ok.iter().filter_map(|r| r.output_tokens).sum();
        let total_input_tokens: u64 = ok
            .iter()
            .map(|r| r.prompt_tokens.unwrap_or(u64::from(r.prompt_len)))
            .sum();
        let (slo, good, goodput, attainment) = if slo.is_empty() {
            (None, None, None, None)
        } else {
            let (good, attainment) = attainment(records, slo);
            (
                Some(*slo),
                Some(good),
                Some(per_s(good as f64)),
                Some(attainment),
            )
        };
        Self {
            sent: records.len(),
            completed: ok.len(),
            failed: records.len() - ok.len() - rejected,
            rejected,
            timed_out,
            duration_s,
            request_throughput: per_s(ok.len() as f64),
            output_throughput: per_s(total_output_tokens as f64),
            total_input_tokens,
            total_output_tokens,
            ttft_ms: Stats::from_secs(ok.iter().filter_map(|r| r.ttft_s)),
            tpot_ms: Stats::from_secs(ok.iter().filter_map(|r| r.tpot_s())),
            itl_ms: Stats::from_secs(ok.iter().flat_map(|r| r.itl_s.iter().copied())),
            e2el_ms: Stats::from_secs(ok.iter().filter_map(|r| r.latency_s)),
            slo,
            good,
            goodput,
            attainment,
            ttft_prediction_error_pct: prediction_errors(&ok, |r| {
                Some((r.predicted?.ttft_ms?, r.ttft_s? * 1000.0))
            }),
            tpot_prediction_error_pct: prediction_errors(&ok, |r| {
                Some((r.predicted?.tpot_ms?, r.tpot_s()? * 1000.0))
            }),
        }
    }
}

/// (good requests, good / sent); an empty run attains 0.
pub fn attainment(records: &[RequestRecord], slo: &Slo) -> (usize, f64) {
    let good = records.iter().filter(|r| slo.is_good(r)).count();
    let frac = if records.is_empty() {
        0.0
    } else {
        good as f64 / records.len() as f64
    };
    (good, frac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::{failed, ok};

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn percentiles_match_numpy() {
        let xs = [1.0, 2.0, 3.0, 4.0];
        // numpy.percentile([1,2,3,4], [50, 90, 99]) = 2.5, 3.7, 3.97
        assert!(close(percentile(&xs, 50.0), 2.5));
        assert!(close(percentile(&xs, 90.0), 3.7));
        assert!(close(percentile(&xs, 99.0), 3.97));
        assert!(close(percentile(&[7.0], 99.0), 7.0));
        assert!(percentile(&[], 50.0).is_nan());
        assert!(Stats::from_secs([]).is_none());
    }

    #[test]
    fn counts_throughput_goodput_attainment() {
        let mut fast = ok(0.1, 1.1, 11); // TTFT 100 ms, TPOT 100 ms
        fast.itl_s = vec![0.1; 10];
        let slow = ok(0.9, 1.9, 11); // TTFT 900 ms
        let records = vec![
            fast.clone(),
            fast,
            slow,
            failed(Outcome::Rejected {
                retry_after: Some("1".into()),
            }),
            failed(Outcome::Timeout),
        ];
        let slo = Slo::parse(&["ttft:500", "tpot:100"]).unwrap();
        let s = RunSummary::compute(&records, 2.0, &slo);
        assert_eq!(
            (s.sent, s.completed, s.failed, s.rejected, s.timed_out),
            (5, 3, 1, 1, 1)
        );
        assert_eq!(s.good, Some(2));
        assert!(close(s.goodput.unwrap(), 1.0)); // 2 good / 2 s
        assert!(close(s.attainment.unwrap(), 0.4)); // rejected and failed are misses
        assert!(close(s.request_throughput, 1.5));
        assert!(close(s.output_throughput, 33.0 / 2.0));
        let tpot = s.tpot_ms.unwrap();
        assert_eq!(tpot.count, 3);
        assert!(close(tpot.mean, 100.0));
        let ttft = s.ttft_ms.unwrap();
        assert!(close(ttft.p50, 100.0));
        assert!(close(ttft.max, 900.0));
        assert_eq!(s.itl_ms.unwrap().count, 20);
        let none = RunSummary::compute(&records, 2.0, &Slo::default());
        assert_eq!((none.goodput, none.attainment), (None, None));
        assert_eq!(none.ttft_prediction_error_pct, None);
    }

    #[test]
    fn prediction_errors_are_relative_to_what_was_measured() {
        let mut a = ok(0.1, 1.1, 11); // TTFT 100 ms, TPOT 100 ms
        a.predicted = Some(crate::client::Predicted {
            ttft_ms: Some(120.0),
            tpot_ms: Some(90.0),
        });
        let b = ok(0.2, 1.2, 11); // no prediction: not counted
        let s = RunSummary::compute(&[a, b], 1.0, &Slo::default());
        let t = s.ttft_prediction_error_pct.unwrap();
        assert_eq!(t.count, 1);
        assert!(close(t.p50, 20.0), "{t:?}");
        assert!(close(s.tpot_prediction_error_pct.unwrap().p50, 10.0));
    }
}
