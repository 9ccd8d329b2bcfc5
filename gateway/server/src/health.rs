//! Active health checks: every worker's health endpoint, periodically.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::secs;
use crate::state::AppState;

/// Runs until `stop` is cancelled. The first round starts at once.
pub async fn run(state: Arc<AppState>, stop: CancellationToken) {
    let cfg = state.config.health.clone();
    let mut tick = tokio::time::interval(secs(cfg.interval_secs.max(0.05)));
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
            .collect();
        let checks = workers.into_iter().map(|w| {
            let state = Arc::clone(&state);
            let cfg = cfg.clone();
            async move {
                let probe = state.upstream.get(&w.url, &cfg.endpoint);
                let ok = matches!(
                    tokio::time::timeout(secs(cfg.timeout_secs), probe).await,
                    Ok(Ok((200..=299, _)))
                );
                let was = w.is_healthy();
                let now = w.record_health(ok, cfg.failure_threshold, cfg.success_threshold);
                if was != now {
                    tracing::warn!(worker = %w.url, role = w.role.label(), healthy = now, "worker health changed");
                }
            }
        });
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = futures_util::future::join_all(checks) => {}
        }
    }
}
