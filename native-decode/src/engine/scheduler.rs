//! Continuous batching: each step packs decode tokens of running sequences and (chunked) prefills of waiting ones
//! into one forward pass under a token budget. When blocks run out, the most recently admitted sequence is
//! preempted and later recomputed (its generated tokens are kept); nothing crashes on a full cache.
//!
//! Two ways to plan a step:
//! - **FIFO** (`plan_running` + `plan_admissions`): running sequences oldest first (decode tokens and prefill chunks
//!   alike), then waiting ones in arrival order, under the fixed `max_batched_tokens` budget. Used with
//!   `slo_scheduling` off, and whenever no sequence in the engine (running or waiting) has a budget.
//! - **SLO** (`plan_slo`), when some sequence has one ([`SeqSlo`], from the fleet's `x-baton-slo`):
//!   1. every decoding sequence ([`Seq::is_decoding`]) gets its one token, oldest first (preempting the most
//!      recently admitted when blocks run out, as FIFO does), up to `max_batched_tokens`;
//!   2. the prefill candidates — running sequences that are not decoding, and waiting ones — are ordered:
//!      preempted sequences resuming (they have output already) first, then by
//!      `baton_policies::step::prefill_order_key` (earliest first-token deadline first, lost causes last, no
//!      budget = due 10 s after arrival); ties keep running-then-waiting, oldest-first order;
//!   3. the prefill budget is `prefill_budget(model, limits, load)`: `model` the online [`StepFit`] of this
//!      engine's measured steps, `load.decode` the decoding sequences planned in (1) (count, and the sum of their
//!      context lengths = tokens so far, prompt + output), `tpot_limit_ms` the least `tpot_step_limit_ms(limits,
//!      tpot, bank)` over those with a TPOT budget (bank = tpot × (tokens since the first) − ms since the first),
//!      `ttft_budget_ms` the least TTFT budget among the candidates the step would prefill: in order, each
//!      candidate while the tokens of those before it are fewer than the budget computed without TTFT;
//!   4. candidates take chunks in that order while budget, sequence slots and blocks last (without chunked
//!      prefill a prompt goes whole, or the step ends there); an empty step always takes at least one token.
//!
//! The hard cap is always `max_batched_tokens` (`StepLimits::max_tokens`).
//!
//! Nothing waits to fill a step: a step runs as soon as anything is schedulable, so a prefill-role engine never
//! holds a prompt back for a bigger batch (the TTFT share bounds how long one step is instead).
//!
//! Every step's forward pass is timed and fed to the fit with its [`StepShape`] (sequences, prefill tokens =
//! tokens of non-decoding sequences, context = context lengths of the decoding ones), in both modes.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::backend::Backend;
use super::lease::{LeaseLimits, Leases};
use super::sequence::Seq;
use super::{Admission, Command, EngineConfig};
use crate::engine::types::*;
use crate::kv::block_manager::{block_hash, BlockManager};
use crate::kv::store::BlockId;
use crate::metrics::Stats;
use crate::model::SeqInput;
use crate::sampling::Pick;
use crate::tokenizer::Tokenizer;
use crate::transfer::prompt_digest;
use baton_policies::step::{
    decode_step_average, prefill_budget, prefill_order_key, tpot_step_limit_ms, EngineReport,
    StepFit, StepLimits, StepLoad, StepModel, StepShape, WaitingPrompt,
};

pub(super) struct Scheduler {
    backend: Backend,
    tokenizer: Arc<Tokenizer>,
    cfg: EngineConfig,
    stats: Arc<Stats>,
    blocks: BlockManager,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    leases: Leases,
    /// Step times measured so far, fitted (the SLO planner's model, and the report's).
    fit: StepFit,
    limits: StepLimits,
    /// Recent duration of steps that decoded (the report's `decode_step_ms`).
    decode_step_ms: Option<f64>,
    /// Origin of the millisecond clock handed to the step policies.
    epoch: Instant,
    /// Tests plan against a fixed model instead of the fit (whose values depend on measured time).
    #[cfg(test)]
    frozen_model: Option<StepModel>,
    /// What the last planned step held: (sequence id, tokens), in plan order.
    #[cfg(test)]
    last_plan: Vec<(u64, usize)>,
}

/// How much one observation weighs against the past: the last ~200 steps dominate the fit.
const FIT_DECAY: f64 = 0.995;

/// A prompt (or preempted sequence) waiting for prefill, as the SLO planner orders it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Candidate {
    pub(super) id: u64,
    /// In `waiting` (not yet admitted) rather than `running`.
    pub(super) waiting: bool,
    pub(super) remaining: u64,
    pub(super) ttft_ms: Option<f64>,
    /// Ascending = served first: (not resuming, lost cause, due ms).
    key: (bool, bool, f64),
}

