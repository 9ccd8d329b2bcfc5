//! A pipeline whose script files are reloaded when they change.
//!
//! [`Reloading`] holds the compiled [`Pipeline`] behind a lock that is held
//! only to clone or swap an `Arc`: a decision clones the current pipeline and
//! runs on it, so a reload never waits for a decision and a decision in
//! progress finishes on the pipeline it started with. [`Reloading::check`]
//! (called by the gateway on an interval, see `reload_interval_ms`) looks at
//! each script's modification time and length; when one changed it rebuilds
//! the whole pipeline from the same config and swaps it in. A script that no
//! longer loads (syntax error, missing entry point, unreadable file) leaves
//! the running pipeline in place and is reported once per change of the file.
//!
//! What a reload cannot change: the stages' kinds, order and weights, the
//! picker and the time limit (they are the gateway's config, read at start).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use super::{Admit, Pipeline, PipelineConfig, PluginError};
use crate::{RequestFeatures, RoutingPolicy, WorkerView};

/// What a [`Reloading::check`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// No script changed since the last check.
    Unchanged,
    /// A script changed and the new pipeline is in use.
    Reloaded,
    /// A script changed but does not load; the previous pipeline stays.
    Failed(PluginError),
}

/// A file's identity for change detection: modification time and length
/// (`None` when it cannot be read).
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &str) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// A [`Pipeline`] rebuilt from its config when its scripts change.
#[derive(Debug)]
pub struct Reloading {
    config: PipelineConfig,
    current: RwLock<Arc<Pipeline>>,
    /// Each script's stamp when it was last loaded (or failed to).
    stamps: Mutex<Vec<(String, Stamp)>>,
    reloads: AtomicU64,
    failures: AtomicU64,
    // Fixed by the config's composition, whatever the scripts say.
    time_limit: Option<Duration>,
    has_admission: bool,
}

impl Reloading {
    /// Builds the pipeline (a script that does not load is an error here).
    pub fn new(config: PipelineConfig) -> Result<Self, PluginError> {
        let stamps = config
            .script_paths()
            .into_iter()
            .map(|p| {
                let s = stamp(&p);
                (p, s)
            })
            .collect();
        let pipeline = config.build()?;
        Ok(Self {
            time_limit: RoutingPolicy::time_limit(&pipeline),
            has_admission: RoutingPolicy::has_admission(&pipeline),
            config,
            current: RwLock::new(Arc::new(pipeline)),
            stamps: Mutex::new(stamps),
            reloads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    /// The pipeline decisions use now.
    pub fn current(&self) -> Arc<Pipeline> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Successful reloads so far.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Changes that did not load (the previous pipeline stayed).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Reloads the pipeline if a script changed since the last check (see the
    /// module docs). Reads file metadata, and the scripts when one changed:
    /// call it off the async workers.
    pub fn check(&self) -> Reload {
        let mut stamps = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = false;
        for (path, seen) in stamps.iter_mut() {
            let now = stamp(path);
            if now != *seen {
                *seen = now;
                changed = true;
            }
        }
        if !changed {
            return Reload::Unchanged;
        }
        match self.config.build() {
            Ok(p) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(p);
                self.reloads.fetch_add(1, Ordering::Relaxed);
                Reload::Reloaded
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                Reload::Failed(e)
            }
        }
    }
}

impl RoutingPolicy for Reloading {
    fn name(&self) -> &'static str {
        "pipeline"
    }

    fn pick(&self, workers: &[WorkerView<'_>], request: &RequestFeatures<'_>) -> Option<usize> {
        self.current().pick(workers, request)
    }

    fn on_worker_removed(&self, url: &str) {
        self.current().on_worker_removed(url);
    }

    fn has_admission(&self) -> bool {
        self.has_admission
    }

    fn time_limit(&self) -> Option<Duration> {
        self.time_limit
    }

    fn admit(&self, workers: &[WorkerView<'_>], request: &RequestFeatures<'_>) -> Admit {
        self.current().admit(workers, request)
    }

    fn reload_if_changed(&self) -> Reload {
        self.check()
    }
}

#[cfg(test)]
mod tests {
    use super::super::ScorerConfig;
    use super::*;

    fn w(url: &str, in_flight: u64) -> WorkerView<'_> {
        WorkerView {
            url,
            available: true,
            in_flight,
        }
    }

    /// Rewrites `path` so that its stamp surely differs (length and time).
    fn rewrite(path: &std::path::Path, body: &str) {
        std::fs::write(path, body).unwrap();
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(1))
            .unwrap();
    }

    #[test]
    fn a_changed_script_is_swapped_in_and_a_broken_one_is_not() {
        let dir = std::env::temp_dir().join(format!("baton-reload-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pick.rhai");
        rewrite(
            &path,
            r#"fn score(w, r) { if w.url == "a" { 1 } else { 0 } }"#,
        );
        let config = PipelineConfig {
            scorers: vec![ScorerConfig::Script {
                path: path.display().to_string(),
                weight: 1.0,
                budget: None,
            }],
            ..PipelineConfig::default()
        };
        let p = Reloading::new(config).unwrap();
        let ws = [w("a", 0), w("b", 0)];
        let r = RequestFeatures::default();
        assert_eq!(p.pick(&ws, &r), Some(0));
        assert_eq!(p.check(), Reload::Unchanged);
        // A decision holding the old pipeline keeps it across the swap.
        let held = p.current();
        rewrite(
            &path,
            r#"fn score(w, r) { if w.url == "b" { 1 } else { 0 } }"#,
        );
        assert_eq!(p.check(), Reload::Reloaded);
        assert_eq!(p.pick(&ws, &r), Some(1));
        assert_eq!(held.pick(&ws, &r), Some(0));
        // A broken script: reported, the running pipeline stays, once per change.
        rewrite(&path, "fn score(w, r) { ");
        assert!(matches!(p.check(), Reload::Failed(PluginError::Load(_))));
        assert_eq!(p.check(), Reload::Unchanged);
        assert_eq!(p.pick(&ws, &r), Some(1));
        assert_eq!((p.reloads(), p.failures()), (1, 1));
        assert_eq!(
            RoutingPolicy::time_limit(&p),
            Some(Duration::from_millis(100))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
