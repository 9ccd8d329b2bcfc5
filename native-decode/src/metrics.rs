//! Engine metrics under vLLM's names, rendered in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use baton_policies::step::EngineReport;

#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<(Vec<u64>, f64, u64)>,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            inner: Mutex::new((vec![0; bounds.len()], 0.0, 0)),
        }
    }

    pub fn observe(&self, v: f64) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                g.0[i] += 1;
            }
        }
        g.1 += v;
        g.2 += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&g.0) {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", g.2);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", g.1);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", g.2);
    }
}

const LATENCY: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
];
/// Step (forward pass) durations: a few ms (GPU decode) to seconds (long CPU prefill).
const STEP: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0,
];
const REQUEST: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
];

/// Counters, gauges and histograms shared between the scheduler (writer) and `/metrics` (reader).
#[derive(Debug)]
pub struct Stats {
    pub num_running: AtomicU64,
    pub num_waiting: AtomicU64,
    /// Requests being parsed, rendered and tokenized on the blocking pool (before they reach the scheduler).
    pub num_preparing: AtomicU64,
    /// Open connections on the HTTP listener.
    pub http_connections: AtomicU64,
    kv_usage_bits: AtomicU64,
    pub prefix_queries: AtomicU64,
    pub prefix_hits: AtomicU64,
    pub preemptions: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    pub requests_finished: AtomicU64,
    pub kv_pulls: AtomicU64,
    pub kv_pull_failures: AtomicU64,
    pub kv_pull_recomputes: AtomicU64,
    pub kv_leases_expired: AtomicU64,
    /// Leases whose blocks went to other requests after their grace, and prefills refused a lease (past bounds).
    pub kv_leases_reclaimed: AtomicU64,
    pub kv_leases_refused: AtomicU64,
    /// Imports copied device-to-device from another engine's GPU pool (CUDA IPC), and the time they took.
    pub kv_device_imports: AtomicU64,
    pub kv_device_import_us: AtomicU64,
    /// Set after a device import failed: later pulls use the host-staged path.
    pub kv_device_broken: std::sync::atomic::AtomicBool,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    pub queue: Histogram,
    pub prefill: Histogram,
    pub decode: Histogram,
    /// Wall time of each step's forward pass.
    pub step_duration: Histogram,
    /// Generation calls whose `x-baton-slo` was honoured (fleet-authenticated), and calls that carried one without
    /// fleet authentication (ignored: a gateway without the fleet key, or a client trying to jump the queue).
    pub slo_requests: AtomicU64,
    pub slo_headers_ignored: AtomicU64,
    /// The scheduler's last published state (`x-baton-load`, `GET /load`).
    report: Mutex<EngineReport>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            num_running: AtomicU64::new(0),
            num_waiting: AtomicU64::new(0),
            num_preparing: AtomicU64::new(0),
            http_connections: AtomicU64::new(0),
            kv_usage_bits: AtomicU64::new(0f64.to_bits()),
            prefix_queries: AtomicU64::new(0),
            prefix_hits: AtomicU64::new(0),
            preemptions: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            requests_finished: AtomicU64::new(0),
            kv_pulls: AtomicU64::new(0),
            kv_pull_failures: AtomicU64::new(0),
            kv_pull_recomputes: AtomicU64::new(0),
            kv_leases_expired: AtomicU64::new(0),
            kv_leases_reclaimed: AtomicU64::new(0),
            kv_leases_refused: AtomicU64::new(0),
            kv_device_imports: AtomicU64::new(0),
            kv_device_import_us: AtomicU64::new(0),
            kv_device_broken: std::sync::atomic::AtomicBool::new(false),
            ttft: Histogram::new(LATENCY),
            itl: Histogram::new(LATENCY),
            e2e: Histogram::new(REQUEST),
            queue: Histogram::new(REQUEST),
            prefill: Histogram::new(REQUEST),
            decode: Histogram::new(REQUEST),
            step_duration: Histogram::new(STEP),
            slo_requests: AtomicU64::new(0),
            slo_headers_ignored: AtomicU64::new(0),
            report: Mutex::new(EngineReport::default()),
        }
    }
}

impl Stats {
    pub fn set_kv_usage(&self, v: f64) {
        self.kv_usage_bits.store(v.to_bits(), Ordering::Relaxed);
    }

    pub fn kv_usage(&self) -> f64 {
        f64::from_bits(self.kv_usage_bits.load(Ordering::Relaxed))
    }

    pub fn set_report(&self, r: EngineReport) {
        *self.report.lock().unwrap_or_else(|e| e.into_inner()) = r;
    }

    /// The scheduler's state as of its last step (or finished request).
    pub fn report(&self) -> EngineReport {
        *self.report.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`Stats::report`] as JSON (the `x-baton-load` header's value and `GET /load`'s body).
    pub fn report_json(&self) -> String {
        serde_json::to_string(&self.report()).unwrap_or_else(|_| "{}".into())
    }

