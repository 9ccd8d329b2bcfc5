//! Byte-level BPE merging over token ids.

use std::collections::HashMap;

/// Merge table: `(left, right) → (rank, merged)`.
#[derive(Debug, Default)]
pub struct Merges {
    table: HashMap<(u32, u32), (u32, u32)>,
}

impl Merges {
    pub fn insert(&mut self, left: u32, right: u32, rank: u32, merged: u32) {
        self.table.entry((left, right)).or_insert((rank, merged));
    }

    /// Repeatedly merges the adjacent pair of lowest rank until none applies.
    pub fn apply(&self, mut symbols: Vec<u32>) -> Vec<u32> {
        loop {
            let mut best: Option<(u32, usize, u32)> = None;
            for i in 0..symbols.len().saturating_sub(1) {
                if let Some(&(rank, merged)) = self.table.get(&(symbols[i], symbols[i + 1])) {
                    if best.is_none_or(|(r, _, _)| rank < r) {
                        best = Some((rank, i, merged));
                    }
                }
            }
            let Some((_, i, merged)) = best else {
                return symbols;
            };
            // Merge every non-overlapping occurrence of this pair, left to right (as GPT-2's reference BPE does).
            let (a, b) = (symbols[i], symbols[i + 1]);
            let mut out = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len() && symbols[i] == a && symbols[i + 1] == b {
                    out.push(merged);
                    i += 2;
                } else {
                    out.push(symbols[i]);
                    i += 1;
                }
            }
            symbols = out;
        }
    }
}
