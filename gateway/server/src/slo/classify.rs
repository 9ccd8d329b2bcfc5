//! Which SLO a request is held to: the caller's class (from its API key,
//! see [`crate::auth`]), loosened — never tightened — by `x-slo-class`, then
//! explicit `x-slo-ttft-ms` / `x-slo-tpot-ms`, clamped to the class.

use baton_policies::slo::Budget;
use baton_protocol::ProtocolError;
use http::HeaderMap;

use super::config::{ClassConfig, SloConfig};
use crate::auth::Caller;

/// The SLO a request is held to.
#[derive(Debug, Clone, PartialEq)]
pub struct SloTarget {
    pub class: String,
    pub tenant: String,
    pub budget: Budget,
    /// Makes this request's key in the shared SLO store unique: the store
    /// counts one outcome per key (so a replayed backlog counts once), and
    /// the client's `x-request-id` alone can repeat (client retries, fixed
    /// ids, other replicas), which would merge distinct requests.
    pub store_nonce: u64,
}

pub use crate::auth::ANONYMOUS;

/// Largest budget a header or class may set (one day): anything above is a
/// mistake, and budgets become `Duration`s and deadlines.
pub const MAX_BUDGET_MS: f64 = 86_400_000.0;

fn header<'a>(h: &'a HeaderMap, name: &'static str) -> Result<Option<&'a str>, ProtocolError> {
    match h.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| ProtocolError::InvalidField {
                field: name,
                reason: "must be visible ASCII".into(),
            }),
    }
}

/// A budget header: a finite number of milliseconds in (0, [`MAX_BUDGET_MS`]].
pub fn parse_budget_ms(name: &'static str, value: &str) -> Result<f64, ProtocolError> {
    match value.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 && x <= MAX_BUDGET_MS => Ok(x),
        _ => Err(ProtocolError::InvalidField {
            field: name,
            reason: format!("must be a positive number of milliseconds, at most {MAX_BUDGET_MS}"),
        }),
    }
}

fn ms_header(h: &HeaderMap, name: &'static str) -> Result<Option<f64>, ProtocolError> {
    header(h, name)?
        .map(|v| parse_budget_ms(name, v))
        .transpose()
}

/// `a` is at least `b` where `None` means "no target" (unbounded).
fn no_tighter(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => a >= b,
    }
}

/// Class `a` is at least as loose as `b`: no target of `a` is tighter.
pub fn looser_or_equal(a: &ClassConfig, b: &ClassConfig) -> bool {
    no_tighter(a.ttft_ms, b.ttft_ms) && no_tighter(a.tpot_ms, b.tpot_ms)
}

/// An explicit budget, never tighter than the class's own (a class without
/// a target keeps none).
fn clamp(explicit: f64, class: Option<f64>) -> Option<f64> {
    class.map(|c| explicit.max(c))
}

