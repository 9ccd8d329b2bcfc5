//! The paged KV pool on the GPU, indexed by the same block ids as the CPU
//! [`BlockManager`](crate::kv::block_manager::BlockManager).
//!
//! Layout per layer: K and V each `[num_blocks][n_kv_heads][block_size][head_dim]` bf16, so one KV head's slice of
//! a block is contiguous (what decode attention streams). Blocks can be handed off to the host either raw (bf16,
//! device layout: the cheap form for GPU-to-GPU transfer) or in the CPU [`KvStore`](crate::kv::store::KvStore)
//! format (f32, `[slot][kv_dim]`, layer by layer K then V), so the two backends can exchange blocks.
//!
//! The K and V allocations are plain `cuMemAlloc` memory so that other engines on the host can map them through
//! CUDA IPC ([`GpuKvPool::device_pool`]) and copy prompt blocks device-to-device ([`GpuKvPool::import_remote`]).

use std::collections::HashMap;

use crate::engine::types::DevicePool;
use crate::kv::store::BlockId;
use crate::model::ModelConfig;

use super::buffer::DevBuf;
use super::device::GpuDevice;
use super::ipc::{self, Mapping};
use super::kernels::{launch, launch_1d, Arg};
use super::{CudaError, CudaResult};

pub struct GpuKvPool {
    pub block_size: usize,
    pub num_blocks: usize,
    n_layers: usize,
    n_kv: usize,
    head_dim: usize,
    k: DevBuf<u16>,
    v: DevBuf<u16>,
    /// Other engines' pools mapped so far, by K handle (a restarted holder has new handles).
    remote: HashMap<String, (Mapping, Mapping)>,
    /// Our own K and V IPC handles (hex), taken once at creation, or why they could not be.
    handles: Result<(String, String), String>,
}

/// Mapped remote pools kept at most (each mapping holds address space, not memory).
const MAX_REMOTE_POOLS: usize = 16;

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
        let k = DevBuf::zeros_shareable(&dev.ctx, &dev.stream, n)?;
        let v = DevBuf::zeros_shareable(&dev.ctx, &dev.stream, n)?;
        let handle = |b: &DevBuf<u16>| ipc::mem_handle(&dev.ctx, b.ptr()).map(|h| ipc::to_hex(&h));
        let handles = handle(&k)
            .and_then(|hk| Ok((hk, handle(&v)?)))
            .map_err(|e| e.to_string());
        Ok(Self {
            block_size,
            num_blocks,
            n_layers: cfg.n_layers,
            n_kv: cfg.n_kv_heads,
            head_dim: cfg.head_dim,
            k,
            v,
            remote: HashMap::new(),
            handles,
        })
    }

    /// How another process on this host maps this pool (see [`DevicePool`]).
    pub fn device_pool(&self) -> CudaResult<DevicePool> {
        let (k_handle, v_handle) = self.handles.clone().map_err(CudaError::Ipc)?;
        Ok(DevicePool {
            host_id: crate::transfer::tcp::host_id(),
            k_handle,
            v_handle,
            n_layers: self.n_layers,
            n_kv_heads: self.n_kv,
            head_dim: self.head_dim,
            block_size: self.block_size,
            num_blocks: self.num_blocks,
        })
    }

    /// Copies positions `from..to` of a sequence out of another engine's pool (blocks `src_blocks`, its block
    /// size `src_bs`) into our blocks `table`, on the device, and waits for the copy.
    #[allow(clippy::too_many_arguments)]
    pub fn import_remote(
        &mut self,
        dev: &GpuDevice,
        pool: &DevicePool,
        src_blocks: &[u32],
        src_bs: usize,
        table: &[BlockId],
        from: usize,
        to: usize,
    ) -> CudaResult<()> {
        let layout_ok = pool.n_layers == self.n_layers
            && pool.n_kv_heads == self.n_kv
            && pool.head_dim == self.head_dim
            && self.head_dim.is_multiple_of(8)
            && src_bs > 0
            && pool.block_size == src_bs;
        if !layout_ok {
            return Err(CudaError::Ipc(format!(
                "holder's KV layout ({} layers, {} KV heads, head dim {}, block {}) does not match ours                  ({}, {}, {}, block {})",
                pool.n_layers,
                pool.n_kv_heads,
                pool.head_dim,
                pool.block_size,
                self.n_layers,
                self.n_kv,
                self.head_dim,
                self.block_size
            )));
        }
        if from >= to {
            return Ok(());
        }
        if src_blocks.len() * src_bs < to
            || table.len() * self.block_size < to
            || src_blocks.iter().any(|&b| b as usize >= pool.num_blocks)
        {
            return Err(CudaError::Ipc(
                "block tables do not cover the imported range".into(),
            ));
        }
        for &b in table {
            self.check(b)?;
        }
        if self
            .handles
            .as_ref()
            .is_ok_and(|(k, _)| *k == pool.k_handle)
        {
            // Our own pool (an engine pulling from itself): a process cannot map its own IPC handle.
            return self.copy_in(dev, self.raw_parts(), src_bs, src_blocks, table, from, to);
        }
        if !self.remote.contains_key(&pool.k_handle) {
            if self.remote.len() >= MAX_REMOTE_POOLS {
                self.remote.clear();
            }
            let k = Mapping::open(&dev.ctx, &ipc::from_hex(&pool.k_handle)?)?;
            let v = Mapping::open(&dev.ctx, &ipc::from_hex(&pool.v_handle)?)?;
            self.remote.insert(pool.k_handle.clone(), (k, v));
        }
        let (rk, rv) = &self.remote[&pool.k_handle];
        let src = (rk.ptr, rv.ptr, pool.num_blocks);
        self.copy_in(dev, src, src_bs, src_blocks, table, from, to)
    }

    /// Addresses of the K and V allocations and the block count (for a peer in the same process).
    pub(crate) fn raw_parts(&self) -> (u64, u64, usize) {
        (self.k.ptr(), self.v.ptr(), self.num_blocks)
    }

    /// The `kv_import` copy from a pool of the same layout at `src = (k, v, num_blocks)` (mapped or peer).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn copy_in(
        &self,
        dev: &GpuDevice,
        src: (u64, u64, usize),
        src_bs: usize,
        src_blocks: &[u32],
        table: &[BlockId],
        from: usize,
        to: usize,
    ) -> CudaResult<()> {
        let (src_k, src_v, src_num_blocks) = src;
        let as_i32 = |v: &[u32]| v.iter().map(|&b| b as i32).collect::<Vec<i32>>();
        let src_ids = DevBuf::from_host(&dev.stream, &as_i32(src_blocks))?;
        let dst_ids = DevBuf::from_host(&dev.stream, &as_i32(table))?;
        let src_layer = src_num_blocks * self.n_kv * src_bs * self.head_dim;
        launch(
            &dev.stream,
            &dev.k.kv_import,
            ((to - from) as u32, 2 * self.n_layers as u32, 1),
            128,
            &[
                Arg::Ptr(src_k),
                Arg::Ptr(src_v),
                Arg::Ptr(self.k.ptr()),
                Arg::Ptr(self.v.ptr()),
                Arg::Ptr(src_ids.ptr()),
                Arg::Ptr(dst_ids.ptr()),
                Arg::I32(from as i32),
                Arg::I32(src_bs as i32),
                Arg::I32(self.block_size as i32),
                Arg::I32(self.n_kv as i32),
                Arg::I32(self.head_dim as i32),
                Arg::U64(src_layer as u64),
                Arg::U64(self.layer_elems() as u64),
            ],
        )?;
        // The id buffers and the source blocks must outlive the copy.
        dev.synchronize()
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
