//! Pipeline stages written as Rhai scripts, loaded at start-up.
//!
//! Why Rhai: it is a small, pure-Rust, sandboxed embedded language (no file
//! or network access unless granted), it compiles to an AST once and runs
//! synchronously in-process — no IPC on the routing hot path — and it
//! bounds a script by counting operations, which is a deterministic time
//! budget (WebAssembly via wasmtime was the alternative: stronger isolation
//! but a far heavier build and a compile step for plugin authors).
//!
//! Contract — a script defines one of:
//! - scorer: `fn score(worker, request)` → number (higher is better)
//! - filter: `fn keep(worker, request)` → bool
//! - admission: `fn admit(workers, request)` → `true`, or a retry-after in ms to shed
//!
//! `worker` is `#{ url, in_flight, available }`, `workers` an array of them,
//! `request` is `#{ text_len, text_prefix }` (first 256 characters).

use rhai::{Array, Dynamic, Engine, EvalAltResult, Map, Scope, AST};

use super::{Admission, Admit, Filter, PluginError, Scorer};
use crate::{RequestFeatures, WorkerView};

/// Operations a script may run per call before it counts as overrunning.
pub const DEFAULT_BUDGET: u64 = 10_000;

#[derive(Debug)]
struct Script {
    name: String,
    engine: Engine,
    ast: AST,
    budget: u64,
}

impl Script {
    fn compile(name: &str, source: &str, budget: u64, entry: &str) -> Result<Self, PluginError> {
        let mut engine = Engine::new();
        engine.set_max_operations(budget.max(1));
        engine.set_max_call_levels(32);
        engine.set_max_expr_depths(64, 32);
        engine.set_max_string_size(1 << 16);
        engine.set_max_array_size(1 << 16);
        engine.set_max_map_size(1 << 12);
        let ast = engine
            .compile(source)
            .map_err(|e| PluginError::Load(format!("{name}: {e}")))?;
        if !ast.iter_functions().any(|f| f.name == entry) {
            return Err(PluginError::Load(format!(
                "{name}: the script must define fn {entry}(...)"
            )));
        }
        Ok(Self {
            name: name.to_owned(),
            engine,
            ast,
            budget,
        })
    }

    fn load(path: &str, budget: u64, entry: &str) -> Result<Self, PluginError> {
        let source =
            std::fs::read_to_string(path).map_err(|e| PluginError::Load(format!("{path}: {e}")))?;
        Self::compile(path, &source, budget, entry)
    }

    fn call(&self, entry: &str, args: impl rhai::FuncArgs) -> Result<Dynamic, PluginError> {
        self.engine
            .call_fn::<Dynamic>(&mut Scope::new(), &self.ast, entry, args)
            .map_err(|e| match *e {
                EvalAltResult::ErrorTooManyOperations(_) => PluginError::OverBudget {
                    plugin: self.name.clone(),
                    budget: self.budget,
                },
                other => PluginError::Failed {
                    plugin: self.name.clone(),
                    message: other.to_string(),
                },
            })
    }

    fn bad_type(&self, what: &str, got: &Dynamic) -> PluginError {
        PluginError::Failed {
            plugin: self.name.clone(),
            message: format!("{what} returned a {}", got.type_name()),
        }
    }
}

fn worker_map(w: &WorkerView<'_>) -> Map {
    let mut m = Map::new();
    m.insert("url".into(), Dynamic::from(w.url.to_owned()));
    m.insert("in_flight".into(), Dynamic::from(w.in_flight as i64));
    m.insert("available".into(), Dynamic::from(w.available));
    m
}

fn request_map(r: &RequestFeatures<'_>) -> Map {
    let text = r.text.unwrap_or("");
    let mut m = Map::new();
    m.insert(
        "text_len".into(),
        Dynamic::from(text.chars().count() as i64),
    );
    m.insert(
        "text_prefix".into(),
        Dynamic::from(text.chars().take(256).collect::<String>()),
    );
    m
}

fn number(d: &Dynamic) -> Option<f64> {
    d.as_float()
        .ok()
        .or_else(|| d.as_int().ok().map(|i| i as f64))
}

/// A scorer script.
#[derive(Debug)]
pub struct ScriptScorer(Script);

impl ScriptScorer {
    pub fn load(path: &str, budget: u64) -> Result<Self, PluginError> {
        Script::load(path, budget, "score").map(Self)
    }
    pub fn from_source(name: &str, source: &str, budget: u64) -> Result<Self, PluginError> {
        Script::compile(name, source, budget, "score").map(Self)
    }
}

