//! A pool of workers of one role plus the policy that routes within it.

use std::sync::Arc;

use baton_policies::pipeline::Admit;
use baton_policies::{LeastLoad, RequestFeatures, RoutingPolicy, WorkerView};

use crate::plugin_runner::PluginRunner;
use crate::worker::{Role, Worker};

/// The worker pools of the configured mode.
#[derive(Debug)]
pub enum Pools {
    Aggregated(Pool),
    Pd { prefill: Pool, decode: Pool },
}

impl Pools {
    pub fn all(&self) -> Vec<&Pool> {
        match self {
            Self::Aggregated(p) => vec![p],
            Self::Pd { prefill, decode } => vec![prefill, decode],
        }
    }

    /// Ready to serve: a worker confirmed healthy by a health check for every role the mode needs.
    pub fn ready(&self) -> bool {
        self.all().iter().all(|p| p.confirmed_healthy_count() > 0)
    }
}

#[derive(Debug)]
pub struct Pool {
    pub role: Role,
    pub workers: Vec<Arc<Worker>>,
    policy: Arc<dyn RoutingPolicy>,
    /// Set when the policy runs scripts: decisions go off the async workers.
    runner: Option<PluginRunner>,
    /// Decides instead when the policy runs past its time limit.
    fallback: LeastLoad,
}

impl Pool {
    pub fn new(role: Role, workers: Vec<Arc<Worker>>, policy: Box<dyn RoutingPolicy>) -> Self {
        let runner = policy.time_limit().map(PluginRunner::new);
        Self {
            role,
            workers,
            policy: Arc::from(policy),
            runner,
            fallback: LeastLoad::new(),
        }
    }

    pub fn policy_name(&self) -> &'static str {
        self.policy.name()
    }

    /// Reloads the policy's plugin scripts if they changed (reads files: call
    /// it off the async workers; see `plugin_reload`).
    pub fn reload_policy(&self) -> baton_policies::pipeline::Reload {
        self.policy.reload_if_changed()
    }

    /// Plugin decisions that ran past their time limit.
    pub fn plugin_overruns(&self) -> u64 {
        self.runner.as_ref().map_or(0, PluginRunner::overruns)
    }

    pub fn healthy_count(&self) -> usize {
        self.workers.iter().filter(|w| w.is_healthy()).count()
    }

    /// Workers a health check has confirmed healthy (see [`Worker::is_confirmed_healthy`]).
    pub fn confirmed_healthy_count(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| w.is_confirmed_healthy())
            .count()
    }

    /// Asks the pool's policy whether to serve the request at all; a plugin
    /// that runs past its time limit admits (as a failing stage does).
    pub async fn admit(&self, text: Option<&str>) -> Admit {
        if !self.policy.has_admission() {
            return Admit::Yes;
        }
        let Some(runner) = &self.runner else {
            return admit_with(&*self.policy, &self.workers, text);
        };
        let (policy, workers) = (Arc::clone(&self.policy), self.workers.clone());
        // Scripts see the text's length and first characters; an owned copy
        // is what crosses to the blocking thread.
        let text = text.map(str::to_owned);
        runner
            .run("admission", move || {
                admit_with(&*policy, &workers, text.as_deref())
            })
            .await
            .unwrap_or(Admit::Yes)
    }

    /// Picks a worker, avoiding `tried` ones while any other is available
    /// (a retry should land on a fresh worker, but a pool of one still
    /// gets retried). A plugin that runs past its time limit is replaced by
    /// least load for this decision.
    pub async fn pick(&self, text: Option<&str>, tried: &[Arc<Worker>]) -> Option<Arc<Worker>> {
        let index = match &self.runner {
            None => pick_with(&*self.policy, &self.workers, text, tried),
            Some(runner) => {
                let (policy, workers) = (Arc::clone(&self.policy), self.workers.clone());
                let (text_owned, tried_owned) = (text.map(str::to_owned), tried.to_vec());
                let decided = runner
                    .run("pick", move || {
                        pick_with(&*policy, &workers, text_owned.as_deref(), &tried_owned)
                    })
                    .await;
                match decided {
                    Some(i) => i,
                    None => pick_with(&self.fallback, &self.workers, text, tried),
                }
            }
        };
        index.map(|i| Arc::clone(&self.workers[i]))
    }
}

fn views(workers: &[Arc<Worker>]) -> Vec<WorkerView<'_>> {
    workers
        .iter()
        .map(|w| WorkerView {
            url: &w.url,
            available: w.is_available(),
            in_flight: w.in_flight(),
        })
        .collect()
}

fn admit_with(policy: &dyn RoutingPolicy, workers: &[Arc<Worker>], text: Option<&str>) -> Admit {
    policy.admit(&views(workers), &RequestFeatures { text })
}

/// The index of the chosen worker: untried ones first, then any.
fn pick_with(
    policy: &dyn RoutingPolicy,
    workers: &[Arc<Worker>],
    text: Option<&str>,
    tried: &[Arc<Worker>],
) -> Option<usize> {
    let features = RequestFeatures { text };
    let choose = |skip_tried: bool| {
        let mut snapshot = views(workers);
        if skip_tried {
            for (v, w) in snapshot.iter_mut().zip(workers) {
                v.available &= !tried.iter().any(|t| Arc::ptr_eq(t, w));
            }
        }
        policy
            .pick(&snapshot, &features)
            .filter(|&i| snapshot.get(i).is_some_and(|v| v.available))
    };
    choose(true).or_else(|| {
        if tried.is_empty() {
            None
        } else {
            choose(false)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BreakerConfig;
    use baton_policies::RoundRobin;

    #[tokio::test]
    async fn retries_prefer_untried_workers_and_skip_open_breakers() {
        let cfg = BreakerConfig {
            failure_threshold: 1,
            ..BreakerConfig::default()
        };
        let ws: Vec<_> = (0..3)
            .map(|i| {
                Arc::new(Worker::new(
                    &format!("http://w{i}:1"),
                    Role::Decode,
                    None,
                    &cfg,
                ))
            })
            .collect();
        let pool = Pool::new(Role::Decode, ws.clone(), Box::new(RoundRobin::new()));
        let first = pool.pick(None, &[]).await.unwrap();
        let second = pool.pick(None, std::slice::from_ref(&first)).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        ws[0].breaker.record_failure();
        ws[1].breaker.record_failure();
        for _ in 0..5 {
            assert_eq!(pool.pick(None, &[]).await.unwrap().url, "http://w2:1");
        }
        // Only the tried worker is left: it is retried rather than failing.
        assert_eq!(
            pool.pick(None, &[ws[2].clone()]).await.unwrap().url,
            "http://w2:1"
        );
        ws[2].breaker.record_failure();
        assert!(pool.pick(None, &[]).await.is_none());
    }
}
