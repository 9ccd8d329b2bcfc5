//! Hands out KV blocks: reference counts, an LRU free queue, and a prefix cache keyed by block-content hashes.
//!
//! A full block's hash chains its parent's hash with its token ids, so equal hashes mean equal prefixes. Freed
//! blocks keep their contents and stay findable in the prefix cache until they are reused (oldest-freed first).

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::OnceLock;

use crate::kv::store::BlockId;

/// SipHash keys drawn once per process: block hashes cannot be computed (nor collisions searched for) offline.
fn hasher() -> impl Hasher {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    KEYS.get_or_init(RandomState::new).build_hasher()
}

/// The chained hash of a full block.
pub fn block_hash(parent: Option<u64>, tokens: &[u32]) -> u64 {
    let mut h = hasher();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// The parent of a prompt's first block: the request's `cache_salt` (None without one). Requests with different
/// salts get different hash chains, so their blocks never match each other in the prefix cache.
pub fn salt_root(salt: Option<&str>) -> Option<u64> {
    salt.map(|s| {
        let mut h = hasher();
        "baton-cache-salt".hash(&mut h);
        s.hash(&mut h);
        h.finish()
    })
}

/// Hashes of every full block of `tokens`, the first chained to `root` (see [`salt_root`]).
pub fn prefix_hashes(root: Option<u64>, tokens: &[u32], block_size: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(tokens.len() / block_size);
    let mut parent = root;
    for chunk in tokens.chunks_exact(block_size) {
        let h = block_hash(parent, chunk);
        out.push(h);
        parent = Some(h);
    }
    out
}

#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    ref_count: Vec<u32>,
    /// Free blocks in LRU order: key = free sequence number.
    free: BTreeMap<i64, BlockId>,
    free_key: Vec<Option<i64>>,
    /// Next key at the back (reused last) and at the front (reused first) of the free queue.
    next_back: i64,
    next_front: i64,
    hash_of: Vec<Option<u64>>,
    cached: HashMap<u64, BlockId>,
    prefix_caching: bool,
}

