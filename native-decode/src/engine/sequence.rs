//! One sequence's state in the scheduler, and what happens when it produces a token.

use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::mpsc as tmpsc;

use super::stop::StopStrings;
use crate::engine::types::*;
use crate::kv::block_manager::salt_root;
use crate::kv::store::BlockId;
use crate::metrics::Stats;
use crate::sampling::Sampler;
use crate::tokenizer::stream::DetokStream;
use crate::tokenizer::Tokenizer;

/// A request inside the scheduler: its tokens, KV blocks and output state.
pub(super) struct Seq {
    pub(super) id: u64,
    pub(super) request_id: String,
    pub(super) tokens: Vec<u32>,
    pub(super) prompt_len: usize,
    pub(super) num_computed: usize,
    pub(super) blocks: Vec<BlockId>,
    /// Hashes of the full blocks registered so far (a prefix of `blocks`).
    pub(super) hashes: Vec<u64>,
    /// Parent hash of the first block, from the request's `cache_salt`.
    pub(super) salt_root: Option<u64>,
    pub(super) params: GenParams,
    pub(super) sampler: Sampler,
    pub(super) detok: DetokStream,
    pub(super) stops: StopStrings,
    pub(super) events: tmpsc::UnboundedSender<Event>,
    pub(super) remote_decode: bool,
    /// The lease bucket of a `remote_decode` prefill.
    pub(super) tenant: Option<String>,
    pub(super) imported: Option<ImportedKv>,
    /// Set once KV from another engine was written into this sequence's blocks: from then on none of its blocks
    /// enter the prefix cache (see `Scheduler::admit`).
    pub(super) kv_imported: bool,
    pub(super) cached_tokens: usize,
    pub(super) arrival: Instant,
    pub(super) scheduled_at: Option<Instant>,
    pub(super) first_token_at: Option<Instant>,
    pub(super) last_token_at: Option<Instant>,
    /// The fleet's budgets for this request (empty for most: see [`SeqSlo`]).
    pub(super) slo: SeqSlo,
}

impl Seq {
    pub(super) fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Tokens not yet computed (for a decoding sequence: 1, its last sampled token).
    pub(super) fn remaining(&self) -> usize {
        self.tokens.len() - self.num_computed
    }

    /// Decoding: it has produced a token and only that last token is left to compute. Anything else with tokens
    /// to compute (a prompt, mid-prefill or not, or a preempted sequence recomputing prompt + output) prefills.
    pub(super) fn is_decoding(&self) -> bool {
        self.generated() > 0 && self.remaining() == 1
    }
}

impl Seq {
    pub(super) fn new(
        id: u64,
        req: GenerateRequest,
        slo: SeqSlo,
        events: tmpsc::UnboundedSender<Event>,
    ) -> Result<Self, (String, tmpsc::UnboundedSender<Event>)> {
        let seed = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let stops = match StopStrings::new(req.params.stop.clone()) {
            Ok(s) => s,
            Err(e) => return Err((e, events)),
        };
        Ok(Self {
            id,
            request_id: req.request_id,
            prompt_len: req.prompt.len(),
            tokens: req.prompt,
            num_computed: 0,
            blocks: Vec::new(),
            hashes: Vec::new(),
            salt_root: salt_root(req.cache_salt.as_deref()),
            sampler: Sampler::new(req.params.sampling.clone(), seed),
            stops,
            params: req.params,
            detok: DetokStream::default(),
            events,
            remote_decode: req.remote_decode,
            tenant: req.tenant,
            imported: req.imported,
            kv_imported: false,
            cached_tokens: 0,
            arrival: Instant::now(),
            scheduled_at: None,
            first_token_at: None,
            last_token_at: None,
            slo,
        })
    }

    /// Forgets computed KV (after its blocks were freed): the next admission recomputes prompt and output.
    pub(super) fn reset_for_recompute(&mut self) {
        self.blocks.clear();
        self.hashes.clear();
        self.num_computed = 0;
    }

    /// Samples and emits one token; returns the finish reason when the sequence is done.
    pub(super) fn accept(
        &mut self,
        tok: &Tokenizer,
        stats: &Stats,
        context_length: usize,
        logits: &[f32],
    ) -> Option<(FinishReason, Option<StopReason>)> {
        let s = self.sampler.sample(logits);
        self.accept_sampled(tok, stats, context_length, s)
    }

    /// Takes a token the backend picked (see [`Sampler::next_pick`]).
    pub(super) fn accept_picked(
        &mut self,
        tok: &Tokenizer,
        stats: &Stats,
        context_length: usize,
        (token, logprob): (u32, f32),
    ) -> Option<(FinishReason, Option<StopReason>)> {
        let s = crate::sampling::Sampled {
            token,
            logprob,
            top: Vec::new(),
        };
        self.accept_sampled(tok, stats, context_length, s)
    }

    fn accept_sampled(
        &mut self,
        tok: &Tokenizer,
        stats: &Stats,
        context_length: usize,
        s: crate::sampling::Sampled,
    ) -> Option<(FinishReason, Option<StopReason>)> {
        let now = Instant::now();
        self.tokens.push(s.token);
        stats.generation_tokens.fetch_add(1, Ordering::Relaxed);
        match self.last_token_at {
            None => {
                self.first_token_at = Some(now);
                stats.ttft.observe((now - self.arrival).as_secs_f64());
            }
            Some(t) => stats.itl.observe((now - t).as_secs_f64()),
        }
        self.last_token_at = Some(now);
        let gen = self.generated();
        let can_stop = gen > self.params.min_tokens;
        let is_eos = tok.eos_id == Some(s.token);
        let mut stop = None;
        if can_stop && is_eos && !self.params.ignore_eos {
            stop = Some(StopReason::Eos);
        } else if can_stop && self.params.stop_token_ids.contains(&s.token) {
            stop = Some(StopReason::Token(s.token));
        }
        let text = if stop.is_some() {
            String::new()
        } else {
            let delta = self
                .detok
                .push(tok, s.token, self.params.skip_special_tokens);
            if can_stop {
                let out = self.stops.push(&delta);
                stop = out.matched.map(StopReason::Text);
                out.emit
            } else {
                // Before `min_tokens`, stop strings are not looked for (as vLLM): the text passes on whole.
                self.stops.pass(&delta)
            }
        };
        let _ = self.events.send(Event::Token(TokenEvent {
            token: s.token,
            text,
            logprob: s.logprob,
            top: s.top,
        }));
        if stop.is_some() {
            return Some((FinishReason::Stop, stop));
        }
        if gen >= self.params.max_tokens || self.tokens.len() >= context_length {
            return Some((FinishReason::Length, None));
        }
        None
    }
}
