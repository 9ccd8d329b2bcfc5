//! Composable routing: filters → weighted scorers → picker, plus admission
//! (in the spirit of llm-d's scheduler plugins), assembled from config.
//!
//! Every stage is a trait, so custom stages are Rust crates implementing
//! [`Filter`], [`Scorer`], [`Picker`] or [`Admission`] (see
//! `policies/examples/`). Stages can also be Rhai scripts loaded at start-up
//! ([`script`]), which needs no rebuild of the gateway. A stage that fails or
//! exceeds its budget makes that one decision fall back to the default
//! policy (least load); fallbacks are logged and counted.

mod builtin;
mod config;
pub mod reload;
pub mod script;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use builtin::{
    Available, LeastLoadScorer, MaxInFlight, MaxScorePicker, QueueCap, WeightedRandomPicker,
};
pub use config::{
    AdmissionConfig, FilterConfig, PickerConfig, PipelineConfig, ScorerConfig,
    DEFAULT_RELOAD_INTERVAL_MS, DEFAULT_TIME_LIMIT_MS,
};
pub use reload::{Reload, Reloading};

use crate::{LeastLoad, RequestFeatures, RoutingPolicy, WorkerView};

/// Why a plugin could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    #[error("plugin '{plugin}' failed: {message}")]
    Failed { plugin: String, message: String },
    #[error("plugin '{plugin}' exceeded its budget of {budget} operations")]
    OverBudget { plugin: String, budget: u64 },
    #[error("cannot load plugin: {0}")]
    Load(String),
}

/// Whether a request may be served now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Shed it (HTTP 429) with a retry hint.
    Reject {
        retry_after_ms: u64,
    },
}

/// Drops workers that must not serve this request.
pub trait Filter: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &str;
    /// Whether a call may run long (a script): the caller should run the
    /// decision off its async workers, under a time limit.
    fn may_block(&self) -> bool {
        false
    }
    /// Called once per candidate worker per decision.
    fn keep(
        &self,
        worker: &WorkerView<'_>,
        request: &RequestFeatures<'_>,
    ) -> Result<bool, PluginError>;
}

/// Rates candidate workers; higher is better. Scores are min–max normalized
/// per scorer before weighting, so scorers need not agree on a scale.
pub trait Scorer: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &str;
    /// Whether a call may run long (a script): the caller should run the
    /// decision off its async workers, under a time limit.
    fn may_block(&self) -> bool {
        false
    }
    /// Called once per decision with the candidates that passed the filters;
    /// returns one score per candidate, in order.
    fn score(
        &self,
        candidates: &[WorkerView<'_>],
        request: &RequestFeatures<'_>,
    ) -> Result<Vec<f64>, PluginError>;
}

/// Chooses among scored candidates (`(index into the snapshot, score)`).
pub trait Picker: Send + Sync + std::fmt::Debug {
    fn pick(&self, scored: &[(usize, f64)]) -> Option<usize>;
}

/// Decides, before routing, whether the request is served at all.
pub trait Admission: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &str;
    /// Whether a call may run long (a script): the caller should run the
    /// decision off its async workers, under a time limit.
    fn may_block(&self) -> bool {
        false
    }
    fn admit(
        &self,
        workers: &[WorkerView<'_>],
        request: &RequestFeatures<'_>,
    ) -> Result<Admit, PluginError>;
}

/// A routing policy made of stages.
#[derive(Debug)]
pub struct Pipeline {
    filters: Vec<Box<dyn Filter>>,
    scorers: Vec<(f64, Box<dyn Scorer>)>,
    picker: Box<dyn Picker>,
    admission: Vec<Box<dyn Admission>>,
    fallback: LeastLoad,
    fallbacks: AtomicU64,
    time_limit: Duration,
}

impl Pipeline {
    pub fn new(picker: Box<dyn Picker>) -> Self {
        Self {
            filters: Vec::new(),
            scorers: Vec::new(),
            picker,
            admission: Vec::new(),
            fallback: LeastLoad::new(),
            fallbacks: AtomicU64::new(0),
            time_limit: Duration::from_millis(DEFAULT_TIME_LIMIT_MS),
        }
    }

