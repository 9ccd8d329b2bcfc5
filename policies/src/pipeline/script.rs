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
//!
//! The sandbox (see [`sandboxed_engine`]): no `import` (and no module
//! resolver), no `eval`, `print` and `debug` refused at load and silenced if
//! reached dynamically (they would write prompt text to stdout), and an
//! operation budget of at most [`MAX_BUDGET`]. A caller that runs scripts on
//! a thread of its own can stop one early with [`with_cancel_flag`].

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rhai::{Array, Dynamic, Engine, EvalAltResult, Map, Scope, AST};

use super::{Admission, Admit, Filter, PluginError, Scorer};
use crate::{RequestFeatures, WorkerView};

/// Operations a script may run per call before it counts as overrunning.
pub const DEFAULT_BUDGET: u64 = 10_000;
/// The largest budget a config may give (about a quarter of a second of
/// script per call in a release build): a larger one is a config error.
pub const MAX_BUDGET: u64 = 1_000_000;
/// How often (in operations) a running script checks its cancel flag.
const CANCEL_CHECK_EVERY: u64 = 256;

thread_local! {
    /// The cancel flag of the script call running on this thread, if any.
    static CANCEL: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

/// Runs `f` (which calls into scripts) so that setting `flag` stops any
/// script it runs within a few hundred operations; the stopped stage fails
/// like an over-budget one. Meant for a caller that gave up waiting on a
/// script running on another thread: the thread is freed promptly.
pub fn with_cancel_flag<R>(flag: Arc<AtomicBool>, f: impl FnOnce() -> R) -> R {
    struct Reset(Option<Arc<AtomicBool>>);
    impl Drop for Reset {
        fn drop(&mut self) {
            let prev = self.0.take();
            CANCEL.with(|c| *c.borrow_mut() = prev);
        }
    }
    let prev = CANCEL.with(|c| c.borrow_mut().replace(flag));
    let _reset = Reset(prev);
    f()
}

fn cancelled() -> bool {
    CANCEL.with(|c| {
        c.borrow()
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    })
}

/// A Rhai engine with the plugin sandbox and limits applied.
pub fn sandboxed_engine(budget: u64) -> Engine {
    let mut engine = Engine::new();
    // No scripts from disk: `import` does not parse, and nothing would
    // resolve it anyway. `eval` could compile text the parser never saw.
    engine.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
    for symbol in ["import", "export", "eval", "print", "debug"] {
        engine.disable_symbol(symbol);
    }
    // `Fn("print").call(..)` bypasses the parser: those go nowhere.
    engine.on_print(|_| {});
    engine.on_debug(|_, _, _| {});
    engine.on_progress(|ops| {
        (ops.is_multiple_of(CANCEL_CHECK_EVERY) && cancelled()).then_some(Dynamic::UNIT)
    });
    engine.set_max_operations(budget.max(1));
    engine.set_max_call_levels(32);
    engine.set_max_expr_depths(64, 32);
    engine.set_max_string_size(1 << 16);
    engine.set_max_array_size(1 << 16);
    engine.set_max_map_size(1 << 12);
    engine
}

#[derive(Debug)]
struct Script {
    name: String,
    engine: Engine,
    ast: AST,
    budget: u64,
}

impl Script {
    fn compile(name: &str, source: &str, budget: u64, entry: &str) -> Result<Self, PluginError> {
        if budget > MAX_BUDGET {
            return Err(PluginError::Load(format!(
                "{name}: budget {budget} is above the cap of {MAX_BUDGET} operations"
            )));
        }
        let engine = sandboxed_engine(budget);
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
                EvalAltResult::ErrorTerminated(..) => PluginError::Failed {
                    plugin: self.name.clone(),
                    message: "stopped: over its time limit".into(),
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
    fn may_block(&self) -> bool {
        true
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
    fn may_block(&self) -> bool {
        true
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
    fn may_block(&self) -> bool {
        true
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
    fn imports_and_eval_are_refused_at_load() {
        for src in [
            r#"import "secrets" as s; fn score(w, r) { 1 }"#,
            r#"fn score(w, r) { import "/etc/hosts" as h; 1 }"#,
            r#"fn score(w, r) { eval("1 + 1") }"#,
        ] {
            let e = ScriptScorer::from_source("sneaky", src, DEFAULT_BUDGET).unwrap_err();
            assert!(matches!(e, PluginError::Load(_)), "{src}: {e}");
        }
        // Even a dynamically built call finds no module resolver.
        let s = ScriptScorer::from_source(
            "dyn",
            r#"fn score(w, r) { call(Fn("eval"), "1") }"#,
            DEFAULT_BUDGET,
        )
        .unwrap();
        assert!(s.score(&[w("a", 0)], &RequestFeatures::default()).is_err());
    }

    #[test]
    fn print_and_debug_are_refused_at_load() {
        for src in [
            r#"fn score(w, r) { print(r.text_prefix); 1 }"#,
            r#"fn score(w, r) { debug(r.text_prefix); 1 }"#,
        ] {
            let e = ScriptScorer::from_source("leaky", src, DEFAULT_BUDGET).unwrap_err();
            assert!(matches!(e, PluginError::Load(_)), "{src}: {e}");
        }
    }

    /// Dynamic calls reach no stdout: a child process (this test binary)
    /// runs such a script on a secret prompt; its stdout must not show it.
    #[test]
    fn dynamic_print_writes_nothing_to_stdout() {
        const SECRET: &str = "SECRET-PROMPT-7f3a";
        if std::env::var_os("BATON_PRINT_PROBE").is_some() {
            let s = ScriptScorer::from_source(
                "leaky",
                r#"fn score(w, r) { call(Fn("pri" + "nt"), r.text_prefix); call(Fn("deb" + "ug"), r.text_prefix); 1 }"#,
                DEFAULT_BUDGET,
            )
            .unwrap();
            let scored = s.score(&[w("a", 0)], &RequestFeatures { text: Some(SECRET) });
            println!("probe ran: {scored:?}");
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "pipeline::script::tests::dynamic_print_writes_nothing_to_stdout",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("BATON_PRINT_PROBE", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stdout}{stderr}");
        assert!(stdout.contains("probe ran: "), "{stdout}");
        assert!(
            !stdout.contains(SECRET) && !stderr.contains(SECRET),
            "{stdout}{stderr}"
        );
    }

    #[test]
    fn budgets_above_the_cap_are_refused() {
        let src = "fn score(w, r) { 1 }";
        let e = ScriptScorer::from_source("big", src, MAX_BUDGET + 1).unwrap_err();
        assert!(e.to_string().contains(&MAX_BUDGET.to_string()), "{e}");
        assert!(ScriptScorer::from_source("max", src, MAX_BUDGET).is_ok());
        assert!(ScriptFilter::from_source("f", "fn keep(w, r) { true }", 3e8 as u64).is_err());
        assert!(ScriptAdmission::from_source("a", "fn admit(w, r) { true }", u64::MAX).is_err());
    }

    #[test]
    fn a_cancel_flag_stops_a_running_script() {
        let spin =
            ScriptScorer::from_source("spin", "fn score(w, r) { loop { } }", MAX_BUDGET).unwrap();
        assert!(spin.may_block());
        let flag = Arc::new(AtomicBool::new(true));
        let e = with_cancel_flag(flag, || {
            spin.score(&[w("a", 0)], &RequestFeatures::default())
        })
        .unwrap_err();
        assert!(e.to_string().contains("time limit"), "{e}");
        // The flag is scoped: outside it the script runs to its budget.
        let e = spin
            .score(&[w("a", 0)], &RequestFeatures::default())
            .unwrap_err();
        assert!(matches!(e, PluginError::OverBudget { .. }), "{e}");
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
