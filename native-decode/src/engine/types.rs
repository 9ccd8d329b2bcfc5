//! What goes into the engine and what comes out of it.

use std::time::{Duration, Instant};

use baton_protocol::engine_slo::EngineSlo;

use crate::sampling::SamplingParams;

/// Generation settings of one request, validated.
#[derive(Debug, Clone)]
pub struct GenParams {
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub min_tokens: usize,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub skip_special_tokens: bool,
}

impl Default for GenParams {
    fn default() -> Self {
        Self {
            sampling: SamplingParams::default(),
            max_tokens: 16,
            min_tokens: 0,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            skip_special_tokens: true,
        }
    }
}

/// KV pulled from a prefill engine: `num_tokens` positions of the prompt, in blocks of `block_size` tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedKv {
    pub block_size: usize,
    pub num_tokens: usize,
    /// The holder's [`crate::transfer::prompt_digest`] of the tokens it computed; the scheduler imports only
    /// when it equals the digest of this request's own first `num_tokens` tokens.
    pub prompt_digest: [u8; 32],
    pub payload: KvPayload,
}

/// Where the pulled blocks are.
#[derive(Debug, Clone, PartialEq)]
pub enum KvPayload {
    /// Copied to this host: each block laid out per layer as K then V (`block_size × kv_dim` floats each).
    Host(Vec<Vec<f32>>),
    /// Still in the holder's GPU pool (same host), mapped into this process through CUDA IPC; the blocks stay
    /// reserved on the holder until [`DeviceKv::done`] fires (or is dropped).
    Device(DeviceKv),
}

/// A GPU KV pool another engine on this host shares through CUDA IPC. Per layer, K and V are each
/// `[num_blocks][n_kv_heads][block_size][head_dim]` bf16 (see `cuda::kv`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DevicePool {
    /// `/proc/sys/kernel/random/boot_id`: IPC handles only open on the host that made them.
    pub host_id: String,
    /// `CUipcMemHandle` of the K and V allocations, hex.
    pub k_handle: String,
    pub v_handle: String,
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub num_blocks: usize,
}

/// Blocks of a [`DevicePool`] to copy, and the signal that releases them on the holder.
#[derive(Debug, Clone)]
pub struct DeviceKv {
    pub pool: DevicePool,
    pub src_blocks: Vec<u32>,
    pub done: ImportDone,
}

impl PartialEq for DeviceKv {
    fn eq(&self, o: &Self) -> bool {
        self.pool == o.pool && self.src_blocks == o.src_blocks
    }
}

/// Fired once the copy finished (or failed): the holder may then reuse its blocks. Dropping every clone without
/// firing releases them too, so a cancelled request never pins the holder's blocks.
#[derive(Debug, Clone, Default)]
pub struct ImportDone(std::sync::Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>>);

impl ImportDone {
    pub fn new() -> (Self, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (
            Self(std::sync::Arc::new(std::sync::Mutex::new(Some(tx)))),
            rx,
        )
    }

    pub fn fire(&self) {
        if let Some(tx) = self.0.lock().ok().and_then(|mut g| g.take()) {
            let _ = tx.send(());
        }
    }
}

/// Prompt KV blocks checked out of a prefill engine for a device-to-device copy (the blocks stay allocated until
/// released).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedOutKv {
    pub block_size: usize,
    pub num_tokens: usize,
    pub prompt_digest: [u8; 32],
    pub block_ids: Vec<u32>,
}

/// A request as the scheduler receives it.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub request_id: String,
    pub prompt: Vec<u32>,
    pub params: GenParams,
    /// Prefill role: keep the prompt's KV blocks for a decode engine to pull.
    pub remote_decode: bool,
    /// Decode role: KV pulled from the prefill engine (positions `0..num_tokens` of the prompt).
    pub imported: Option<ImportedKv>,
    /// Prefix-cache isolation (vLLM's `cache_salt`): prompt blocks are shared only between equal salts.
    pub cache_salt: Option<String>,
    /// Who a `remote_decode` lease counts against (the fleet's `x-baton-tenant`); `None`: one shared bucket.
    pub tenant: Option<String>,
}

/// A request's latency budgets as the scheduler holds them: the fleet's `x-baton-slo` (honoured on
/// fleet-authenticated calls only, see `server::handlers::request_slo`). All `None`: no budget, and the request is
/// scheduled as before budgets existed (FIFO, fixed token budget).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SeqSlo {
    /// Time per output token, ms: bounds the steps this sequence decodes in.
    pub tpot_ms: Option<f64>,
    /// TTFT budget, ms: a step that prefills this prompt takes at most `StepLimits::ttft_share` of it.
    pub ttft_ms: Option<f64>,
    /// When the first token is due, on this engine's clock: the prefill order (earliest first).
    pub first_token_due: Option<Instant>,
}

impl SeqSlo {
    pub fn is_empty(&self) -> bool {
        self.tpot_ms.is_none() && self.ttft_ms.is_none() && self.first_token_due.is_none()
    }

    /// The engine's view of a header received at `now` (= `now_unix_ms` on the wall clock). The gateway's
    /// absolute deadline is moved onto the monotonic clock with this engine's wall clock (the fleet's clocks are
    /// assumed to agree, see `baton_protocol::engine_slo`); without one, the first token is due `ttft` after
    /// arrival here. Without a `ttft`, the TTFT budget is the time the deadline leaves (none if already past).
    pub fn from_header(h: &EngineSlo, now: Instant, now_unix_ms: u64) -> Self {
        let due = match (h.deadline_unix_ms, h.ttft_ms) {
            (Some(d), _) if d >= now_unix_ms => Some(now + Duration::from_millis(d - now_unix_ms)),
            // Already past: due in the past (a lost cause for the prefill order), or now if the monotonic clock
            // cannot go that far back.
            (Some(d), _) => Some(
                now.checked_sub(Duration::from_millis(now_unix_ms - d))
                    .unwrap_or(now),
            ),
            (None, Some(t)) => Some(now + Duration::from_secs_f64(t / 1000.0)),
            (None, None) => None,
        };
        let left = h
            .deadline_unix_ms
            .filter(|&d| d > now_unix_ms)
            .map(|d| (d - now_unix_ms) as f64);
        Self {
            tpot_ms: h.tpot_ms,
            ttft_ms: h.ttft_ms.or(left),
            first_token_due: due,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    Abort,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Abort => "abort",
        }
    }
}

/// Why a `stop` finish happened (vLLM's `stop_reason`: the stop string or token id; none for EOS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    Eos,
    Token(u32),
    Text(String),
}

/// Prompt KV kept on a prefill engine for a decode engine to pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvLease {
    pub transfer_id: String,
    pub block_ids: Vec<u32>,
    pub num_tokens: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenEvent {
    pub token: u32,
    /// Text newly completed by this token (may be empty; never includes a matched stop string).
    pub text: String,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub reason: FinishReason,
    pub stop_reason: Option<StopReason>,
    /// Text released at the end (held back while it could have become a stop string).
    pub tail_text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
    pub kv_lease: Option<KvLease>,
}

/// Streamed from the scheduler to the request's handler.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Token(TokenEvent),
    Done(Finish),
    Error(String),
}

/// Block contents handed out to a puller.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportedKv {
    pub block_size: usize,
    pub num_tokens: usize,
    pub prompt_digest: [u8; 32],
    pub blocks: Vec<Vec<f32>>,
}
