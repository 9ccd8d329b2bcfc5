//! Simulated LLM engines with a latency model, for goodput experiments on a CPU.
//!
//! A [`SimEngine`] is a hyper 1 server on `127.0.0.1:0` that speaks the OpenAI API (streaming
//! `/v1/completions` and `/v1/chat/completions` with the usage chunk) and vLLM's NixlConnector
//! prefill/decode protocol (docs/PROTOCOLS.md §1). Unlike the [`crate::mock`] engines, whose delays are
//! fixed per request, every sim engine runs **one scheduler task** that owns its state and runs a
//! continuous-batching iteration loop like vLLM's:
//!
//! - Each iteration serves every running (decoding) sequence one token, and spends what is left
//!   of a per-step token budget (`max_batched_tokens`, chunked prefill) on the prompts waiting in
//!   FIFO order; at most `max_num_seqs` sequences are admitted.
//! - An iteration takes `base_ms + per_seq_ms × sequences_in_step + prefill_ms_per_token ×
//!   prompt_tokens_prefilled_in_step` of real (tokio) time. So a decode step grows with the batch,
//!   and a prefill that shares the step stalls every decoding sequence (interference).
//! - The step that finishes a prompt samples its first token; each later step one more token.
//!
//! Prompt length: the gateway does not tokenize; it estimates `chars / 4` (plus 4 per chat
//! message). The sim counts prompt tokens with **the same formula** (see [`prompt_tokens`]), so
//! the gateway's estimates are exact here and any prediction error comes from load, not from
//! tokenization. A prompt of `n` repetitions of `"abc "` is `n` tokens.
//!
//! Roles ([`SimRole`]):
//! - `Unified`: prefill and decode in one batch (aggregated serving).
//! - `Prefill`: a vLLM prefill worker. A request with `kv_transfer_params.do_remote_decode: true`,
//!   `stream: false` and `max_tokens: 1` is prefilled (one token sampled) and answered with
//!   top-level `kv_transfer_params` (`do_remote_prefill: true`, `remote_engine_id`,
//!   `remote_request_id`, blocks, …). Any other request is served like `Unified`.
//! - `Decode`: a vLLM decode worker. With well-formed params (lenient check, like the mocks'
//!   `lenient` mode: no registry is shared) the KV is "pulled" and the sequence joins the batch at
//!   once, costing one position of compute before its first token; without params it prefills the
//!   whole prompt in its own batch (the local path of conditional disaggregation).
//!
//! Output: token `i` is `"t{i} "`; a request stops at `max_tokens` (`max_completion_tokens` on
//! chat), or after `default_tokens` when it gives none. With [`SimEngine::eos_after`] set and no
//! `ignore_eos: true`, it stops there with `finish_reason: "stop"`. A client that hangs up removes
//! its sequence from the batch at the next iteration.
//!
//! The default [`LatencyModel`] is shaped like a small model on one GPU and scaled so that whole
//! experiments take seconds: 5 ms per step, 0.5 ms per sequence in the step, 0.05 ms per prefilled
//! prompt token (20k tokens/s), 2048 tokens per step, 128 sequences.
//!
//! ```no_run
//! # async fn demo() {
//! use baton_e2e::sim::{SimEngine, SimRole};
//! let prefill = SimEngine::new(SimRole::Prefill).spawn().await;
//! let decode = SimEngine::new(SimRole::Decode).per_seq_ms(0.5).spawn().await;
//! # let _ = (prefill.url(), decode.url());
//! # }
//! ```

mod http;
pub mod load;
mod sched;

#[cfg(test)]
mod tests;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

pub use http::prompt_tokens;

use crate::engine_http::StatsCell;

/// Which serving role a sim engine plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimRole {
    /// Prefill and decode in one batch.
    Unified,
    /// vLLM NixlConnector prefill worker: issues `kv_transfer_params`.
    Prefill,
    /// vLLM NixlConnector decode worker: accepts `kv_transfer_params`, else prefills itself.
    Decode,
}

/// Iteration cost model of a sim engine (all times in milliseconds).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencyModel {
    /// Fixed cost of one iteration (weights read, launch overheads).
    pub base_ms: f64,
    /// Added per sequence in the iteration (KV reads grow with the batch).
    pub per_seq_ms: f64,
    /// Added per prompt token prefilled in the iteration.
    pub prefill_ms_per_token: f64,
    /// Token budget of one iteration (decode tokens count 1 each; the rest goes to prompt chunks).
    pub max_batched_tokens: usize,
    /// Most sequences running (prefilling or decoding) at once; the rest wait.
    pub max_num_seqs: usize,
}

impl Default for LatencyModel {
    fn default() -> Self {
        Self {
            base_ms: 5.0,
            per_seq_ms: 0.5,
            prefill_ms_per_token: 0.05,
            max_batched_tokens: 2048,
            max_num_seqs: 128,
        }
    }
}

impl LatencyModel {
    /// Duration of one iteration with `seqs` sequences and `prefill_tokens` prompt tokens.
    pub fn step_ms(&self, seqs: usize, prefill_tokens: usize) -> f64 {
        self.base_ms
            + self.per_seq_ms * seqs as f64
            + self.prefill_ms_per_token * prefill_tokens as f64
    }
}

