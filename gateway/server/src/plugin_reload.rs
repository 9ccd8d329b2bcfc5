//! Routing plugin scripts reloaded on change, without dropping requests.
//!
//! With `policy = "pipeline"` and scripts in `[policy_config.pipeline]`,
//! each pool's policy is a [`baton_policies::pipeline::Reloading`]. This
//! task asks every pool, every `reload_interval_ms` (default 1 s; 0: off),
//! to look at its scripts' modification times; a pool whose scripts changed
//! compiles the new pipeline and swaps it in atomically. Decisions in
//! progress finish on the pipeline they started with, later ones use the
//! new one; nothing waits on the swap. A script that does not load is
//! logged and the running pipeline stays. The checks (file metadata, and
//! compiling when a file changed) run on the blocking pool.
//!
//! [`ReloadEvents`] counts what happened, for tests and callers of
//! [`crate::RunningGateway::plugin_reloads`].

use std::sync::Arc;
use std::time::Duration;

use baton_policies::pipeline::Reload;
use baton_policies::PolicyKind;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::GatewayConfig;
use crate::state::AppState;

/// Reloads so far, over all pools (a PD gateway's two pools reload apart).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReloadEvents {
    /// A changed script was compiled and is in use.
    pub reloaded: u64,
    /// A changed script did not load; the previous pipeline stayed.
    pub failed: u64,
}

/// How often to look for changed scripts; `None` when no pool runs a
/// scripted pipeline or reloading is off.
pub fn interval(config: &GatewayConfig) -> Option<Duration> {
    let kinds = [
        Some(config.policy),
        config.prefill_policy,
        config.decode_policy,
    ];
    let pipeline = &config.policy_config.pipeline;
    let scripted = kinds.contains(&Some(PolicyKind::Pipeline))
        && !pipeline.script_paths().is_empty()
        && pipeline.reload_interval_ms > 0;
    scripted.then(|| Duration::from_millis(pipeline.reload_interval_ms))
}

/// Checks the pools' scripts every `every` until `stop`.
pub async fn run(
    state: Arc<AppState>,
    every: Duration,
    events: watch::Sender<ReloadEvents>,
    stop: CancellationToken,
) {
    let mut tick = crate::periodic::Periodic::new(every, stop);
    while tick.next().await {
        let st = Arc::clone(&state);
        let checked = tokio::task::spawn_blocking(move || {
            st.pools
                .all()
                .iter()
                .map(|p| (p.role.label(), p.reload_policy()))
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(outcomes) = checked else { continue };
        for (role, outcome) in outcomes {
            match outcome {
                Reload::Unchanged => {}
                Reload::Reloaded => {
                    tracing::info!(
                        pool = role,
                        "routing plugin scripts changed; pipeline reloaded"
                    );
                    events.send_modify(|e| e.reloaded += 1);
                }
                Reload::Failed(e) => {
                    tracing::warn!(pool = role, error = %e, "changed routing plugin script does not load; keeping the running pipeline");
                    events.send_modify(|e| e.failed += 1);
                }
            }
        }
    }
}