/// The least TTFT budget among the candidates a step with `budget` prefill tokens would reach: in order, each one
/// while the tokens of those before it are fewer than `budget`.
pub(super) fn reached_ttft_budget(order: &[Candidate], budget: u64) -> Option<f64> {
    let mut before = 0u64;
    let mut tightest: Option<f64> = None;
    for c in order {
        if before >= budget {
            break;
        }
        if let Some(t) = c.ttft_ms {
            tightest = Some(tightest.map_or(t, |x| x.min(t)));
        }
        before = before.saturating_add(c.remaining);
    }
    tightest
}

/// The SLO plan's prefill budget (step 3 of the module doc), given the decoding part of the step and its tightest
/// TPOT limit, and the candidates in prefill order.
pub(super) fn slo_prefill_budget(
    model: &StepModel,
    limits: &StepLimits,
    decode: StepShape,
    tpot_limit_ms: Option<f64>,
    order: &[Candidate],
) -> u64 {
    let load = StepLoad {
        decode,
        tpot_limit_ms,
        ttft_budget_ms: None,
    };
    let without_ttft = prefill_budget(model, limits, &load);
    let ttft_budget_ms = reached_ttft_budget(order, without_ttft);
    prefill_budget(
        model,
        limits,
        &StepLoad {
            ttft_budget_ms,
            ..load
        },
    )
}

/// What a step gives one sequence: its logits, or the token the backend picked and its log-probability.
enum StepOut {
    Logits(Vec<f32>),
    Picked(Option<(u32, f32)>),
}

struct Planned {
    /// Index into `running`.
    idx: usize,
    n: usize,
}

impl Scheduler {
    pub(super) fn new(
        backend: Backend,
        tokenizer: Arc<Tokenizer>,
        cfg: EngineConfig,
        stats: Arc<Stats>,
    ) -> Self {
        let blocks = BlockManager::new(cfg.num_blocks, cfg.block_size, cfg.prefix_caching);
        let leases = Leases::new(LeaseLimits::new(
            cfg.kv_lease,
            cfg.kv_lease_grace,
            cfg.num_blocks,
            cfg.kv_lease_max_share,
            cfg.kv_lease_tenant_share,
        ));
        let limits = StepLimits {
            max_tokens: cfg.max_batched_tokens.max(1) as u64,
            ..cfg.step_limits
        };
        let fit = StepFit::new(cfg.step_prior, FIT_DECAY);
        let s = Self {
            backend,
            tokenizer,
            cfg,
            stats,
            blocks,
            waiting: VecDeque::new(),
            running: Vec::new(),
            leases,
            fit,
            limits,
            decode_step_ms: None,
            epoch: Instant::now(),
            #[cfg(test)]
            frozen_model: None,
            #[cfg(test)]
            last_plan: Vec::new(),
        };
        s.publish();
        s
    }

    /// The step-time model the planner uses now.
    fn step_model(&self) -> StepModel {
        #[cfg(test)]
        if let Some(m) = self.frozen_model {
            return m;
        }
        self.fit.model()
    }

    /// `t` in milliseconds since `epoch` (negative before it: a deadline already past on arrival).
    fn ms(&self, t: Instant) -> f64 {
        match t.checked_duration_since(self.epoch) {
            Some(d) => d.as_secs_f64() * 1e3,
            None => -(self.epoch - t).as_secs_f64() * 1e3,
        }
    }

