//! The CPU backend's hot numeric operations, and the crate's only `unsafe` code outside the `cuda` feature.
//!
//! The workspace forbids `unsafe`; this crate relaxes that to `deny` (see its Cargo.toml) so that exactly two
//! modules can opt in: this one, and `cuda/` (built only with the `cuda` feature: kernel launches, cuBLAS calls,
//! device pointers and CUDA IPC). This one holds two kinds of unsafe code:
//! - the read-only memory map of a model file ([`map_file`], used for GGUF and safetensors);
//! - AVX2+FMA dot products, selected at run time with `is_x86_feature_detected!` (no `-C target-cpu` needed),
//!   with portable fallbacks that LLVM vectorizes for the baseline target.
//!
//! (Not to be confused with the GPU kernels: CUDA C in `native-decode/kernels/*.cu`, launched from
//! `cuda/kernels.rs`.)
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

/// Two weight rows against four activation rows: `[[w0·x0 … w0·x3], [w1·x0 … w1·x3]]`.
pub fn dot2x4(w: [&[f32]; 2], x: [&[f32]; 4]) -> [[f32; 4]; 2] {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        return unsafe { avx2::dot2x4(w, x) };
    }
    [dot4(w[0], x), dot4(w[1], x)]
}

/// `out0[t] = w0 · x[t]` and `out1[t] = w1 · x[t]` for every token row of `x` (`[n_tok, w0.len()]`): each
/// activation row is loaded once for both weight rows.
pub fn dot_rows2_tokens(w: [&[f32]; 2], x: &[f32], n_tok: usize, out: [&mut [f32]; 2]) {
    let n = w[0].len();
    let xr = |t: usize| &x[t * n..(t + 1) * n];
    let [o0, o1] = out;
    let mut t = 0;
    while t + 4 <= n_tok {
        let v = dot2x4(w, [xr(t), xr(t + 1), xr(t + 2), xr(t + 3)]);
        o0[t..t + 4].copy_from_slice(&v[0]);
        o1[t..t + 4].copy_from_slice(&v[1]);
        t += 4;
    }
    while t < n_tok {
        o0[t] = dot(w[0], xr(t));
        o1[t] = dot(w[1], xr(t));
        t += 1;
    }
}

/// `out[t] = w · x[t]` for every token row of `x` (`[n_tok, w.len()]`).
pub fn dot_row_tokens(w: &[f32], x: &[f32], n_tok: usize, out: &mut [f32]) {
    let n = w.len();
    let xr = |t: usize| &x[t * n..(t + 1) * n];
    let mut t = 0;
    while t + 4 <= n_tok {
        let v = dot4(w, [xr(t), xr(t + 1), xr(t + 2), xr(t + 3)]);
        out[t..t + 4].copy_from_slice(&v);
        t += 4;
    }
    while t < n_tok {
        out[t] = dot(w, xr(t));
        t += 1;
    }
}

/// Dot product of one 4-bit row (per block: scale `d`, offset `m`, 16 bytes of nibbles) with `x`;
/// `xsum[b]` is the sum of block `b` of `x`.
pub fn dot_q4(d: &[f32], m: &[f32], qs: &[u8], x: &[f32], xsum: &[f32]) -> f32 {
    let nb = d
        .len()
        .min(m.len())
        .min(qs.len() / 16)
        .min(x.len() / 32)
        .min(xsum.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA; `nb` bounds every access.
        return unsafe {
            avx2::dot_q4(
                &d[..nb],
                &m[..nb],
                &qs[..nb * 16],
                &x[..nb * 32],
                &xsum[..nb],
            )
        };
    }
    let mut total = 0f32;
    let mut q = [0u8; 32];
    let mut w = [0f32; 32];
    for b in 0..nb {
        unpack_q4(&qs[b * 16..(b + 1) * 16], &mut q);
        for (w, q) in w.iter_mut().zip(q) {
            *w = f32::from(q);
        }
        total += d[b] * dot_portable(&w, &x[b * 32..(b + 1) * 32]) + m[b] * xsum[b];
    }
    total
}

