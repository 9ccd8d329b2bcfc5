//! A weight matrix `[rows, cols]`, either dequantized f32 or kept in its 8/4-bit block form.
//!
//! The block forms hold exactly the values dequantization would produce (`q·d + m` in f32, with per-block scales
//! unpacked to f32 at load), so both forms compute the same f32 math; they differ only in summation order. The
//! block forms read 4–6× fewer bytes per token, which is what bounds single-stream decoding on a CPU.

use half::f16;
use rayon::prelude::*;

use crate::cpu_ops;
use crate::error::{Error, Result};
use crate::quant::{dequantize, TensorType};

pub const QK: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub enum Matrix {
    F32 {
        rows: usize,
        cols: usize,
        data: Vec<f32>,
    },
    /// 4-bit: value = q·d + m (Q4_0 is stored with m = −8·d, which is exact).
    Q4 {
        rows: usize,
        cols: usize,
        d: Vec<f32>,
        m: Vec<f32>,
        /// 16 bytes per block in the packed layout of `cpu_ops` ([`cpu_ops::pack_q4`]).
        qs: Vec<u8>,
    },
    /// 8-bit: value = q·d.
    Q8 {
        rows: usize,
        cols: usize,
        d: Vec<f32>,
        /// 32 bytes per block in the packed layout of `cpu_ops` ([`cpu_ops::pack_q8`]).
        qs: Vec<i8>,
    },
}

