//! The fleet: engines, the gateway's routing in front of them, and the discrete-event loop.
//!
//! Events sit in one heap ordered by (virtual time, insertion number), so equal times resolve in a fixed order and
//! a run is a pure function of its inputs. Three kinds: a request arrives at the gateway, an engine's step ends, a
//! decode leg reaches its engine after the KV hand-off. An engine that receives work while idle starts a step at
//! once (the engine loop blocks on its queue when idle); a busy one picks the work up when planning its next step.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::path::Path;
use std::sync::Arc;

use baton_policies::pipeline::{Admit, Pipeline, PipelineConfig};
use baton_policies::slo::{Budget, SloPolicyConfig, SloRequest};
use baton_policies::step::{StepLimits, StepModel};
use baton_policies::{build, PolicyConfig, PolicyKind, RequestFeatures, RoutingPolicy, WorkerView};

use super::engine::{Emit, Engine, EngineConfig, Leg, Seq};
use super::placement::{place, EngineState, Placed};
use super::profile::{Handoff, Profile};
use crate::client::Predicted;
use crate::record::{Outcome, RequestRecord};

/// A routing plugin pipeline, as the gateway's TOML gives it (`[policy_config.pipeline]`).
#[derive(Clone, Debug, PartialEq)]
pub struct PluginSetup {
    /// The file as named on the command line (names the setup).
    pub file: String,
    /// Script paths as the pipeline will load them.
    pub config: PipelineConfig,
}

/// What the twin reads of a gateway config file: its pipeline (other keys are the gateway's business).
#[derive(serde::Deserialize)]
struct GatewayFile {
    #[serde(default)]
    policy_config: Option<PolicyConfigFile>,
}

#[derive(serde::Deserialize)]
struct PolicyConfigFile {
    #[serde(default)]
    pipeline: Option<PipelineConfig>,
}

/// Seed of a `weighted_random` picker in the twin (the gateway seeds from the OS; the twin must repeat itself).
const PICKER_SEED: u64 = 0x7e1e;

impl PluginSetup {
    /// Reads `file` (a gateway config with `[policy_config.pipeline]`) and loads its scripts as the gateway does:
    /// paths relative to the working directory.
    pub fn load(file: &str) -> Result<Self, String> {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
        Self::parse(file, &text, Path::new(""))
    }

    /// Parses a gateway config's pipeline; relative script paths are taken from `scripts_dir` (`""`: the working
    /// directory, as the gateway does). Builds it once, so a script that does not load is an error here.
    pub fn parse(file: &str, text: &str, scripts_dir: &Path) -> Result<Self, String> {
        let parsed: GatewayFile =
            toml::from_str(text).map_err(|e| format!("{file}: invalid TOML: {e}"))?;
        let mut config = parsed
            .policy_config
            .and_then(|p| p.pipeline)
            .ok_or_else(|| format!("{file}: no [policy_config.pipeline] table"))?;
        let resolve = |path: &mut String| {
            if Path::new(path.as_str()).is_relative() {
                *path = scripts_dir.join(path.as_str()).display().to_string();
            }
        };
        use baton_policies::pipeline::{AdmissionConfig, FilterConfig, ScorerConfig};
        for f in &mut config.filters {
            if let FilterConfig::Script { path, .. } = f {
                resolve(path);
            }
        }
        for sc in &mut config.scorers {
            if let ScorerConfig::Script { path, .. } = sc {
                resolve(path);
            }
        }
        for a in &mut config.admission {
            if let AdmissionConfig::Script { path, .. } = a {
                resolve(path);
            }
        }
        let plugin = Self {
            file: file.to_owned(),
            config,
        };
        plugin.build()?;
        Ok(plugin)
    }

    /// A fresh pipeline (its own picker state and fallback count), scripts loaded from their files.
    pub fn build(&self) -> Result<Pipeline, String> {
        self.config
            .build_seeded(PICKER_SEED)
            .map_err(|e| format!("{}: {e}", self.file))
    }
}

/// A serving setup.
#[derive(Clone, Debug, PartialEq)]
pub enum Setup {
    /// `n` engines serving both phases, chunked prefill, the gateway in aggregated mode.
    Colocated(usize),
    /// `prefill` prefill engines and `decode` decode engines, the gateway in vLLM PD mode.
    Disaggregated { prefill: usize, decode: usize },
    /// `n` engines serving both phases, listed in both pools; SLO scheduling in the engines, SLO placement and
    /// admission in the gateway.
    Slo(usize),
    /// `gpus` engines as [`Setup::Colocated`], routed (and admitted) by a plugin pipeline instead of least load.
    Pipeline {
        gpus: usize,
        plugin: Arc<PluginSetup>,
    },
}

