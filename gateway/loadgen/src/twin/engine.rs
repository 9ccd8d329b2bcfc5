//! One engine of the twin: the native engine's scheduler loop as a pure state machine on a virtual clock.
//!
//! Each step (`plan` then, when the step's time has passed, `apply`):
//! 1. every running sequence that has its whole prompt computed decodes one token (decode first);
//! 2. what is left of the step's token budget goes to prompts — running ones still mid-prefill and waiting ones,
//!    admitted while KV lasts; a waiting prompt without a sequence slot (`max_num_seqs`) is skipped, running ones
//!    after it in the order still get chunks (as the engine's `plan_prefills` does):
//!    - SLO scheduling off: in arrival order (FIFO), budget = `max_batched_tokens` − decode tokens (chunked
//!      prefill, like `--max-num-batched-tokens`);
//!    - SLO scheduling on (the engine's `plan_slo`): preempted sequences resuming first, then earliest deadline
//!      first by `policies::step::prefill_order_key` (lost causes last); budget = `policies::step::prefill_budget`
//!      with the tightest decoding sequence's `tpot_step_limit_ms` (its banked time included) and the tightest TTFT
//!      budget among the candidates a step without that limit would reach;
//! 3. the step lasts `StepModel::predict_ms` of its shape (sequences, prefill tokens, decode context), plus the KV
//!    import copies of the sequences it admitted with pulled KV (the engine's scheduler thread does the copy);
//! 4. a prompt whose last chunk ran samples its first token at the end of the step; a sequence that has produced
//!    its output length ends (ignore_eos).
//!
//! KV is counted in tokens: a chunk or a decode token holds one more; when decode tokens no longer fit, the most
//! recently admitted sequence is preempted (its KV freed, recomputed later with the tokens it had generated), as
//! the engine does.

use std::collections::VecDeque;

use baton_policies::step::{
    decode_step_average, prefill_budget, prefill_order_key, tpot_step_limit_ms, EngineReport,
    StepLimits, StepLoad, StepModel, StepShape, WaitingPrompt,
};

/// How one engine schedules.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EngineConfig {
    /// `--max-num-batched-tokens`: tokens per step (with SLO scheduling: the cap).
    pub max_batched_tokens: u64,
    pub max_num_seqs: usize,
    /// KV capacity in tokens (`u64::MAX`: unbounded).
    pub kv_capacity_tokens: u64,
    /// EDF prefill order and SLO-sized prefill budget.
    pub slo_scheduling: bool,
    /// Limits of the SLO budget (`max_tokens` is taken from `max_batched_tokens`).
    pub limits: StepLimits,
}

/// Which part of a request a sequence serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leg {
    /// The whole request (prefill and decode here).
    Full,
    /// The prefill leg of a disaggregated request (`max_tokens: 1`, answered whole).
    Prefill,
    /// The decode leg: KV pulled from the prefill engine, the last prompt position recomputed here.
    Decode,
}

/// A sequence handed to an engine. Times in milliseconds on the twin's clock.
#[derive(Clone, Debug, PartialEq)]
pub struct Seq {
    pub req: usize,
    pub leg: Leg,
    /// When the engine received it.
    pub arrival_ms: f64,
    /// Prompt tokens.
    pub prompt: u64,
    /// Tokens to produce here (1 for a prefill leg).
    pub output: u64,
    /// TTFT budget of its class, and the absolute time its first token is due.
    pub ttft_budget_ms: Option<f64>,
    pub deadline_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    /// Cost of importing its KV, paid by the step that admits it (decode legs).
    pub import_ms: f64,
    // Progress.
    computed: u64,
    generated: u64,
    first_token_ms: Option<f64>,
    /// Tokens to compute before the next token: the prompt, plus the tokens generated before a preemption.
    target: u64,
    kv: u64,
    sched: u64,
}

impl Seq {
    pub fn new(req: usize, leg: Leg, arrival_ms: f64, prompt: u64, output: u64) -> Self {
        let prompt = prompt.max(1);
        Self {
            req,
            leg,
            arrival_ms,
            prompt,
            output: output.max(1),
            ttft_budget_ms: None,
            deadline_ms: None,
            tpot_ms: None,
            import_ms: 0.0,
            // A decode leg arrives with all but the last prompt position computed elsewhere.
            computed: if leg == Leg::Decode { prompt - 1 } else { 0 },
            generated: 0,
            first_token_ms: None,
            target: prompt,
            kv: 0,
            sched: 0,
        }
    }

