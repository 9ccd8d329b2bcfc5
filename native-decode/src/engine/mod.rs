//! The engine: a scheduler thread that owns the model and KV cache, fed through a channel; per-request events
//! come back on their own channel. Dropping a [`RequestGuard`] cancels the request and frees its blocks.

pub mod backend;
mod lease;
mod scheduler;
mod sequence;
pub mod stop;
pub mod types;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use tokio::sync::{mpsc as tmpsc, oneshot};

use baton_policies::step::{StepLimits, StepModel};

use crate::engine::backend::Backend;
use crate::error::{Error, Result};
use crate::kv::store::KvStore;
use crate::metrics::Stats;
use crate::model::Model;
use crate::tokenizer::Tokenizer;
pub use types::*;

/// Scheduler and cache settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub block_size: usize,
    /// Blocks in the pool (see [`EngineConfig::blocks_for_budget`]).
    pub num_blocks: usize,
    pub max_num_seqs: usize,
    /// Tokens (prefill + decode) per forward step.
    pub max_batched_tokens: usize,
    /// Split long prompts across steps instead of running each prompt in one step.
    pub chunked_prefill: bool,
    pub prefix_caching: bool,
    /// How long prompt KV kept for a remote decoder waits to be pulled.
    pub kv_lease: Duration,
    /// After this long, a lease's blocks are reclaimed as soon as another request needs them.
    pub kv_lease_grace: Duration,
    /// Share of the pool (0-1) that leases may hold in total, and per tenant; past it a prefill gets no lease.
    pub kv_lease_max_share: f64,
    pub kv_lease_tenant_share: f64,
    /// Schedule by the requests' budgets ([`SeqSlo`]): EDF prefill order and TPOT/TTFT-sized prefill budgets.
    /// Off, or while no request in the engine has a budget: FIFO under the fixed `max_batched_tokens` budget.
    pub slo_scheduling: bool,
    /// Step sizing (`max_tokens` is always `max_batched_tokens`, whatever is set here).
    pub step_limits: StepLimits,
    /// Where the online step-time fit starts (`--step-model`).
    pub step_prior: StepModel,
}

impl EngineConfig {
    /// Blocks that fit in `mb` MiB for this model.
    pub fn blocks_for_budget(model: &Model, block_size: usize, mb: usize) -> usize {
        let per_block = KvStore::bytes_per_token(&model.cfg) * block_size;
        (mb * 1024 * 1024 / per_block.max(1)).max(1)
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            block_size: 16,
            num_blocks: 256,
            max_num_seqs: 64,
            max_batched_tokens: 512,
            chunked_prefill: true,
            prefix_caching: true,
            kv_lease: Duration::from_secs(30),
            kv_lease_grace: Duration::from_secs(3),
            kv_lease_max_share: 0.5,
            kv_lease_tenant_share: 0.25,
            slo_scheduling: true,
            step_limits: StepLimits::default(),
            step_prior: StepModel::default(),
        }
    }
}

enum Command {
    Add(Box<Admission>),
    Cancel(u64),
    /// Hands out (and frees) the KV blocks of a finished prefill.
    Export {
        transfer_id: String,
        reply: oneshot::Sender<Option<ExportedKv>>,
    },
    /// Takes a finished prefill's lease without freeing its blocks (a device-to-device copy reads them in place).
    Checkout {
        transfer_id: String,
        reply: oneshot::Sender<Option<CheckedOutKv>>,
    },
    /// Frees blocks handed out by `Checkout`.
    Release(Vec<u32>),
}

/// What the scheduler thread reports once its backend is built.
struct Ready {
    context_length: usize,
    device_pool: Option<DevicePool>,
    kv_floats_per_token: usize,
}

struct Admission {
    id: u64,
    req: GenerateRequest,
    slo: SeqSlo,
    events: tmpsc::UnboundedSender<Event>,
}

/// A cheap, cloneable handle to the scheduler thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    next_id: Arc<AtomicU64>,
    pub stats: Arc<Stats>,
    pub tokenizer: Arc<Tokenizer>,
    pub context_length: usize,
    pub block_size: usize,
    /// This engine's GPU KV pool as other processes on this host can map it (CUDA backend only).
    pub device_pool: Option<Arc<DevicePool>>,
    /// Blocks in the KV pool, and floats one token's KV takes (all layers, K and V): the bounds of a pull.
    pub num_blocks: usize,
    pub kv_floats_per_token: usize,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle").finish_non_exhaustive()
    }
}

/// Cancels its request when dropped (client went away, handler finished early).
#[derive(Debug)]
pub struct RequestGuard {
    id: u64,
    tx: mpsc::Sender<Command>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        // Cancelling a finished request is a no-op in the scheduler.
        let _ = self.tx.send(Command::Cancel(self.id));
    }
}

