//! Byte-level BPE merging over token ids.
//!
//! Merges are applied lowest rank first, leftmost first among equal ranks, through a priority queue over a
//! linked list of symbols: O(n log n) in the piece length. (Rescanning the whole piece for the best pair after
//! every merge made a long hostile "word" cost minutes.)

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// Merge table: `(left, right) → (rank, merged)`.
#[derive(Debug, Default)]
pub struct Merges {
    table: HashMap<(u32, u32), (u32, u32)>,
}

/// No neighbour.
const NONE: usize = usize::MAX;

impl Merges {
    pub fn insert(&mut self, left: u32, right: u32, rank: u32, merged: u32) {
        self.table.entry((left, right)).or_insert((rank, merged));
    }

    /// Repeatedly merges the adjacent pair of lowest rank (the leftmost of equals) until none applies.
    pub fn apply(&self, symbols: Vec<u32>) -> Vec<u32> {
        let n = symbols.len();
        if n < 2 {
            return symbols;
        }
        let mut sym = symbols;
        let mut next: Vec<usize> = (1..=n).map(|i| if i < n { i } else { NONE }).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.checked_sub(1).unwrap_or(NONE)).collect();
        let mut alive = vec![true; n];
        // Candidates (rank, left position, left symbol, right symbol); stale ones are skipped when popped.
        let mut heap = BinaryHeap::new();
        let candidate = |heap: &mut BinaryHeap<_>, i: usize, a: u32, b: u32| {
            if let Some(&(rank, _)) = self.table.get(&(a, b)) {
                heap.push(Reverse((rank, i, a, b)));
            }
        };
        for i in 0..n - 1 {
            candidate(&mut heap, i, sym[i], sym[i + 1]);
        }
        while let Some(Reverse((_, i, a, b))) = heap.pop() {
            // A position's symbol only ever grows by merging, so equal symbols mean the pair is still there.
            let j = next[i];
            if !alive[i] || sym[i] != a || j == NONE || sym[j] != b {
                continue;
            }
            let Some(&(_, merged)) = self.table.get(&(a, b)) else {
                continue;
            };
            sym[i] = merged;
            alive[j] = false;
            let k = next[j];
            next[i] = k;
            if k != NONE {
                prev[k] = i;
                candidate(&mut heap, i, merged, sym[k]);
            }
            if prev[i] != NONE {
                let p = prev[i];
                candidate(&mut heap, p, sym[p], merged);
            }
        }
        let mut out = Vec::with_capacity(n);
        let mut i = 0;
        while i != NONE {
            out.push(sym[i]);
            i = next[i];
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The previous merge loop (GPT-2's reference order): find the lowest-rank pair anywhere, merge all its
    /// non-overlapping occurrences left to right, repeat.
    fn rescan(m: &Merges, mut symbols: Vec<u32>) -> Vec<u32> {
        loop {
            let mut best: Option<(u32, usize, u32)> = None;
            for i in 0..symbols.len().saturating_sub(1) {
                if let Some(&(rank, merged)) = m.table.get(&(symbols[i], symbols[i + 1])) {
                    if best.is_none_or(|(r, _, _)| rank < r) {
                        best = Some((rank, i, merged));
                    }
                }
            }
            let Some((_, i, merged)) = best else {
                return symbols;
            };
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

    #[test]
    fn equals_the_rescanning_merge_on_random_tables_and_inputs() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut rand = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for _ in 0..300 {
            // A table learnt the BPE way: each merge joins two tokens that exist already into a new one.
            let mut m = Merges::default();
            // Four single symbols (ids 0-3); merge `rank` makes token `4 + rank`.
            for rank in 0..rand(40) as u32 {
                let known = 4 + rank as usize;
                let (l, r) = (rand(known) as u32, rand(known) as u32);
                m.insert(l, r, rank, 4 + rank);
            }
            for _ in 0..20 {
                let input: Vec<u32> = (0..rand(40)).map(|_| rand(4) as u32).collect();
                assert_eq!(
                    m.apply(input.clone()),
                    rescan(&m, input.clone()),
                    "{input:?}"
                );
            }
        }
    }

    #[test]
    fn runs_of_one_symbol_merge_left_to_right() {
        let mut m = Merges::default();
        m.insert(0, 0, 0, 1);
        assert_eq!(m.apply(vec![0; 5]), vec![1, 1, 0]);
        m.insert(1, 1, 1, 2);
        assert_eq!(m.apply(vec![0; 9]), vec![2, 2, 0]);
    }
}