    /// With the budget of its class; `arrival_ms` of the request at the gateway sets the deadline.
    pub fn with_budget(
        mut self,
        gateway_arrival_ms: f64,
        ttft_ms: Option<f64>,
        tpot_ms: Option<f64>,
    ) -> Self {
        self.ttft_budget_ms = ttft_ms;
        self.deadline_ms = ttft_ms.map(|t| gateway_arrival_ms + t);
        self.tpot_ms = tpot_ms;
        self
    }

    pub fn with_import_ms(mut self, ms: f64) -> Self {
        self.import_ms = ms;
        self
    }

    fn remaining(&self) -> u64 {
        self.target.saturating_sub(self.computed)
    }

    fn prefilling(&self) -> bool {
        self.computed < self.target
    }

    /// KV it brings in when admitted (pulled KV of a decode leg).
    fn kv_on_admit(&self) -> u64 {
        if self.kv == 0 {
            self.computed
        } else {
            0
        }
    }
}

/// What a step produced, for the fleet.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Emit {
    /// The sequence's first token (end of the step that finished its prompt).
    First { req: usize, leg: Leg, at_ms: f64 },
    /// The sequence produced its last token.
    Done { req: usize, leg: Leg, at_ms: f64 },
}

#[derive(Clone, Debug)]
pub struct Engine {
    cfg: EngineConfig,
    model: StepModel,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    kv_used: u64,
    /// A step is in progress.
    pub busy: bool,
    pub steps: u64,
    pub preemptions: u64,
    /// The shape and duration of the last planned step.
    pub last_step: (StepShape, f64),
    /// Recent duration of steps that decoded (`EngineReport::decode_step_ms`).
    decode_step_ms: Option<f64>,
}

