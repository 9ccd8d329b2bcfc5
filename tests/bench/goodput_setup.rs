//! What the goodput test (`tests/tests/goodput.rs`) and the goodput sweep (`tests/bench/goodput_cpu.rs`)
//! share: the SLO classes, the workload mix, the sim pools and the gateway in front of them. Included by both
//! with `#[path]` (the harness library itself does not depend on the gateway).

use baton_e2e::sim::load::{Class, Workload};
use baton_e2e::sim::{LatencyModel, SimEngine, SimHandle, SimRole};
use baton_gateway::config::{GatewayConfig, PdProtocol, PrefillWorker};
use baton_gateway::slo::config::{ClassConfig, SloConfig};
use baton_policies::slo::{AdmissionMode, SloPolicyConfig};
use baton_policies::PolicyKind;

pub fn classes() -> Vec<Class> {
    vec![
        Class {
            name: "interactive".into(),
            weight: 1.0,
            ttft_ms: 300.0,
            tpot_ms: 25.0,
        },
        Class {
            name: "standard".into(),
            weight: 1.0,
            ttft_ms: 600.0,
            tpot_ms: 40.0,
        },
    ]
}

/// Prefill capacity of one sim engine is ~20k tokens/s, i.e. ~27 req/s of this prompt mix.
pub fn workload(seed: u64, rate: f64, requests: usize) -> Workload {
    Workload {
        seed,
        rate,
        requests,
        prompt_tokens: vec![(0.6, 50, 400), (0.4, 1000, 2000)],
        output_tokens: (16, 64),
        classes: classes(),
        chat_fraction: 0.25,
    }
}

/// `prefills` prefill and `decodes` decode sim engines with the default latency model.
pub async fn spawn_pools(prefills: usize, decodes: usize) -> (Vec<SimHandle>, Vec<SimHandle>) {
    let mut prefill = Vec::new();
    for _ in 0..prefills {
        prefill.push(SimEngine::new(SimRole::Prefill).spawn().await);
    }
    let mut decode = Vec::new();
    for _ in 0..decodes {
        decode.push(SimEngine::new(SimRole::Decode).spawn().await);
    }
    (prefill, decode)
}

/// The gateway in vLLM PD mode in front of the pools, with the classes above and priors from the sim's
/// latency model (the operator's profile of the engines, which is what priors are for).
pub fn gateway_config(
    prefill: &[SimHandle],
    decode: &[SimHandle],
    policy: PolicyKind,
    slo_routing: bool,
    admission: AdmissionMode,
) -> GatewayConfig {
    let m = LatencyModel::default();
    let mut c = GatewayConfig {
        port: 0,
        prefill: prefill
            .iter()
            .map(|h| PrefillWorker {
                url: h.url(),
                bootstrap_port: None,
            })
            .collect(),
        decode: decode.iter().map(SimHandle::url).collect(),
        pd_protocol: Some(PdProtocol::Vllm),
        policy,
        ..GatewayConfig::default()
    };
    c.retry.initial_backoff_ms = 1;
    c.retry.max_backoff_ms = 5;
    c.health.interval_secs = 3600.0;
    let mut slo = SloConfig {
        classes: classes()
            .into_iter()
            .map(|k| {
                let budget = ClassConfig {
                    ttft_ms: Some(k.ttft_ms),
                    tpot_ms: Some(k.tpot_ms),
                };
                (k.name, budget)
            })
            .collect(),
        default_class: "standard".into(),
        routing: slo_routing,
        policy: SloPolicyConfig {
            admission,
            conditional_disaggregation: true,
            ..SloPolicyConfig::default()
        },
        ..SloConfig::default()
    };
    slo.prior_prefill_tokens_per_s = 1000.0 / m.prefill_ms_per_token;
    slo.prior_tpot_base_ms = m.base_ms;
    slo.prior_tpot_per_seq_ms = m.per_seq_ms;
    c.slo = slo;
    c
}