impl EngineHandle {
    /// Starts the scheduler thread on the CPU, which owns `model` from now on.
    pub fn spawn(model: Model, tokenizer: Tokenizer, cfg: EngineConfig) -> Result<Self> {
        Self::spawn_with(
            move |c: &mut EngineConfig| Ok(Backend::cpu(model, c.block_size, c.num_blocks)),
            tokenizer,
            cfg,
        )
    }

    /// Starts the scheduler thread and builds its backend there with `make` (a GPU model is bound to the thread
    /// that runs it and cannot be moved across threads). `make` may lower `cfg.max_num_seqs` to what the backend
    /// supports; its KV cache must hold `cfg.num_blocks` blocks of `cfg.block_size` tokens. Returns once the backend
    /// is built, with its error if that failed.
    pub fn spawn_with<F>(make: F, tokenizer: Tokenizer, mut cfg: EngineConfig) -> Result<Self>
    where
        F: FnOnce(&mut EngineConfig) -> Result<Backend> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Stats::default());
        let tokenizer = Arc::new(tokenizer);
        let block_size = cfg.block_size;
        let num_blocks = cfg.num_blocks;
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<Ready>>(1);
        let (tok, st) = (tokenizer.clone(), stats.clone());
        std::thread::Builder::new()
            .name("baton-scheduler".into())
            .spawn(move || match make(&mut cfg) {
                Ok(backend) => {
                    let ready = Ready {
                        context_length: backend.cfg().context_length,
                        device_pool: backend.device_pool(),
                        kv_floats_per_token: backend.block_floats(1),
                    };
                    // Built (and its first state published) before the handle exists: `/load` never sees an
                    // engine without its step model.
                    let scheduler = scheduler::Scheduler::new(backend, tok, cfg, st);
                    let _ = ready_tx.send(Ok(ready));
                    scheduler.run(rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| Error::Io {
                path: "scheduler thread".into(),
                source: e,
            })?;
        let ready = ready_rx.recv().map_err(|_| Error::Shutdown)??;
        Ok(Self {
            tx,
            next_id: Arc::new(AtomicU64::new(1)),
            stats,
            tokenizer,
            context_length: ready.context_length,
            block_size,
            device_pool: ready.device_pool.map(Arc::new),
            num_blocks,
            kv_floats_per_token: ready.kv_floats_per_token,
        })
    }

    /// Queues a request; events arrive on the returned receiver until `Done` or `Error`.
    pub fn submit(
        &self,
        req: GenerateRequest,
    ) -> Result<(RequestGuard, tmpsc::UnboundedReceiver<Event>)> {
        self.submit_with(req, SeqSlo::default())
    }

    /// [`EngineHandle::submit`] with latency budgets (only the fleet's: see `server::handlers::request_slo`).
    pub fn submit_with(
        &self,
        req: GenerateRequest,
        slo: SeqSlo,
    ) -> Result<(RequestGuard, tmpsc::UnboundedReceiver<Event>)> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (etx, erx) = tmpsc::unbounded_channel();
        self.tx
            .send(Command::Add(Box::new(Admission {
                id,
                req,
                slo,
                events: etx,
            })))
            .map_err(|_| Error::Shutdown)?;
        Ok((
            RequestGuard {
                id,
                tx: self.tx.clone(),
            },
            erx,
        ))
    }

    /// Takes the KV kept for `transfer_id` (the blocks are freed on the prefill side at once).
    pub async fn export_kv(&self, transfer_id: &str) -> Option<ExportedKv> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Export {
                transfer_id: transfer_id.to_string(),
                reply,
            })
            .ok()?;
        rx.await.ok().flatten()
    }

    /// Reserves the KV kept for `transfer_id` for an in-place device copy; the returned guard frees the blocks
    /// when dropped.
    pub async fn checkout_kv(&self, transfer_id: &str) -> Option<(CheckedOutKv, ReleaseGuard)> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Checkout {
                transfer_id: transfer_id.to_string(),
                reply,
            })
            .ok()?;
        let kv = rx.await.ok().flatten()?;
        let guard = ReleaseGuard {
            blocks: kv.block_ids.clone(),
            tx: self.tx.clone(),
        };
        Some((kv, guard))
    }
}

/// Frees checked-out blocks when dropped (copy finished, puller gone, or the connection broke).
#[derive(Debug)]
pub struct ReleaseGuard {
    blocks: Vec<u32>,
    tx: mpsc::Sender<Command>,
}

impl Drop for ReleaseGuard {
    fn drop(&mut self) {
        let _ = self
            .tx
            .send(Command::Release(std::mem::take(&mut self.blocks)));
    }
}

#[cfg(test)]
pub(crate) mod tests;
