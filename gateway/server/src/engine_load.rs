//! Engine-reported load: each worker's `/metrics` (vLLM names, which
//! Baton's own engine also serves) scraped periodically, so SLO placement
//! sees sequences this gateway did not send (other replicas' clients,
//! direct traffic) and the batch sizes the TPOT model is fitted on match
//! what the engine really runs.

use std::sync::Arc;
use std::time::Duration;

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

/// Scrapes every healthy worker every `interval` until `stop`.
pub async fn run(state: Arc<AppState>, interval: Duration, stop: CancellationToken) {
    crate::sweep::every_worker(state, interval, true, stop, move |state, w| async move {
        let got = tokio::time::timeout(interval, state.upstream.get(&w.url, "/metrics")).await;
        if let Ok(Ok((200, body))) = got {
            let text = String::from_utf8_lossy(&body);
            if let Some(running) = sum_metric(&text, "vllm:num_requests_running") {
                let waiting = sum_metric(&text, "vllm:num_requests_waiting").unwrap_or(0.0);
                w.set_engine_load(running as u64, waiting as u64);
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_label_sets_and_ignores_longer_names() {
        let text = "# HELP x\nvllm:num_requests_running{model_name=\"m\",engine=\"0\"} 3\n\
                    vllm:num_requests_running{model_name=\"m\",engine=\"1\"} 2\n\
                    vllm:num_requests_running_total 99\nvllm:num_requests_waiting 4\n";
        assert_eq!(sum_metric(text, "vllm:num_requests_running"), Some(5.0));
        assert_eq!(sum_metric(text, "vllm:num_requests_waiting"), Some(4.0));
        assert_eq!(sum_metric(text, "vllm:kv_cache_usage_perc"), None);
    }
}
