//! The paged KV pool on the GPU, indexed by the same block ids as the CPU
//! [`BlockManager`](crate::kv::block_manager::BlockManager).
//!
//! Layout per layer: K and V each `[num_blocks][n_kv_heads][block_size][head_dim]` bf16, so one KV head's slice of
//! a block is contiguous (what decode attention streams). Blocks can be handed off to the host either raw (bf16,
//! device layout: the cheap form for GPU-to-GPU transfer) or in the CPU [`KvStore`](crate::kv::store::KvStore)
//! format (f32, `[slot][kv_dim]`, layer by layer K then V), so the two backends can exchange blocks.

use crate::kv::store::BlockId;
use crate::model::ModelConfig;

use super::buffer::DevBuf;
use super::device::GpuDevice;
use super::kernels::{launch_1d, Arg};
use super::{CudaError, CudaResult};

pub struct GpuKvPool {
    pub block_size: usize,
    pub num_blocks: usize,
    n_layers: usize,
    n_kv: usize,
    head_dim: usize,
    k: DevBuf<u16>,
    v: DevBuf<u16>,
}

impl std::fmt::Debug for GpuKvPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuKvPool")
            .field("block_size", &self.block_size)
            .field("num_blocks", &self.num_blocks)
            .finish_non_exhaustive()
    }
}

impl GpuKvPool {
    /// Bytes one block takes across all layers (K and V, bf16).
    pub fn bytes_per_block(cfg: &ModelConfig, block_size: usize) -> usize {
        2 * cfg.n_layers * block_size * cfg.kv_dim() * 2
    }

    pub fn new(
        dev: &GpuDevice,
        cfg: &ModelConfig,
        block_size: usize,
        num_blocks: usize,
    ) -> CudaResult<Self> {
        if block_size == 0 || num_blocks == 0 {
            return Err(CudaError::InvalidStep("KV pool needs blocks".into()));
        }
        let n = cfg.n_layers * num_blocks * block_size * cfg.kv_dim();
        Ok(Self {
            block_size,
            num_blocks,
            n_layers: cfg.n_layers,
            n_kv: cfg.n_kv_heads,
            head_dim: cfg.head_dim,
            k: DevBuf::zeros(&dev.stream, n)?,
            v: DevBuf::zeros(&dev.stream, n)?,
        })
    }

    fn block_elems(&self) -> usize {
        self.n_kv * self.block_size * self.head_dim
    }

    fn layer_elems(&self) -> usize {
        self.num_blocks * self.block_elems()
    }

    pub(crate) fn k_layer(&self, l: usize) -> u64 {
        self.k.at(l * self.layer_elems())
    }

    pub(crate) fn v_layer(&self, l: usize) -> u64 {
        self.v.at(l * self.layer_elems())
    }

    /// Fills the whole pool with random values (benchmarks that start from a "prefilled" context).
    pub fn fill_random(&self, dev: &GpuDevice, seed: u64) -> CudaResult<()> {
        for (i, b) in [&self.k, &self.v].into_iter().enumerate() {
            launch_1d(
                &dev.stream,
                &dev.k.fill_random_bf16,
                b.len(),
                &[
                    Arg::Ptr(b.ptr()),
                    Arg::U64(b.len() as u64),
                    Arg::U64(seed ^ (i as u64 + 1)),
                    Arg::F32(1.0),
                ],
            )?;
        }
        dev.synchronize()
    }

    fn check(&self, block: BlockId) -> CudaResult<usize> {
        let b = block as usize;
        if b >= self.num_blocks {
            return Err(CudaError::InvalidStep(format!(
                "block {block} outside a pool of {}",
                self.num_blocks
            )));
        }
        Ok(b)
    }

    /// One block in device layout, bf16 bits: per layer, K then V.
    pub fn export_block_raw(&self, dev: &GpuDevice, block: BlockId) -> CudaResult<Vec<u16>> {
        let b = self.check(block)?;
        let n = self.block_elems();
        let mut out = vec![0u16; 2 * self.n_layers * n];
        for (l, chunk) in out.chunks_exact_mut(2 * n).enumerate() {
            let at = l * self.layer_elems() + b * n;
            let (k, v) = chunk.split_at_mut(n);
            self.k.download(&dev.stream, at, k)?;
            self.v.download(&dev.stream, at, v)?;
        }
        Ok(out)
    }

    /// Writes a block produced by [`GpuKvPool::export_block_raw`] (same model and block size).
    pub fn import_block_raw(
        &self,
        dev: &GpuDevice,
        block: BlockId,
        data: &[u16],
    ) -> CudaResult<()> {
        let b = self.check(block)?;
        let n = self.block_elems();
        if data.len() != 2 * self.n_layers * n {
            return Err(CudaError::InvalidStep("KV block of the wrong size".into()));
        }
        for (l, chunk) in data.chunks_exact(2 * n).enumerate() {
            let at = l * self.layer_elems() + b * n;
            self.k.upload(&dev.stream, at, &chunk[..n])?;
            self.v.upload(&dev.stream, at, &chunk[n..])?;
        }
        dev.synchronize()
    }

    /// One block in the CPU [`KvStore::export_block`](crate::kv::store::KvStore::export_block) format.
    pub fn export_block(&self, dev: &GpuDevice, block: BlockId) -> CudaResult<Vec<f32>> {
        let raw = self.export_block_raw(dev, block)?;
        let (bs, hd, nkv) = (self.block_size, self.head_dim, self.n_kv);
        let n = self.block_elems();
        let mut out = vec![0f32; raw.len()];
        for (src, dst) in raw.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            for g in 0..nkv {
                for off in 0..bs {
                    for d in 0..hd {
                        let x = src[(g * bs + off) * hd + d];
                        dst[off * nkv * hd + g * hd + d] = half::bf16::from_bits(x).to_f32();
                    }
                }
            }
        }
        Ok(out)
    }

    /// Writes a block in the CPU `KvStore` format (values rounded to bf16).
    pub fn import_block(&self, dev: &GpuDevice, block: BlockId, data: &[f32]) -> CudaResult<()> {
        let (bs, hd, nkv) = (self.block_size, self.head_dim, self.n_kv);
        let n = self.block_elems();
        if data.len() != 2 * self.n_layers * n {
            return Err(CudaError::InvalidStep("KV block of the wrong size".into()));
        }
        let mut raw = vec![0u16; data.len()];
        for (src, dst) in data.chunks_exact(n).zip(raw.chunks_exact_mut(n)) {
            for g in 0..nkv {
                for off in 0..bs {
                    for d in 0..hd {
                        let x = src[off * nkv * hd + g * hd + d];
                        dst[(g * bs + off) * hd + d] = half::bf16::from_f32(x).to_bits();
                    }
                }
            }
        }
        self.import_block_raw(dev, block, &raw)
    }
}
