//! A pool of workers of one role plus the policy that routes within it.

use std::sync::Arc;

use baton_policies::{RequestFeatures, RoutingPolicy, WorkerView};

use crate::worker::{Role, Worker};

#[derive(Debug)]
pub struct Pool {
    pub role: Role,
    pub workers: Vec<Arc<Worker>>,
    policy: Box<dyn RoutingPolicy>,
}

impl Pool {
    pub fn new(role: Role, workers: Vec<Arc<Worker>>, policy: Box<dyn RoutingPolicy>) -> Self {
        Self {
            role,
            workers,
            policy,
        }
    }

    pub fn policy_name(&self) -> &'static str {
        self.policy.name()
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

    /// Asks the pool's policy whether to serve the request at all.
    pub fn admit(&self, text: Option<&str>) -> baton_policies::pipeline::Admit {
        if !self.policy.has_admission() {
            return baton_policies::pipeline::Admit::Yes;
        }
        let views: Vec<WorkerView<'_>> = self
            .workers
            .iter()
            .map(|w| WorkerView {
                url: &w.url,
                available: w.is_available(),
                in_flight: w.in_flight(),
            })
            .collect();
        self.policy.admit(&views, &RequestFeatures { text })
    }

    /// Picks a worker, avoiding `tried` ones while any other is available
    /// (a retry should land on a fresh worker, but a pool of one still
    /// gets retried).
    pub fn pick(&self, text: Option<&str>, tried: &[Arc<Worker>]) -> Option<Arc<Worker>> {
        let features = RequestFeatures { text };
        let pick_with = |skip_tried: bool| {
            let views: Vec<WorkerView<'_>> = self
                .workers
                .iter()
                .map(|w| WorkerView {
                    url: &w.url,
                    available: w.is_available()
                        && !(skip_tried && tried.iter().any(|t| Arc::ptr_eq(t, w))),
                    in_flight: w.in_flight(),
                })
                .collect();
            self.policy
                .pick(&views, &features)
                .filter(|&i| views.get(i).is_some_and(|v| v.available))
                .map(|i| Arc::clone(&self.workers[i]))
        };
        pick_with(true).or_else(|| {
            if tried.is_empty() {
                None
            } else {
                pick_with(false)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BreakerConfig;
    use baton_policies::RoundRobin;

    #[test]
    fn retries_prefer_untried_workers_and_skip_open_breakers() {
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
        let first = pool.pick(None, &[]).unwrap();
        let second = pool.pick(None, std::slice::from_ref(&first)).unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        ws[0].breaker.record_failure();
        ws[1].breaker.record_failure();
        for _ in 0..5 {
            assert_eq!(pool.pick(None, &[]).unwrap().url, "http://w2:1");
        }
        // Only the tried worker is left: it is retried rather than failing.
        assert_eq!(
            pool.pick(None, &[ws[2].clone()]).unwrap().url,
            "http://w2:1"
        );
        ws[2].breaker.record_failure();
        assert!(pool.pick(None, &[]).is_none());
    }
}