/// Everything the builder sets.
#[derive(Clone, Debug)]
pub(crate) struct SimConfig {
    pub role: SimRole,
    pub model: String,
    pub latency: LatencyModel,
    pub default_tokens: usize,
    pub eos_after: Option<usize>,
}

/// Counters of one sim engine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Generation requests received.
    pub requests: u64,
    /// Sequences that produced all their tokens.
    pub completed: u64,
    /// Sequences removed because their client went away.
    pub cancelled: u64,
    /// Requests answered with an error (bad JSON, bad params, …).
    pub errors: u64,
    /// Prefill role: `kv_transfer_params` issued.
    pub kv_issued: u64,
    /// Decode role: requests that came with `kv_transfer_params`.
    pub kv_pulled: u64,
    /// Decode role: requests without params (prefilled here).
    pub local_prefills: u64,
    /// Prompt tokens computed.
    pub prefill_tokens: u64,
    /// Output tokens produced.
    pub output_tokens: u64,
    /// Iterations run.
    pub steps: u64,
    /// Largest number of sequences in one iteration.
    pub max_batch: u64,
    /// Sequences running (admitted to the batch) now.
    pub running: u64,
    /// Sequences waiting for a batch slot or prefill budget now.
    pub waiting: u64,
}

/// Builder of a sim engine; [`SimEngine::spawn`] starts it.
pub struct SimEngine {
    cfg: SimConfig,
    bind: SocketAddr,
}

impl SimEngine {
    pub fn new(role: SimRole) -> Self {
        Self {
            cfg: SimConfig {
                role,
                model: "sim-model".to_owned(),
                latency: LatencyModel::default(),
                default_tokens: 16,
                eos_after: None,
            },
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        }
    }

    /// Served model name. Default `"sim-model"`.
    pub fn model(mut self, name: &str) -> Self {
        self.cfg.model = name.to_owned();
        self
    }

    /// The whole latency model.
    pub fn latency(mut self, m: LatencyModel) -> Self {
        self.cfg.latency = m;
        self
    }

    pub fn base_ms(mut self, ms: f64) -> Self {
        self.cfg.latency.base_ms = ms;
        self
    }

    pub fn per_seq_ms(mut self, ms: f64) -> Self {
        self.cfg.latency.per_seq_ms = ms;
        self
    }

    pub fn prefill_ms_per_token(mut self, ms: f64) -> Self {
        self.cfg.latency.prefill_ms_per_token = ms;
        self
    }

    pub fn max_batched_tokens(mut self, n: usize) -> Self {
        self.cfg.latency.max_batched_tokens = n.max(1);
        self
    }

    pub fn max_num_seqs(mut self, n: usize) -> Self {
        self.cfg.latency.max_num_seqs = n.max(1);
        self
    }

    /// Output length of a request without max tokens. Default 16.
    pub fn default_tokens(mut self, n: usize) -> Self {
        self.cfg.default_tokens = n.max(1);
        self
    }

    /// "The model emits EOS after `n` tokens" unless the request sets `ignore_eos: true`.
    /// Default: never (requests run to their max tokens).
    pub fn eos_after(mut self, n: Option<usize>) -> Self {
        self.cfg.eos_after = n.map(|n| n.max(1));
        self
    }

    /// Listen address. Default `127.0.0.1:0`.
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Starts the engine (HTTP server + scheduler) on the current runtime. Panics if it can't bind.
    pub async fn spawn(self) -> SimHandle {
        let bind = self.bind;
        match self.try_spawn().await {
            Ok(h) => h,
            Err(e) => panic!("sim engine failed to bind {bind}: {e}"),
        }
    }

    pub async fn try_spawn(self) -> std::io::Result<SimHandle> {
        let listener = TcpListener::bind(self.bind).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(StatsCell::new());
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(http::Shared {
            cfg: self.cfg.clone(),
            engine_id: format!("sim-{:016x}", rand::random::<u64>()),
            addr,
            listener: Mutex::new(Some(listener)),
            submit: tx,
            stats: Arc::clone(&stats),
            stop: stop.clone(),
        });
        tokio::spawn(sched::run(self.cfg.latency, rx, Arc::clone(&stats)));
        tokio::spawn(http::serve(Arc::clone(&shared)));
        Ok(SimHandle { shared })
    }
}

/// A running sim engine. It stops at [`SimHandle::shutdown`] or with the runtime.
#[derive(Clone)]
pub struct SimHandle {
    shared: Arc<http::Shared>,
}

impl SimHandle {
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    pub fn role(&self) -> SimRole {
        self.shared.cfg.role
    }

    pub fn latency(&self) -> LatencyModel {
        self.shared.cfg.latency
    }

    pub fn stats(&self) -> SimStats {
        self.shared.stats.snapshot()
    }

    /// Waits (woken by every counter change, no polling) until `pred` holds. `Err` carries the
    /// last snapshot on timeout.
    pub async fn wait_until(
        &self,
        pred: impl Fn(&SimStats) -> bool,
        timeout: Duration,
    ) -> Result<SimStats, SimStats> {
        self.shared.stats.wait_until(pred, timeout).await
    }

    /// Stops accepting connections and closes the open ones.
    pub fn shutdown(&self) {
        self.shared.stop.send_replace(true);
    }
}