    /// How long a caller running this pipeline off-thread waits for one
    /// decision (see [`RoutingPolicy::time_limit`]).
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = limit;
        self
    }

    pub fn filter(mut self, f: Box<dyn Filter>) -> Self {
        self.filters.push(f);
        self
    }

    pub fn scorer(mut self, weight: f64, s: Box<dyn Scorer>) -> Self {
        self.scorers.push((weight, s));
        self
    }

    pub fn admission(mut self, a: Box<dyn Admission>) -> Self {
        self.admission.push(a);
        self
    }

    /// Whether any stage may run long (see [`Scorer::may_block`]).
    pub fn may_block(&self) -> bool {
        self.filters.iter().any(|f| f.may_block())
            || self.scorers.iter().any(|(_, s)| s.may_block())
            || self.admission.iter().any(|a| a.may_block())
    }

    /// Decisions that fell back to the default policy because a stage failed.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    fn fall_back(&self, e: &PluginError) {
        let n = self.fallbacks.fetch_add(1, Ordering::Relaxed);
        // Log the first few and then every 1000th, not every request.
        if n < 10 || n.is_multiple_of(1000) {
            tracing::warn!(error = %e, fallbacks = n + 1, "routing plugin failed; using the default policy");
        }
    }

    fn try_pick(
        &self,
        workers: &[WorkerView<'_>],
        request: &RequestFeatures<'_>,
    ) -> Result<Option<usize>, PluginError> {
        let mut candidates: Vec<usize> = Vec::new();
        'workers: for (i, w) in workers.iter().enumerate() {
            if !w.available {
                continue;
            }
            for f in &self.filters {
                if !f.keep(w, request)? {
                    continue 'workers;
                }
            }
            candidates.push(i);
        }
        if candidates.is_empty() {
            return Ok(None);
        }
        let views: Vec<WorkerView<'_>> = candidates.iter().map(|&i| workers[i]).collect();
        let mut total = vec![0.0; candidates.len()];
        for (weight, scorer) in &self.scorers {
            let raw = scorer.score(&views, request)?;
            if raw.len() != views.len() || raw.iter().any(|x| !x.is_finite()) {
                return Err(PluginError::Failed {
                    plugin: scorer.name().to_owned(),
                    message: format!(
                        "returned {} scores (non-finite or wrong count) for {} workers",
                        raw.len(),
                        views.len()
                    ),
                });
            }
            let (lo, hi) = raw
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| {
                    (l.min(x), h.max(x))
                });
            for (t, x) in total.iter_mut().zip(&raw) {
                let norm = if hi > lo { (x - lo) / (hi - lo) } else { 1.0 };
                *t += weight * norm;
            }
        }
        let scored: Vec<(usize, f64)> = candidates.into_iter().zip(total).collect();
        Ok(self.picker.pick(&scored))
    }

    /// Runs the admission stages; a failing stage admits (fail-open) and is
    /// counted as a fallback.
    pub fn run_admission(
        &self,
        workers: &[WorkerView<'_>],
        request: &RequestFeatures<'_>,
    ) -> Admit {
        for a in &self.admission {
            match a.admit(workers, request) {
                Ok(Admit::Yes) => {}
                Ok(reject) => return reject,
                Err(e) => self.fall_back(&e),
            }
        }
        Admit::Yes
    }
}

impl RoutingPolicy for Pipeline {
    fn name(&self) -> &'static str {
        "pipeline"
    }

    fn pick(&self, workers: &[WorkerView<'_>], request: &RequestFeatures<'_>) -> Option<usize> {
        match self.try_pick(workers, request) {
            Ok(choice) => choice,
            Err(e) => {
                self.fall_back(&e);
                self.fallback.pick(workers, request)
            }
        }
    }

    fn has_admission(&self) -> bool {
        !self.admission.is_empty()
    }

    fn time_limit(&self) -> Option<Duration> {
        self.may_block().then_some(self.time_limit)
    }

    fn admit(&self, workers: &[WorkerView<'_>], request: &RequestFeatures<'_>) -> Admit {
        self.run_admission(workers, request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(url: &str, in_flight: u64) -> WorkerView<'_> {
        WorkerView {
            url,
            available: true,
            in_flight,
        }
    }

    #[derive(Debug)]
    struct Broken;
    impl Scorer for Broken {
        fn name(&self) -> &str {
            "broken"
        }
        fn score(
            &self,
            _: &[WorkerView<'_>],
            _: &RequestFeatures<'_>,
        ) -> Result<Vec<f64>, PluginError> {
            Err(PluginError::Failed {
                plugin: "broken".into(),
                message: "boom".into(),
            })
        }
    }

    #[test]
    fn filters_scorers_and_picker_compose() {
        let p = Pipeline::new(Box::new(MaxScorePicker::default()))
            .filter(Box::new(MaxInFlight { max: 10 }))
            .scorer(1.0, Box::new(LeastLoadScorer));
        let ws = [w("a", 11), w("b", 5), w("c", 2)];
        assert_eq!(p.pick(&ws, &RequestFeatures::default()), Some(2));
        let full = [w("a", 11), w("b", 12)];
        assert_eq!(p.pick(&full, &RequestFeatures::default()), None);
    }

    #[test]
    fn a_failing_stage_falls_back_to_least_load() {
        let p = Pipeline::new(Box::new(MaxScorePicker::default())).scorer(1.0, Box::new(Broken));
        let ws = [w("a", 3), w("b", 1)];
        assert_eq!(p.pick(&ws, &RequestFeatures::default()), Some(1));
        assert_eq!(p.fallbacks(), 1);
    }

    #[test]
    fn only_pipelines_with_scripts_ask_to_run_off_thread() {
        let plain = Pipeline::new(Box::new(MaxScorePicker::default()))
            .scorer(1.0, Box::new(LeastLoadScorer))
            .time_limit(Duration::from_millis(7));
        assert_eq!(RoutingPolicy::time_limit(&plain), None);
        let script = script::ScriptScorer::from_source("s", "fn score(w, r) { 1 }", 100).unwrap();
        let scripted = plain.scorer(1.0, Box::new(script));
        assert_eq!(
            RoutingPolicy::time_limit(&scripted),
            Some(Duration::from_millis(7))
        );
    }

    #[test]
    fn admission_sheds_when_every_worker_is_full() {
        let p = Pipeline::new(Box::new(MaxScorePicker::default())).admission(Box::new(QueueCap {
            max_in_flight: 4,
            retry_after_ms: 250,
        }));
        assert_eq!(
            p.admit(&[w("a", 4), w("b", 3)], &RequestFeatures::default()),
            Admit::Yes
        );
        assert_eq!(
            p.admit(&[w("a", 4), w("b", 9)], &RequestFeatures::default()),
            Admit::Reject {
                retry_after_ms: 250
            }
        );
    }
}
