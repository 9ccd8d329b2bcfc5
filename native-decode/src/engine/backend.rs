//! What runs the forward pass for the scheduler: the CPU [`Model`] with its [`KvStore`], or (feature `cuda`) the
//! GPU [`CudaModel`] with its device KV pool. Both are indexed by the block ids of the scheduler's
//! [`crate::kv::block_manager::BlockManager`], and both export/import KV blocks in the [`KvStore`] format, so
//! prefill/decode hand-off works across devices with the same `kv_transfer_params` protocol.

#[cfg(feature = "cuda")]
use crate::cuda::{CudaError, CudaModel};
use crate::engine::types::{DevicePool, ImportedKv, KvPayload};
use crate::error::{Error, Result};
use crate::kv::store::{BlockId, KvStore};
use crate::model::{Model, ModelConfig, SeqInput};
use crate::sampling::Pick;

/// The model and KV cache the scheduler drives. One long-lived value per engine, so variant sizes don't matter.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Backend {
    Cpu {
        model: Model,
        kv: KvStore,
    },
    #[cfg(feature = "cuda")]
    Cuda(CudaModel),
}

/// The one place where GPU errors become crate errors.
#[cfg(feature = "cuda")]
fn gpu_err(e: CudaError) -> Error {
    match e {
        CudaError::Model(e) => e,
        e => Error::Backend(e.to_string()),
    }
}

impl Backend {
    /// The CPU backend with a fresh KV store of `num_blocks` blocks.
    pub fn cpu(model: Model, block_size: usize, num_blocks: usize) -> Self {
        let kv = KvStore::new(&model.cfg, block_size, num_blocks);
        Self::Cpu { model, kv }
    }

    /// The GPU backend: builds a [`CudaModel`] (its KV pool holds `opts.num_blocks` blocks). Call it on the
    /// thread that will run it (see [`crate::engine::EngineHandle::spawn_with`]).
    #[cfg(feature = "cuda")]
    pub fn cuda(
        dev: std::sync::Arc<crate::cuda::GpuDevice>,
        cfg: ModelConfig,
        weights: crate::cuda::GpuWeights,
        opts: crate::cuda::CudaModelOptions,
    ) -> Result<Self> {
        let model = CudaModel::new(dev, cfg, weights, opts).map_err(gpu_err)?;
        Ok(Self::Cuda(model))
    }

    /// Most sequences one step may hold.
    pub fn max_batch(&self) -> usize {
        match self {
            Self::Cpu { .. } => usize::MAX,
            #[cfg(feature = "cuda")]
            Self::Cuda(m) => m.opts.max_batch,
        }
    }

