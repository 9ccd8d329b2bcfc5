//! Active health checks: every worker's health endpoint, periodically.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::secs;
use crate::state::AppState;

/// Runs until `stop` is cancelled. The first round starts at once.
pub async fn run(state: Arc<AppState>, stop: CancellationToken) {
    let cfg = state.config.health.clone();
    let interval = secs(cfg.interval_secs);
    crate::sweep::every_worker(state, interval, false, stop, |state, w| {
        let cfg = cfg.clone();
        async move {
            let probe = state.upstream.get(&w.url, &cfg.endpoint);
            let ok = matches!(
                tokio::time::timeout(secs(cfg.timeout_secs), probe).await,
                Ok(Ok((200..=299, _)))
            );
            // The models it serves, before the health is recorded: once readiness says a
            // worker is up, the edge also knows its models (crate::models).
            if ok {
                let list = state.upstream.get(&w.url, "/v1/models");
                match tokio::time::timeout(secs(cfg.timeout_secs), list).await {
                    Ok(Ok((200, body))) => w.set_models(crate::models::parse_ids(&body)),
                    Ok(Ok(_)) => w.set_models(None),
                    // Unreachable or slow this time: keep what it listed last.
                    _ => {}
                }
            }
            let was = w.is_healthy();
            let now = w.record_health(ok, cfg.failure_threshold, cfg.success_threshold);
            if was != now {
                tracing::warn!(worker = %w.url, role = w.role.label(), healthy = now, "worker health changed");
            }
        }
    })
    .await;
}