fn h(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

impl Matrix {
    pub fn from_f32(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        Self::F32 { rows, cols, data }
    }

    /// Builds from encoded tensor data. With `keep_quantized`, Q4_0/Q4_1/Q8_0 stay in block form.
    pub fn from_encoded(
        ty: TensorType,
        bytes: &[u8],
        rows: usize,
        cols: usize,
        keep_quantized: bool,
    ) -> Result<Self> {
        let n = rows * cols;
        if bytes.len() != ty.row_bytes(n)? {
            return Err(Error::corrupt(format!(
                "{ty:?} tensor has {} bytes",
                bytes.len()
            )));
        }
        let blocks_ok = cols.is_multiple_of(QK);
        match ty {
            TensorType::Q4_1 | TensorType::Q4_0 if keep_quantized && blocks_ok => {
                let bsz = if ty == TensorType::Q4_1 { 20 } else { 18 };
                let nb = n / QK;
                let (mut d, mut m, mut qs) = (
                    Vec::with_capacity(nb),
                    Vec::with_capacity(nb),
                    Vec::with_capacity(nb * 16),
                );
                for blk in bytes.chunks_exact(bsz) {
                    let dd = h(&blk[..2]);
                    d.push(dd);
                    if ty == TensorType::Q4_1 {
                        m.push(h(&blk[2..4]));
                        qs.extend_from_slice(&cpu_ops::pack_q4(&blk[4..]));
                    } else {
                        m.push(-8.0 * dd);
                        qs.extend_from_slice(&cpu_ops::pack_q4(&blk[2..]));
                    }
                }
                Ok(Self::Q4 {
                    rows,
                    cols,
                    d,
                    m,
                    qs,
                })
            }
            TensorType::Q8_0 if keep_quantized && blocks_ok => {
                let nb = n / QK;
                let (mut d, mut qs) = (Vec::with_capacity(nb), Vec::with_capacity(n));
                for blk in bytes.chunks_exact(34) {
                    d.push(h(&blk[..2]));
                    let vals: Vec<i8> = blk[2..].iter().map(|&b| b as i8).collect();
                    qs.extend_from_slice(&cpu_ops::pack_q8(&vals));
                }
                Ok(Self::Q8 { rows, cols, d, qs })
            }
            _ => Ok(Self::F32 {
                rows,
                cols,
                data: dequantize(ty, bytes, n)?,
            }),
        }
    }

    pub fn rows(&self) -> usize {
        match self {
            Self::F32 { rows, .. } | Self::Q4 { rows, .. } | Self::Q8 { rows, .. } => *rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Self::F32 { cols, .. } | Self::Q4 { cols, .. } | Self::Q8 { cols, .. } => *cols,
        }
    }

    /// Writes row `r` as f32 into `out` (`cols` long).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        match self {
            Self::F32 { cols, data, .. } => out.copy_from_slice(&data[r * cols..(r + 1) * cols]),
            Self::Q4 { cols, d, m, qs, .. } => {
                let nb = cols / QK;
                let mut q = [0u8; QK];
                for b in 0..nb {
                    let i = r * nb + b;
                    cpu_ops::unpack_q4(&qs[i * 16..(i + 1) * 16], &mut q);
                    for (o, q) in out[b * QK..(b + 1) * QK].iter_mut().zip(q) {
                        *o = f32::from(q) * d[i] + m[i];
                    }
                }
            }
            Self::Q8 { cols, d, qs, .. } => {
                let nb = cols / QK;
                let mut q = [0i8; QK];
                for b in 0..nb {
                    let i = r * nb + b;
                    cpu_ops::unpack_q8(&qs[i * QK..(i + 1) * QK], &mut q);
                    for (o, q) in out[b * QK..(b + 1) * QK].iter_mut().zip(q) {
                        *o = d[i] * f32::from(q);
                    }
                }
            }
        }
    }

    /// The whole matrix as f32 (tests, exports).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows() * self.cols()];
        for (r, o) in out.chunks_exact_mut(self.cols()).enumerate() {
            self.row_into(r, o);
        }
        out
    }

    /// `x · row r` for one activation vector; `xsum[b]` is the sum of block `b` of `x` (used by 4-bit rows).
    fn row_dot(&self, r: usize, x: &[f32], xsum: &[f32]) -> f32 {
        let cols = self.cols();
        let nb = cols / QK;
        match self {
            Self::F32 { data, .. } => cpu_ops::dot(&data[r * cols..(r + 1) * cols], x),
            Self::Q4 { d, m, qs, .. } => cpu_ops::dot_q4(
                &d[r * nb..(r + 1) * nb],
                &m[r * nb..(r + 1) * nb],
                &qs[r * nb * 16..(r + 1) * nb * 16],
                x,
                xsum,
            ),
            Self::Q8 { d, qs, .. } => {
                cpu_ops::dot_q8(&d[r * nb..(r + 1) * nb], &qs[r * cols..(r + 1) * cols], x)
            }
        }
    }

    /// `out[t][r] = x[t] · row r` for `x: [n_tok, cols]`, `out: [n_tok, rows]`.
    pub fn matmul(&self, x: &[f32], n_tok: usize, out: &mut [f32]) {
        matmul_multi(&[self], x, n_tok, &mut [out]);
    }
}

