//! The budget the gateway passes to engines with each call (`x-baton-slo`), so an engine can size its steps and
//! order its prompts by it. Engines honour it only on fleet-authenticated calls (a client could otherwise jump the
//! queue); other engines ignore an unknown header.
//!
//! Format: `ttft=<ms>;tpot=<ms>;deadline=<unix ms>`, each part optional, unknown keys ignored (so later versions
//! can add some). `deadline` is the absolute time the first token is due (the request's arrival at the gateway
//! plus its TTFT budget): an engine that receives the call late knows how much is left. It assumes the fleet's
//! clocks agree to a few milliseconds (NTP); an engine compares it with its own clock.

use std::fmt;

pub const SLO_HEADER: &str = "x-baton-slo";
/// Where an engine reports its state on each response (JSON of `baton_policies::step::EngineReport`).
pub const LOAD_HEADER: &str = "x-baton-load";

/// Budgets beyond a day are not budgets.
const MAX_MS: f64 = 86_400_000.0;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineSlo {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    /// Unix time in milliseconds when the first token is due.
    pub deadline_unix_ms: Option<u64>,
}

impl EngineSlo {
    pub fn is_empty(&self) -> bool {
        self.ttft_ms.is_none() && self.tpot_ms.is_none() && self.deadline_unix_ms.is_none()
    }

    /// Parses a header value; `None` when it is malformed (a malformed budget is no budget, never an error the
    /// client would see: the header comes from the gateway).
    pub fn parse(v: &str) -> Option<Self> {
        if v.len() > 256 {
            return None;
        }
        let mut out = Self::default();
        for part in v.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, val) = part.split_once('=')?;
            match k.trim() {
                "ttft" => out.ttft_ms = Some(ms(val)?),
                "tpot" => out.tpot_ms = Some(ms(val)?),
                "deadline" => out.deadline_unix_ms = Some(val.trim().parse().ok()?),
                _ => {}
            }
        }
        Some(out)
    }
}

fn ms(v: &str) -> Option<f64> {
    let x: f64 = v.trim().parse().ok()?;
    (x.is_finite() && x > 0.0 && x <= MAX_MS).then_some(x)
}

impl fmt::Display for EngineSlo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(t) = self.ttft_ms {
            write!(f, "ttft={t}")?;
            sep = ";";
        }
        if let Some(t) = self.tpot_ms {
            write!(f, "{sep}tpot={t}")?;
            sep = ";";
        }
        if let Some(d) = self.deadline_unix_ms {
            write!(f, "{sep}deadline={d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tolerates_unknown_keys() {
        let s = EngineSlo {
            ttft_ms: Some(500.0),
            tpot_ms: Some(30.5),
            deadline_unix_ms: Some(1_765_150_000_123),
        };
        assert_eq!(s.to_string(), "ttft=500;tpot=30.5;deadline=1765150000123");
        assert_eq!(EngineSlo::parse(&s.to_string()), Some(s));
        assert_eq!(
            EngineSlo::parse(" tpot = 20 ; future=x ").unwrap(),
            EngineSlo {
                tpot_ms: Some(20.0),
                ..Default::default()
            }
        );
        assert!(EngineSlo::parse("").unwrap().is_empty());
    }

    #[test]
    fn hostile_values_are_no_budget() {
        for v in [
            "ttft=1e300",
            "ttft=-1",
            "ttft=0",
            "tpot=NaN",
            "tpot=inf",
            "deadline=-5",
            "deadline=99999999999999999999999",
            "ttft",
            &"ttft=1;".repeat(100),
        ] {
            assert_eq!(EngineSlo::parse(v), None, "{v}");
        }
    }
}