/// Checks the configured classes (budgets are finite, positive, bounded).
pub fn validate(cfg: &SloConfig) -> Result<(), String> {
    for (name, c) in &cfg.classes {
        for (what, v) in [("ttft_ms", c.ttft_ms), ("tpot_ms", c.tpot_ms)] {
            if let Some(v) = v {
                if !(v.is_finite() && v > 0.0 && v <= MAX_BUDGET_MS) {
                    return Err(format!(
                        "SLO class '{name}': {what} must be in (0, {MAX_BUDGET_MS}]"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The target of a request refused before it was classified: the caller's
/// class (its key's, or the default), or the default class for a caller
/// not yet known (a 401); tenant `anonymous` then.
pub fn unclassified(cfg: &SloConfig, caller: Option<&Caller>) -> SloTarget {
    let class = caller
        .and_then(|c| c.ceiling.clone())
        .unwrap_or_else(|| cfg.default_class.clone());
    let base = cfg.classes.get(&class).copied().unwrap_or_default();
    SloTarget {
        class,
        tenant: caller.map_or_else(|| ANONYMOUS.to_owned(), |c| c.tenant.clone()),
        budget: Budget {
            ttft_ms: base.ttft_ms,
            tpot_ms: base.tpot_ms,
        },
        store_nonce: rand::random(),
    }
}

/// Classifies an authenticated caller's request. Its class is its key's
/// (or the default); `x-slo-class` may only loosen it, and explicit
/// `x-slo-ttft-ms` / `x-slo-tpot-ms` are clamped to be no tighter than the
/// class. An unknown class or a bad budget header is a 400.
pub fn classify(
    cfg: &SloConfig,
    caller: &Caller,
    headers: &HeaderMap,
) -> Result<SloTarget, ProtocolError> {
    let mut class = caller
        .ceiling
        .clone()
        .unwrap_or_else(|| cfg.default_class.clone());
    if let Some(c) = header(headers, "x-slo-class")? {
        let Some(asked) = cfg.classes.get(c) else {
            let known: Vec<&str> = cfg.classes.keys().map(String::as_str).collect();
            let shown: String = c.chars().take(64).collect();
            return Err(ProtocolError::InvalidField {
                field: "x-slo-class",
                reason: format!("unknown class '{shown}' (known: {})", known.join(", ")),
            });
        };
        let allowed = match caller.ceiling.as_ref().and_then(|k| cfg.classes.get(k)) {
            Some(ceiling) => looser_or_equal(asked, ceiling),
            None => true,
        };
        if allowed {
            class = c.to_owned();
        }
    }
    let base = cfg.classes.get(&class).copied().unwrap_or_default();
    let mut budget = Budget {
        ttft_ms: base.ttft_ms,
        tpot_ms: base.tpot_ms,
    };
    if let Some(t) = ms_header(headers, "x-slo-ttft-ms")? {
        budget.ttft_ms = clamp(t, base.ttft_ms);
    }
    if let Some(t) = ms_header(headers, "x-slo-tpot-ms")? {
        budget.tpot_ms = clamp(t, base.tpot_ms);
    }
    Ok(SloTarget {
        class,
        tenant: caller.tenant.clone(),
        budget,
        store_nonce: rand::random(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn caller(tenant: &str, ceiling: Option<&str>) -> Caller {
        Caller {
            tenant: tenant.into(),
            ceiling: ceiling.map(Into::into),
        }
    }

    #[test]
    fn open_gateway_precedence_class_then_clamped_budgets() {
        let cfg = SloConfig::default();
        let anon = caller(ANONYMOUS, None);
        let t = classify(&cfg, &anon, &HeaderMap::new()).unwrap();
        assert_eq!(
            (t.class.as_str(), t.tenant.as_str()),
            ("standard", ANONYMOUS)
        );
        assert_eq!(t.budget.ttft_ms, Some(2000.0));
        // Without keys every caller is equal: any class may be named.
        let t = classify(&cfg, &anon, &headers(&[("x-slo-class", "interactive")])).unwrap();
        assert_eq!(t.class, "interactive");
        // Explicit budgets never beat the class's own.
        let t = classify(
            &cfg,
            &anon,
            &headers(&[("x-slo-ttft-ms", "250"), ("x-slo-tpot-ms", "20")]),
        )
        .unwrap();
        assert_eq!(
            (t.budget.ttft_ms, t.budget.tpot_ms),
            (Some(2000.0), Some(100.0))
        );
        let t = classify(
            &cfg,
            &anon,
            &headers(&[
                ("x-slo-class", "interactive"),
                ("x-slo-ttft-ms", "450"),
                ("x-slo-tpot-ms", "80"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (t.budget.ttft_ms, t.budget.tpot_ms),
            (Some(500.0), Some(80.0))
        );
        let t = classify(
            &cfg,
            &anon,
            &headers(&[("x-slo-class", "batch"), ("x-slo-ttft-ms", "10")]),
        )
        .unwrap();
        assert_eq!(t.budget.ttft_ms, None, "batch has no target to tighten");
    }

    #[test]
    fn a_keys_class_can_be_loosened_but_not_raised() {
        let cfg = SloConfig::default();
        let batch = caller("acme", Some("batch"));
        let t = classify(&cfg, &batch, &HeaderMap::new()).unwrap();
        assert_eq!((t.class.as_str(), t.tenant.as_str()), ("batch", "acme"));
        let t = classify(&cfg, &batch, &headers(&[("x-slo-class", "interactive")])).unwrap();
        assert_eq!(t.class, "batch", "cannot raise the key's class");
        assert_eq!(t.budget.ttft_ms, None);
        let inter = caller("globex", Some("interactive"));
        let t = classify(&cfg, &inter, &headers(&[("x-slo-class", "batch")])).unwrap();
        assert_eq!(t.class, "batch", "a looser class is fine");
        let std = caller("initech", Some("standard"));
        let t = classify(
            &cfg,
            &std,
            &headers(&[("x-slo-class", "interactive"), ("x-slo-ttft-ms", "1")]),
        )
        .unwrap();
        assert_eq!(
            (t.class.as_str(), t.budget.ttft_ms),
            ("standard", Some(2000.0))
        );
    }

    #[test]
    fn class_order_follows_the_budgets() {
        let cfg = SloConfig::default();
        let c = |n: &str| cfg.classes[n];
        assert!(looser_or_equal(&c("batch"), &c("interactive")));
        assert!(looser_or_equal(&c("standard"), &c("interactive")));
        assert!(!looser_or_equal(&c("interactive"), &c("standard")));
        assert!(looser_or_equal(&c("standard"), &c("standard")));
        let mixed = ClassConfig {
            ttft_ms: Some(100.0),
            tpot_ms: None,
        };
        assert!(!looser_or_equal(&mixed, &c("standard")));
        assert!(!looser_or_equal(&c("standard"), &mixed));
    }

    #[test]
    fn bad_headers_are_client_errors_naming_the_header() {
        let cfg = SloConfig::default();
        let anon = caller(ANONYMOUS, None);
        let e = classify(&cfg, &anon, &headers(&[("x-slo-class", "gold")])).unwrap_err();
        assert_eq!(e.param(), Some("x-slo-class"));
        assert!(e.to_string().contains("interactive"));
        // Adversarial budgets: the panic of issue 13 (1e300) and friends.
        for bad in [
            "-3",
            "0",
            "-0",
            "1e300",
            "1e309",
            "NaN",
            "nan",
            "inf",
            "-inf",
            "infinity",
            "86400001",
            "99999999999999999999999999999",
            "0x10",
            "",
            "1_000",
            "5ms",
            "\u{0}",
            "1e-400",
        ] {
            for name in ["x-slo-ttft-ms", "x-slo-tpot-ms"] {
                let Ok(v) = http::HeaderValue::from_str(bad) else {
                    continue;
                };
                let mut h = HeaderMap::new();
                h.insert(name, v);
                let e = classify(&cfg, &anon, &h).expect_err(bad);
                assert_eq!(e.param(), Some(name), "{bad}");
            }
        }
        let mut h = HeaderMap::new();
        h.insert(
            "x-slo-ttft-ms",
            http::HeaderValue::from_bytes(b"\xff1").unwrap(),
        );
        assert_eq!(
            classify(&cfg, &anon, &h).unwrap_err().param(),
            Some("x-slo-ttft-ms")
        );
        for ok in ["1", " 86400000 ", "1e3", "0.5"] {
            assert!(
                classify(&cfg, &anon, &headers(&[("x-slo-ttft-ms", ok)])).is_ok(),
                "{ok}"
            );
        }
    }

    #[test]
    fn configured_classes_are_bounded() {
        let mut cfg = SloConfig::default();
        assert!(validate(&cfg).is_ok());
        cfg.classes.insert(
            "silly".into(),
            ClassConfig {
                ttft_ms: Some(1e300),
                tpot_ms: None,
            },
        );
        assert!(validate(&cfg).unwrap_err().contains("silly"));
    }
}
