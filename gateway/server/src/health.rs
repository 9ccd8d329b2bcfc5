//! Active health checks: every worker's health endpoint, periodically.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::secs;
use crate::state::AppState;
use crate::worker::Worker;

/// Runs until `stop` is cancelled. The first round starts at once.
pub async fn run(state: Arc<AppState>, stop: CancellationToken) {
    let interval = secs(state.config.health.interval_secs);
    crate::sweep::every_worker(state, interval, false, stop, |state, w| async move {
        probe(&state, &w).await;
    })
    .await;
}

/// One health check of `w`, recorded on it; returns its health after.
pub async fn probe(state: &AppState, w: &Worker) -> bool {
    let cfg = &state.config.health;
    let check = state.upstream.get(&w.url, &cfg.endpoint);
    let ok = matches!(
        tokio::time::timeout(secs(cfg.timeout_secs), check).await,
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
    now
}

/// How often a worker added at runtime is probed until it first passes.
const WARM_UP_PROBE_EVERY: Duration = Duration::from_millis(250);

/// A worker added at runtime starts unhealthy (an engine that is still
/// loading must not get requests) and is probed every
/// [`WARM_UP_PROBE_EVERY`] until it passes, then left to the periodic
/// checks. Stops early if the worker is removed meanwhile.
pub fn warm_up(state: Arc<AppState>, w: Arc<Worker>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(WARM_UP_PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !w.is_draining() {
            tick.tick().await;
            if probe(&state, &w).await {
                return;
            }
        }
    });
}
