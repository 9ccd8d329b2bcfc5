//! The fleet: engines, the gateway's routing in front of them, and the discrete-event loop.
//!
//! Events sit in one heap ordered by (virtual time, insertion number), so equal times resolve in a fixed order and
//! a run is a pure function of its inputs. Three kinds: a request arrives at the gateway, an engine's step ends, a
//! decode leg reaches its engine after the KV hand-off. An engine that receives work while idle starts a step at
//! once (the engine loop blocks on its queue when idle); a busy one picks the work up when planning its next step.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use baton_policies::slo::{Budget, SloPolicyConfig, SloRequest};
use baton_policies::step::{StepLimits, StepModel};
use baton_policies::{build, PolicyConfig, PolicyKind, RequestFeatures, RoutingPolicy, WorkerView};

use super::engine::{Emit, Engine, EngineConfig, Leg, Seq};
use super::placement::{place, EngineState, Placed};
use super::profile::{Handoff, Profile};
use crate::client::Predicted;
use crate::record::{Outcome, RequestRecord};

/// A serving setup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// `n` engines serving both phases, chunked prefill, the gateway in aggregated mode.
    Colocated(usize),
    /// `prefill` prefill engines and `decode` decode engines, the gateway in vLLM PD mode.
    Disaggregated { prefill: usize, decode: usize },
    /// `n` engines serving both phases, listed in both pools; SLO scheduling in the engines, SLO placement and
    /// admission in the gateway.
    Slo(usize),
}

impl Setup {
    /// `colocated`, `disaggregated:PxD` (also `P:D`), `slo`; `gpus` sizes the first and the last.
    pub fn parse(s: &str, gpus: usize) -> Result<Self, String> {
        let s = s.trim();
        match s {
            "colocated" => Ok(Self::Colocated(gpus)),
            "slo" => Ok(Self::Slo(gpus)),
            _ => {
                let split = s.strip_prefix("disaggregated:").ok_or_else(|| {
                    format!("unknown setup {s:?} (colocated, disaggregated:PxD, slo)")
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
            Self::Colocated(n) | Self::Slo(n) => n,
            Self::Disaggregated { prefill, decode } => prefill + decode,
        }
    }

    /// Whether the class sent changes what happens (else one run serves every tier).
    pub fn uses_budgets(&self) -> bool {
        matches!(self, Self::Slo(_))
    }

    pub fn name(&self) -> String {
        match *self {
            Self::Colocated(_) => "colocated".into(),
            Self::Disaggregated { prefill, decode } => format!("disaggregated:{prefill}x{decode}"),
            Self::Slo(_) => "slo".into(),
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
    local: u64,
    split: u64,
}

/// Runs the requests (sorted by arrival) through the setup.
pub fn simulate(cfg: &FleetConfig, setup: Setup, reqs: &[TwinRequest]) -> SimOutput {
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
        Setup::Colocated(n) => (
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
    let n = engines.len();
    let mut sim = Sim {
        cfg,
        setup,
        reqs,
        urls: (0..n).map(|i| format!("http://engine-{i}")).collect(),
        engines,
        decode_base,
        in_flight: vec![0; n],
        decode_in_flight: vec![0; n],
        pending: vec![0; n],
        kick_pending: vec![false; n],
        flights: vec![Flight::default(); reqs.len()],
        heap: BinaryHeap::new(),
        n: 0,
        policy_a: built(policies.0),
        policy_b: built(policies.1),
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
    sim.finish(horizon)
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

    fn arrive(&mut self, i: usize, now: f64) {
        let r = &self.reqs[i];
        let (prompt, output) = (r.prompt_tokens, r.output_tokens);
        let none = RequestFeatures::default();
        match self.setup {
            Setup::Colocated(n) => {
                let views = Self::views(&self.urls, &self.in_flight, 0..n);
                let e = self.policy_a.pick(&views, &none).unwrap_or(0);
                self.in_flight[e] += 1;
                self.flights[i].decode = e;
                let s = self.budgeted(i, Leg::Full, prompt, output, now);
                self.send(e, s, now);
            }
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
                            Setup::Colocated(_) => {
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
                    rec.outcome = Outcome::Rejected { retry_after: None };
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
        let out = simulate(&c, Setup::Colocated(2), &[req(0, 100.0, 1000, 2)]);
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
        );
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
        );
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
            let a = simulate(&c, setup, &reqs);
            let b = simulate(&c, setup, &reqs);
            assert_eq!(a.records, b.records, "{setup:?}");
            assert!(a
                .records
                .iter()
                .all(|r| r.outcome.is_ok() || r.outcome.is_rejected()));
        }
    }
}
