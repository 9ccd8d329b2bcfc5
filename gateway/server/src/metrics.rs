//! Prometheus metrics, prefixed `baton_`.
//!
//! Latency histograms use vLLM's bucket boundaries so dashboards built for
//! vLLM read Baton's numbers the same way.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::pool::Pool;

const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const TPOT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const E2E_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: &'static str,
    pub mode: &'static str,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub leg: &'static str,
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    pub worker: String,
    pub role: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SloLabels {
    pub class: String,
    pub tenant: String,
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatLabels {
    pub stat: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SloWindowLabels {
    pub class: String,
    pub tenant: String,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub mode: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub ttft: Family<ModeLabels, Histogram>,
    pub tpot: Family<ModeLabels, Histogram>,
    pub e2e: Family<ModeLabels, Histogram>,
    pub prefill_leg: Histogram,
    pub decode_first_byte: Histogram,
    pub retries: Counter,
    pub upstream_errors: Family<ErrorLabels, Counter>,
    pub local_prefills: Counter,
    pub slo_local_prefills: Counter,
    /// Client connections open, per listener (`listener.rs`).
    pub connections_open: Family<ListenerLabels, Gauge>,
    /// Client connections closed at accept because the listener was full.
    pub connections_refused: Family<ListenerLabels, Counter>,
    pub slo_requests: Family<SloLabels, Counter>,
    slo_attainment: Family<SloWindowLabels, FloatGauge>,
    slo_ttft_attainment: Family<SloWindowLabels, FloatGauge>,
    slo_tpot_attainment: Family<SloWindowLabels, FloatGauge>,
    slo_goodput: Family<SloWindowLabels, FloatGauge>,
    slo_store: Family<StatLabels, Gauge>,
    worker_healthy: Family<WorkerLabels, Gauge>,
    worker_in_flight: Family<WorkerLabels, Gauge>,
    breaker_state: Family<WorkerLabels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn hist(buckets: &'static [f64]) -> Histogram {
    Histogram::new(buckets.iter().copied())
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("baton");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Generation requests by endpoint, serving mode and outcome",
            requests.clone(),
        );
        let ttft = Family::<ModeLabels, Histogram>::new_with_constructor(|| hist(TTFT_BUCKETS));
        registry.register(
            "time_to_first_token_seconds",
            "Time from request arrival to the first output chunk sent to the client",
            ttft.clone(),
        );
        let tpot = Family::<ModeLabels, Histogram>::new_with_constructor(|| hist(TPOT_BUCKETS));
        registry.register(
            "time_per_output_token_seconds",
            "(latency - TTFT) / (output tokens - 1) as the client sees it",
            tpot.clone(),
        );
        let e2e = Family::<ModeLabels, Histogram>::new_with_constructor(|| hist(E2E_BUCKETS));
        registry.register(
            "e2e_request_latency_seconds",
            "Time from request arrival to the end of the response",
            e2e.clone(),
        );
        let prefill_leg = hist(TTFT_BUCKETS);
        registry.register(
            "prefill_leg_duration_seconds",
            "Duration of the prefill call of PD requests",
            prefill_leg.clone(),
        );
        let decode_first_byte = hist(TTFT_BUCKETS);
        registry.register(
            "decode_first_byte_seconds",
            "Time from sending the decode call to its response head",
            decode_first_byte.clone(),
        );
        let retries = Counter::default();
        registry.register("retries", "Upstream attempts retried", retries.clone());
        let upstream_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Failed upstream legs by leg and kind",
            upstream_errors.clone(),
        );
        let local_prefills = Counter::default();
        registry.register(
            "pd_local_prefills",
            "vLLM PD requests whose prefill returned no kv_transfer_params, so decode prefilled itself",
            local_prefills.clone(),
        );
        let slo_local_prefills = Counter::default();
        registry.register(
            "slo_local_prefills",
            "Requests the SLO policy sent to a decode worker's own prefill (conditional disaggregation)",
            slo_local_prefills.clone(),
        );
        let connections_open = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "client_connections_open",
            "Client connections open, per listener",
            connections_open.clone(),
        );
        let connections_refused = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "client_connections_refused",
            "Client connections closed at accept because the listener had --max-connections open",
            connections_refused.clone(),
        );
        let slo_requests = Family::<SloLabels, Counter>::default();
        registry.register(
            "slo_requests",
            "Finished requests per SLO class and tenant by result: good, ttft_miss, tpot_miss, rejected, failed",
            slo_requests.clone(),
        );
        let slo_attainment = Family::<SloWindowLabels, FloatGauge>::default();
        registry.register(
            "slo_attainment",
            "Share of requests meeting every target over the accounting window",
            slo_attainment.clone(),
        );
        let slo_ttft_attainment = Family::<SloWindowLabels, FloatGauge>::default();
        registry.register(
            "slo_ttft_attainment",
            "Share of requests meeting the TTFT target over the window",
            slo_ttft_attainment.clone(),
        );
        let slo_tpot_attainment = Family::<SloWindowLabels, FloatGauge>::default();
        registry.register(
            "slo_tpot_attainment",
            "Share of requests meeting the TPOT target over the window",
            slo_tpot_attainment.clone(),
        );
        let slo_goodput = Family::<SloWindowLabels, FloatGauge>::default();
        registry.register(
            "slo_goodput_requests_per_second",
            "Good requests per second over the accounting window",
            slo_goodput.clone(),
        );
        let slo_store = Family::<StatLabels, Gauge>::default();
        registry.register(
            "slo_store",
            "Shared SLO store (Redis) health and failure counters: healthy, errors, timeouts, fallbacks, backlog, backlog_dropped, flushed, resyncs",
            slo_store.clone(),
        );
        let worker_healthy = Family::<WorkerLabels, Gauge>::default();
        registry.register(
            "worker_healthy",
            "1 when the worker passes health checks",
            worker_healthy.clone(),
        );
        let worker_in_flight = Family::<WorkerLabels, Gauge>::default();
        registry.register(
            "worker_in_flight",
            "Requests in flight per worker",
            worker_in_flight.clone(),
        );
        let breaker_state = Family::<WorkerLabels, Gauge>::default();
        registry.register(
            "breaker_state",
            "Circuit breaker state per worker: 0 closed, 1 open, 2 half-open",
            breaker_state.clone(),
        );
        Self {
            registry,
            requests,
            ttft,
            tpot,
            e2e,
            prefill_leg,
            decode_first_byte,
            retries,
            upstream_errors,
            local_prefills,
            slo_local_prefills,
            connections_open,
            connections_refused,
            slo_requests,
            slo_attainment,
            slo_ttft_attainment,
            slo_tpot_attainment,
            slo_goodput,
            slo_store,
            worker_healthy,
            worker_in_flight,
            breaker_state,
        }
    }

    /// Sets the windowed goodput gauges from a report.
    pub fn set_slo_window(
        &self,
        window_secs: f64,
        report: &std::collections::BTreeMap<(String, String), crate::slo::accounting::Counts>,
    ) {
        for ((class, tenant), c) in report {
            let labels = SloWindowLabels {
                class: class.clone(),
                tenant: tenant.clone(),
            };
            let ratio = |n: u64| {
                if c.requests == 0 {
                    0.0
                } else {
                    n as f64 / c.requests as f64
                }
            };
            self.slo_attainment
                .get_or_create(&labels)
                .set(ratio(c.good));
            self.slo_ttft_attainment
                .get_or_create(&labels)
                .set(ratio(c.ttft_met));
            self.slo_tpot_attainment
                .get_or_create(&labels)
                .set(ratio(c.tpot_met));
            self.slo_goodput
                .get_or_create(&labels)
                .set(c.good as f64 / window_secs.max(1.0));
        }
    }

    /// Sets the shared-store gauges.
    pub fn set_store_stats(&self, s: &baton_slo::ResilientStatsSnapshot) {
        let to_i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for (stat, v) in [
            ("healthy", i64::from(s.healthy)),
            ("errors", to_i(s.errors)),
            ("timeouts", to_i(s.timeouts)),
            ("fallbacks", to_i(s.fallbacks)),
            ("backlog", to_i(s.backlog)),
            ("backlog_dropped", to_i(s.backlog_dropped)),
            ("flushed", to_i(s.flushed)),
            ("resyncs", to_i(s.resyncs)),
        ] {
            self.slo_store.get_or_create(&StatLabels { stat }).set(v);
        }
    }

    /// Renders the exposition text, refreshing worker gauges first.
    pub fn render(&self, pools: &[&Pool]) -> String {
        for pool in pools {
            for w in &pool.workers {
                let labels = WorkerLabels {
                    worker: w.url.clone(),
                    role: w.role.label(),
                };
                self.worker_healthy
                    .get_or_create(&labels)
                    .set(i64::from(w.is_healthy()));
                self.worker_in_flight
                    .get_or_create(&labels)
                    .set(i64::try_from(w.in_flight()).unwrap_or(i64::MAX));
                self.breaker_state
                    .get_or_create(&labels)
                    .set(w.breaker.state().as_gauge());
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