    /// `"cpu"` or `"cuda"`.
    pub fn device_name(&self) -> &'static str {
        match self {
            Self::Cpu { .. } => "cpu",
            #[cfg(feature = "cuda")]
            Self::Cuda(_) => "cuda",
        }
    }

    pub fn cfg(&self) -> &ModelConfig {
        match self {
            Self::Cpu { model, .. } => &model.cfg,
            #[cfg(feature = "cuda")]
            Self::Cuda(m) => &m.cfg,
        }
    }

    /// Runs one step: logits for every sequence with `want_logits` (an empty vector for the others).
    pub fn forward(&mut self, seqs: &[SeqInput<'_>]) -> Result<Vec<Vec<f32>>> {
        match self {
            Self::Cpu { model, kv } => Ok(model.forward(kv, seqs)),
            #[cfg(feature = "cuda")]
            Self::Cuda(m) => m.forward(seqs).map_err(gpu_err),
        }
    }

    /// This backend's KV pool as another process on this host can map it (GPU only; `None` when the pool
    /// cannot be shared).
    pub fn device_pool(&self) -> Option<DevicePool> {
        match self {
            Self::Cpu { .. } => None,
            #[cfg(feature = "cuda")]
            Self::Cuda(m) => match m.kv.device_pool() {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!("GPU KV pool cannot be shared over CUDA IPC: {e}");
                    None
                }
            },
        }
    }

    /// Runs one step and returns the token each sequence with `want_logits` picks by its [`Pick`] (greedy or
    /// sampled; `picks[i]` belongs to `seqs[i]`) with its log-probability (`None` for the others). The GPU picks
    /// on the device, so only a few bytes per sequence come back instead of a vocabulary of logits.
    pub fn forward_pick(
        &mut self,
        seqs: &[SeqInput<'_>],
        picks: &[Pick],
    ) -> Result<Vec<Option<(u32, f32)>>> {
        match self {
            Self::Cpu { model, kv } => Ok(model
                .forward(kv, seqs)
                .into_iter()
                .zip(picks)
                .map(|(l, p)| (!l.is_empty()).then(|| crate::sampling::pick(&l, p)))
                .collect()),
            #[cfg(feature = "cuda")]
            Self::Cuda(m) => m
                .forward_pick(seqs, picks)
                .map(|v| {
                    v.into_iter()
                        .map(|g| g.map(|g| (g.token, g.logprob)))
                        .collect()
                })
                .map_err(gpu_err),
        }
    }

    /// Floats of one exported block (all layers, K then V).
    pub fn block_floats(&self, block_size: usize) -> usize {
        let cfg = self.cfg();
        cfg.n_layers * 2 * cfg.kv_dim() * block_size
    }

    /// One block in the [`KvStore::export_block`] format (copied to the host on the GPU).
    pub fn export_block(&self, block: BlockId) -> Result<Vec<f32>> {
        match self {
            Self::Cpu { kv, .. } => Ok(kv.export_block(block)),
            #[cfg(feature = "cuda")]
            Self::Cuda(m) => m.kv.export_block(&m.dev, block).map_err(gpu_err),
        }
    }

    /// Writes positions `from..imp.num_tokens` of imported KV (in blocks of `imp.block_size`, which may differ
    /// from ours) into the sequence whose blocks are `table` (block size `block_size`).
    pub fn import(
        &mut self,
        table: &[BlockId],
        block_size: usize,
        from: usize,
        imp: &ImportedKv,
    ) -> Result<()> {
        match (self, &imp.payload) {
            (Self::Cpu { model, kv }, KvPayload::Host(blocks)) => {
                // The CPU store writes token by token, so the block size comes from `kv` itself.
                let _ = block_size;
                import_cpu(kv, model.cfg.n_layers, table, from, imp, blocks);
                Ok(())
            }
            (Self::Cpu { .. }, KvPayload::Device(_)) => Err(Error::Backend(
                "KV in another engine's GPU pool cannot be imported by the CPU backend".into(),
            )),
            #[cfg(feature = "cuda")]
            (Self::Cuda(m), KvPayload::Host(blocks)) => {
                import_gpu(m, table, block_size, from, imp, blocks)
            }
            #[cfg(feature = "cuda")]
            (Self::Cuda(m), KvPayload::Device(d)) => {
                let _ = block_size;
                m.kv.import_remote(
                    &m.dev,
                    &d.pool,
                    &d.src_blocks,
                    imp.block_size,
                    table,
                    from,
                    imp.num_tokens,
                )
                .map_err(gpu_err)
            }
        }
    }
}

fn import_cpu(
    kv: &mut KvStore,
    layers: usize,
    table: &[BlockId],
    from: usize,
    imp: &ImportedKv,
    blocks: &[Vec<f32>],
) {
    let kvd = kv.kv_dim();
    let rbs = imp.block_size;
    for pos in from..imp.num_tokens {
        let (rb, off) = (pos / rbs, pos % rbs);
        let Some(block) = blocks.get(rb) else {
            return;
        };
        let slot = kv.slot(table, pos);
        for l in 0..layers {
            let base = l * 2 * rbs * kvd;
            let k = &block[base + off * kvd..base + (off + 1) * kvd];
            let v = &block[base + rbs * kvd + off * kvd..base + rbs * kvd + (off + 1) * kvd];
            kv.write(l, slot, k, v);
        }
    }
}

/// Host-staged: each local block touched is read back, patched token by token, and written again.
#[cfg(feature = "cuda")]
fn import_gpu(
    m: &mut CudaModel,
    table: &[BlockId],
    bs: usize,
    from: usize,
    imp: &ImportedKv,
    blocks: &[Vec<f32>],
) -> Result<()> {
    let kvd = m.cfg.kv_dim();
    let layers = m.cfg.n_layers;
    let rbs = imp.block_size;
    let end = imp.num_tokens.min(blocks.len() * rbs);
    let mut pos = from;
    while pos < end {
        let lb = pos / bs;
        let Some(&block) = table.get(lb) else {
            break;
        };
        let block_end = ((lb + 1) * bs).min(end);
        let whole = pos == lb * bs && block_end == (lb + 1) * bs;
        let mut local = if whole {
            vec![0f32; layers * 2 * bs * kvd]
        } else {
            m.kv.export_block(&m.dev, block).map_err(gpu_err)?
        };
        for p in pos..block_end {
            let (rb, roff) = (p / rbs, p % rbs);
            let src = &blocks[rb];
            let off = p % bs;
            for l in 0..layers {
                let (sb, db) = (l * 2 * rbs * kvd, l * 2 * bs * kvd);
                let sk = sb + roff * kvd;
                let sv = sb + rbs * kvd + roff * kvd;
                let dk = db + off * kvd;
                let dv = db + bs * kvd + off * kvd;
                local[dk..dk + kvd].copy_from_slice(&src[sk..sk + kvd]);
                local[dv..dv + kvd].copy_from_slice(&src[sv..sv + kvd]);
            }
        }
        m.kv.import_block(&m.dev, block, &local).map_err(gpu_err)?;
        pos = block_end;
    }
    Ok(())
}