/// Re-packs a GGUF 4-bit block (16 bytes: low nibbles values 0–15, high nibbles 16–31) into the kernel layout:
/// four little-endian words where word `d` holds value `8g + 4h + d` at nibble `2g + h`. One 128-bit broadcast
/// plus per-lane shifts then yields values in natural order, eight at a time.
pub fn pack_q4(std: &[u8]) -> [u8; 16] {
    let v = |i: usize| {
        if i < 16 {
            std[i] & 0x0f
        } else {
            std[i - 16] >> 4
        }
    };
    let mut out = [0u8; 16];
    for d in 0..4 {
        let mut word = 0u32;
        for g in 0..4 {
            for h in 0..2 {
                word |= u32::from(v(8 * g + 4 * h + d)) << (4 * (2 * g + h));
            }
        }
        out[4 * d..4 * d + 4].copy_from_slice(&word.to_le_bytes());
    }
    out
}

/// Inverse of [`pack_q4`]: the 32 values of a block in natural order.
pub fn unpack_q4(packed: &[u8], out: &mut [u8; 32]) {
    for d in 0..4 {
        let word = u32::from_le_bytes([
            packed[4 * d],
            packed[4 * d + 1],
            packed[4 * d + 2],
            packed[4 * d + 3],
        ]);
        for g in 0..4 {
            for h in 0..2 {
                out[8 * g + 4 * h + d] = ((word >> (4 * (2 * g + h))) & 0x0f) as u8;
            }
        }
    }
}

/// Re-packs a block of 32 signed bytes into the kernel layout: byte `g` of word `j` is value `8g + j`, so
/// shifting each 32-bit lane yields values in natural order, eight at a time.
pub fn pack_q8(std: &[i8]) -> [i8; 32] {
    let mut out = [0i8; 32];
    for j in 0..8 {
        for g in 0..4 {
            out[4 * j + g] = std[8 * g + j];
        }
    }
    out
}

/// Inverse of [`pack_q8`].
pub fn unpack_q8(packed: &[i8], out: &mut [i8; 32]) {
    for j in 0..8 {
        for g in 0..4 {
            out[8 * g + j] = packed[4 * j + g];
        }
    }
}

