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

/// Scrapes every worker until `stop`.
pub async fn run(state: Arc<AppState>, interval: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let workers: Vec<_> = state
            .pools
            .all()
            .into_iter()
            .flat_map(|p| p.workers.iter().cloned())
            .filter(|w| w.is_healthy())
            .collect();
        let scrapes = workers.into_iter().map(|w| {
            let state = Arc::clone(&state);
            async move {
                let got =
                    tokio::time::timeout(interval, state.upstream.get(&w.url, "/metrics")).await;
                if let Ok(Ok((200, body))) = got {
                    let text = String::from_utf8_lossy(&body);
                    let running = sum_metric(&text, "vllm:num_requests_running");
                    let waiting = sum_metric(&text, "vllm:num_requests_waiting");
                    if let (Some(r), w_) = (running, waiting) {
                        w.set_engine_load(r as u64, w_.unwrap_or(0.0) as u64);
                    }
                }
            }
        });
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = futures_util::future::join_all(scrapes) => {}
        }
    }
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