impl Scorer for ScriptScorer {
    fn name(&self) -> &str {
        &self.0.name
    }
    fn score(
        &self,
        c: &[WorkerView<'_>],
        r: &RequestFeatures<'_>,
    ) -> Result<Vec<f64>, PluginError> {
        let req = request_map(r);
        c.iter()
            .map(|w| {
                let d = self.0.call("score", (worker_map(w), req.clone()))?;
                number(&d).ok_or_else(|| self.0.bad_type("score", &d))
            })
            .collect()
    }
}

/// A filter script.
#[derive(Debug)]
pub struct ScriptFilter(Script);

impl ScriptFilter {
    pub fn load(path: &str, budget: u64) -> Result<Self, PluginError> {
        Script::load(path, budget, "keep").map(Self)
    }
    pub fn from_source(name: &str, source: &str, budget: u64) -> Result<Self, PluginError> {
        Script::compile(name, source, budget, "keep").map(Self)
    }
}

impl Filter for ScriptFilter {
    fn name(&self) -> &str {
        &self.0.name
    }
    fn keep(&self, w: &WorkerView<'_>, r: &RequestFeatures<'_>) -> Result<bool, PluginError> {
        let d = self.0.call("keep", (worker_map(w), request_map(r)))?;
        d.as_bool().map_err(|_| self.0.bad_type("keep", &d))
    }
}

/// An admission script.
#[derive(Debug)]
pub struct ScriptAdmission(Script);

impl ScriptAdmission {
    pub fn load(path: &str, budget: u64) -> Result<Self, PluginError> {
        Script::load(path, budget, "admit").map(Self)
    }
    pub fn from_source(name: &str, source: &str, budget: u64) -> Result<Self, PluginError> {
        Script::compile(name, source, budget, "admit").map(Self)
    }
}

impl Admission for ScriptAdmission {
    fn name(&self) -> &str {
        &self.0.name
    }
    fn admit(
        &self,
        workers: &[WorkerView<'_>],
        r: &RequestFeatures<'_>,
    ) -> Result<Admit, PluginError> {
        let arr: Array = workers
            .iter()
            .map(|w| Dynamic::from(worker_map(w)))
            .collect();
        let d = self.0.call("admit", (arr, request_map(r)))?;
        if let Ok(b) = d.as_bool() {
            return Ok(if b {
                Admit::Yes
            } else {
                Admit::Reject {
                    retry_after_ms: 1000,
                }
            });
        }
        match number(&d) {
            Some(ms) if ms >= 0.0 => Ok(Admit::Reject {
                retry_after_ms: ms as u64,
            }),
            _ => Err(self.0.bad_type("admit", &d)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{MaxScorePicker, Pipeline};
    use super::*;
    use crate::RoutingPolicy;

    fn w(url: &str, in_flight: u64) -> WorkerView<'_> {
        WorkerView {
            url,
            available: true,
            in_flight,
        }
    }

    #[test]
    fn scripted_scorer_routes() {
        // Prefer workers whose URL ends in an even port digit.
        let src = r#"fn score(worker, request) { let d = worker.url.sub_string(worker.url.len() - 1).parse_int(); if d % 2 == 0 { 10 } else { 0 } }"#;
        let p = Pipeline::new(Box::new(MaxScorePicker::default())).scorer(
            1.0,
            Box::new(ScriptScorer::from_source("even", src, DEFAULT_BUDGET).unwrap()),
        );
        let ws = [w("http://a:8001", 0), w("http://b:8002", 50)];
        assert_eq!(p.pick(&ws, &RequestFeatures::default()), Some(1));
        assert_eq!(p.fallbacks(), 0);
    }

    #[test]
    fn runaway_and_broken_scripts_fall_back() {
        let spin = ScriptScorer::from_source("spin", "fn score(w, r) { loop { } }", 1000).unwrap();
        let p = Pipeline::new(Box::new(MaxScorePicker::default())).scorer(1.0, Box::new(spin));
        let ws = [w("a", 5), w("b", 1)];
        assert_eq!(
            p.pick(&ws, &RequestFeatures::default()),
            Some(1),
            "least-load fallback"
        );
        assert_eq!(p.fallbacks(), 1);
        let typo =
            ScriptScorer::from_source("typo", "fn score(w, r) { w.nope + 1 }", 1000).unwrap();
        let p = Pipeline::new(Box::new(MaxScorePicker::default())).scorer(1.0, Box::new(typo));
        assert_eq!(p.pick(&ws, &RequestFeatures::default()), Some(1));
        assert_eq!(p.fallbacks(), 1);
        assert!(ScriptScorer::from_source("syntax", "fn score(w, r) { ", 10).is_err());
        assert!(ScriptScorer::from_source("noentry", "fn other() { 1 }", 10).is_err());
    }

    #[test]
    fn scripted_filter_and_admission() {
        let f =
            ScriptFilter::from_source("f", r#"fn keep(w, r) { w.in_flight < 3 }"#, 1000).unwrap();
        let a = ScriptAdmission::from_source(
            "a",
            r#"fn admit(ws, r) { if r.text_len > 100 { 750 } else { true } }"#,
            1000,
        )
        .unwrap();
        let p = Pipeline::new(Box::new(MaxScorePicker::default()))
            .filter(Box::new(f))
            .admission(Box::new(a));
        let ws = [w("a", 5), w("b", 1)];
        assert_eq!(p.pick(&ws, &RequestFeatures::default()), Some(1));
        let long = "x".repeat(200);
        assert_eq!(
            p.admit(&ws, &RequestFeatures { text: Some(&long) }),
            Admit::Reject {
                retry_after_ms: 750
            }
        );
        assert_eq!(
            p.admit(&ws, &RequestFeatures { text: Some("hi") }),
            Admit::Yes
        );
    }
}
