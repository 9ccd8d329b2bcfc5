//! The physical paged KV cache: per layer, K and V arrays of `num_blocks × block_size` slots of `kv_dim` floats.

use crate::model::config::ModelConfig;

/// Identifies one block of the pool.
pub type BlockId = u32;

#[derive(Debug)]
pub struct KvStore {
    pub block_size: usize,
    pub num_blocks: usize,
    kv_dim: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl KvStore {
    /// Bytes one token occupies across all layers (K and V).
    pub fn bytes_per_token(cfg: &ModelConfig) -> usize {
        2 * cfg.n_layers * cfg.kv_dim() * std::mem::size_of::<f32>()
    }

    pub fn new(cfg: &ModelConfig, block_size: usize, num_blocks: usize) -> Self {
        let slots = block_size * num_blocks * cfg.kv_dim();
        Self {
            block_size,
            num_blocks,
            kv_dim: cfg.kv_dim(),
            k: (0..cfg.n_layers).map(|_| vec![0.0; slots]).collect(),
            v: (0..cfg.n_layers).map(|_| vec![0.0; slots]).collect(),
        }
    }

    /// The slot of position `pos` in a sequence whose blocks are `table`.
    pub fn slot(&self, table: &[BlockId], pos: usize) -> usize {
        table[pos / self.block_size] as usize * self.block_size + pos % self.block_size
    }

    pub fn write(&mut self, layer: usize, slot: usize, k: &[f32], v: &[f32]) {
        let r = slot * self.kv_dim..(slot + 1) * self.kv_dim;
        self.k[layer][r.clone()].copy_from_slice(k);
        self.v[layer][r].copy_from_slice(v);
    }

    /// K and V rows of one layer (index with `slot * kv_dim`).
    pub fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.k[layer], &self.v[layer])
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    /// Floats in one block across all layers.
    pub fn block_floats(&self) -> usize {
        2 * self.k.len() * self.block_size * self.kv_dim
    }

    /// Copies a block out (layer by layer: K then V).
    pub fn export_block(&self, block: BlockId) -> Vec<f32> {
        let n = self.block_size * self.kv_dim;
        let r = block as usize * n..(block as usize + 1) * n;
        let mut out = Vec::with_capacity(self.block_floats());
        for (k, v) in self.k.iter().zip(&self.v) {
            out.extend_from_slice(&k[r.clone()]);
            out.extend_from_slice(&v[r.clone()]);
        }
        out
    }

    /// Writes a block previously produced by [`KvStore::export_block`] (same model and block size).
    /// Returns false (and writes nothing) when the length does not match.
    pub fn import_block(&mut self, block: BlockId, data: &[f32]) -> bool {
        if data.len() != self.block_floats() || block as usize >= self.num_blocks {
            return false;
        }
        let n = self.block_size * self.kv_dim;
        let r = block as usize * n..(block as usize + 1) * n;
        for (l, chunk) in data.chunks_exact(2 * n).enumerate() {
            self.k[l][r.clone()].copy_from_slice(&chunk[..n]);
            self.v[l][r.clone()].copy_from_slice(&chunk[n..]);
        }
        true
    }
}