    pub(super) fn run(mut self, rx: mpsc::Receiver<Command>) {
        let mut idle = true;
        loop {
            // Block only when idle; otherwise just drain what arrived.
            if idle {
                let wait = if self.waiting.is_empty() { 500 } else { 5 };
                match rx.recv_timeout(Duration::from_millis(wait)) {
                    Ok(c) => self.handle(c),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(c) => self.handle(c),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            }
            self.expire_leases();
            self.drop_disconnected();
            idle = !self.step();
            self.publish();
        }
    }

    fn publish(&self) {
        self.stats
            .num_running
            .store(self.running.len() as u64, Ordering::Relaxed);
        self.stats
            .num_waiting
            .store(self.waiting.len() as u64, Ordering::Relaxed);
        self.stats.set_kv_usage(self.blocks.usage());
        self.stats.set_report(self.report());
    }

    /// This engine's state for the gateway (`x-baton-load`, `GET /load`, `/metrics`).
    fn report(&self) -> EngineReport {
        let mut r = EngineReport {
            running: self.running.len() as u64,
            waiting: self.waiting.len() as u64,
            kv_usage: self.blocks.usage(),
            step: Some(self.step_model()),
            decode_step_ms: self.decode_step_ms,
            ..Default::default()
        };
        for s in &self.running {
            if s.is_decoding() {
                r.context_tokens += s.tokens.len() as u64;
                if let Some(t) = s.slo.tpot_ms {
                    r.tightest_tpot_ms = Some(r.tightest_tpot_ms.map_or(t, |x| x.min(t)));
                }
            } else {
                r.waiting_prefill_tokens += s.remaining() as u64;
            }
        }
        r.waiting_prefill_tokens += self
            .waiting
            .iter()
            .map(|s| s.remaining() as u64)
            .sum::<u64>();
        r
    }

    fn handle(&mut self, c: Command) {
        match c {
            Command::Add(a) => self.add(*a),
            Command::Cancel(id) => {
                if let Some(i) = self.running.iter().position(|s| s.id == id) {
                    let s = self.running.remove(i);
                    self.blocks.free(&s.blocks);
                } else if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
                    if let Some(s) = self.waiting.remove(i) {
                        self.blocks.free(&s.blocks);
                    }
                }
            }
            Command::Export { transfer_id, reply } => {
                let out = self.leases.take(&transfer_id).and_then(|lease| {
                    let blocks: crate::error::Result<Vec<Vec<f32>>> = lease
                        .blocks
                        .iter()
                        .map(|&b| self.backend.export_block(b))
                        .collect();
                    self.blocks.free(&lease.blocks);
                    match blocks {
                        Ok(blocks) => Some(ExportedKv {
                            block_size: self.cfg.block_size,
                            num_tokens: lease.num_tokens,
                            prompt_digest: lease.prompt_digest,
                            blocks,
                        }),
                        Err(e) => {
                            tracing::warn!("KV export of {transfer_id} failed: {e}");
                            None
                        }
                    }
                });
                let _ = reply.send(out);
            }
            Command::Checkout { transfer_id, reply } => {
                let out = self.leases.take(&transfer_id).map(|l| CheckedOutKv {
                    block_size: self.cfg.block_size,
                    num_tokens: l.num_tokens,
                    prompt_digest: l.prompt_digest,
                    block_ids: l.blocks,
                });
                if let Some(kv) = out.as_ref().filter(|_| reply.is_closed()) {
                    // The asker is gone: nobody will release these.
                    self.blocks.free(&kv.block_ids);
                    return;
                }
                if let Err(Some(kv)) = reply.send(out) {
                    self.blocks.free(&kv.block_ids);
                }
            }
            Command::Release(blocks) => self.blocks.free(&blocks),
        }
    }

    fn add(&mut self, a: Admission) {
        let Admission {
            id,
            req,
            slo,
            events,
        } = a;
        let ctx = self.backend.cfg().context_length;
        let bad = |msg: String| {
            let _ = events.send(Event::Error(msg));
        };
        if req.prompt.is_empty() {
            return bad("prompt is empty".into());
        }
        if let Some(t) = req
            .prompt
            .iter()
            .find(|&&t| t as usize >= self.backend.cfg().vocab)
        {
            return bad(format!("token id {t} is out of vocabulary"));
        }
        if req.prompt.len() >= ctx {
            return bad(format!(
                "prompt has {} tokens; the context length is {ctx}",
                req.prompt.len()
            ));
        }
        if self.blocks.blocks_for(req.prompt.len() + 1) > self.blocks.num_blocks() {
            return bad(format!(
                "prompt has {} tokens; the KV cache holds at most {}",
                req.prompt.len(),
                self.blocks.num_blocks() * self.cfg.block_size - 1
            ));
        }
        match Seq::new(id, req, slo, events) {
            Ok(s) => self.waiting.push_back(s),
            Err((msg, events)) => {
                let _ = events.send(Event::Error(msg));
            }
        }
    }

