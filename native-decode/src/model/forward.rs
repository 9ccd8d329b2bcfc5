//! The forward pass: all tokens of a step (prefill chunks and decode tokens of many sequences) go through each
//! linear layer as one matrix; attention reads each sequence's paged KV.

use rayon::prelude::*;

use crate::cpu_ops::{axpy, dot};
use crate::kv::store::{BlockId, KvStore};
use crate::model::matrix::matmul_multi;
use crate::model::Model;

/// One sequence's share of a step.
#[derive(Debug, Clone, Copy)]
pub struct SeqInput<'a> {
    /// New tokens, at positions `start_pos..start_pos + tokens.len()`.
    pub tokens: &'a [u32],
    pub start_pos: usize,
    /// Blocks covering at least `start_pos + tokens.len()` positions.
    pub block_table: &'a [BlockId],
    /// Whether to compute logits for the last new token.
    pub want_logits: bool,
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(w) {
        *o = w * (v * inv);
    }
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

impl Model {
    /// Runs one step. Writes K/V of the new tokens into `kv` and returns logits for every sequence with
    /// `want_logits` (in input order; an empty vector for the others).
    ///
    /// Callers guarantee token ids < vocab, positions < context length and block tables long enough.
    pub fn forward(&self, kv: &mut KvStore, seqs: &[SeqInput<'_>]) -> Vec<Vec<f32>> {
        let cfg = &self.cfg;
        let w = &self.weights;
        let (h, qd, kvd, hd) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.head_dim);
        let group = cfg.n_heads / cfg.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();

        // Flatten the batch: token t belongs to sequence tok_seq[t] at position tok_pos[t].
        let mut tok_seq = Vec::new();
        let mut tok_pos = Vec::new();
        let mut x = Vec::new();
        for (s, seq) in seqs.iter().enumerate() {
            for (i, &tok) in seq.tokens.iter().enumerate() {
                tok_seq.push(s);
                tok_pos.push(seq.start_pos + i);
                let at = x.len();
                x.resize(at + h, 0.0);
                w.embed.row_into(tok as usize, &mut x[at..]);
            }
        }
        let n = tok_seq.len();
        if n == 0 {
            return vec![Vec::new(); seqs.len()];
        }
        let slots: Vec<usize> = (0..n)
            .map(|t| kv.slot(seqs[tok_seq[t]].block_table, tok_pos[t]))
            .collect();

        let mut hbuf = vec![0f32; n * h];
        let mut q = vec![0f32; n * qd];
        let mut k = vec![0f32; n * kvd];
        let mut v = vec![0f32; n * kvd];
        let mut att = vec![0f32; n * qd];
        let mut proj = vec![0f32; n * h];
        let mut gate = vec![0f32; n * cfg.ffn];
        let mut up = vec![0f32; n * cfg.ffn];

        for (l, lw) in w.layers.iter().enumerate() {
            for (xr, hr) in x.chunks_exact(h).zip(hbuf.chunks_exact_mut(h)) {
                rms_norm(xr, &lw.attn_norm, cfg.rms_eps, hr);
            }
            matmul_multi(
                &[&lw.wq, &lw.wk, &lw.wv],
                &hbuf,
                n,
                &mut [&mut q, &mut k, &mut v],
            );
            for t in 0..n {
                self.rope.apply(&mut q[t * qd..(t + 1) * qd], tok_pos[t]);
                self.rope.apply(&mut k[t * kvd..(t + 1) * kvd], tok_pos[t]);
                kv.write(
                    l,
                    slots[t],
                    &k[t * kvd..(t + 1) * kvd],
                    &v[t * kvd..(t + 1) * kvd],
                );
            }
            let (kc, vc) = kv.layer(l);
            let kv_ref = &*kv;
            att.par_chunks_mut(hd).enumerate().for_each(|(idx, out)| {
                let (t, head) = (idx / cfg.n_heads, idx % cfg.n_heads);
                let seq = &seqs[tok_seq[t]];
                let off = (head / group) * hd;
                let qh = &q[t * qd + head * hd..t * qd + (head + 1) * hd];
                let ctx = tok_pos[t] + 1;
                let mut scores: Vec<f32> = (0..ctx)
                    .map(|j| {
                        let s = kv_ref.slot(seq.block_table, j) * kvd + off;
                        dot(qh, &kc[s..s + hd]) * scale
                    })
                    .collect();
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                out.fill(0.0);
                for (j, s) in scores.iter().enumerate() {
                    let base = kv_ref.slot(seq.block_table, j) * kvd + off;
                    axpy(out, s / sum, &vc[base..base + hd]);
                }
            });
            lw.wo.matmul(&att, n, &mut proj);
            for (xv, p) in x.iter_mut().zip(&proj) {
                *xv += p;
            }
            for (xr, hr) in x.chunks_exact(h).zip(hbuf.chunks_exact_mut(h)) {
                rms_norm(xr, &lw.ffn_norm, cfg.rms_eps, hr);
            }
            matmul_multi(&[&lw.w_gate, &lw.w_up], &hbuf, n, &mut [&mut gate, &mut up]);
            for (g, u) in gate.iter_mut().zip(&up) {
                *g = silu(*g) * u;
            }
            lw.w_down.matmul(&gate, n, &mut proj);
            for (xv, p) in x.iter_mut().zip(&proj) {
                *xv += p;
            }
        }

        // Logits only for the last token of the sequences that want them.
        let mut last = 0;
        let mut rows = Vec::new();
        let mut which = Vec::new();
        for (s, seq) in seqs.iter().enumerate() {
            last += seq.tokens.len();
            if seq.want_logits && !seq.tokens.is_empty() {
                let mut r = vec![0f32; h];
                rms_norm(
                    &x[(last - 1) * h..last * h],
                    &w.output_norm,
                    cfg.rms_eps,
                    &mut r,
                );
                rows.extend_from_slice(&r);
                which.push(s);
            }
        }
        let mut out = vec![Vec::new(); seqs.len()];
        if which.is_empty() {
            return out;
        }
        let mut logits = vec![0f32; which.len() * cfg.vocab];
        w.lm_head().matmul(&rows, which.len(), &mut logits);
        for (i, s) in which.into_iter().enumerate() {
            out[s] = logits[i * cfg.vocab..(i + 1) * cfg.vocab].to_vec();
        }
        out
    }
}
