//! Rate sweeps and DistServe goodput: the highest request rate at which at least 90% of requests
//! meet the SLOs (rejected and failed requests are misses), read off a sweep of runs; also the
//! SLO-scale sweep (the same runs judged against SLOs scaled 0.5×–2×).

use serde::{Deserialize, Serialize};

use crate::metrics::attainment;
use crate::record::RequestRecord;
use crate::slo::Slo;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SweepError {
    #[error("bad rate list {0:?}: expected R1,R2,... or START:STOP:STEP (rates > 0, `inf` allowed in a list)")]
    Rates(String),
    #[error("bad scale list {0:?}: expected factors > 0 like 0.5,1,2")]
    Scales(String),
}

/// `1,2,4,8` or `start:stop:step` (stop included; at most 1000 rates).
pub fn parse_rates(s: &str) -> Result<Vec<f64>, SweepError> {
    let bad = || SweepError::Rates(s.to_owned());
    let num = |x: &str| x.trim().parse::<f64>().ok().filter(|r| *r > 0.0);
    let rates: Vec<f64> = if let [a, b, c] = s.split(':').collect::<Vec<_>>()[..] {
        let (start, stop, step) = (
            num(a).ok_or_else(bad)?,
            num(b).ok_or_else(bad)?,
            num(c).ok_or_else(bad)?,
        );
        if !(start.is_finite() && stop.is_finite() && step.is_finite()) || stop < start {
            return Err(bad());
        }
        let n = ((stop - start) / step + 1e-9).floor() as usize + 1;
        if n > 1000 {
            return Err(bad());
        }
        (0..n).map(|i| start + step * i as f64).collect()
    } else {
        s.split(',')
            .map(|x| num(x).ok_or_else(bad))
            .collect::<Result<_, _>>()?
    };
    if rates.is_empty() || rates.iter().any(|r| r.is_nan()) {
        return Err(bad());
    }
    Ok(rates)
}

/// Comma-separated positive factors.
pub fn parse_scales(s: &str) -> Result<Vec<f64>, SweepError> {
    s.split(',')
        .map(|x| {
            x.trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite() && *f > 0.0)
                .ok_or_else(|| SweepError::Scales(s.to_owned()))
        })
        .collect()
}

/// DistServe goodput read off (rate, attainment) points.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DistServeGoodput {
    /// Required attainment (0.9).
    pub target: f64,
    /// The highest tested rate such that it and every lower tested rate meet the target
    /// (`None`: even the lowest rate misses).
    pub highest_passing_rate: Option<f64>,
    /// Linear interpolation of where attainment crosses the target between that rate and the
    /// next (failing) one; equal to `highest_passing_rate` when no tested rate fails.
    pub interpolated_rate: Option<f64>,
    /// A tested rate above it failed (otherwise the sweep did not reach the limit: the true
    /// goodput may be higher).
    pub bounded: bool,
}

/// `points` are (rate, attainment); infinite rates are ignored, order does not matter.
pub fn distserve_goodput(points: &[(f64, f64)], target: f64) -> DistServeGoodput {
    let mut pts: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(r, a)| r.is_finite() && a.is_finite())
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let first_fail = pts.iter().position(|&(_, a)| a < target);
    let (highest, interpolated) = match first_fail {
        None => {
            let last = pts.last().map(|p| p.0);
            (last, last)
        }
        Some(0) => (None, None),
        Some(f) => {
            let (r0, a0) = pts[f - 1];
            let (r1, a1) = pts[f];
            let t = if a0 > a1 {
                (a0 - target) / (a0 - a1)
            } else {
                0.0
            };
            (Some(r0), Some(r0 + t.clamp(0.0, 1.0) * (r1 - r0)))
        }
    };
    DistServeGoodput {
        target,
        highest_passing_rate: highest,
        interpolated_rate: interpolated,
        bounded: first_fail.is_some(),
    }
}

/// The sweep judged against scaled SLOs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScalePoint {
    pub scale: f64,
    pub slo: Slo,
    /// (rate, attainment) per run.
    pub attainment: Vec<(f64, f64)>,
    pub goodput: DistServeGoodput,
}

