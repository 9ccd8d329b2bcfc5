//! A periodic pass over every worker of every pool (health probes, engine
//! metrics scrapes): one tick, all workers concurrently, until `stop`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::periodic::Periodic;
use crate::state::AppState;
use crate::worker::Worker;

/// Calls `visit` for each worker (only healthy ones when `healthy_only`)
/// every `interval`; the first pass starts at once. Returns when `stop` is
/// cancelled, also in the middle of a pass.
pub async fn every_worker<F, Fut>(
    state: Arc<AppState>,
    interval: Duration,
    healthy_only: bool,
    stop: CancellationToken,
    visit: F,
) where
    F: Fn(Arc<AppState>, Arc<Worker>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = Periodic::new(interval.max(Duration::from_millis(50)), stop);
    while tick.next().await {
        let visits = state
            .pools
            .all()
            .into_iter()
            .flat_map(|p| p.workers.iter())
            .filter(|w| !healthy_only || w.is_healthy())
            .map(|w| visit(Arc::clone(&state), w))
            .collect::<Vec<_>>();
        if tick
            .unless_stopped(futures_util::future::join_all(visits))
            .await
            .is_none()
        {
            return;
        }
    }
}