impl Engine {
    pub fn new(cfg: EngineConfig, model: StepModel) -> Self {
        Self {
            cfg,
            model,
            waiting: VecDeque::new(),
            running: Vec::new(),
            kv_used: 0,
            busy: false,
            steps: 0,
            preemptions: 0,
            last_step: (StepShape::default(), 0.0),
            decode_step_ms: None,
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn receive(&mut self, s: Seq) {
        self.waiting.push_back(s);
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// What the engine reports of itself (`x-baton-load`), with its step model.
    pub fn report(&self) -> EngineReport {
        let decoding = self.running.iter().filter(|s| !s.prefilling());
        let waiting_prefill_tokens = self
            .waiting
            .iter()
            .chain(self.running.iter().filter(|s| s.prefilling()))
            .map(|s| s.remaining())
            .sum();
        EngineReport {
            running: self.running.len() as u64,
            waiting: self.waiting.len() as u64,
            waiting_prefill_tokens,
            context_tokens: decoding.map(|s| s.kv).sum(),
            kv_usage: if self.cfg.kv_capacity_tokens == u64::MAX {
                0.0
            } else {
                self.kv_used as f64 / self.cfg.kv_capacity_tokens.max(1) as f64
            },
            tightest_tpot_ms: self
                .running
                .iter()
                .filter(|s| !s.prefilling())
                .filter_map(|s| s.tpot_ms)
                .reduce(f64::min),
            step: Some(self.model),
            decode_step_ms: self.decode_step_ms,
        }
    }

    /// Prompts waiting for (more of) their prefill, as the gateway lists its own prompts there.
    pub fn waiting_prompts(&self) -> Vec<WaitingPrompt> {
        self.running
            .iter()
            .filter(|s| s.prefilling())
            .chain(self.waiting.iter())
            .map(|s| WaitingPrompt {
                arrival_ms: s.arrival_ms,
                deadline_ms: s.deadline_ms,
                remaining_tokens: s.remaining(),
            })
            .collect()
    }

    fn preempt_last(&mut self) {
        if let Some(mut s) = self.running.pop() {
            self.kv_used -= s.kv;
            s.kv = 0;
            s.sched = 0;
            // Recomputed from scratch, with the tokens it had generated (its pulled KV is gone too).
            s.computed = 0;
            s.target = s.prompt + s.generated;
            self.preemptions += 1;
            self.waiting.push_front(s);
        }
    }

    /// Plans the next step at `now_ms`; `Some(duration_ms)` when there is anything to run.
    pub fn plan(&mut self, now_ms: f64) -> Option<f64> {
        let cap = self.cfg.kv_capacity_tokens;
        // Decode tokens need one more KV slot each: preempt the youngest while they do not fit.
        loop {
            let decoding = self.running.iter().filter(|s| !s.prefilling()).count() as u64;
            if self.kv_used.saturating_add(decoding) <= cap || self.running.len() <= 1 {
                break;
            }
            self.preempt_last();
        }
        let mut shape = StepShape::default();
        let mut tpot_limit: Option<f64> = None;
        for s in self.running.iter_mut().filter(|s| !s.prefilling()) {
            s.sched = 1;
            s.kv += 1;
            self.kv_used += 1;
            shape.seqs += 1;
            shape.context_tokens += s.kv;
            if let (Some(tpot), Some(first)) = (s.tpot_ms, s.first_token_ms) {
                let bank = tpot * s.generated.saturating_sub(1) as f64 - (now_ms - first);
                let l = tpot_step_limit_ms(&self.cfg.limits, tpot, bank);
                tpot_limit = Some(tpot_limit.map_or(l, |t: f64| t.min(l)));
            }
        }
        let decode = shape;

        // Prompt candidates: running mid-prefill first, then waiting, each in arrival order.
        #[derive(Clone, Copy)]
        enum Cand {
            Running(usize),
            Waiting(usize),
        }
        /// Order key (not resuming, lost cause, due), candidate, TTFT budget, tokens left.
        type Keyed = ((bool, bool, f64), Cand, Option<f64>, u64);
        let mut cands: Vec<Cand> = (0..self.running.len())
            .filter(|&i| self.running[i].prefilling())
            .map(Cand::Running)
            .chain((0..self.waiting.len()).map(Cand::Waiting))
            .collect();
        let seq = |c: Cand, e: &Self| -> Seq {
            match c {
                Cand::Running(i) => e.running[i].clone(),
                Cand::Waiting(i) => e.waiting[i].clone(),
            }
        };
        let mut budget = if self.cfg.slo_scheduling {
            let model = self.model;
            // (not resuming, lost cause, due): preempted sequences resuming first, then earliest deadline first.
            let mut keyed: Vec<Keyed> = cands
                .iter()
                .map(|&c| {
                    let s = seq(c, self);
                    let p = WaitingPrompt {
                        arrival_ms: s.arrival_ms,
                        deadline_ms: s.deadline_ms,
                        remaining_tokens: s.remaining(),
                    };
                    let (late, due) = prefill_order_key(&model, &p, now_ms);
                    (
                        (s.generated == 0, late, due),
                        c,
                        s.ttft_budget_ms,
                        s.remaining(),
                    )
                })
                .collect();
            // Stable: equal keys keep running-then-waiting, arrival order.
            keyed.sort_by(|a, b| {
                (a.0 .0, a.0 .1)
                    .cmp(&(b.0 .0, b.0 .1))
                    .then(a.0 .2.total_cmp(&b.0 .2))
            });
            cands = keyed.iter().map(|k| k.1).collect();
            let limits = StepLimits {
                max_tokens: self.cfg.max_batched_tokens,
                ..self.cfg.limits
            };
            let load = StepLoad {
                decode,
                tpot_limit_ms: tpot_limit,
                ttft_budget_ms: None,
            };
            if cands.is_empty() {
                0
            } else {
                // The tightest TTFT budget among the candidates a step without it would reach, in order.
                let without_ttft = prefill_budget(&model, &limits, &load);
                let mut before = 0u64;
                let mut ttft: Option<f64> = None;
                for (_, _, t, remaining) in &keyed {
                    if before >= without_ttft {
                        break;
                    }
                    if let Some(t) = t {
                        ttft = Some(ttft.map_or(*t, |x: f64| x.min(*t)));
                    }
                    before = before.saturating_add(*remaining);
                }
                prefill_budget(
                    &model,
                    &limits,
                    &StepLoad {
                        ttft_budget_ms: ttft,
                        ..load
                    },
                )
            }
        } else {
            self.cfg.max_batched_tokens.saturating_sub(decode.seqs)
        };

        let mut admitted: Vec<usize> = Vec::new();
        let mut import_ms = 0.0;
        for c in cands {
            if budget == 0 {
                break;
            }
            match c {
                Cand::Running(i) => {
                    let s = &mut self.running[i];
                    let n = s.remaining().min(budget);
                    if self.kv_used.saturating_add(n) > cap {
                        break;
                    }
                    s.sched = n;
                    s.kv += n;
                    self.kv_used += n;
                    budget -= n;
                    shape.seqs += 1;
                    shape.prefill_tokens += n;
                }
                Cand::Waiting(i) => {
                    // No sequence slot: the engine skips waiting candidates but still gives chunks to running
                    // ones later in the order.
                    if self.running.len() + admitted.len() >= self.cfg.max_num_seqs {
                        continue;
                    }
                    let s = &mut self.waiting[i];
                    let n = s.remaining().min(budget);
                    let need = s.kv_on_admit() + n;
                    if self.kv_used.saturating_add(need) > cap {
                        break;
                    }
                    s.kv += need;
                    s.sched = n;
                    self.kv_used += need;
                    budget -= n;
                    shape.seqs += 1;
                    shape.prefill_tokens += n;
                    import_ms += s.import_ms;
                    s.import_ms = 0.0;
                    admitted.push(i);
                }
            }
        }
        // Admitted sequences join the running set in the order they were planned.
        let mut taken: Vec<(usize, Seq)> = Vec::with_capacity(admitted.len());
        let mut by_index = admitted.clone();
        by_index.sort_unstable_by(|a, b| b.cmp(a));
        for i in by_index {
            if let Some(s) = self.waiting.remove(i) {
                taken.push((i, s));
            }
        }
        for i in &admitted {
            if let Some(pos) = taken.iter().position(|(j, _)| j == i) {
                let (_, s) = taken.swap_remove(pos);
                self.running.push(s);
            }
        }
        if shape.seqs == 0 {
            return None;
        }
        let ms = self.model.predict_ms(&shape).max(0.0) + import_ms;
        if decode.seqs > 0 {
            self.decode_step_ms = decode_step_average(self.decode_step_ms, ms);
        }
        self.steps += 1;
        self.last_step = (shape, ms);
        Some(ms)
    }

    /// Applies the planned step, ending at `now_ms`.
    pub fn apply(&mut self, now_ms: f64) -> Vec<Emit> {
        let mut out = Vec::new();
        let mut freed = 0;
        self.running.retain_mut(|s| {
            if s.sched == 0 {
                return true;
            }
            let n = std::mem::take(&mut s.sched);
            let token = if s.prefilling() {
                s.computed += n;
                !s.prefilling()
            } else {
                true
            };
            if !token {
                return true;
            }
            s.generated += 1;
            if s.first_token_ms.is_none() {
                s.first_token_ms = Some(now_ms);
                out.push(Emit::First {
                    req: s.req,
                    leg: s.leg,
                    at_ms: now_ms,
                });
            }
            if s.generated >= s.output {
                freed += s.kv;
                out.push(Emit::Done {
                    req: s.req,
                    leg: s.leg,
                    at_ms: now_ms,
                });
                return false;
            }
            // After a recompute the sequence decodes again.
            s.computed = s.computed.max(s.target);
            true
        });
        self.kv_used -= freed;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> StepModel {
        StepModel {
            fixed_ms: 5.0,
            per_seq_ms: 0.1,
            per_prefill_token_ms: 0.03,
            per_kctx_ms: 0.05,
        }
    }

    fn cfg(tokens: u64, slo: bool) -> EngineConfig {
        EngineConfig {
            max_batched_tokens: tokens,
            max_num_seqs: 128,
            kv_capacity_tokens: u64::MAX,
            slo_scheduling: slo,
            limits: StepLimits::default(),
        }
    }

    /// Runs the engine alone until idle; (time, emits).
    fn drain(e: &mut Engine, mut now: f64) -> Vec<Emit> {
        let mut all = Vec::new();
        while let Some(ms) = e.plan(now) {
            now += ms;
            all.extend(e.apply(now));
        }
        all
    }

    #[test]
    fn one_request_ttft_is_its_prefill_step() {
        let mut e = Engine::new(cfg(2048, false), model());
        e.receive(Seq::new(0, Leg::Full, 0.0, 1000, 3));
        let emits = drain(&mut e, 0.0);
        let prefill = model().predict_ms(&StepShape {
            seqs: 1,
            prefill_tokens: 1000,
            context_tokens: 0,
        });
        assert_eq!(
            emits[0],
            Emit::First {
                req: 0,
                leg: Leg::Full,
                at_ms: prefill
            }
        );
        // Two decode steps over a context of 1001 and 1002 tokens.
        let d = |ctx| {
            model().predict_ms(&StepShape {
                seqs: 1,
                prefill_tokens: 0,
                context_tokens: ctx,
            })
        };
        match emits[1] {
            Emit::Done { at_ms, .. } => {
                assert!((at_ms - (prefill + d(1001) + d(1002))).abs() < 1e-9)
            }
            e => panic!("{e:?}"),
        }
        assert!(e.is_idle());
    }

    #[test]
    fn long_prompts_are_chunked_and_decodes_run_in_every_step() {
        let mut e = Engine::new(cfg(2048, false), model());
        e.receive(Seq::new(0, Leg::Full, 0.0, 10, 100));
        assert!(e.plan(0.0).is_some());
        e.apply(1.0);
        e.receive(Seq::new(1, Leg::Full, 1.0, 5000, 2));
        // 1 decode token + 2047 prompt tokens, then 1 + 2047, then 1 + 906.
        for want in [2047, 2047, 906] {
            e.plan(2.0).unwrap();
            assert_eq!(e.last_step.0.prefill_tokens, want);
            assert_eq!(e.last_step.0.seqs, 2);
            e.apply(3.0);
        }
    }

    #[test]
    fn decode_leg_recomputes_one_position_and_pays_the_import() {
        let mut e = Engine::new(cfg(2048, false), model());
        e.receive(Seq::new(0, Leg::Decode, 0.0, 3000, 2).with_import_ms(1.5));
        // Only the last prompt position is left to compute.
        assert_eq!(e.report().waiting_prefill_tokens, 1);
        let ms = e.plan(0.0).unwrap();
        assert_eq!(e.last_step.0.prefill_tokens, 1);
        let step = model().predict_ms(&StepShape {
            seqs: 1,
            prefill_tokens: 1,
            context_tokens: 0,
        });
        assert!((ms - step - 1.5).abs() < 1e-9);
        e.apply(ms);
        assert_eq!(e.report().waiting_prefill_tokens, 0);
        assert_eq!(e.report().context_tokens, 3000);
    }

    #[test]
    fn slo_scheduling_serves_the_earliest_deadline_first() {
        let mut e = Engine::new(cfg(8192, true), model());
        // A budgetless long prompt first, then one due soon.
        e.receive(Seq::new(0, Leg::Full, 0.0, 4000, 1));
        e.receive(Seq::new(1, Leg::Full, 0.0, 500, 1).with_budget(0.0, Some(300.0), Some(30.0)));
        e.plan(0.0).unwrap();
        let emits = e.apply(100.0);
        // The step is capped at about ttft_share × 300 ms = 75 ms (one sequence of slack: the budget counts one
        // prefilling sequence): 500 tokens of request 1 fit, then part of request 0.
        assert!(emits.iter().any(|m| matches!(m, Emit::Done { req: 1, .. })));
        assert!(!emits
            .iter()
            .any(|m| matches!(m, Emit::First { req: 0, .. })));
        assert!(
            e.last_step.1 <= 75.0 + model().per_seq_ms + 1e-9,
            "{:?}",
            e.last_step
        );
    }

    #[test]
    fn a_waiting_prompt_without_a_slot_does_not_stop_running_prompts_after_it() {
        // Two slots: one decoding sequence (with a TPOT budget, so steps are TPOT-sized) and one mid-prefill with a
        // late deadline; a prompt due sooner waits without a slot. EDF puts it first; the engine skips it and
        // still gives the running prompt its chunk.
        let mut c = cfg(8192, true);
        c.max_num_seqs = 2;
        let mut e = Engine::new(c, model());
        e.receive(Seq::new(0, Leg::Full, 0.0, 10, 100).with_budget(0.0, None, Some(30.0)));
        e.plan(0.0).unwrap();
        e.apply(10.0);
        e.receive(Seq::new(1, Leg::Full, 10.0, 5000, 2).with_budget(
            10.0,
            Some(60_000.0),
            Some(30.0),
        ));
        e.plan(10.0).unwrap();
        e.apply(40.0);
        let left = e.report().waiting_prefill_tokens;
        assert!(left > 0 && left < 5000, "{left}");
        e.receive(Seq::new(2, Leg::Full, 40.0, 100, 2).with_budget(40.0, Some(500.0), Some(30.0)));
        e.plan(40.0).unwrap();
        assert_eq!(e.last_step.0.seqs, 2, "{:?}", e.last_step);
        assert!(e.last_step.0.prefill_tokens > 0, "{:?}", e.last_step);
        assert_eq!(e.report().waiting, 1);
    }

    #[test]
    fn kv_capacity_preempts_the_youngest() {
        let mut c = cfg(2048, false);
        c.kv_capacity_tokens = 210;
        let mut e = Engine::new(c, model());
        e.receive(Seq::new(0, Leg::Full, 0.0, 100, 50));
        e.receive(Seq::new(1, Leg::Full, 0.0, 100, 50));
        let emits = drain(&mut e, 0.0);
        assert!(e.preemptions > 0);
        let done: Vec<usize> = emits
            .iter()
            .filter_map(|m| match m {
                Emit::Done { req, .. } => Some(*req),
                _ => None,
            })
            .collect();
        assert_eq!(done, vec![0, 1]);
    }
}
