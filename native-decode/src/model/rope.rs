//! Rotary position embeddings with a precomputed cos/sin table.

use crate::model::config::RopeStyle;

#[derive(Debug, Clone)]
pub struct Rope {
    half: usize,
    style: RopeStyle,
    /// `[max_pos, half]`
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    pub fn new(head_dim: usize, theta: f32, max_pos: usize, style: RopeStyle) -> Self {
        let half = head_dim / 2;
        // Same arithmetic as HF: inv_freq in f32, angle = pos * inv_freq in f32.
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for p in 0..max_pos {
            for f in &inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Self {
            half,
            style,
            cos,
            sin,
        }
    }

    /// Rotates every head in `x` (`[n_heads * head_dim]`) for position `pos` (must be < `max_pos`).
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        let c = &self.cos[pos * self.half..(pos + 1) * self.half];
        let s = &self.sin[pos * self.half..(pos + 1) * self.half];
        for head in x.chunks_exact_mut(2 * self.half) {
            match self.style {
                RopeStyle::Interleaved => {
                    for (i, pair) in head.chunks_exact_mut(2).enumerate() {
                        let (a, b) = (pair[0], pair[1]);
                        pair[0] = a * c[i] - b * s[i];
                        pair[1] = a * s[i] + b * c[i];
                    }
                }
                RopeStyle::HalfSplit => {
                    let (lo, hi) = head.split_at_mut(self.half);
                    for i in 0..self.half {
                        let (a, b) = (lo[i], hi[i]);
                        lo[i] = a * c[i] - b * s[i];
                        hi[i] = a * s[i] + b * c[i];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's converter permutes q/k rows so that interleaved RoPE on permuted weights equals half-split RoPE
    /// on the original ones: original row `j < half` ↦ permuted `2j`, `half + j` ↦ `2j + 1`.
    #[test]
    fn interleaved_on_permuted_equals_half_split() {
        let d = 8;
        let x: Vec<f32> = (0..d).map(|i| i as f32 * 0.3 - 1.0).collect();
        let mut permuted = vec![0f32; d];
        for j in 0..d / 2 {
            permuted[2 * j] = x[j];
            permuted[2 * j + 1] = x[d / 2 + j];
        }
        let mut a = x.clone();
        Rope::new(d, 10_000.0, 16, RopeStyle::HalfSplit).apply(&mut a, 5);
        Rope::new(d, 10_000.0, 16, RopeStyle::Interleaved).apply(&mut permuted, 5);
        for j in 0..d / 2 {
            assert!((a[j] - permuted[2 * j]).abs() < 1e-6);
            assert!((a[d / 2 + j] - permuted[2 * j + 1]).abs() < 1e-6);
        }
    }

    #[test]
    fn position_zero_is_identity() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        Rope::new(4, 10_000.0, 4, RopeStyle::Interleaved).apply(&mut x, 0);
        assert_eq!(x, vec![1.0, 2.0, 3.0, 4.0]);
    }
}