/// Dot product of one 8-bit row (per block of 32: scale `d`) with `x`.
pub fn dot_q8(d: &[f32], qs: &[i8], x: &[f32]) -> f32 {
    let nb = d.len().min(qs.len() / 32).min(x.len() / 32);
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA; `nb` bounds every access.
        return unsafe { avx2::dot_q8(&d[..nb], &qs[..nb * 32], &x[..nb * 32]) };
    }
    let mut total = 0f32;
    let mut q = [0i8; 32];
    let mut w = [0f32; 32];
    for b in 0..nb {
        unpack_q8(&qs[b * 32..(b + 1) * 32], &mut q);
        for (o, q) in w.iter_mut().zip(q) {
            *o = f32::from(q);
        }
        total += d[b] * dot_portable(&w, &x[b * 32..(b + 1) * 32]);
    }
    total
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
                dot_row_tokens(&w[r * n_in..(r + 1) * n_in], x, n_tok, row_out);
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

    /// SAFETY: caller guarantees AVX2 and FMA, `qs.len() == 16·nb`, `x.len() == 32·nb` for `nb = d.len()`,
    /// and `m`, `xsum` at least `nb` long. `qs` is in the [`super::pack_q4`] layout.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_q4(d: &[f32], m: &[f32], qs: &[u8], x: &[f32], xsum: &[f32]) -> f32 {
        let mask = _mm256_set1_epi32(0x0f);
        let shifts = [
            _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4),
            _mm256_setr_epi32(8, 8, 8, 8, 12, 12, 12, 12),
            _mm256_setr_epi32(16, 16, 16, 16, 20, 20, 20, 20),
            _mm256_setr_epi32(24, 24, 24, 24, 28, 28, 28, 28),
        ];
        let mut acc = _mm256_setzero_ps();
        let mut offs = 0f32;
        let (pq, px) = (qs.as_ptr(), x.as_ptr());
        for b in 0..d.len() {
            // SAFETY: block b covers qs[16b..16b+16] and x[32b..32b+32], in bounds per the contract.
            unsafe {
                let raw =
                    _mm256_broadcastsi128_si256(_mm_loadu_si128(pq.add(16 * b) as *const __m128i));
                let xb = px.add(32 * b);
                let w = |g: usize| {
                    _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(raw, shifts[g]), mask))
                };
                let mut s = _mm256_mul_ps(w(0), _mm256_loadu_ps(xb));
                s = _mm256_fmadd_ps(w(1), _mm256_loadu_ps(xb.add(8)), s);
                s = _mm256_fmadd_ps(w(2), _mm256_loadu_ps(xb.add(16)), s);
                s = _mm256_fmadd_ps(w(3), _mm256_loadu_ps(xb.add(24)), s);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d[b]), s, acc);
            }
            offs += m[b] * xsum[b];
        }
        hsum(acc) + offs
    }

    /// SAFETY: caller guarantees AVX2 and FMA, `qs.len() == x.len() == 32·d.len()`; `qs` is in the
    /// [`super::pack_q8`] layout.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_q8(d: &[f32], qs: &[i8], x: &[f32]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let (pq, px) = (qs.as_ptr(), x.as_ptr());
        for (b, &db) in d.iter().enumerate() {
            // SAFETY: block b covers qs[32b..32b+32] and x[32b..32b+32], in bounds per the contract.
            unsafe {
                let raw = _mm256_loadu_si256(pq.add(32 * b) as *const __m256i);
                let w0 = _mm256_cvtepi32_ps(_mm256_srai_epi32::<24>(_mm256_slli_epi32::<24>(raw)));
                let w1 = _mm256_cvtepi32_ps(_mm256_srai_epi32::<24>(_mm256_slli_epi32::<16>(raw)));
                let w2 = _mm256_cvtepi32_ps(_mm256_srai_epi32::<24>(_mm256_slli_epi32::<8>(raw)));
                let w3 = _mm256_cvtepi32_ps(_mm256_srai_epi32::<24>(raw));
                let xb = px.add(32 * b);
                let mut s = _mm256_mul_ps(w0, _mm256_loadu_ps(xb));
                s = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xb.add(8)), s);
                s = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xb.add(16)), s);
                s = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xb.add(24)), s);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(db), s, acc);
            }
        }
        hsum(acc)
    }

    /// SAFETY: caller guarantees AVX2 and FMA are available. Loads stay within the shortest slice.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot2x4(w: [&[f32]; 2], x: [&[f32]; 4]) -> [[f32; 4]; 2] {
        let n = x
            .iter()
            .chain(w.iter())
            .fold(usize::MAX, |n, s| n.min(s.len()));
        let pw = w.map(|s| s.as_ptr());
        let px = x.map(|s| s.as_ptr());
        let mut a = [[_mm256_setzero_ps(); 4]; 2];
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n for every slice.
            unsafe {
                let w0 = _mm256_loadu_ps(pw[0].add(i));
                let w1 = _mm256_loadu_ps(pw[1].add(i));
                for k in 0..4 {
                    let xv = _mm256_loadu_ps(px[k].add(i));
                    a[0][k] = _mm256_fmadd_ps(w0, xv, a[0][k]);
                    a[1][k] = _mm256_fmadd_ps(w1, xv, a[1][k]);
                }
            }
            i += 8;
        }
        let mut out = [[0f32; 4]; 2];
        for r in 0..2 {
            for k in 0..4 {
                out[r][k] = hsum(a[r][k]);
                for j in i..n {
                    out[r][k] += w[r][j] * x[k][j];
                }
            }
        }
        out
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
    fn rows2_matches_dot() {
        for (n, n_tok) in [(64, 9), (37, 4), (8, 1)] {
            let (w0, w1, x) = (vals(n, 1), vals(n, 2), vals(n * n_tok, 3));
            let (mut o0, mut o1) = (vec![0f32; n_tok], vec![0f32; n_tok]);
            dot_rows2_tokens([&w0, &w1], &x, n_tok, [&mut o0, &mut o1]);
            for t in 0..n_tok {
                assert!((o0[t] - dot(&w0, &x[t * n..(t + 1) * n])).abs() < 1e-4);
                assert!((o1[t] - dot(&w1, &x[t * n..(t + 1) * n])).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn packed_layouts_round_trip() {
        let std: Vec<u8> = (0..16u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
        let mut q = [0u8; 32];
        unpack_q4(&pack_q4(&std), &mut q);
        for j in 0..16 {
            assert_eq!(q[j], std[j] & 0x0f);
            assert_eq!(q[j + 16], std[j] >> 4);
        }
        let s8: Vec<i8> = (0..32).map(|i| (i * 9 - 128) as i8).collect();
        let mut back = [0i8; 32];
        unpack_q8(&pack_q8(&s8), &mut back);
        assert_eq!(back.to_vec(), s8);
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