impl Setup {
    /// `colocated`, `disaggregated:PxD` (also `P:D`), `slo`, `pipeline:FILE` (a gateway config with
    /// `[policy_config.pipeline]`, loaded here: see [`PluginSetup::load`]); `gpus` sizes all but the second.
    pub fn parse(s: &str, gpus: usize) -> Result<Self, String> {
        let s = s.trim();
        match s {
            "colocated" => Ok(Self::Colocated(gpus)),
            "slo" => Ok(Self::Slo(gpus)),
            _ if s.starts_with("pipeline:") => {
                let file = s["pipeline:".len()..].trim();
                if file.is_empty() {
                    return Err("pipeline:FILE needs a file".into());
                }
                Ok(Self::Pipeline {
                    gpus,
                    plugin: Arc::new(PluginSetup::load(file)?),
                })
            }
            _ => {
                let split = s.strip_prefix("disaggregated:").ok_or_else(|| {
                    format!(
                        "unknown setup {s:?} (colocated, disaggregated:PxD, slo, pipeline:FILE)"
                    )
                })?;
                let (p, d) = split
                    .split_once(['x', ':'])
                    .ok_or_else(|| format!("{s:?}: expected disaggregated:PxD"))?;
                let n = |x: &str| x.trim().parse::<usize>().ok().filter(|n| *n > 0);
                match (n(p), n(d)) {
                    (Some(prefill), Some(decode)) => Ok(Self::Disaggregated { prefill, decode }),
                    _ => Err(format!("{s:?}: P and D must be ≥ 1")),
                }
            }
        }
    }

    pub fn gpus(&self) -> usize {
        match *self {
            Self::Colocated(n) | Self::Slo(n) | Self::Pipeline { gpus: n, .. } => n,
            Self::Disaggregated { prefill, decode } => prefill + decode,
        }
    }

    /// Whether the class sent changes what happens (else one run serves every tier).
    pub fn uses_budgets(&self) -> bool {
        matches!(self, Self::Slo(_))
    }

    pub fn name(&self) -> String {
        match self {
            Self::Colocated(_) => "colocated".into(),
            Self::Disaggregated { prefill, decode } => format!("disaggregated:{prefill}x{decode}"),
            Self::Slo(_) => "slo".into(),
            Self::Pipeline { plugin, .. } => format!("pipeline:{}", plugin.file),
        }
    }

    /// Colocated engines behind one pool routed by a `RoutingPolicy` (least load, or a plugin pipeline).
    fn colocated_engines(&self) -> Option<usize> {
        match *self {
            Self::Colocated(n) | Self::Pipeline { gpus: n, .. } => Some(n),
            _ => None,
        }
    }
}

/// Everything about the fleet other than the setup's shape.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    pub model: StepModel,
    pub kv_capacity_tokens: u64,
    pub max_num_seqs: usize,
    /// Step tokens of colocated engines, prefill engines, decode engines, and the cap of SLO-scheduled engines.
    pub colocated_tokens: u64,
    pub prefill_tokens: u64,
    pub decode_tokens: u64,
    pub slo_tokens: u64,
    pub limits: StepLimits,
    pub handoff: Handoff,
    /// Client → gateway → engine and back, added to every TTFT and latency.
    pub overhead_ms: f64,
    pub colocated_policy: PolicyKind,
    pub pool_policy: PolicyKind,
    pub slo: SloPolicyConfig,
    /// The client gives up after this long (a timeout is a miss).
    pub timeout_s: f64,
}

impl FleetConfig {
    /// The headline's settings for a profile: 2048-token chunks colocated and on decode engines, 8192-token prefill
    /// steps, 128 sequences, the gateway's least_load (colocated) and default pool policy (PD), 60 s timeout.
    pub fn headline(profile: &Profile, handoff: Handoff) -> Self {
        Self {
            model: profile.step,
            kv_capacity_tokens: profile.kv_capacity_tokens.unwrap_or(u64::MAX),
            max_num_seqs: 128,
            colocated_tokens: 2048,
            prefill_tokens: 8192,
            decode_tokens: 2048,
            slo_tokens: 8192,
            limits: StepLimits::default(),
            handoff,
            overhead_ms: 1.0,
            colocated_policy: PolicyKind::LeastLoad,
            pool_policy: PolicyKind::CacheAware,
            slo: SloPolicyConfig {
                local_prefill_max_tokens: 1_000_000,
                ..SloPolicyConfig::default()
            },
            timeout_s: 60.0,
        }
    }
}

/// One request as the twin sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct TwinRequest {
    pub index: usize,
    pub label: String,
    pub arrival_ms: f64,
    /// Words as the workload drew them (`prompt_len` of the record).
    pub prompt_len: u32,
    pub prompt_tokens: u64,
    pub output_tokens: u64,
    /// The budget of the class sent with it.
    pub budget: Budget,
    /// The prompt: a plugin pipeline's routing text (`/v1/completions` routes by it). Other setups ignore it.
    pub prompt: String,
}