impl BlockManager {
    pub fn new(num_blocks: usize, block_size: usize, prefix_caching: bool) -> Self {
        let mut m = Self {
            block_size,
            ref_count: vec![0; num_blocks],
            free: BTreeMap::new(),
            free_key: vec![None; num_blocks],
            next_back: 0,
            next_front: -1,
            hash_of: vec![None; num_blocks],
            cached: HashMap::new(),
            prefix_caching,
        };
        for b in 0..num_blocks as BlockId {
            m.push_free(b);
        }
        m
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_count.len()
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Fraction of blocks in use (0–1), as vLLM's `kv_cache_usage_perc`.
    pub fn usage(&self) -> f64 {
        if self.ref_count.is_empty() {
            return 0.0;
        }
        1.0 - self.free.len() as f64 / self.ref_count.len() as f64
    }

    /// Blocks needed to hold `n_tokens`.
    pub fn blocks_for(&self, n_tokens: usize) -> usize {
        n_tokens.div_ceil(self.block_size)
    }

    fn push_free(&mut self, b: BlockId) {
        let k = self.next_back;
        self.next_back += 1;
        self.free.insert(k, b);
        self.free_key[b as usize] = Some(k);
    }

    fn take_ref(&mut self, b: BlockId) {
        if let Some(k) = self.free_key[b as usize].take() {
            self.free.remove(&k);
        }
        self.ref_count[b as usize] += 1;
    }

    /// Allocates `n` fresh blocks (evicting the least recently freed cached ones), or none if too few are free.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.free.len() {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let (_, b) = self.free.pop_first()?;
            self.free_key[b as usize] = None;
            if let Some(h) = self.hash_of[b as usize].take() {
                if self.cached.get(&h) == Some(&b) {
                    self.cached.remove(&h);
                }
            }
            self.ref_count[b as usize] = 1;
            out.push(b);
        }
        Some(out)
    }

    /// Looks up the longest cached prefix among `hashes` (of consecutive full blocks) and takes a reference on
    /// each hit.
    pub fn lookup_prefix(&mut self, hashes: &[u64]) -> Vec<BlockId> {
        if !self.prefix_caching {
            return Vec::new();
        }
        let mut hits = Vec::new();
        for h in hashes {
            match self.cached.get(h) {
                Some(&b) => hits.push(b),
                None => break,
            }
        }
        for &b in &hits {
            self.take_ref(b);
        }
        hits
    }

    /// Records that `block` now holds the full block with hash `hash`, making it findable by later prompts.
    pub fn register(&mut self, block: BlockId, hash: u64) {
        if !self.prefix_caching || self.hash_of[block as usize].is_some() {
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(e) = self.cached.entry(hash) {
            e.insert(block);
            self.hash_of[block as usize] = Some(hash);
        }
    }

    /// Drops one reference on each block. Blocks are released tail first so that a prefix's last blocks are
    /// evicted before its first ones.
    pub fn free(&mut self, blocks: &[BlockId]) {
        for &b in blocks.iter().rev() {
            let rc = &mut self.ref_count[b as usize];
            if *rc == 0 {
                continue;
            }
            *rc -= 1;
            if *rc == 0 {
                if self.hash_of[b as usize].is_none() {
                    // Uncached blocks hold nothing worth keeping: reuse them first.
                    let k = self.next_front;
                    self.next_front -= 1;
                    self.free.insert(k, b);
                    self.free_key[b as usize] = Some(k);
                } else {
                    self.push_free(b);
                }
            }
        }
    }

    pub fn ref_count(&self, b: BlockId) -> u32 {
        self.ref_count[b as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_free_and_exhaustion() {
        let mut m = BlockManager::new(4, 16, true);
        let a = m.allocate(3).unwrap();
        assert_eq!(m.num_free(), 1);
        assert!(m.allocate(2).is_none());
        assert_eq!(m.num_free(), 1, "failed allocation takes nothing");
        m.free(&a);
        assert_eq!(m.num_free(), 4);
        assert!((m.usage() - 0.0).abs() < 1e-9);
    }

    #[test]
    fn prefix_cache_hits_and_refcounts() {
        let mut m = BlockManager::new(8, 2, true);
        let toks = [1, 2, 3, 4, 5];
        let hashes = prefix_hashes(None, &toks, 2);
        assert_eq!(hashes.len(), 2);
        let blocks = m.allocate(3).unwrap();
        m.register(blocks[0], hashes[0]);
        m.register(blocks[1], hashes[1]);
        // A second request sharing the prefix while the first still runs.
        let hit = m.lookup_prefix(&hashes);
        assert_eq!(hit, blocks[..2].to_vec());
        assert_eq!(m.ref_count(blocks[0]), 2);
        m.free(&blocks);
        m.free(&hit);
        assert_eq!(m.num_free(), 8);
        // Still cached after being freed.
        let hit2 = m.lookup_prefix(&hashes);
        assert_eq!(hit2, blocks[..2].to_vec());
        assert_eq!(m.num_free(), 6);
        // A different prefix misses.
        assert!(m.lookup_prefix(&prefix_hashes(None, &[9, 9], 2)).is_empty());
    }

    #[test]
    fn eviction_prefers_uncached_then_oldest() {
        let mut m = BlockManager::new(3, 1, true);
        let b = m.allocate(3).unwrap();
        m.register(b[0], 100);
        m.free(&b);
        // b[1], b[2] are uncached and go first; the cached b[0] is evicted last.
        let again = m.allocate(2).unwrap();
        assert!(!again.contains(&b[0]));
        assert_eq!(m.lookup_prefix(&[100]), vec![b[0]]);
        let last = m.allocate(1);
        assert!(last.is_none());
    }

    #[test]
    fn salts_separate_hash_chains() {
        let toks = [1, 2, 3, 4];
        let plain = prefix_hashes(None, &toks, 2);
        let a = prefix_hashes(salt_root(Some("a")), &toks, 2);
        let b = prefix_hashes(salt_root(Some("b")), &toks, 2);
        assert_eq!(a, prefix_hashes(salt_root(Some("a")), &toks, 2));
        for (x, y) in [(&plain, &a), (&a, &b), (&plain, &b)] {
            assert!(x.iter().all(|h| !y.contains(h)), "{x:?} vs {y:?}");
        }
        let mut m = BlockManager::new(4, 2, true);
        let blocks = m.allocate(2).unwrap();
        m.register(blocks[0], a[0]);
        m.register(blocks[1], a[1]);
        assert_eq!(m.lookup_prefix(&a), blocks);
        assert!(m.lookup_prefix(&b).is_empty());
        assert!(m.lookup_prefix(&plain).is_empty());
    }

    #[test]
    fn disabled_prefix_caching_never_hits() {
        let mut m = BlockManager::new(2, 1, false);
        let b = m.allocate(1).unwrap();
        m.register(b[0], 7);
        assert!(m.lookup_prefix(&[7]).is_empty());
    }
}
