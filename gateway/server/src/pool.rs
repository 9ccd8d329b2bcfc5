//! A pool of workers of one role plus the policy that routes within it.
//!
//! Membership changes at runtime (the worker API, DNS and file discovery):
//! requests route on a snapshot of the members, so adding or removing a
//! worker never blocks or disturbs a request in flight. A removed worker
//! *drains*: it leaves the snapshot at once (no new request, no retry lands
//! on it), the requests it holds finish, then it is dropped.

use std::sync::{Arc, Mutex, RwLock};

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

    /// The pool that holds workers of `role`, if the mode has one.
    pub fn for_role(&self, role: Role) -> Option<&Pool> {
        self.all().into_iter().find(|p| p.role == role)
    }

    /// Ready to serve: a worker confirmed healthy by a health check for every role the mode needs.
    pub fn ready(&self) -> bool {
        self.all().iter().all(|p| p.confirmed_healthy_count() > 0)
    }
}

/// The routable workers of a pool: a snapshot readers clone cheaply (one
/// `Arc`), replaced whole by a membership change.
#[derive(Debug, Default)]
pub struct Members(RwLock<Arc<[Arc<Worker>]>>);

impl Members {
    fn new(workers: Vec<Arc<Worker>>) -> Self {
        Self(RwLock::new(workers.into()))
    }

    /// The members now; later changes do not affect the returned list.
    pub fn snapshot(&self) -> Arc<[Arc<Worker>]> {
        Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The members of one snapshot, as owned handles.
    pub fn iter(&self) -> MembersIter {
        MembersIter {
            list: self.snapshot(),
            next: 0,
        }
    }

    pub fn get(&self, url: &str) -> Option<Arc<Worker>> {
        self.snapshot().iter().find(|w| w.url == url).cloned()
    }
}

/// Iterator over one snapshot of [`Members`].
#[derive(Debug)]
pub struct MembersIter {
    list: Arc<[Arc<Worker>]>,
    next: usize,
}

impl Iterator for MembersIter {
    type Item = Arc<Worker>;
    fn next(&mut self) -> Option<Arc<Worker>> {
        let w = self.list.get(self.next).cloned();
        self.next += 1;
        w
    }
}

impl IntoIterator for &Members {
    type Item = Arc<Worker>;
    type IntoIter = MembersIter;
    fn into_iter(self) -> MembersIter {
        self.iter()
    }
}

/// Why a membership change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error("worker {0} is already in the pool")]
    Duplicate(String),
    #[error("no worker {0} in the pool")]
    Unknown(String),
}

#[derive(Debug)]
pub struct Pool {
    pub role: Role,
    pub workers: Members,
    /// Removed workers still finishing requests.
    draining: Arc<Mutex<Vec<Arc<Worker>>>>,
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
            workers: Members::new(workers),
            draining: Arc::default(),
            policy: Arc::from(policy),
            runner,
            fallback: LeastLoad::new(),
        }
    }

    /// Adds `worker`; it takes requests from the next routing decision on.
    pub fn add(&self, worker: Arc<Worker>) -> Result<(), MembershipError> {
        let mut list = self.workers.0.write().unwrap_or_else(|p| p.into_inner());
        if list.iter().any(|w| w.url == worker.url) {
            return Err(MembershipError::Duplicate(worker.url.clone()));
        }
        tracing::info!(worker = %worker.url, role = self.role.label(), origin = worker.origin.label(), "worker added");
        let mut next = list.to_vec();
        next.push(worker);
        *list = next.into();
        Ok(())
    }

    /// Removes the worker at `url` and drains it: no new request is routed
    /// to it from now on, the ones in flight finish (they hold the worker),
    /// then it leaves [`draining`](Self::draining). Needs a tokio runtime.
    pub fn remove(&self, url: &str) -> Result<Arc<Worker>, MembershipError> {
        let removed = {
            let mut list = self.workers.0.write().unwrap_or_else(|p| p.into_inner());
            let Some(i) = list.iter().position(|w| w.url == url) else {
                return Err(MembershipError::Unknown(url.to_owned()));
            };
            let mut next = list.to_vec();
            let removed = next.remove(i);
            *list = next.into();
            removed
        };
        removed.begin_drain();
        self.policy.on_worker_removed(&removed.url);
        tracing::info!(
            worker = %removed.url,
            role = self.role.label(),
            in_flight = removed.in_flight(),
            "worker removed; draining"
        );
        self.draining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::clone(&removed));
        let (draining, worker) = (Arc::clone(&self.draining), Arc::clone(&removed));
        tokio::spawn(async move {
            worker.drained().await;
            draining
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|w| !Arc::ptr_eq(w, &worker));
            tracing::info!(worker = %worker.url, "worker drained");
        });
        Ok(removed)
    }

    /// Removed workers whose requests have not all finished yet.
    pub fn draining(&self) -> Vec<Arc<Worker>> {
        self.draining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
        let workers = self.workers.snapshot();
        let Some(runner) = &self.runner else {
            return admit_with(&*self.policy, &workers, text);
        };
        let policy = Arc::clone(&self.policy);
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
    /// least load for this decision. Only current members are picked: a
    /// removed (draining) worker never gets a new request or a retry.
    pub async fn pick(&self, text: Option<&str>, tried: &[Arc<Worker>]) -> Option<Arc<Worker>> {
        let workers = self.workers.snapshot();
        let index = match &self.runner {
            None => pick_with(&*self.policy, &workers, text, tried),
            Some(runner) => {
                let (policy, list) = (Arc::clone(&self.policy), Arc::clone(&workers));
                let (text_owned, tried_owned) = (text.map(str::to_owned), tried.to_vec());
                let decided = runner
                    .run("pick", move || {
                        pick_with(&*policy, &list, text_owned.as_deref(), &tried_owned)
                    })
                    .await;
                match decided {
                    Some(i) => i,
                    None => pick_with(&self.fallback, &workers, text, tried),
                }
            }
        };
        index.and_then(|i| workers.get(i).cloned())
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

    #[tokio::test]
    async fn removed_worker_drains_then_leaves() {
        let cfg = BreakerConfig::default();
        let w = |i: u8| {
            Arc::new(Worker::new(
                &format!("http://w{i}:1"),
                Role::Decode,
                None,
                &cfg,
            ))
        };
        let pool = Pool::new(Role::Decode, vec![w(0)], Box::new(RoundRobin::new()));
        assert_eq!(
            pool.add(w(0)),
            Err(MembershipError::Duplicate("http://w0:1".into()))
        );
        pool.add(w(1)).unwrap();
        assert_eq!(pool.workers.len(), 2);
        let busy = pool.workers.get("http://w1:1").unwrap();
        let guard = busy.start_request();
        let removed = pool.remove("http://w1:1").unwrap();
        assert!(removed.is_draining());
        assert_eq!(pool.draining().len(), 1);
        // No new request reaches it, retries included.
        for _ in 0..4 {
            assert_eq!(pool.pick(None, &[]).await.unwrap().url, "http://w0:1");
        }
        assert!(matches!(
            pool.remove("http://w1:1"),
            Err(MembershipError::Unknown(_))
        ));
        drop(guard);
        tokio::time::timeout(std::time::Duration::from_secs(5), removed.drained())
            .await
            .expect("drained once its request ended");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !pool.draining().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "left the draining list"
            );
            tokio::task::yield_now().await;
        }
        // An empty pool picks nothing rather than failing.
        pool.remove("http://w0:1").unwrap();
        assert!(pool.pick(None, &[]).await.is_none());
    }
}
