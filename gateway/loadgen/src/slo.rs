//! Service-level objectives as `vllm bench serve --goodput` takes them (`ttft:MS tpot:MS
//! e2el:MS`): a request is good only if it completed and meets every SLO given.

use baton_slo::{within_budget, Measured, Targets, Verdict};
use serde::{Deserialize, Serialize};

use crate::record::RequestRecord;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SloError {
    #[error("bad SLO {0:?}: expected ttft:MS, tpot:MS or e2el:MS with MS > 0")]
    Bad(String),
}

/// Latency targets in milliseconds; `None` = not constrained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpot_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e2el_ms: Option<f64>,
}

impl Slo {
    /// Parses `ttft:500`-style items (several may share one argument, separated by spaces or
    /// commas).
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, SloError> {
        let mut slo = Self::default();
        for item in items
            .iter()
            .flat_map(|s| s.as_ref().split([' ', ',']))
            .filter(|s| !s.is_empty())
        {
            let bad = || SloError::Bad(item.to_owned());
            let (k, v) = item.split_once(':').ok_or_else(bad)?;
            let ms: f64 = v.parse().map_err(|_| bad())?;
            if !(ms.is_finite() && ms > 0.0) {
                return Err(bad());
            }
            match k {
                "ttft" => slo.ttft_ms = Some(ms),
                "tpot" => slo.tpot_ms = Some(ms),
                "e2el" => slo.e2el_ms = Some(ms),
                _ => return Err(bad()),
            }
        }
        Ok(slo)
    }

    pub fn is_empty(&self) -> bool {
        self.ttft_ms.is_none() && self.tpot_ms.is_none() && self.e2el_ms.is_none()
    }

    /// Every target multiplied by `factor` (DistServe's SLO-scale sweep).
    pub fn scaled(&self, factor: f64) -> Self {
        Self {
            ttft_ms: self.ttft_ms.map(|x| x * factor),
            tpot_ms: self.tpot_ms.map(|x| x * factor),
            e2el_ms: self.e2el_ms.map(|x| x * factor),
        }
    }

    /// Completed and within every target: TTFT and TPOT by the gateway's own rule
    /// ([`baton_slo::Verdict`]), so the load generator and the gateway agree on what is good.
    /// Like vLLM, a request with ≤ 1 output token has no TPOT to miss.
    pub fn is_good(&self, r: &RequestRecord) -> bool {
        if !r.outcome.is_ok() {
            return false;
        }
        let ms = |secs: Option<f64>| secs.map(|s| s * 1000.0);
        let targets = Targets {
            ttft_ms: self.ttft_ms,
            tpot_ms: self.tpot_ms,
        };
        let measured = Measured {
            ttft_ms: ms(r.ttft_s),
            tpot_ms: ms(r.tpot_s()),
        };
        Verdict::served(targets, measured).is_good() && within_budget(self.e2el_ms, ms(r.latency_s))
    }
}

impl std::fmt::Display for Slo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = [
            ("ttft", self.ttft_ms),
            ("tpot", self.tpot_ms),
            ("e2el", self.e2el_ms),
        ]
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}:{v}")))
        .collect();
        f.write_str(&parts.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::{failed, ok};
    use crate::record::Outcome;

    #[test]
    fn parses_vllm_syntax() {
        let s = Slo::parse(&["ttft:500", "tpot:30"]).unwrap();
        assert_eq!(s.ttft_ms, Some(500.0));
        assert_eq!(s.tpot_ms, Some(30.0));
        assert_eq!(s.e2el_ms, None);
        assert_eq!(Slo::parse(&["ttft:1 e2el:2"]).unwrap().e2el_ms, Some(2.0));
        assert_eq!(s.to_string(), "ttft:500 tpot:30");
        for bad in ["ttft", "ttft:x", "ttft:-1", "foo:1", "ttft:inf"] {
            assert!(Slo::parse(&[bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn good_means_every_given_slo() {
        let s = Slo::parse(&["ttft:100", "tpot:10"]).unwrap();
        // TTFT 50 ms, TPOT (1.05 − 0.05) / 100 = 10 ms: exactly on target is good.
        assert!(s.is_good(&ok(0.05, 1.05, 101)));
        assert!(!s.is_good(&ok(0.15, 1.05, 101)));
        assert!(!s.is_good(&ok(0.05, 2.05, 101)));
        // One output token: TPOT counts as 0.
        assert!(s.is_good(&ok(0.05, 0.05, 1)));
        assert!(!s.is_good(&failed(Outcome::Rejected { retry_after: None })));
        assert!(Slo::default().is_good(&ok(9.0, 99.0, 5)));
        assert!(!s.scaled(0.5).is_good(&ok(0.06, 0.06, 1)));
    }
}