    pub fn render(&self, model_name: &str) -> String {
        let labels = format!(
            "model_name=\"{}\",engine=\"0\"",
            model_name.replace(['"', '\\', '\n'], "_")
        );
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, v: f64| {
            let _ = writeln!(out, "# TYPE {name} gauge\n{name}{{{labels}}} {v}");
        };
        let counter = |out: &mut String, name: &str, v: &AtomicU64| {
            let _ = writeln!(
                out,
                "# TYPE {name} counter\n{name}{{{labels}}} {}",
                v.load(Ordering::Relaxed)
            );
        };
        gauge(
            &mut out,
            "vllm:num_requests_running",
            self.num_running.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut out,
            "vllm:num_requests_waiting",
            self.num_waiting.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut out,
            "baton:num_requests_preparing",
            self.num_preparing.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut out,
            "baton:http_connections",
            self.http_connections.load(Ordering::Relaxed) as f64,
        );
        gauge(&mut out, "vllm:kv_cache_usage_perc", self.kv_usage());
        let report = self.report();
        gauge(
            &mut out,
            "baton:num_prefill_tokens_waiting",
            report.waiting_prefill_tokens as f64,
        );
        if let Some(m) = report.step {
            let name = "baton:step_model_ms";
            let _ = writeln!(out, "# TYPE {name} gauge");
            for (coef, v) in [
                ("fixed", m.fixed_ms),
                ("per_seq", m.per_seq_ms),
                ("per_prefill_token", m.per_prefill_token_ms),
                ("per_kctx", m.per_kctx_ms),
            ] {
                let _ = writeln!(out, "{name}{{{labels},coef=\"{coef}\"}} {v}");
            }
        }
        counter(
            &mut out,
            "vllm:prefix_cache_queries_total",
            &self.prefix_queries,
        );
        counter(&mut out, "vllm:prefix_cache_hits_total", &self.prefix_hits);
        counter(&mut out, "vllm:num_preemptions_total", &self.preemptions);
        counter(&mut out, "vllm:prompt_tokens_total", &self.prompt_tokens);
        counter(
            &mut out,
            "vllm:generation_tokens_total",
            &self.generation_tokens,
        );
        counter(
            &mut out,
            "vllm:request_success_total",
            &self.requests_finished,
        );
        counter(&mut out, "baton:kv_pulls_total", &self.kv_pulls);
        counter(
            &mut out,
            "baton:kv_pull_failures_total",
            &self.kv_pull_failures,
        );
        counter(
            &mut out,
            "baton:kv_pull_recomputes_total",
            &self.kv_pull_recomputes,
        );
        counter(
            &mut out,
            "baton:kv_device_imports_total",
            &self.kv_device_imports,
        );
        counter(
            &mut out,
            "baton:kv_device_import_microseconds_total",
            &self.kv_device_import_us,
        );
        counter(
            &mut out,
            "baton:kv_leases_expired_total",
            &self.kv_leases_expired,
        );
        counter(
            &mut out,
            "baton:kv_leases_reclaimed_total",
            &self.kv_leases_reclaimed,
        );
        counter(
            &mut out,
            "baton:kv_leases_refused_total",
            &self.kv_leases_refused,
        );
        self.ttft
            .render(&mut out, "vllm:time_to_first_token_seconds", &labels);
        self.itl
            .render(&mut out, "vllm:inter_token_latency_seconds", &labels);
        self.e2e
            .render(&mut out, "vllm:e2e_request_latency_seconds", &labels);
        self.queue
            .render(&mut out, "vllm:request_queue_time_seconds", &labels);
        self.prefill
            .render(&mut out, "vllm:request_prefill_time_seconds", &labels);
        self.decode
            .render(&mut out, "vllm:request_decode_time_seconds", &labels);
        self.step_duration
            .render(&mut out, "baton:step_duration_seconds", &labels);
        counter(&mut out, "baton:slo_requests_total", &self.slo_requests);
        counter(
            &mut out,
            "baton:slo_headers_ignored_total",
            &self.slo_headers_ignored,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_vllm_names_and_cumulative_buckets() {
        let s = Stats::default();
        s.num_running.store(2, Ordering::Relaxed);
        s.set_kv_usage(0.25);
        s.ttft.observe(0.05);
        let text = s.render("m");
        assert!(text.contains("vllm:num_requests_running{model_name=\"m\",engine=\"0\"} 2"));
        assert!(text.contains("vllm:kv_cache_usage_perc{model_name=\"m\",engine=\"0\"} 0.25"));
        assert!(text.contains(
            "vllm:time_to_first_token_seconds_bucket{model_name=\"m\",engine=\"0\",le=\"0.06\"} 1"
        ));
        assert!(text.contains(
            "vllm:time_to_first_token_seconds_bucket{model_name=\"m\",engine=\"0\",le=\"0.04\"} 0"
        ));
        assert!(text
            .contains("vllm:time_to_first_token_seconds_count{model_name=\"m\",engine=\"0\"} 1"));
    }

    #[test]
    fn renders_the_report_step_model_and_step_histogram() {
        let s = Stats::default();
        s.set_report(EngineReport {
            waiting_prefill_tokens: 300,
            step: Some(baton_policies::step::StepModel {
                fixed_ms: 5.0,
                per_seq_ms: 0.5,
                per_prefill_token_ms: 0.25,
                per_kctx_ms: 0.125,
            }),
            ..Default::default()
        });
        s.step_duration.observe(0.004);
        let text = s.render("m");
        for line in [
            "baton:num_prefill_tokens_waiting{model_name=\"m\",engine=\"0\"} 300",
            "baton:step_model_ms{model_name=\"m\",engine=\"0\",coef=\"fixed\"} 5",
            "baton:step_model_ms{model_name=\"m\",engine=\"0\",coef=\"per_seq\"} 0.5",
            "baton:step_model_ms{model_name=\"m\",engine=\"0\",coef=\"per_prefill_token\"} 0.25",
            "baton:step_model_ms{model_name=\"m\",engine=\"0\",coef=\"per_kctx\"} 0.125",
            "baton:step_duration_seconds_bucket{model_name=\"m\",engine=\"0\",le=\"0.005\"} 1",
            "baton:step_duration_seconds_count{model_name=\"m\",engine=\"0\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        let r: EngineReport = serde_json::from_str(&s.report_json()).unwrap();
        assert_eq!(r.waiting_prefill_tokens, 300);
    }
}