/// Several matrices with the same input width applied to the same `x` in one parallel pass (e.g. Q, K and V):
/// one fork-join instead of one per matrix, which matters when the cores are shared with other processes.
/// `outs[i]` is `[n_tok, mats[i].rows()]`.
pub fn matmul_multi(mats: &[&Matrix], x: &[f32], n_tok: usize, outs: &mut [&mut [f32]]) {
    let Some(first) = mats.first() else { return };
    let cols = first.cols();
    let total: usize = mats.iter().map(|m| m.rows()).sum();
    // Global row g → (matrix, row).
    let locate = |g: usize| {
        let mut g = g;
        for (i, m) in mats.iter().enumerate() {
            if g < m.rows() {
                return (i, g);
            }
            g -= m.rows();
        }
        (mats.len() - 1, 0)
    };
    let rows_per_task = (total / 64).clamp(8, 256);
    if n_tok == 1 {
        let xsum: Vec<f32> = x.chunks_exact(QK).map(|c| c.iter().sum()).collect();
        let mut all = vec![0f32; total];
        all.par_chunks_mut(rows_per_task)
            .enumerate()
            .for_each(|(c, chunk)| {
                for (i, o) in chunk.iter_mut().enumerate() {
                    let (mi, r) = locate(c * rows_per_task + i);
                    *o = mats[mi].row_dot(r, x, &xsum);
                }
            });
        let mut off = 0;
        for (m, out) in mats.iter().zip(outs.iter_mut()) {
            out.copy_from_slice(&all[off..off + m.rows()]);
            off += m.rows();
        }
        return;
    }
    // Batches: each weight row (dequantized once if needed) is dotted against every token; the result is
    // computed transposed so that tasks write contiguous ranges.
    let mut all_t = vec![0f32; total * n_tok];
    all_t
        .par_chunks_mut(rows_per_task * n_tok)
        .enumerate()
        .for_each(|(c, chunk)| {
            let (mut s0, mut s1) = (vec![0f32; cols], vec![0f32; cols]);
            let row = |g: usize, scratch: &mut Vec<f32>| {
                let (mi, r) = locate(g);
                if let Matrix::F32 { data, .. } = mats[mi] {
                    scratch.copy_from_slice(&data[r * cols..(r + 1) * cols]);
                } else {
                    mats[mi].row_into(r, scratch);
                }
            };
            let base = c * rows_per_task;
            let mut pairs = chunk.chunks_exact_mut(2 * n_tok);
            let mut g = base;
            for pair in &mut pairs {
                row(g, &mut s0);
                row(g + 1, &mut s1);
                let (o0, o1) = pair.split_at_mut(n_tok);
                cpu_ops::dot_rows2_tokens([&s0, &s1], x, n_tok, [o0, o1]);
                g += 2;
            }
            let rest = pairs.into_remainder();
            if !rest.is_empty() {
                row(g, &mut s0);
                cpu_ops::dot_row_tokens(&s0, x, n_tok, rest);
            }
        });
    let mut off = 0;
    for (m, out) in mats.iter().zip(outs.iter_mut()) {
        let rows = m.rows();
        for (t, o) in out.chunks_exact_mut(rows).enumerate() {
            for (r, v) in o.iter_mut().enumerate() {
                *v = all_t[(off + r) * n_tok + t];
            }
        }
        off += rows;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize;

    fn vals(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0) - 1.0)
            .collect()
    }

    #[test]
    fn block_forms_match_dequantized_f32() {
        let (rows, cols) = (37, 96);
        let w = vals(rows * cols, 1);
        for ty in [TensorType::Q4_1, TensorType::Q4_0, TensorType::Q8_0] {
            let bytes = quantize(ty, &w).unwrap();
            let f = Matrix::from_encoded(ty, &bytes, rows, cols, false).unwrap();
            let q = Matrix::from_encoded(ty, &bytes, rows, cols, true).unwrap();
            assert!(!matches!(q, Matrix::F32 { .. }));
            assert_eq!(q.to_f32(), f.to_f32(), "{ty:?} values");
            // Fused with another matrix: same results as separately.
            for n_tok in [1, 5] {
                let x = vals(n_tok * cols, 3);
                let (mut a, mut b) = (vec![0f32; n_tok * rows], vec![0f32; n_tok * rows]);
                let (mut a2, mut b2) = (vec![0f32; n_tok * rows], vec![0f32; n_tok * rows]);
                q.matmul(&x, n_tok, &mut a);
                f.matmul(&x, n_tok, &mut a2);
                matmul_multi(&[&q, &f], &x, n_tok, &mut [&mut b, &mut b2]);
                for (u, v) in a.iter().chain(&a2).zip(b.iter().chain(&b2)) {
                    assert!((u - v).abs() < 1e-4, "fused {u} vs {v}");
                }
            }
            for n_tok in [1, 3, 6] {
                let x = vals(n_tok * cols, 2);
                let (mut a, mut b) = (vec![0f32; n_tok * rows], vec![0f32; n_tok * rows]);
                f.matmul(&x, n_tok, &mut a);
                q.matmul(&x, n_tok, &mut b);
                for (u, v) in a.iter().zip(&b) {
                    assert!((u - v).abs() < 1e-4, "{ty:?} n_tok={n_tok}: {u} vs {v}");
                }
            }
        }
    }
}
