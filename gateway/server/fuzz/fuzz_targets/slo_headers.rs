//! Header values a client controls, through the gateway's real handling:
//! API-key authentication (open and keyed gateways), SLO classification and
//! turning the resulting budgets into deadlines. No input may panic (issue
//! 13: `x-slo-ttft-ms: 1e300` did), and every accepted budget is finite,
//! bounded and no tighter than the caller's class.
#![no_main]

use std::sync::LazyLock;

use baton_gateway::auth::{Auth, Secret};
use baton_gateway::config::GatewayConfig;
use baton_gateway::slo::classify::{classify, parse_budget_ms, MAX_BUDGET_MS};
use baton_gateway::slo::config::ApiKeyConfig;
use baton_gateway::slo::deadline_after;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tokio::time::Instant;

const NAMES: [&str; 6] = [
    "authorization",
    "x-api-key",
    "x-slo-class",
    "x-slo-ttft-ms",
    "x-slo-tpot-ms",
    "x-request-id",
];

static CONFIGS: LazyLock<Vec<(GatewayConfig, Auth)>> = LazyLock::new(|| {
    let open = GatewayConfig::default();
    let mut keyed = GatewayConfig {
        api_key: Some(Secret::new("sk-fuzz")),
        ..GatewayConfig::default()
    };
    keyed.slo.api_keys.push(ApiKeyConfig {
        // sha256("sk-acme")
        sha256: "5f8eee912cd7c0ccb238560e8a22e7f78909e6dac18288188f7f4ea35112700d".into(),
        tenant: "acme".into(),
        class: Some("interactive".into()),
    });
    [open, keyed]
        .into_iter()
        .map(|c| {
            let auth = Auth::new(&c).expect("valid fuzz config");
            (c, auth)
        })
        .collect()
});

fuzz_target!(|data: &[u8]| {
    // Pieces separated by 0xff: each piece's first byte picks the header
    // name, the rest is its value (appended, so names may repeat).
    let mut headers = HeaderMap::new();
    for piece in data.split(|b| *b == 0xff) {
        let Some((&sel, value)) = piece.split_first() else {
            continue;
        };
        let name = HeaderName::from_static(NAMES[usize::from(sel) % NAMES.len()]);
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(name, v);
        }
        if let Ok(s) = std::str::from_utf8(value) {
            if let Ok(ms) = parse_budget_ms("x-slo-ttft-ms", s) {
                assert!(ms.is_finite() && ms > 0.0 && ms <= MAX_BUDGET_MS);
            }
        }
    }
    for (config, auth) in CONFIGS.iter() {
        let _ = auth.admin(&headers);
        let Ok(caller) = auth.client(&headers) else {
            continue;
        };
        let Ok(target) = classify(&config.slo, &caller, &headers) else {
            continue;
        };
        let class = config.slo.classes[&target.class];
        for (got, floor) in [
            (target.budget.ttft_ms, class.ttft_ms),
            (target.budget.tpot_ms, class.tpot_ms),
        ] {
            if let Some(ms) = got {
                assert!(ms.is_finite() && ms <= MAX_BUDGET_MS, "{ms}");
                assert!(floor.is_some_and(|f| ms >= f), "{ms} tighter than {floor:?}");
                assert!(deadline_after(Instant::now(), ms).is_some());
            }
        }
    }
});
