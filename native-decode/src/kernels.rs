//! Hot numeric kernels, and the crate's only `unsafe` code.
//!
//! The workspace forbids `unsafe`; this crate relaxes that to `deny` (see its Cargo.toml) so that this one module
//! can opt in. It holds exactly two kinds of unsafe code:
//! - the read-only memory map of a model file ([`map_file`]);
//! - AVX2+FMA dot products, selected at run time with `is_x86_feature_detected!` (no `-C target-cpu` needed),
//!   with portable fallbacks that LLVM vectorizes for the baseline target.
#![allow(unsafe_code)]

use std::fs::File;

use memmap2::Mmap;
use rayon::prelude::*;

/// Maps a file read-only.
pub fn map_file(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: the mapping is read-only and private to this process. It would only be unsound if another process
    // truncated or rewrote the model file while it is mapped, which is documented as unsupported.
    unsafe { Mmap::map(file) }
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Dot product of two equal-length slices (extra elements of the longer one are ignored).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        return unsafe { avx2::dot(a, b) };
    }
    dot_portable(a, b)
}

/// One weight row against four activation rows: `[w·x0, w·x1, w·x2, w·x3]`.
pub fn dot4(w: &[f32], x: [&[f32]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        return unsafe { avx2::dot4(w, x) };
    }
    [
        dot_portable(w, x[0]),
        dot_portable(w, x[1]),
        dot_portable(w, x[2]),
        dot_portable(w, x[3]),
    ]
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y;
    }
    s
}

/// `y += a * x`, elementwise.
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// `out[t][o] = x[t] · w[o]` for `x: [n_tok, n_in]`, `w: [n_out, n_in]` (row-major), `out: [n_tok, n_out]`.
/// Parallel over weight rows; each weight row is read once per group of four tokens.
pub fn matmul(x: &[f32], n_tok: usize, w: &[f32], n_out: usize, n_in: usize, out: &mut [f32]) {
    debug_assert_eq!(x.len(), n_tok * n_in);
    debug_assert_eq!(w.len(), n_out * n_in);
    debug_assert_eq!(out.len(), n_tok * n_out);
    let rows_per_task = (n_out / 64).clamp(8, 256);
    if n_tok == 1 {
        out.par_chunks_mut(rows_per_task)
            .enumerate()
            .for_each(|(c, chunk)| {
                let r0 = c * rows_per_task;
                for (i, o) in chunk.iter_mut().enumerate() {
                    let r = r0 + i;
                    *o = dot(&w[r * n_in..(r + 1) * n_in], x);
                }
            });
        return;
    }
    // Compute the transpose [n_out, n_tok] so each task writes a contiguous range, then transpose back.
    let mut out_t = vec![0f32; n_out * n_tok];
    out_t
        .par_chunks_mut(rows_per_task * n_tok)
        .enumerate()
        .for_each(|(c, chunk)| {
            let r0 = c * rows_per_task;
            for (i, row_out) in chunk.chunks_exact_mut(n_tok).enumerate() {
                let r = r0 + i;
                let wr = &w[r * n_in..(r + 1) * n_in];
                let xr = |t: usize| &x[t * n_in..(t + 1) * n_in];
                let mut t = 0;
                while t + 4 <= n_tok {
                    let v = dot4(wr, [xr(t), xr(t + 1), xr(t + 2), xr(t + 3)]);
                    row_out[t..t + 4].copy_from_slice(&v);
                    t += 4;
                }
                while t < n_tok {
                    row_out[t] = dot(wr, xr(t));
                    t += 1;
                }
            }
        });
    for (t, o) in out.chunks_exact_mut(n_out).enumerate() {
        for (r, v) in o.iter_mut().enumerate() {
            *v = out_t[r * n_tok + t];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// SAFETY: caller guarantees AVX2 and FMA are available. Loads stay within `n = min(len)` elements.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                // SAFETY: i + 8k + 8 <= n.
                let (x, y) = unsafe {
                    (
                        _mm256_loadu_ps(pa.add(i + 8 * k)),
                        _mm256_loadu_ps(pb.add(i + 8 * k)),
                    )
                };
                *acc = _mm256_fmadd_ps(x, y, *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            // SAFETY: i + 8 <= n.
            let (x, y) = unsafe { (_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i))) };
            acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
            i += 8;
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut s = hsum(v);
        while i < n {
            s += a[i] * b[i];
            i += 1;
        }
        s
    }

    /// SAFETY: caller guarantees AVX2 and FMA are available. Loads stay within the shortest slice.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot4(w: &[f32], x: [&[f32]; 4]) -> [f32; 4] {
        let n = x.iter().fold(w.len(), |n, s| n.min(s.len()));
        let pw = w.as_ptr();
        let px = x.map(|s| s.as_ptr());
        let mut a0 = [_mm256_setzero_ps(); 4];
        let mut a1 = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 <= n for every slice.
            unsafe {
                let w0 = _mm256_loadu_ps(pw.add(i));
                let w1 = _mm256_loadu_ps(pw.add(i + 8));
                for k in 0..4 {
                    a0[k] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(px[k].add(i)), a0[k]);
                    a1[k] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(px[k].add(i + 8)), a1[k]);
                }
            }
            i += 16;
        }
        let mut out = [0f32; 4];
        for k in 0..4 {
            out[k] = hsum(_mm256_add_ps(a0[k], a1[k]));
            for j in i..n {
                out[k] += w[j] * x[k][j];
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104729) % 1000) as f32 / 500.0) - 1.0)
            .collect()
    }

    #[test]
    fn dot_matches_naive_for_odd_lengths() {
        for n in [0, 1, 7, 8, 15, 33, 100, 577] {
            let (a, b) = (vals(n, 1), vals(n, 2));
            let naive: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            assert!((f64::from(dot(&a, &b)) - naive).abs() < 1e-3, "n={n}");
            assert!(
                (f64::from(dot_portable(&a, &b)) - naive).abs() < 1e-3,
                "n={n}"
            );
        }
    }

    #[test]
    fn matmul_matches_naive() {
        for (t, o, i) in [(1, 37, 19), (5, 70, 33), (9, 3, 64)] {
            let x = vals(t * i, 3);
            let w = vals(o * i, 4);
            let mut out = vec![0f32; t * o];
            matmul(&x, t, &w, o, i, &mut out);
            for tt in 0..t {
                for oo in 0..o {
                    let naive: f32 = (0..i).map(|k| x[tt * i + k] * w[oo * i + k]).sum();
                    assert!((out[tt * o + oo] - naive).abs() < 1e-3);
                }
            }
        }
    }
}
