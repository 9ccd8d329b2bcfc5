//! Engine-reported load, polled: each worker's `GET /load` (Baton's engine:
//! the same `EngineReport` JSON its `x-baton-load` response header carries,
//! which refreshes it between requests and on idle engines), else its
//! `/metrics` (vLLM or SGLang names), so SLO placement sees sequences this
//! gateway did not send (other replicas' clients, direct traffic).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_policies::slo::{EngineReport, MetricsLoad};
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// Sums every sample of `name` in a Prometheus text exposition (all label
/// sets: one per model/engine).
pub fn sum_metric(text: &str, name: &str) -> Option<f64> {
    let mut found = false;
    let mut sum = 0.0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // `name{...} v` or `name v`, not a longer metric name.
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            sum += v;
            found = true;
        }
    }
    found.then_some(sum)
}

/// Load from a Prometheus exposition: vLLM's names, else SGLang's.
pub fn metrics_load(text: &str) -> Option<MetricsLoad> {
    let names = [
        (
            "vllm:num_requests_running",
            "vllm:num_requests_waiting",
            "vllm:kv_cache_usage_perc",
        ),
        (
            "sglang:num_running_reqs",
            "sglang:num_queue_reqs",
            "sglang:token_usage",
        ),
    ];
    names.iter().find_map(|(running, waiting, kv)| {
        let running = sum_metric(text, running)?;
        Some(MetricsLoad {
            running: running.max(0.0) as u64,
            waiting: sum_metric(text, waiting).unwrap_or(0.0).max(0.0) as u64,
            // vLLM before v1 called it gpu_cache_usage_perc; both are 0..1.
            kv_usage: sum_metric(text, kv)
                .or_else(|| sum_metric(text, "vllm:gpu_cache_usage_perc"))
                .filter(|u| u.is_finite()),
        })
    })
}

/// Polls of a worker between two tries of `GET /load` once it answered that it has none.
pub const LOAD_RECHECK_POLLS: u32 = 120;

/// Which workers have no `GET /load` (vLLM, SGLang: 404), so their polls go straight to `/metrics` instead of
/// drawing a 404 every interval. Tried again every [`LOAD_RECHECK_POLLS`] polls (an engine behind the same URL
/// may be replaced by one that reports).
#[derive(Debug, Default)]
pub struct LoadProbe {
    /// Worker URL → polls left before `/load` is tried again.
    absent: HashMap<String, u32>,
}

impl LoadProbe {
    /// Whether this poll of `url` should try `GET /load` (counts the poll).
    pub fn try_load(&mut self, url: &str) -> bool {
        match self.absent.get_mut(url) {
            None => true,
            Some(0) => {
                self.absent.remove(url);
                true
            }
            Some(n) => {
                *n -= 1;
                false
            }
        }
    }

    /// What `GET /load` answered: a status that says the path does not exist marks the worker; a report clears
    /// it. Timeouts and other errors change nothing (the engine may just be busy).
    pub fn answered(&mut self, url: &str, status: u16, parsed: bool) {
        if status == 200 && parsed {
            self.absent.remove(url);
        } else if matches!(status, 404 | 405 | 501) || (status == 200 && !parsed) {
            self.absent.insert(url.to_owned(), LOAD_RECHECK_POLLS);
        }
    }
}

/// Polls every healthy worker every `interval` until `stop`.
pub async fn run(state: Arc<AppState>, interval: Duration, stop: CancellationToken) {
    let probe = Arc::new(Mutex::new(LoadProbe::default()));
    crate::sweep::every_worker(state, interval, true, stop, move |state, w| {
        let probe = Arc::clone(&probe);
        async move {
            let tracker = &state.slo.tracker;
            let try_load = probe
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .try_load(&w.url);
            if try_load {
                let load =
                    tokio::time::timeout(interval, state.upstream.get(&w.url, "/load")).await;
                if let Ok(Ok((status, body))) = load {
                    let report = (status == 200)
                        .then(|| serde_json::from_slice::<EngineReport>(&body).ok())
                        .flatten();
                    probe.lock().unwrap_or_else(|e| e.into_inner()).answered(
                        &w.url,
                        status,
                        report.is_some(),
                    );
                    if let Some(r) = report {
                        tracker.record_report(&w.url, r);
                        w.set_engine_load(r.running, r.waiting);
                        return;
                    }
                }
            }
            poll_metrics(&state, &w, interval).await;
        }
    })
    .await;
}

/// `/metrics` load (vLLM or SGLang names) of a worker that sends no report.
async fn poll_metrics(state: &AppState, w: &crate::worker::Worker, interval: Duration) {
    let got = tokio::time::timeout(interval, state.upstream.get(&w.url, "/metrics")).await;
    if let Ok(Ok((200, body))) = got {
        if let Some(m) = metrics_load(&String::from_utf8_lossy(&body)) {
            state.slo.tracker.record_metrics(&w.url, m);
            w.set_engine_load(m.running, m.waiting);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_without_load_is_not_asked_again_until_the_recheck() {
        let mut p = LoadProbe::default();
        assert!(p.try_load("v"));
        p.answered("v", 404, false);
        // The next LOAD_RECHECK_POLLS polls go straight to /metrics, then /load is tried once more.
        for _ in 0..LOAD_RECHECK_POLLS {
            assert!(!p.try_load("v"));
        }
        assert!(p.try_load("v"));
        // Still absent: another full wait.
        p.answered("v", 404, false);
        assert!(!p.try_load("v"));
        // Other workers are unaffected; errors and busy answers do not mark a worker.
        assert!(p.try_load("b"));
        p.answered("b", 503, false);
        assert!(p.try_load("b"));
        p.answered("b", 200, true);
        assert!(p.try_load("b"));
        // A 200 that is not a report (some other /load) counts as absent; a report clears the mark.
        p.answered("b", 200, false);
        assert!(!p.try_load("b"));
        p.answered("b", 200, true);
        assert!(p.try_load("b"));
    }

    #[test]
    fn sums_label_sets_and_ignores_longer_names() {
        let text = "# HELP x\nvllm:num_requests_running{model_name=\"m\",engine=\"0\"} 3\n\
                    vllm:num_requests_running{model_name=\"m\",engine=\"1\"} 2\n\
                    vllm:num_requests_running_total 99\nvllm:num_requests_waiting 4\n";
        assert_eq!(sum_metric(text, "vllm:num_requests_running"), Some(5.0));
        assert_eq!(sum_metric(text, "vllm:num_requests_waiting"), Some(4.0));
        assert_eq!(sum_metric(text, "vllm:kv_cache_usage_perc"), None);
        assert_eq!(
            metrics_load(text),
            Some(MetricsLoad {
                running: 5,
                waiting: 4,
                kv_usage: None
            })
        );
        let sglang = "sglang:num_running_reqs{model_name=\"m\"} 7\nsglang:num_queue_reqs 2\nsglang:token_usage 0.5\n";
        assert_eq!(
            metrics_load(sglang),
            Some(MetricsLoad {
                running: 7,
                waiting: 2,
                kv_usage: Some(0.5)
            })
        );
        assert_eq!(metrics_load("other 1\n"), None);
    }
}