    fn expire_leases(&mut self) {
        for l in self.leases.take_expired(Instant::now()) {
            self.blocks.free(&l.blocks);
            self.stats.kv_leases_expired.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Allocates `n` blocks; when too few are free, first reclaims leases past their grace (oldest first), so
    /// that KV waiting to be pulled never keeps other requests out for longer than the grace.
    fn allocate(&mut self, n: usize) -> Option<Vec<BlockId>> {
        loop {
            if let Some(b) = self.blocks.allocate(n) {
                return Some(b);
            }
            let lease = self.leases.take_reclaimable(Instant::now())?;
            self.blocks.free(&lease.blocks);
            self.stats
                .kv_leases_reclaimed
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn drop_disconnected(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].events.is_closed() {
                let s = self.running.remove(i);
                self.blocks.free(&s.blocks);
            } else {
                i += 1;
            }
        }
        self.waiting.retain(|s| !s.events.is_closed());
    }

    /// Moves the most recently admitted running sequence back to the waiting queue, freeing its blocks.
    fn preempt_last(&mut self) -> bool {
        let Some(mut s) = self.running.pop() else {
            return false;
        };
        self.blocks.free(&s.blocks);
        s.reset_for_recompute();
        self.stats.preemptions.fetch_add(1, Ordering::Relaxed);
        self.waiting.push_front(s);
        true
    }

    /// Ensures running[idx] has blocks for `upto` positions, preempting later sequences if needed.
    fn reserve(&mut self, idx: usize, upto: usize) -> bool {
        loop {
            let need = self
                .blocks
                .blocks_for(upto)
                .saturating_sub(self.running[idx].blocks.len());
            if need == 0 {
                return true;
            }
            if let Some(b) = self.allocate(need) {
                self.running[idx].blocks.extend(b);
                return true;
            }
            if self.running.len() <= idx + 1 || !self.preempt_last() {
                return false;
            }
        }
    }

    /// Takes a waiting sequence in: prefix-cache lookup, imported KV. Gives it back when out of blocks.
    fn admit(&mut self, mut s: Seq) -> Option<Seq> {
        let bs = self.cfg.block_size;
        let len = s.tokens.len();
        // Leave at least one token to compute: its logits pick the next token.
        let max_cached_blocks = (len - 1) / bs;
        if s.blocks.is_empty() {
            let full: Vec<u64> = {
                let mut parent = s.salt_root;
                s.tokens
                    .chunks_exact(bs)
                    .take(max_cached_blocks)
                    .map(|c| {
                        let h = block_hash(parent, c);
                        parent = Some(h);
                        h
                    })
                    .collect()
            };
            let hits = self.blocks.lookup_prefix(&full);
            self.stats
                .prefix_queries
                .fetch_add(len as u64, Ordering::Relaxed);
            self.stats
                .prefix_hits
                .fetch_add((hits.len() * bs) as u64, Ordering::Relaxed);
            s.num_computed = hits.len() * bs;
            s.cached_tokens = s.cached_tokens.max(s.num_computed);
            s.hashes = full[..hits.len()].to_vec();
            s.blocks = hits;
        }
        if let Some(imp) = s.imported.take() {
            let floats = (self.backend.block_floats(1)).checked_mul(imp.block_size);
            let covers = |n: usize| n.saturating_mul(imp.block_size) >= imp.num_tokens;
            // The holder's KV must be for these very tokens (a mix-up, or a gateway bug pairing one prompt's
            // params with another prompt, must not answer this request from someone else's prompt).
            let same_tokens = s
                .tokens
                .get(..imp.num_tokens)
                .is_some_and(|t| prompt_digest(t) == imp.prompt_digest);
            let well_formed = same_tokens
                && imp.block_size > 0
                && match &imp.payload {
                    KvPayload::Host(blocks) => {
                        covers(blocks.len()) && blocks.iter().all(|b| Some(b.len()) == floats)
                    }
                    KvPayload::Device(d) => covers(d.src_blocks.len()),
                };
            if !well_formed {
                // The holder's model or layout differs: recompute instead.
                self.stats
                    .kv_pull_recomputes
                    .fetch_add(1, Ordering::Relaxed);
            } else if imp.num_tokens <= len && imp.num_tokens > s.num_computed {
                let need = self
                    .blocks
                    .blocks_for(imp.num_tokens)
                    .saturating_sub(s.blocks.len());
                match self.allocate(need) {
                    Some(b) => s.blocks.extend(b),
                    None => {
                        s.imported = Some(imp);
                        self.blocks.free(&s.blocks);
                        s.blocks.clear();
                        s.hashes.clear();
                        return Some(s);
                    }
                }
                let t = Instant::now();
                // Imported KV is whatever the holder computed for *its* prompt; nothing here proves it matches
                // these tokens. So none of this sequence's blocks are ever registered in the prefix cache (the
                // imported ones, nor later ones computed on top of them): a wrong import can at worst spoil this
                // one request, never another request's answer.
                s.kv_imported = true;
                let result = self.backend.import(&s.blocks, bs, s.num_computed, &imp);
                if let KvPayload::Device(d) = &imp.payload {
                    // Copied (or failed): either way the holder may reuse its blocks now.
                    d.done.fire();
                    if result.is_ok() {
                        self.stats.kv_device_imports.fetch_add(1, Ordering::Relaxed);
                        self.stats
                            .kv_device_import_us
                            .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                    } else {
                        self.stats.kv_device_broken.store(true, Ordering::Relaxed);
                    }
                }
                match result {
                    // Recompute the last token so that its logits pick the next token.
                    Ok(()) => s.num_computed = imp.num_tokens.min(len - 1),
                    Err(e) => {
                        tracing::warn!("KV import failed, recomputing: {e}");
                        self.stats
                            .kv_pull_recomputes
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        self.running.push(s);
        None
    }

    /// Runs one forward pass if anything is schedulable; false when there was nothing to do.
    /// One iteration: plan the batch (running sequences first, then admissions), run it through the backend, and
    /// apply what came back. `false` when there was nothing to run.
    fn step(&mut self) -> bool {
        let plan = if self.cfg.slo_scheduling && self.any_budget() {
            self.plan_slo(Instant::now())
        } else {
            let mut budget = self.cfg.max_batched_tokens.max(1);
            let mut plan = self.plan_running(&mut budget);
            self.plan_admissions(&mut plan, &mut budget);
            plan
        };
        #[cfg(test)]
        {
            self.last_plan = plan.iter().map(|p| (self.running[p.idx].id, p.n)).collect();
        }
        if plan.is_empty() {
            return false;
        }
        // Publish before any event goes out, so that a client seeing a token also sees its blocks counted.
        self.publish();
        let shape = self.shape(&plan);
        let decodes = plan.iter().any(|p| self.running[p.idx].is_decoding());
        let t = Instant::now();
        let out = self.forward(&plan);
        let secs = t.elapsed().as_secs_f64();
        match out {
            Ok(outs) => {
                self.fit.observe(&shape, secs * 1e3);
                if decodes {
                    self.decode_step_ms = decode_step_average(self.decode_step_ms, secs * 1e3);
                }
                self.stats.step_duration.observe(secs);
                self.apply(&plan, outs)
            }
            Err(e) => self.fail(&plan, &e),
        }
        true
    }

    /// Whether any sequence in the engine has a budget (else the FIFO plan, exactly as without SLO scheduling).
    fn any_budget(&self) -> bool {
        self.running
            .iter()
            .chain(self.waiting.iter())
            .any(|s| !s.slo.is_empty())
    }

    /// The shape the fit learns from: decoding sequences count their context, the others their chunk.
    fn shape(&self, plan: &[Planned]) -> StepShape {
        let mut shape = StepShape {
            seqs: plan.len() as u64,
            ..Default::default()
        };
        for p in plan {
            let s = &self.running[p.idx];
            if s.is_decoding() {
                shape.context_tokens += s.tokens.len() as u64;
            } else {
                shape.prefill_tokens += p.n as u64;
            }
        }
        shape
    }

    /// The SLO plan (see the module doc): decode tokens first, then prefill chunks in prefill order under the
    /// budget the step-time model allows.
    fn plan_slo(&mut self, now: Instant) -> Vec<Planned> {
        let model = self.step_model();
        let mut plan = self.plan_decodes();
        let mut decode = StepShape::default();
        let mut tpot_limit: Option<f64> = None;
        for p in &plan {
            let s = &self.running[p.idx];
            decode.seqs += 1;
            decode.context_tokens += s.tokens.len() as u64;
            if let (Some(tpot), Some(first)) = (s.slo.tpot_ms, s.first_token_at) {
                let since_first = now.saturating_duration_since(first).as_secs_f64() * 1e3;
                let bank = tpot * (s.generated() - 1) as f64 - since_first;
                let l = tpot_step_limit_ms(&self.limits, tpot, bank);
                tpot_limit = Some(tpot_limit.map_or(l, |x| x.min(l)));
            }
        }
        let order = self.prefill_order(&model, now);
        let mut budget =
            slo_prefill_budget(&model, &self.limits, decode, tpot_limit, &order) as usize;
        if plan.is_empty() {
            // A step with nothing in it would never end the wait: at least one token moves.
            budget = budget.max(1);
        }
        self.plan_prefills(&order, &mut plan, budget);
        plan
    }

    /// Step 1 of the SLO plan: one token for each decoding sequence, oldest first, while the hard cap and blocks
    /// last (preempting the most recently admitted sequence for blocks, as the FIFO plan does).
    fn plan_decodes(&mut self) -> Vec<Planned> {
        let mut budget = self.cfg.max_batched_tokens.max(1);
        let mut plan: Vec<Planned> = Vec::new();
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            if !self.running[i].is_decoding() {
                i += 1;
                continue;
            }
            let upto = self.running[i].num_computed + 1;
            // `reserve` preempts only sequences after `i`: none of them is planned yet.
            if !self.reserve(i, upto) {
                if plan.is_empty() && self.running.len() == 1 {
                    self.stuck_alone();
                }
                break;
            }
            plan.push(Planned { idx: i, n: 1 });
            budget -= 1;
            i += 1;
        }
        plan
    }

    /// Step 2 of the SLO plan: the prefill candidates, in the order they are served.
    pub(super) fn prefill_order(&self, model: &StepModel, now: Instant) -> Vec<Candidate> {
        let now_ms = self.ms(now);
        let candidate = |s: &Seq, waiting: bool| {
            let resuming = s.generated() > 0;
            let (late, due) = if resuming {
                // Its client has output already: first, as the FIFO plan puts it at the queue's front.
                (false, f64::NEG_INFINITY)
            } else {
                let p = WaitingPrompt {
                    arrival_ms: self.ms(s.arrival),
                    deadline_ms: s.slo.first_token_due.map(|t| self.ms(t)),
                    remaining_tokens: s.remaining() as u64,
                };
                prefill_order_key(model, &p, now_ms)
            };
            Candidate {
                id: s.id,
                waiting,
                remaining: s.remaining() as u64,
                ttft_ms: s.slo.ttft_ms,
                key: (!resuming, late, due),
            }
        };
        let mut order: Vec<Candidate> = self
            .running
            .iter()
            .filter(|s| !s.is_decoding())
            .map(|s| candidate(s, false))
            .chain(self.waiting.iter().map(|s| candidate(s, true)))
            .collect();
        // Stable: equal keys keep running-then-waiting, oldest-first order.
        order.sort_by(|a, b| {
            (a.key.0, a.key.1)
                .cmp(&(b.key.0, b.key.1))
                .then(a.key.2.total_cmp(&b.key.2))
        });
        order
    }

    /// Step 4 of the SLO plan: chunks for the candidates in order while `budget`, sequence slots and blocks last.
    fn plan_prefills(&mut self, order: &[Candidate], plan: &mut Vec<Planned>, budget: usize) {
        let mut left = budget;
        for c in order {
            if left == 0 {
                break;
            }
            if !c.waiting {
                // Preempted while planning (it is in `waiting` now, out of this step).
                let Some(idx) = self.running.iter().position(|s| s.id == c.id) else {
                    continue;
                };
                let Some(n) = self.chunk(&self.running[idx], left, plan.is_empty()) else {
                    break;
                };
                let upto = self.running[idx].num_computed + n;
                // Preempting is safe only when no planned sequence comes after `idx` (preemption pops the last).
                let ok = if plan.iter().all(|p| p.idx < idx) {
                    self.reserve(idx, upto)
                } else {
                    let need = self
                        .blocks
                        .blocks_for(upto)
                        .saturating_sub(self.running[idx].blocks.len());
                    match self.allocate(need) {
                        Some(b) => {
                            self.running[idx].blocks.extend(b);
                            true
                        }
                        None => false,
                    }
                };
                if !ok {
                    if plan.is_empty() && self.running.len() == 1 {
                        self.stuck_alone();
                    }
                    break;
                }
                plan.push(Planned { idx, n });
                left = left.saturating_sub(n);
                continue;
            }
            if self.running.len() >= self.cfg.max_num_seqs {
                continue;
            }
            let Some(pos) = self.waiting.iter().position(|s| s.id == c.id) else {
                continue;
            };
            let Some(s) = self.waiting.remove(pos) else {
                continue;
            };
            if let Some(s) = self.admit(s) {
                self.waiting.insert(pos, s);
                break;
            }
            let idx = self.running.len() - 1;
            let Some(n) = self.chunk(&self.running[idx], left, plan.is_empty()) else {
                self.unadmit_to(pos);
                break;
            };
            let s = &self.running[idx];
            let need = self
                .blocks
                .blocks_for(s.num_computed + n)
                .saturating_sub(s.blocks.len());
            match self.allocate(need) {
                Some(b) => self.running[idx].blocks.extend(b),
                None => {
                    self.unadmit_to(pos);
                    break;
                }
            }
            if self.running[idx].scheduled_at.is_none() {
                let now = Instant::now();
                let s = &mut self.running[idx];
                s.scheduled_at = Some(now);
                self.stats.queue.observe((now - s.arrival).as_secs_f64());
            }
            plan.push(Planned { idx, n });
            left = left.saturating_sub(n);
        }
    }

    /// The only running sequence does not fit even alone. If leased prefill KV holds blocks, wait for it to be
    /// pulled or to expire; otherwise the sequence has outgrown the whole cache: end it at this length.
    fn stuck_alone(&mut self) {
        if self.leases.is_empty() {
            let s = self.running.remove(0);
            self.finish(s, FinishReason::Length, None);
        } else {
            self.preempt_last();
        }
    }

    /// Undoes the last admission, putting the sequence back at `pos` in the queue.
    fn unadmit_to(&mut self, pos: usize) {
        if let Some(mut s) = self.running.pop() {
            self.blocks.free(&s.blocks);
            s.reset_for_recompute();
            self.waiting.insert(pos.min(self.waiting.len()), s);
        }
    }

    /// How many of `s`'s uncomputed tokens this step takes: all of them, or with chunked prefill as many as the
    /// budget allows. `None` when they exceed the budget and the step already has work: a step's first sequence
    /// always runs, so a prompt longer than the budget is not starved.
    fn chunk(&self, s: &Seq, budget: usize, plan_is_empty: bool) -> Option<usize> {
        let need = s.tokens.len() - s.num_computed;
        let n = if self.cfg.chunked_prefill {
            need.min(budget)
        } else {
            need
        };
        (n <= budget || plan_is_empty).then_some(n)
    }

    /// Running sequences, oldest first: decode tokens and unfinished prefill chunks, while budget and blocks last.
    fn plan_running(&mut self, budget: &mut usize) -> Vec<Planned> {
        let mut plan: Vec<Planned> = Vec::new();
        let mut i = 0;
        while i < self.running.len() && *budget > 0 {
            let s = &self.running[i];
            let Some(n) = self.chunk(s, *budget, plan.is_empty()) else {
                break;
            };
            let upto = s.num_computed + n;
            if !self.reserve(i, upto) {
                if plan.is_empty() && self.running.len() == 1 {
                    self.stuck_alone();
                }
                break;
            }
            plan.push(Planned { idx: i, n });
            *budget = budget.saturating_sub(n);
            i += 1;
        }
        plan
    }

    /// Admits waiting sequences while budget, sequence slots and blocks last (only when every running sequence got
    /// its share this step).
    fn plan_admissions(&mut self, plan: &mut Vec<Planned>, budget: &mut usize) {
        while *budget > 0
            && self.running.len() < self.cfg.max_num_seqs
            && plan.len() == self.running.len()
        {
            let Some(s) = self.waiting.pop_front() else {
                break;
            };
            if let Some(s) = self.admit(s) {
                self.waiting.push_front(s);
                break;
            }
            let idx = self.running.len() - 1;
            let s = &self.running[idx];
            let Some(n) = self.chunk(s, *budget, plan.is_empty()) else {
                self.unadmit();
                break;
            };
            let upto = s.num_computed + n;
            let blocks = self.blocks.blocks_for(upto).saturating_sub(s.blocks.len());
            match self.allocate(blocks) {
                Some(b) => self.running[idx].blocks.extend(b),
                None => {
                    self.unadmit();
                    break;
                }
            }
            if self.running[idx].scheduled_at.is_none() {
                let now = Instant::now();
                let s = &mut self.running[idx];
                s.scheduled_at = Some(now);
                self.stats.queue.observe((now - s.arrival).as_secs_f64());
            }
            plan.push(Planned { idx, n });
            *budget = budget.saturating_sub(n);
        }
    }

    /// Runs the planned batch. When no sequence that samples this step wants alternatives' log-probabilities, the
    /// backend picks the tokens (on a GPU, without copying the logits out); draws happen only then, as `sample`
    /// would draw.
    fn forward(&mut self, plan: &[Planned]) -> crate::Result<Vec<StepOut>> {
        let samples = |s: &Seq, p: &Planned| s.num_computed + p.n == s.tokens.len();
        let pickable = plan.iter().all(|p| {
            let s = &self.running[p.idx];
            !samples(s, p) || s.sampler.can_pick()
        });
        let picks: Option<Vec<Pick>> = pickable.then(|| {
            plan.iter()
                .map(|p| {
                    let s = &mut self.running[p.idx];
                    if samples(s, p) {
                        s.sampler.next_pick()
                    } else {
                        Pick::GREEDY
                    }
                })
                .collect()
        });
        let inputs: Vec<SeqInput<'_>> = plan
            .iter()
            .map(|p| {
                let s = &self.running[p.idx];
                SeqInput {
                    tokens: &s.tokens[s.num_computed..s.num_computed + p.n],
                    start_pos: s.num_computed,
                    block_table: &s.blocks,
                    want_logits: samples(s, p),
                }
            })
            .collect();
        if let Some(picks) = picks {
            self.backend
                .forward_pick(&inputs, &picks)
                .map(|v| v.into_iter().map(StepOut::Picked).collect())
        } else {
            self.backend
                .forward(&inputs)
                .map(|v| v.into_iter().map(StepOut::Logits).collect())
        }
    }

    /// A failed forward pass: the step's K/V are unknown, so every sequence in it ends rather than serve garbage.
    fn fail(&mut self, plan: &[Planned], e: &crate::Error) {
        tracing::error!("forward step failed: {e}");
        let mut idxs: Vec<usize> = plan.iter().map(|p| p.idx).collect();
        idxs.sort_unstable_by_key(|&i| std::cmp::Reverse(i));
        for idx in idxs {
            let s = self.running.remove(idx);
            self.blocks.free(&s.blocks);
            let _ = s
                .events
                .send(Event::Error(format!("forward step failed: {e}")));
        }
        self.publish();
    }

    /// Advances each planned sequence by its chunk, caches its newly full blocks, takes its token if it sampled,
    /// and ends the sequences that finished.
    fn apply(&mut self, plan: &[Planned], outs: Vec<StepOut>) {
        let mut finished = Vec::new();
        for (p, out) in plan.iter().zip(outs) {
            let seq = &mut self.running[p.idx];
            let was_prefill = seq.num_computed < seq.prompt_len;
            seq.num_computed += p.n;
            if was_prefill && seq.num_computed >= seq.prompt_len {
                self.stats
                    .prompt_tokens
                    .fetch_add(seq.prompt_len as u64, Ordering::Relaxed);
            }
            self.register_full_blocks(p.idx);
            let seq = &mut self.running[p.idx];
            let ctx = self.backend.cfg().context_length;
            let done = match out {
                StepOut::Logits(l) if !l.is_empty() => {
                    seq.accept(&self.tokenizer, &self.stats, ctx, &l)
                }
                StepOut::Picked(Some(t)) => seq.accept_picked(&self.tokenizer, &self.stats, ctx, t),
                _ => None,
            };
            if let Some(done) = done {
                finished.push((p.idx, done));
            }
        }
        // Remove finished sequences (highest index first so indices stay valid).
        finished.sort_by_key(|f| std::cmp::Reverse(f.0));
        for (idx, (reason, stop_reason)) in finished {
            let s = self.running.remove(idx);
            self.finish(s, reason, stop_reason);
        }
    }

    /// Registers the newly completed full blocks of `running[idx]` for prefix caching (never those of a sequence
    /// with imported KV).
    fn register_full_blocks(&mut self, idx: usize) {
        let bs = self.cfg.block_size;
        let seq = &mut self.running[idx];
        while !seq.kv_imported && seq.hashes.len() < seq.num_computed / bs {
            let b = seq.hashes.len();
            let h = block_hash(
                seq.hashes.last().copied().or(seq.salt_root),
                &seq.tokens[b * bs..(b + 1) * bs],
            );
            self.blocks.register(seq.blocks[b], h);
            seq.hashes.push(h);
        }
    }

    /// Undoes the last admission (the sequence goes back to the front of the queue).
    fn unadmit(&mut self) {
        if let Some(mut s) = self.running.pop() {
            self.blocks.free(&s.blocks);
            s.reset_for_recompute();
            self.waiting.push_front(s);
        }
    }

    fn finish(&mut self, mut s: Seq, reason: FinishReason, stop_reason: Option<StopReason>) {
        let now = Instant::now();
        let mut tail = String::new();
        if stop_reason.is_none() {
            tail = s.detok.finish();
            let released = s.stops.push(&tail);
            tail = released.emit + s.stops.finish().as_str();
        }
        let mut kv_lease = None;
        // vLLM keeps prompt KV for a remote decoder only when prefill stopped at the length cap.
        if s.remote_decode && reason == FinishReason::Length {
            let n_blocks = self.blocks.blocks_for(s.prompt_len);
            let keep: Vec<BlockId> = s.blocks[..n_blocks.min(s.blocks.len())].to_vec();
            self.blocks.free(&s.blocks[keep.len()..]);
            let tenant = s.tenant.as_deref().unwrap_or("");
            let digest = prompt_digest(&s.tokens[..s.prompt_len]);
            match self
                .leases
                .grant(tenant, keep.clone(), s.prompt_len, digest, now)
            {
                Ok(transfer_id) => {
                    kv_lease = Some(KvLease {
                        transfer_id,
                        block_ids: keep,
                        num_tokens: s.prompt_len,
                    })
                }
                Err(keep) => {
                    // Past the lease bounds: no lease, so the answer offers no transfer and the decoder
                    // computes the prompt itself.
                    self.blocks.free(&keep);
                    self.stats.kv_leases_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(request_id = %s.request_id, "KV lease refused: lease bounds reached");
                }
            }
        } else {
            self.blocks.free(&s.blocks);
        }
        s.blocks.clear();
        self.stats.requests_finished.fetch_add(1, Ordering::Relaxed);
        self.stats.e2e.observe((now - s.arrival).as_secs_f64());
        if let (Some(sched), Some(first)) = (s.scheduled_at, s.first_token_at) {
            self.stats.prefill.observe((first - sched).as_secs_f64());
            self.stats.decode.observe((now - first).as_secs_f64());
        }
        self.publish();
        let _ = s.events.send(Event::Done(Finish {
            reason,
            stop_reason,
            tail_text: tail,
            prompt_tokens: s.prompt_len,
            completion_tokens: s.generated(),
            cached_tokens: s.cached_tokens,
            kv_lease,
        }));
    }
}

#[cfg(test)]
#[path = "slo_tests.rs"]
mod slo_tests;
