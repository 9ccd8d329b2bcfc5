//! The scheduler task of one sim engine: it alone owns the sequences and runs the
//! continuous-batching iteration loop.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{LatencyModel, SimStats};
use crate::engine_http::StatsCell;

/// One output token of a sequence (index from 0); `last` ends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Token {
    pub index: usize,
    pub last: bool,
}

/// A sequence handed to the scheduler.
#[derive(Debug)]
pub(crate) struct SeqRequest {
    /// Prompt tokens to compute before the first token (1 when the KV was pulled: the decoder
    /// recomputes the last position to sample the first token itself).
    pub prefill_tokens: usize,
    /// Tokens to produce (≥ 1).
    pub output_tokens: usize,
    /// Closed by the HTTP side when the client goes away.
    pub tx: mpsc::UnboundedSender<Token>,
}

struct Seq {
    remaining_prompt: usize,
    output_tokens: usize,
    generated: usize,
    tx: mpsc::UnboundedSender<Token>,
}

impl Seq {
    /// Emits the next token; false when the client is gone.
    fn emit(&mut self) -> bool {
        let index = self.generated;
        self.generated += 1;
        self.tx
            .send(Token {
                index,
                last: self.generated >= self.output_tokens,
            })
            .is_ok()
    }

    fn finished(&self) -> bool {
        self.generated >= self.output_tokens
    }
}

/// Timer slack tolerated before the model clock resyncs to the wall clock: a step that ends a
/// little late (tokio timers have millisecond granularity) does not delay the next one, but an
/// engine starved of CPU for longer really is slower.
const RESYNC: Duration = Duration::from_millis(2);

pub(crate) async fn run(
    m: LatencyModel,
    mut rx: mpsc::UnboundedReceiver<SeqRequest>,
    stats: Arc<StatsCell<SimStats>>,
) {
    let mut waiting: VecDeque<Seq> = VecDeque::new();
    let mut prefilling: VecDeque<Seq> = VecDeque::new();
    let mut decoding: Vec<Seq> = Vec::new();
    // When the previous iteration was due to end (None after idling).
    let mut clock: Option<Instant> = None;
    let push = |waiting: &mut VecDeque<Seq>, r: SeqRequest| {
        waiting.push_back(Seq {
            remaining_prompt: r.prefill_tokens.max(1),
            output_tokens: r.output_tokens.max(1),
            generated: 0,
            tx: r.tx,
        });
    };
    loop {
        if waiting.is_empty() && prefilling.is_empty() && decoding.is_empty() {
            publish(&stats, 0, 0);
            match rx.recv().await {
                Some(r) => push(&mut waiting, r),
                None => return,
            }
            clock = None;
        }
        while let Ok(r) = rx.try_recv() {
            push(&mut waiting, r);
        }
        // Clients that went away leave the batch.
        let before = waiting.len() + prefilling.len() + decoding.len();
        waiting.retain(|s| !s.tx.is_closed());
        prefilling.retain(|s| !s.tx.is_closed());
        decoding.retain(|s| !s.tx.is_closed());
        let cancelled = before - (waiting.len() + prefilling.len() + decoding.len());
        // Admission into the running set (FIFO).
        while prefilling.len() + decoding.len() < m.max_num_seqs {
            match waiting.pop_front() {
                Some(s) => prefilling.push_back(s),
                None => break,
            }
        }
        if prefilling.is_empty() && decoding.is_empty() {
            stats.update(|s| s.cancelled += cancelled as u64);
            continue;
        }
        // Plan: every decoding sequence gets a token, prompts get what is left of the budget.
        let mut budget = m.max_batched_tokens.saturating_sub(decoding.len());
        let mut chunks = Vec::new();
        for s in &prefilling {
            if budget == 0 {
                break;
            }
            let t = s.remaining_prompt.min(budget);
            chunks.push(t);
            budget -= t;
        }
        let seqs = decoding.len() + chunks.len();
        let prefill_tokens: usize = chunks.iter().sum();
        let step = Duration::from_secs_f64(m.step_ms(seqs, prefill_tokens).max(0.0) / 1000.0);
        let now = Instant::now();
        let start = match clock {
            Some(c) if now.saturating_duration_since(c) <= RESYNC => c,
            _ => now,
        };
        let end = start + step;
        tokio::time::sleep_until(end).await;
        clock = Some(end);

        // Apply: decode tokens, then prompt chunks (a finished prompt samples its first token).
        let mut produced = 0u64;
        let mut completed = 0u64;
        let mut gone = cancelled as u64;
        decoding.retain_mut(|s| {
            produced += 1;
            if !s.emit() {
                gone += 1;
                return false;
            }
            if s.finished() {
                completed += 1;
                return false;
            }
            true
        });
        let mut partial = Vec::new();
        for t in chunks {
            let Some(mut s) = prefilling.pop_front() else {
                break;
            };
            s.remaining_prompt -= t;
            if s.remaining_prompt > 0 {
                partial.push(s);
                continue;
            }
            produced += 1;
            if !s.emit() {
                gone += 1;
            } else if s.finished() {
                completed += 1;
            } else {
                decoding.push(s);
            }
        }
        for s in partial.into_iter().rev() {
            prefilling.push_front(s);
        }
        stats.update(|st| {
            st.steps += 1;
            st.max_batch = st.max_batch.max(seqs as u64);
            st.prefill_tokens += prefill_tokens as u64;
            st.output_tokens += produced;
            st.completed += completed;
            st.cancelled += gone;
            st.running = (prefilling.len() + decoding.len()) as u64;
            st.waiting = waiting.len() as u64;
        });
    }
}

fn publish(stats: &StatsCell<SimStats>, running: u64, waiting: u64) {
    stats.update(|st| {
        st.running = running;
        st.waiting = waiting;
    });
}