/// A simulated run.
#[derive(Clone, Debug)]
pub struct SimOutput {
    pub records: Vec<RequestRecord>,
    pub duration_s: f64,
    pub steps: u64,
    pub preemptions: u64,
    /// Requests the SLO policy served by one engine alone / split across two.
    pub local: u64,
    pub split: u64,
    /// Plugin pipeline: decisions whose pick / admission fell back to least load / admit (a script failed or ran
    /// over its budget), picks that found no worker (503), requests shed by admission (429).
    pub plugin: PluginCounts,
}

/// What a plugin pipeline did in a run (all zero for other setups).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PluginCounts {
    pub pick_fallbacks: u64,
    pub admit_fallbacks: u64,
    pub no_worker: u64,
    pub shed: u64,
}

impl PluginCounts {
    pub fn add(&mut self, o: &Self) {
        self.pick_fallbacks += o.pick_fallbacks;
        self.admit_fallbacks += o.admit_fallbacks;
        self.no_worker += o.no_worker;
        self.shed += o.shed;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ev {
    Arrive(usize),
    StepEnd(usize),
    DecodeLeg(usize),
    /// An idle engine looks at its queue: after every event of the same instant, so work that arrives together
    /// starts together (the engine drains its channel before stepping).
    Kick(usize),
}

struct Timed {
    at: f64,
    n: u64,
    ev: Ev,
}

impl PartialEq for Timed {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Timed {
    /// Reversed: the heap pops the earliest (then the first inserted).
    fn cmp(&self, o: &Self) -> Ordering {
        o.at.total_cmp(&self.at).then(o.n.cmp(&self.n))
    }
}

#[derive(Clone, Debug, Default)]
struct Flight {
    prefill: Option<usize>,
    decode: usize,
    first_ms: Option<f64>,
    end_ms: Option<f64>,
    rejected: bool,
    /// Shed by a plugin's admission: the Retry-After it would carry (seconds).
    retry_after_s: Option<u64>,
    /// No worker passed the plugin's filters: the gateway answers 503.
    no_worker: bool,
    /// The SLO policy's prediction (TTFT from arrival, TPOT), as the gateway's `x-baton-predicted` carries it.
    predicted: Option<Predicted>,
}

struct Sim<'a> {
    cfg: &'a FleetConfig,
    setup: Setup,
    reqs: &'a [TwinRequest],
    engines: Vec<Engine>,
    urls: Vec<String>,
    /// Decode-pool index → engine index (prefill pool: the first engines).
    decode_base: usize,
    in_flight: Vec<u64>,
    decode_in_flight: Vec<u64>,
    pending: Vec<u64>,
    kick_pending: Vec<bool>,
    flights: Vec<Flight>,
    heap: BinaryHeap<Timed>,
    n: u64,
    policy_a: Box<dyn RoutingPolicy>,
    policy_b: Box<dyn RoutingPolicy>,
    /// The plugin pipeline (also `policy_a`), for its fallback count.
    plugin: Option<Arc<Pipeline>>,
    plugin_counts: PluginCounts,
    local: u64,
    split: u64,
}

/// A shared pipeline as a `RoutingPolicy` (the sim routes through the trait and reads the pipeline's counter).
#[derive(Debug)]
struct Shared(Arc<Pipeline>);

impl RoutingPolicy for Shared {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn pick(&self, workers: &[WorkerView<'_>], request: &RequestFeatures<'_>) -> Option<usize> {
        self.0.pick(workers, request)
    }
    fn has_admission(&self) -> bool {
        self.0.has_admission()
    }
    fn admit(&self, workers: &[WorkerView<'_>], request: &RequestFeatures<'_>) -> Admit {
        RoutingPolicy::admit(&*self.0, workers, request)
    }
}

/// Runs the requests (sorted by arrival) through the setup. Errors only when a plugin pipeline no longer loads.
pub fn simulate(
    cfg: &FleetConfig,
    setup: Setup,
    reqs: &[TwinRequest],
) -> Result<SimOutput, String> {
    let engine = |tokens: u64, slo: bool| {
        Engine::new(
            EngineConfig {
                max_batched_tokens: tokens,
                max_num_seqs: cfg.max_num_seqs,
                kv_capacity_tokens: cfg.kv_capacity_tokens,
                slo_scheduling: slo,
                limits: cfg.limits,
            },
            cfg.model,
        )
    };
    let (engines, decode_base, policies) = match setup {
        Setup::Colocated(n) | Setup::Pipeline { gpus: n, .. } => (
            (0..n)
                .map(|_| engine(cfg.colocated_tokens, false))
                .collect::<Vec<_>>(),
            0,
            (cfg.colocated_policy, cfg.colocated_policy),
        ),
        Setup::Disaggregated { prefill, decode } => (
            (0..prefill)
                .map(|_| engine(cfg.prefill_tokens, false))
                .chain((0..decode).map(|_| engine(cfg.decode_tokens, false)))
                .collect(),
            prefill,
            (cfg.pool_policy, cfg.pool_policy),
        ),
        Setup::Slo(n) => (
            (0..n).map(|_| engine(cfg.slo_tokens, true)).collect(),
            0,
            (cfg.pool_policy, cfg.pool_policy),
        ),
    };
    let built = |k| {
        build(k, &PolicyConfig::default())
            .unwrap_or_else(|_| Box::new(baton_policies::LeastLoad::new()))
    };
    let plugin = match &setup {
        Setup::Pipeline { plugin, .. } => Some(Arc::new(plugin.build()?)),
        _ => None,
    };
    let n = engines.len();
    let mut sim = Sim {
        cfg,
        setup,
        reqs,
        // As the gateway names workers (scripts may read the port).
        urls: (0..n)
            .map(|i| format!("http://engine-{i}:{}", 8001 + i))
            .collect(),
        engines,
        decode_base,
        in_flight: vec![0; n],
        decode_in_flight: vec![0; n],
        pending: vec![0; n],
        kick_pending: vec![false; n],
        flights: vec![Flight::default(); reqs.len()],
        heap: BinaryHeap::new(),
        n: 0,
        policy_a: match &plugin {
            Some(p) => Box::new(Shared(Arc::clone(p))),
            None => built(policies.0),
        },
        policy_b: built(policies.1),
        plugin,
        plugin_counts: PluginCounts::default(),
        local: 0,
        split: 0,
    };
    for (i, r) in reqs.iter().enumerate() {
        sim.push(r.arrival_ms, Ev::Arrive(i));
    }
    let last_arrival = reqs.iter().map(|r| r.arrival_ms).fold(0.0, f64::max);
    // The client gives up on every request by then: nothing after it can change a record.
    let horizon = last_arrival + cfg.timeout_s * 1000.0;
    while let Some(t) = sim.heap.pop() {
        if t.at > horizon {
            break;
        }
        match t.ev {
            Ev::Arrive(i) => sim.arrive(i, t.at),
            Ev::StepEnd(e) => sim.step_end(e, t.at),
            Ev::DecodeLeg(i) => sim.decode_leg(i, t.at),
            Ev::Kick(e) => {
                sim.kick_pending[e] = false;
                sim.kick(e, t.at);
            }
        }
    }
    Ok(sim.finish(horizon))
}

fn predicted(p: &baton_policies::slo::Prediction) -> Predicted {
    let finite = |x: f64| x.is_finite().then_some(x);
    Predicted {
        ttft_ms: finite(p.ttft_ms),
        tpot_ms: finite(p.tpot_ms),
    }
}

impl Sim<'_> {
    fn push(&mut self, at: f64, ev: Ev) {
        self.n += 1;
        self.heap.push(Timed { at, n: self.n, ev });
    }

    fn kick(&mut self, e: usize, now: f64) {
        if self.engines[e].busy {
            return;
        }
        if let Some(ms) = self.engines[e].plan(now) {
            self.engines[e].busy = true;
            self.push(now + ms, Ev::StepEnd(e));
        }
    }

    fn send(&mut self, e: usize, seq: Seq, now: f64) {
        self.engines[e].receive(seq);
        if !self.engines[e].busy && !self.kick_pending[e] {
            self.kick_pending[e] = true;
            self.push(now, Ev::Kick(e));
        }
    }

    fn views<'b>(
        urls: &'b [String],
        load: &[u64],
        range: std::ops::Range<usize>,
    ) -> Vec<WorkerView<'b>> {
        range
            .map(|i| WorkerView {
                url: &urls[i],
                available: true,
                in_flight: load[i],
            })
            .collect()
    }

    fn budgeted(&self, i: usize, leg: Leg, prompt: u64, output: u64, now: f64) -> Seq {
        let r = &self.reqs[i];
        let s = Seq::new(i, leg, now, prompt, output);
        if self.setup.uses_budgets() {
            s.with_budget(r.arrival_ms, r.budget.ttft_ms, r.budget.tpot_ms)
        } else {
            s
        }
    }

    fn plugin_fallbacks(&self) -> u64 {
        self.plugin.as_ref().map_or(0, |p| p.fallbacks())
    }

    /// Colocated serving: one pool, `policy_a` (least load or a plugin pipeline) on the snapshot of requests in
    /// flight, its admission first if it has one (a shed is a 429), the prompt as the routing text.
    fn arrive_colocated(&mut self, i: usize, n: usize, now: f64) {
        let reqs = self.reqs;
        let r = &reqs[i];
        let (prompt, output) = (r.prompt_tokens, r.output_tokens);
        let features = RequestFeatures {
            text: Some(&r.prompt),
        };
        let views = Self::views(&self.urls, &self.in_flight, 0..n);
        if self.policy_a.has_admission() {
            let before = self.plugin_fallbacks();
            let admit = self.policy_a.admit(&views, &features);
            self.plugin_counts.admit_fallbacks += self.plugin_fallbacks() - before;
            if let Admit::Reject { retry_after_ms } = admit {
                self.plugin_counts.shed += 1;
                self.flights[i].rejected = true;
                // As the gateway's Retry-After: whole seconds rounded up, at least 1.
                self.flights[i].retry_after_s = Some(retry_after_ms.div_ceil(1000).max(1));
                return;
            }
        }
        let before = self.plugin_fallbacks();
        let pick = self.policy_a.pick(&views, &features);
        self.plugin_counts.pick_fallbacks += self.plugin_fallbacks() - before;
        let Some(e) = pick.filter(|&e| e < n) else {
            self.plugin_counts.no_worker += 1;
            self.flights[i].no_worker = true;
            return;
        };
        self.in_flight[e] += 1;
        self.flights[i].decode = e;
        let s = self.budgeted(i, Leg::Full, prompt, output, now);
        self.send(e, s, now);
    }

    fn arrive(&mut self, i: usize, now: f64) {
        if let Some(n) = self.setup.colocated_engines() {
            return self.arrive_colocated(i, n, now);
        }
        let r = &self.reqs[i];
        let (prompt, output) = (r.prompt_tokens, r.output_tokens);
        let none = RequestFeatures::default();
        match self.setup {
            Setup::Colocated(_) | Setup::Pipeline { .. } => unreachable!("routed above"),
            Setup::Disaggregated { prefill, decode } => {
                let pv = Self::views(&self.urls, &self.in_flight, 0..prefill);
                let p = self.policy_a.pick(&pv, &none).unwrap_or(0);
                let dv = Self::views(
                    &self.urls,
                    &self.decode_in_flight,
                    prefill..prefill + decode,
                );
                let d = self.decode_base + self.policy_b.pick(&dv, &none).unwrap_or(0);
                self.in_flight[p] += 1;
                self.decode_in_flight[d] += 1;
                self.flights[i].prefill = Some(p);
                self.flights[i].decode = d;
                let s = self.budgeted(i, Leg::Prefill, prompt, 1, now);
                self.send(p, s, now);
            }
            Setup::Slo(_) => {
                let states: Vec<EngineState> = self
                    .engines
                    .iter()
                    .zip(&self.pending)
                    .map(|(e, &pending)| EngineState {
                        report: e.report(),
                        prompts: e.waiting_prompts(),
                        pending_decodes: pending,
                        pending_tpot_ms: if pending > 0 { r.budget.tpot_ms } else { None },
                    })
                    .collect();
                let req = SloRequest {
                    prompt_tokens: prompt,
                    output_tokens: output,
                    budget: r.budget,
                    arrival_ms: r.arrival_ms,
                };
                let limits = StepLimits {
                    max_tokens: self.cfg.slo_tokens,
                    ..self.cfg.limits
                };
                match place(
                    &self.cfg.slo,
                    &req,
                    &states,
                    &self.urls,
                    &self.cfg.model,
                    &limits,
                    now,
                ) {
                    Placed::Local(e, p) => {
                        self.local += 1;
                        self.flights[i].predicted = Some(predicted(&p));
                        self.flights[i].decode = e;
                        let s = self.budgeted(i, Leg::Full, prompt, output, now);
                        self.send(e, s, now);
                    }
                    Placed::Disaggregated {
                        prefill,
                        decode,
                        prediction,
                    } => {
                        self.split += 1;
                        self.flights[i].predicted = Some(predicted(&prediction));
                        self.flights[i].prefill = Some(prefill);
                        self.flights[i].decode = decode;
                        self.pending[decode] += 1;
                        let s = self.budgeted(i, Leg::Prefill, prompt, 1, now);
                        self.send(prefill, s, now);
                    }
                    Placed::Rejected => self.flights[i].rejected = true,
                }
            }
        }
    }

    fn step_end(&mut self, e: usize, now: f64) {
        self.engines[e].busy = false;
        for m in self.engines[e].apply(now) {
            match m {
                Emit::First { req, leg, at_ms } => {
                    if leg != Leg::Prefill {
                        self.flights[req].first_ms = Some(at_ms);
                    }
                }
                Emit::Done { req, leg, at_ms } => match leg {
                    Leg::Prefill => {
                        if let Some(p) = self.flights[req].prefill {
                            self.in_flight[p] = self.in_flight[p].saturating_sub(1);
                        }
                        self.push(at_ms + self.cfg.handoff.fixed_ms, Ev::DecodeLeg(req));
                    }
                    Leg::Full | Leg::Decode => {
                        self.flights[req].end_ms = Some(at_ms);
                        let d = self.flights[req].decode;
                        match self.setup {
                            Setup::Colocated(_) | Setup::Pipeline { .. } => {
                                self.in_flight[d] = self.in_flight[d].saturating_sub(1)
                            }
                            _ => {
                                self.decode_in_flight[d] =
                                    self.decode_in_flight[d].saturating_sub(1)
                            }
                        }
                    }
                },
            }
        }
        self.kick(e, now);
    }

    fn decode_leg(&mut self, i: usize, now: f64) {
        let r = &self.reqs[i];
        let d = self.flights[i].decode;
        if matches!(self.setup, Setup::Slo(_)) {
            self.pending[d] = self.pending[d].saturating_sub(1);
        }
        let import = self.cfg.handoff.import_ms(r.prompt_tokens);
        let s = self
            .budgeted(i, Leg::Decode, r.prompt_tokens, r.output_tokens, now)
            .with_import_ms(import);
        self.send(d, s, now);
    }

    fn finish(self, horizon: f64) -> SimOutput {
        let overhead = self.cfg.overhead_ms;
        let timeout_ms = self.cfg.timeout_s * 1000.0;
        let mut last_ms: f64 = 0.0;
        let records = self
            .reqs
            .iter()
            .zip(&self.flights)
            .map(|(r, f)| {
                let ms = |t: f64| (t - r.arrival_ms + overhead) / 1000.0;
                let mut rec = RequestRecord {
                    index: r.index,
                    label: r.label.clone(),
                    scheduled_s: r.arrival_ms / 1000.0,
                    sent_s: r.arrival_ms / 1000.0,
                    prompt_len: r.prompt_len,
                    output_len: r.output_tokens as u32,
                    outcome: Outcome::Ok,
                    ttft_s: None,
                    latency_s: None,
                    itl_s: Vec::new(),
                    output_tokens: None,
                    prompt_tokens: Some(r.prompt_tokens),
                    predicted: f.predicted,
                };
                if f.rejected {
                    rec.outcome = Outcome::Rejected {
                        retry_after: f.retry_after_s.map(|s| s.to_string()),
                    };
                    last_ms = last_ms.max(r.arrival_ms);
                    return rec;
                }
                if f.no_worker {
                    rec.outcome = Outcome::HttpError {
                        status: 503,
                        message: "no healthy worker".into(),
                    };
                    last_ms = last_ms.max(r.arrival_ms);
                    return rec;
                }
                match (f.first_ms, f.end_ms) {
                    (Some(first), Some(end)) if end - r.arrival_ms + overhead <= timeout_ms => {
                        rec.ttft_s = Some(ms(first));
                        rec.latency_s = Some(ms(end));
                        rec.output_tokens = Some(r.output_tokens);
                        last_ms = last_ms.max(end + overhead);
                    }
                    _ => {
                        rec.outcome = Outcome::Timeout;
                        last_ms = last_ms.max((r.arrival_ms + timeout_ms).min(horizon));
                    }
                }
                rec
            })
            .collect();
        SimOutput {
            records,
            duration_s: last_ms / 1000.0,
            steps: self.engines.iter().map(|e| e.steps).sum(),
            preemptions: self.engines.iter().map(|e| e.preemptions).sum(),
            local: self.local,
            split: self.split,
            plugin: self.plugin_counts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_policies::step::StepShape;

    fn cfg() -> FleetConfig {
        let p = Profile::from_model(
            "t",
            StepModel {
                fixed_ms: 5.0,
                per_seq_ms: 0.1,
                per_prefill_token_ms: 0.03,
                per_kctx_ms: 0.05,
            },
        );
        let mut c = FleetConfig::headline(&p, Handoff::fixed(2.0));
        c.overhead_ms = 0.0;
        c
    }

    fn req(index: usize, at: f64, prompt: u64, output: u64) -> TwinRequest {
        TwinRequest {
            index,
            label: "t".into(),
            arrival_ms: at,
            prompt_len: prompt as u32,
            prompt_tokens: prompt,
            output_tokens: output,
            budget: Budget {
                ttft_ms: Some(500.0),
                tpot_ms: Some(30.0),
            },
            prompt: "p".repeat(prompt as usize),
        }
    }

    #[test]
    fn setups_parse() {
        assert_eq!(Setup::parse("colocated", 4), Ok(Setup::Colocated(4)));
        assert_eq!(
            Setup::parse("disaggregated:3x1", 4),
            Ok(Setup::Disaggregated {
                prefill: 3,
                decode: 1
            })
        );
        assert_eq!(
            Setup::parse("disaggregated:2:2", 4).map(|s| s.name()),
            Ok("disaggregated:2x2".to_owned())
        );
        assert!(Setup::parse("disaggregated:0x1", 1).is_err());
        assert!(Setup::parse("nope", 1).is_err());
    }

    #[test]
    fn one_request_colocated_ttft_is_one_prefill_step() {
        let c = cfg();
        let out = simulate(&c, Setup::Colocated(2), &[req(0, 100.0, 1000, 2)]).unwrap();
        let step = c.model.predict_ms(&StepShape {
            seqs: 1,
            prefill_tokens: 1000,
            context_tokens: 0,
        });
        let r = &out.records[0];
        assert!(r.outcome.is_ok());
        assert!((r.ttft_s.unwrap() * 1000.0 - step).abs() < 1e-9, "{r:?}");
    }

    #[test]
    fn disaggregated_first_token_comes_after_prefill_handoff_and_one_decode_step() {
        let c = cfg();
        let out = simulate(
            &c,
            Setup::Disaggregated {
                prefill: 1,
                decode: 1,
            },
            &[req(0, 0.0, 3000, 4)],
        )
        .unwrap();
        let m = c.model;
        let prefill = m.predict_ms(&StepShape {
            seqs: 1,
            prefill_tokens: 3000,
            context_tokens: 0,
        });
        let recompute = m.predict_ms(&StepShape {
            seqs: 1,
            prefill_tokens: 1,
            context_tokens: 0,
        });
        let ttft = out.records[0].ttft_s.unwrap() * 1000.0;
        assert!(
            (ttft - (prefill + 2.0 + recompute)).abs() < 1e-9,
            "{ttft} vs {prefill} + 2 + {recompute}"
        );
        // Three more tokens, one decode step each.
        assert!(out.records[0].latency_s.unwrap() * 1000.0 > ttft + 3.0 * m.fixed_ms);
    }

    #[test]
    fn handoffs_reach_the_decoder_in_prefill_completion_order() {
        // Requests 0 and 1 arrive together and share the prefill engine's first 8192-token step; 2 arrives during
        // it and is prefilled in the next. 0's and 1's decode legs reach the decoder together and start in one
        // step; 2's comes after.
        let c = cfg();
        let reqs = [
            req(0, 0.0, 3000, 2),
            req(1, 0.0, 2000, 2),
            req(2, 1.0, 100, 2),
        ];
        let out = simulate(
            &c,
            Setup::Disaggregated {
                prefill: 1,
                decode: 1,
            },
            &reqs,
        )
        .unwrap();
        let first: Vec<f64> = out
            .records
            .iter()
            .zip(&reqs)
            .map(|(r, q)| r.ttft_s.unwrap() * 1000.0 + q.arrival_ms)
            .collect();
        assert!((first[0] - first[1]).abs() < 1e-9, "{first:?}");
        assert!(first[1] < first[2], "{first:?}");
    }

    #[test]
    fn same_inputs_same_records() {
        let c = cfg();
        let reqs: Vec<_> = (0..200)
            .map(|i| {
                req(
                    i,
                    i as f64 * 7.0,
                    200 + (i as u64 * 37) % 3000,
                    10 + i as u64 % 50,
                )
            })
            .collect();
        for setup in [
            Setup::Colocated(2),
            Setup::Disaggregated {
                prefill: 1,
                decode: 1,
            },
            Setup::Slo(2),
        ] {
            let a = simulate(&c, setup.clone(), &reqs).unwrap();
            let b = simulate(&c, setup.clone(), &reqs).unwrap();
            assert_eq!(a.records, b.records, "{setup:?}");
            assert!(a
                .records
                .iter()
                .all(|r| r.outcome.is_ok() || r.outcome.is_rejected()));
        }
    }

    fn repo_root() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    fn pipeline(name: &str, toml: &str, scripts_dir: &Path, gpus: usize) -> Setup {
        Setup::Pipeline {
            gpus,
            plugin: Arc::new(PluginSetup::parse(name, toml, scripts_dir).unwrap()),
        }
    }

    /// Busy enough that queues form on 2 engines (the worked example's `max_in_flight = 4` filter refuses some
    /// picks), with every tenth prompt over 20 000 characters (its admission script sheds those while every
    /// worker is busy).
    fn busy_requests() -> Vec<TwinRequest> {
        (0..400)
            .map(|i| {
                let prompt = if i % 10 == 0 {
                    25_000
                } else {
                    200 + (i as u64 * 37) % 3000
                };
                req(i, i as f64 * 4.0, prompt, 20 + i as u64 % 80)
            })
            .collect()
    }

    #[test]
    fn the_worked_example_file_is_the_guides() {
        let root = repo_root();
        let guide = std::fs::read_to_string(root.join("docs/PLUGINS.md")).unwrap();
        let block = guide
            .split("<!-- worked-example:begin -->")
            .nth(1)
            .and_then(|rest| rest.split("<!-- worked-example:end -->").next())
            .and_then(|b| b.split("```toml\n").nth(1))
            .and_then(|b| b.split("```").next())
            .expect("the guide marks its worked example");
        let file =
            std::fs::read_to_string(root.join("policies/examples/plugins/worked_example.toml"))
                .unwrap();
        assert_eq!(file, block);
    }

    #[test]
    fn the_worked_example_pipeline_runs_deterministically() {
        let c = cfg();
        let root = repo_root();
        let text =
            std::fs::read_to_string(root.join("policies/examples/plugins/worked_example.toml"))
                .unwrap();
        let setup = pipeline("worked_example.toml", &text, &root, 2);
        assert_eq!(setup.name(), "pipeline:worked_example.toml");
        assert_eq!(setup.gpus(), 2);
        assert!(!setup.uses_budgets());
        let reqs = busy_requests();
        let a = simulate(&c, setup.clone(), &reqs).unwrap();
        let b = simulate(&c, setup, &reqs).unwrap();
        assert_eq!(a.records, b.records);
        assert_eq!(a.plugin, b.plugin);
        // The filter refused some picks (503), admission shed some long prompts (429, Retry-After 2 s), the
        // scripts never failed, and everything else was served.
        let p = a.plugin;
        assert!(p.no_worker > 0 && p.shed > 0, "{p:?}");
        assert_eq!((p.pick_fallbacks, p.admit_fallbacks), (0, 0));
        let count =
            |f: &dyn Fn(&Outcome) -> bool| a.records.iter().filter(|r| f(&r.outcome)).count();
        assert_eq!(
            count(&|o| matches!(o, Outcome::HttpError { status: 503, .. })) as u64,
            p.no_worker
        );
        assert_eq!(
            count(&|o| matches!(o, Outcome::Rejected { retry_after: Some(s) } if s == "2")) as u64,
            p.shed
        );
        assert_eq!(
            count(&|o| o.is_ok()) as u64 + p.no_worker + p.shed,
            reqs.len() as u64
        );
    }

    #[test]
    fn a_least_load_pipeline_serves_as_colocated_least_load() {
        let c = cfg();
        let reqs = busy_requests();
        let colocated = simulate(&c, Setup::Colocated(3), &reqs).unwrap();
        let ll = pipeline(
            "ll.toml",
            "policy = \"pipeline\"\n[policy_config.pipeline]\nscorers = [{ kind = \"least_load\" }]\n",
            Path::new(""),
            3,
        );
        let out = simulate(&c, ll, &reqs).unwrap();
        assert_eq!(out.records, colocated.records);
        assert_eq!(out.plugin, PluginCounts::default());
        assert_eq!(out.steps, colocated.steps);
    }

    #[test]
    fn a_failing_script_falls_back_to_least_load_and_is_counted() {
        let dir = std::env::temp_dir().join(format!("baton-twin-plugin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("spin.rhai"),
            "fn score(w, r) { let x = 0; loop { x += 1; } }",
        )
        .unwrap();
        std::fs::write(dir.join("fails.rhai"), "fn admit(ws, r) { \"yes\" }").unwrap();
        let c = cfg();
        let reqs = busy_requests();
        let colocated = simulate(&c, Setup::Colocated(2), &reqs).unwrap();
        let broken = pipeline(
            "broken.toml",
            "[policy_config.pipeline]\n\
             scorers = [{ kind = \"script\", path = \"spin.rhai\", budget = 500 }]\n\
             admission = [{ kind = \"script\", path = \"fails.rhai\" }]\n",
            &dir,
            2,
        );
        let out = simulate(&c, broken, &reqs).unwrap();
        // Over budget on every pick: least load; a bad admission answer: admitted.
        assert_eq!(out.records, colocated.records);
        let n = reqs.len() as u64;
        assert_eq!(
            out.plugin,
            PluginCounts {
                pick_fallbacks: n,
                admit_fallbacks: n,
                no_worker: 0,
                shed: 0
            }
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pipeline_setups_parse() {
        let dir = std::env::temp_dir().join(format!("baton-twin-parse-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("p.toml");
        std::fs::write(
            &file,
            "policy = \"pipeline\"\nlisten = \"0.0.0.0:8080\"\n[policy_config.pipeline]\nfilters = [{ kind = \"max_in_flight\", max = 8 }]\n",
        )
        .unwrap();
        let spec = format!("pipeline:{}", file.display());
        let s = Setup::parse(&spec, 4).unwrap();
        assert_eq!(s.name(), spec);
        assert_eq!(s.gpus(), 4);
        let no_pipeline = dir.join("none.toml");
        std::fs::write(&no_pipeline, "policy = \"least_load\"\n").unwrap();
        let err = Setup::parse(&format!("pipeline:{}", no_pipeline.display()), 2).unwrap_err();
        assert!(err.contains("no [policy_config.pipeline]"), "{err}");
        assert!(Setup::parse("pipeline:", 2).is_err());
        assert!(Setup::parse(
            &format!("pipeline:{}", dir.join("missing.toml").display()),
            2
        )
        .is_err());
        let bad_script = dir.join("bad.toml");
        std::fs::write(
            &bad_script,
            "[policy_config.pipeline]\nscorers = [{ kind = \"script\", path = \"/nonexistent/x.rhai\" }]\n",
        )
        .unwrap();
        assert!(Setup::parse(&format!("pipeline:{}", bad_script.display()), 2).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
