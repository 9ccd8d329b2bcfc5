//! Which SLO a request is held to: API key → tenant (and class), then the
//! `x-slo-class` header, then explicit `x-slo-ttft-ms` / `x-slo-tpot-ms`.

use baton_policies::slo::Budget;
use baton_protocol::ProtocolError;
use http::HeaderMap;
use sha2::{Digest, Sha256};

use super::config::SloConfig;

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

pub const ANONYMOUS: &str = "anonymous";

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

fn bearer(h: &HeaderMap) -> Option<&str> {
    header(h, "authorization")
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .or_else(|| header(h, "x-api-key"))
}

fn sha256_hex(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn ms_header(h: &HeaderMap, name: &'static str) -> Result<Option<f64>, ProtocolError> {
    match header(h, name) {
        None => Ok(None),
        Some(v) => match v.parse::<f64>() {
            Ok(x) if x.is_finite() && x > 0.0 => Ok(Some(x)),
            _ => Err(ProtocolError::InvalidField {
                field: name,
                reason: "must be a positive number of milliseconds".into(),
            }),
        },
    }
}

/// Classifies a request; an unknown class or a bad budget header is a 400.
pub fn classify(cfg: &SloConfig, headers: &HeaderMap) -> Result<SloTarget, ProtocolError> {
    let mut tenant = ANONYMOUS.to_owned();
    let mut class = cfg.default_class.clone();
    if let Some(key) = bearer(headers) {
        let digest = sha256_hex(key);
        if let Some(k) = cfg
            .api_keys
            .iter()
            .find(|k| k.sha256.eq_ignore_ascii_case(&digest))
        {
            tenant = k.tenant.clone();
            if let Some(c) = &k.class {
                class = c.clone();
            }
        }
    }
    if let Some(c) = header(headers, "x-slo-class") {
        if !cfg.classes.contains_key(c) {
            let known: Vec<&str> = cfg.classes.keys().map(String::as_str).collect();
            return Err(ProtocolError::InvalidField {
                field: "x-slo-class",
                reason: format!("unknown class '{c}' (known: {})", known.join(", ")),
            });
        }
        class = c.to_owned();
    }
    let base = cfg.classes.get(&class).copied().unwrap_or_default();
    let mut budget = Budget {
        ttft_ms: base.ttft_ms,
        tpot_ms: base.tpot_ms,
    };
    if let Some(t) = ms_header(headers, "x-slo-ttft-ms")? {
        budget.ttft_ms = Some(t);
    }
    if let Some(t) = ms_header(headers, "x-slo-tpot-ms")? {
        budget.tpot_ms = Some(t);
    }
    Ok(SloTarget {
        class,
        tenant,
        budget,
        store_nonce: rand::random(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slo::config::ApiKeyConfig;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn precedence_key_then_class_then_explicit() {
        let mut cfg = SloConfig::default();
        cfg.api_keys.push(ApiKeyConfig {
            sha256: sha256_hex("sk-acme"),
            tenant: "acme".into(),
            class: Some("interactive".into()),
        });
        let t = classify(&cfg, &HeaderMap::new()).unwrap();
        assert_eq!(
            (t.class.as_str(), t.tenant.as_str()),
            ("standard", ANONYMOUS)
        );
        assert_eq!(t.budget.ttft_ms, Some(2000.0));
        let t = classify(&cfg, &headers(&[("authorization", "Bearer sk-acme")])).unwrap();
        assert_eq!(
            (t.class.as_str(), t.tenant.as_str()),
            ("interactive", "acme")
        );
        let t = classify(
            &cfg,
            &headers(&[
                ("authorization", "Bearer sk-acme"),
                ("x-slo-class", "batch"),
            ]),
        )
        .unwrap();
        assert_eq!(t.class, "batch");
        assert_eq!(t.budget.ttft_ms, None);
        let t = classify(
            &cfg,
            &headers(&[("x-slo-ttft-ms", "250"), ("x-slo-tpot-ms", "20")]),
        )
        .unwrap();
        assert_eq!(t.budget.ttft_ms, Some(250.0));
        assert_eq!(t.budget.tpot_ms, Some(20.0));
        // An unknown key is simply anonymous.
        let t = classify(&cfg, &headers(&[("authorization", "Bearer nope")])).unwrap();
        assert_eq!(t.tenant, ANONYMOUS);
    }

    #[test]
    fn bad_headers_are_client_errors() {
        let cfg = SloConfig::default();
        let e = classify(&cfg, &headers(&[("x-slo-class", "gold")])).unwrap_err();
        assert_eq!(e.param(), Some("x-slo-class"));
        assert!(e.to_string().contains("interactive"));
        let e = classify(&cfg, &headers(&[("x-slo-ttft-ms", "-3")])).unwrap_err();
        assert_eq!(e.param(), Some("x-slo-ttft-ms"));
    }
}