/// For each factor: every run's attainment against `slo × factor`, and the DistServe goodput.
pub fn slo_scale_sweep(
    runs: &[(f64, &[RequestRecord])],
    slo: &Slo,
    scales: &[f64],
    target: f64,
) -> Vec<ScalePoint> {
    scales
        .iter()
        .map(|&scale| {
            let scaled = slo.scaled(scale);
            let attainment: Vec<(f64, f64)> = runs
                .iter()
                .map(|(rate, recs)| (*rate, attainment(recs, &scaled).1))
                .collect();
            ScalePoint {
                scale,
                slo: scaled,
                goodput: distserve_goodput(&attainment, target),
                attainment,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::ok;

    #[test]
    fn rate_lists() {
        assert_eq!(parse_rates("1,2,4.5").unwrap(), vec![1.0, 2.0, 4.5]);
        assert_eq!(
            parse_rates("1:3:0.5").unwrap(),
            vec![1.0, 1.5, 2.0, 2.5, 3.0]
        );
        assert_eq!(parse_rates("0.1:0.3:0.1").unwrap().len(), 3);
        assert_eq!(parse_rates("2,inf").unwrap()[1], f64::INFINITY);
        for bad in [
            "",
            "a",
            "0",
            "-1",
            "3:1:1",
            "1:2",
            "1:1e9:1e-9",
            "1:inf:1",
            "nan",
        ] {
            assert!(parse_rates(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_scales("0.5, 2").unwrap(), vec![0.5, 2.0]);
        assert!(parse_scales("0").is_err());
    }

    #[test]
    fn distserve_interpolates_between_pass_and_fail() {
        let g = distserve_goodput(&[(4.0, 0.70), (1.0, 1.0), (2.0, 0.95), (3.0, 0.85)], 0.9);
        assert_eq!(g.highest_passing_rate, Some(2.0));
        // 0.95 → 0.85 crosses 0.9 halfway between 2 and 3.
        assert!((g.interpolated_rate.unwrap() - 2.5).abs() < 1e-9);
        assert!(g.bounded);
        // A later rate passing again does not count (it must hold at every lower rate).
        let g = distserve_goodput(&[(1.0, 0.95), (2.0, 0.5), (3.0, 0.99)], 0.9);
        assert_eq!(g.highest_passing_rate, Some(1.0));
    }

    #[test]
    fn distserve_edges() {
        let all = distserve_goodput(&[(1.0, 1.0), (2.0, 0.9), (f64::INFINITY, 0.1)], 0.9);
        assert_eq!(all.highest_passing_rate, Some(2.0));
        assert_eq!(all.interpolated_rate, Some(2.0));
        assert!(!all.bounded);
        let none = distserve_goodput(&[(1.0, 0.5)], 0.9);
        assert_eq!(none.highest_passing_rate, None);
        assert!(none.bounded);
        assert_eq!(distserve_goodput(&[], 0.9).highest_passing_rate, None);
    }

    #[test]
    fn scale_sweep_rejudges_the_same_samples() {
        // Rate 1: TTFT 100 ms for all; rate 2: TTFT 300 ms.
        let low = vec![ok(0.1, 0.1, 1); 10];
        let high = vec![ok(0.3, 0.3, 1); 10];
        let slo = Slo::parse(&["ttft:200"]).unwrap();
        let pts = slo_scale_sweep(&[(1.0, &low), (2.0, &high)], &slo, &[0.25, 1.0, 2.0], 0.9);
        assert_eq!(pts[0].goodput.highest_passing_rate, None);
        assert_eq!(pts[1].goodput.highest_passing_rate, Some(1.0));
        assert_eq!(pts[2].goodput.highest_passing_rate, Some(2.0));
        assert_eq!(pts[1].attainment, vec![(1.0, 1.0), (2.0, 0.0)]);
        assert_eq!(pts[2].slo.ttft_ms, Some(400.0));
    }
}
