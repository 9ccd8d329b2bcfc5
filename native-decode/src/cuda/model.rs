//! [`CudaModel`]: the Llama forward pass on the GPU.
//!
//! A step's tokens (prefill chunks and decode tokens of many sequences) go through each projection as one cuBLAS
//! GEMM (bf16 in, f32 accumulate). Single-token sequences use the paged split-K decode kernel; multi-token
//! sequences use gather + cuBLAS attention over the paged cache. Decode-only steps replay a CUDA graph captured
//! per batch-size bucket (inputs padded to the bucket; padding rows write no KV and attend to nothing).

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;

use crate::model::{ModelConfig, RopeStyle, SeqInput};
use crate::sampling::Pick;

use super::blas::{Gemm, Ty};
use super::buffer::DevBuf;
use super::device::GpuDevice;
use super::kernels::{decode_smem, launch, launch_1d, launch_smem, Arg, DECODE_THREADS};
use super::kv::GpuKvPool;
use super::weights::{GpuLayer, GpuWeights};
use super::{CudaError, CudaResult};

/// Sizes fixed at construction (buffers and graphs are allocated for them).
#[derive(Debug, Clone)]
pub struct CudaModelOptions {
    pub block_size: usize,
    pub num_blocks: usize,
    /// Most tokens in one step (prefill chunk + decode tokens).
    pub max_tokens: usize,
    /// Most sequences in one step; decode graphs are captured for buckets up to this.
    pub max_batch: usize,
    /// Longest sequence; 0 = the model's context length.
    pub max_context: usize,
    /// Scratch for prefill attention scores (f32 S + bf16 P); long prompts are processed in row slices of it.
    pub attn_workspace_bytes: usize,
    pub cuda_graphs: bool,
}

impl Default for CudaModelOptions {
    fn default() -> Self {
        Self {
            block_size: 16,
            num_blocks: 1024,
            max_tokens: 2048,
            max_batch: 256,
            max_context: 0,
            attn_workspace_bytes: 512 << 20,
            cuda_graphs: true,
        }
    }
}

/// The greedy choice for one sequence and its log-probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GreedyToken {
    pub token: u32,
    pub logprob: f32,
}

const BUCKETS: [usize; 16] = [
    1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256,
];
const MAX_SPLITS: usize = 64;

struct Buffers {
    x: DevBuf<f32>,
    hn: DevBuf<u16>,
    qkv: DevBuf<f32>,
    q: DevBuf<u16>,
    attn: DevBuf<u16>,
    gu: DevBuf<u16>,
    act: DevBuf<u16>,
    tokens: DevBuf<i32>,
    pos: DevBuf<i32>,
    slot: DevBuf<i32>,
    q_rows: DevBuf<i32>,
    ctx_lens: DevBuf<i32>,
    tables: DevBuf<i32>,
    logit_rows: DevBuf<i32>,
    head_in: DevBuf<u16>,
    logits: DevBuf<f32>,
    out_tok: DevBuf<i32>,
    out_lp: DevBuf<f32>,
    /// Per logit row: temperature, top-k, top-p and the uniform draw for `sample_token`.
    pick_t: DevBuf<f32>,
    pick_k: DevBuf<i32>,
    pick_p: DevBuf<f32>,
    pick_u: DevBuf<f32>,
    part_acc: DevBuf<f32>,
    part_ml: DevBuf<f32>,
    kg: DevBuf<u16>,
    vg: DevBuf<u16>,
    s: DevBuf<f32>,
    p: DevBuf<u16>,
    inv_freq: DevBuf<f32>,
}

/// A multi-token sequence of the step (prefill path).
#[derive(Debug, Clone, Copy)]
struct Prefill {
    row0: usize,
    len: usize,
    start_pos: usize,
    table_row: usize,
}

/// A step flattened to the arrays the kernels read.
#[derive(Debug, Default)]
struct Plan {
    tokens: Vec<i32>,
    pos: Vec<i32>,
    slot: Vec<i32>,
    /// Decode rows (single-token sequences): token row, context length, table row = index.
    q_rows: Vec<i32>,
    ctx_lens: Vec<i32>,
    tables: Vec<i32>,
    prefills: Vec<Prefill>,
    logit_rows: Vec<i32>,
    logit_seq: Vec<usize>,
}

/// The model on one GPU, with its KV pool and step buffers.
pub struct CudaModel {
    pub cfg: ModelConfig,
    pub opts: CudaModelOptions,
    pub dev: Arc<GpuDevice>,
    pub weights: GpuWeights,
    pub kv: GpuKvPool,
    b: Buffers,
    bt_stride: usize,
    graphs: HashMap<usize, CudaGraph>,
}

impl std::fmt::Debug for CudaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaModel")
            .field("cfg", &self.cfg)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl CudaModel {
    pub fn new(
        dev: Arc<GpuDevice>,
        cfg: ModelConfig,
        weights: GpuWeights,
        mut opts: CudaModelOptions,
    ) -> CudaResult<Self> {
        cfg.validate()?;
        let group = cfg.n_heads / cfg.n_kv_heads;
        dev.k.attn_decode(cfg.head_dim, group)?;
        if !cfg.head_dim.is_multiple_of(8) {
            return Err(CudaError::Unsupported(
                "head_dim not a multiple of 8".into(),
            ));
        }
        if opts.max_context == 0 {
            opts.max_context = cfg.context_length;
        }
        opts.max_batch = opts.max_batch.clamp(1, *BUCKETS.last().unwrap_or(&256));
        opts.max_tokens = opts.max_tokens.max(opts.max_batch);
        let s = &dev.stream;
        let (t, r, h) = (opts.max_tokens, opts.max_batch, cfg.hidden);
        let (qd, kvd, f) = (cfg.q_dim(), cfg.kv_dim(), cfg.ffn);
        let bt_stride = opts.max_context.div_ceil(opts.block_size);
        let kv = GpuKvPool::new(&dev, &cfg, opts.block_size, opts.num_blocks)?;
        let splits_rows = (1..=r)
            .map(|nd| nd * decode_splits(&cfg, dev.sm_count, opts.max_context, nd))
            .max()
            .unwrap_or(1);
        // S (f32) + P (bf16) per element; at least one full row for every head at the longest context.
        let ws = (opts.attn_workspace_bytes / 6).max(opts.max_context * cfg.n_heads);
        let half = cfg.head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f32 / cfg.head_dim as f32))
            .collect();
        let b = Buffers {
            x: DevBuf::zeros(s, t * h)?,
            hn: DevBuf::zeros(s, t * h)?,
            qkv: DevBuf::zeros(s, t * (qd + 2 * kvd))?,
            q: DevBuf::zeros(s, t * qd)?,
            attn: DevBuf::zeros(s, t * qd)?,
            gu: DevBuf::zeros(s, t * 2 * f)?,
            act: DevBuf::zeros(s, t * f)?,
            tokens: DevBuf::zeros(s, t)?,
            pos: DevBuf::zeros(s, t)?,
            slot: DevBuf::zeros(s, t)?,
            q_rows: DevBuf::zeros(s, r)?,
            ctx_lens: DevBuf::zeros(s, r)?,
            tables: DevBuf::zeros(s, r * bt_stride)?,
            logit_rows: DevBuf::zeros(s, r)?,
            head_in: DevBuf::zeros(s, r * h)?,
            logits: DevBuf::zeros(s, r * cfg.vocab)?,
            out_tok: DevBuf::zeros(s, r)?,
            out_lp: DevBuf::zeros(s, r)?,
            pick_t: DevBuf::zeros(s, r)?,
            pick_k: DevBuf::zeros(s, r)?,
            pick_p: DevBuf::zeros(s, r)?,
            pick_u: DevBuf::zeros(s, r)?,
            part_acc: DevBuf::zeros(s, splits_rows * cfg.n_heads * cfg.head_dim)?,
            part_ml: DevBuf::zeros(s, splits_rows * cfg.n_heads * 2)?,
            kg: DevBuf::zeros(s, opts.max_context * kvd)?,
            vg: DevBuf::zeros(s, opts.max_context * kvd)?,
            s: DevBuf::zeros(s, ws)?,
            p: DevBuf::zeros(s, ws)?,
            inv_freq: DevBuf::from_host(s, &inv_freq)?,
        };
        dev.synchronize()?;
        Ok(Self {
            cfg,
            opts,
            dev,
            weights,
            kv,
            b,
            bt_stride,
            graphs: HashMap::new(),
        })
    }

    /// Runs one step and returns logits for every sequence with `want_logits` (an empty vector for the others),
    /// like [`crate::model::Model::forward`]. K/V of the new tokens go into [`CudaModel::kv`].
    pub fn forward(&mut self, seqs: &[SeqInput<'_>]) -> CudaResult<Vec<Vec<f32>>> {
        let plan = self.plan(seqs)?;
        self.run(&plan, false)?;
        let v = self.cfg.vocab;
        let mut all = vec![0f32; plan.logit_rows.len() * v];
        self.b.logits.download(&self.dev.stream, 0, &mut all)?;
        let mut out = vec![Vec::new(); seqs.len()];
        for (i, &s) in plan.logit_seq.iter().enumerate() {
            out[s] = all[i * v..(i + 1) * v].to_vec();
        }
        Ok(out)
    }

    /// Runs one step and returns the greedy token (with its log-probability) of every sequence with
    /// `want_logits`, computed on the GPU: only a few bytes per sequence come back.
    pub fn forward_greedy(
        &mut self,
        seqs: &[SeqInput<'_>],
    ) -> CudaResult<Vec<Option<GreedyToken>>> {
        self.forward_pick(seqs, &[])
    }

    /// Like [`CudaModel::forward_greedy`], with each sequence's token chosen by its [`Pick`] (greedy or sampled
    /// with temperature / top-k / top-p) on the GPU; `picks[i]` belongs to `seqs[i]` (missing = greedy).
    pub fn forward_pick(
        &mut self,
        seqs: &[SeqInput<'_>],
        picks: &[Pick],
    ) -> CudaResult<Vec<Option<GreedyToken>>> {
        let plan = self.plan(seqs)?;
        self.run(&plan, true)?;
        let n = plan.logit_rows.len();
        let rows: Vec<Pick> = plan
            .logit_seq
            .iter()
            .map(|&s| picks.get(s).copied().unwrap_or(Pick::GREEDY))
            .collect();
        if !rows.iter().all(Pick::is_greedy) {
            // The step already picked greedily (inside the decode graph); sampled rows need this pass too.
            let s = &self.dev.stream;
            let b = &self.b;
            let t: Vec<f32> = rows.iter().map(|p| p.temperature).collect();
            let k: Vec<i32> = rows
                .iter()
                .map(|p| p.top_k.min(i32::MAX as usize) as i32)
                .collect();
            let tp: Vec<f32> = rows.iter().map(|p| p.top_p).collect();
            let u: Vec<f32> = rows.iter().map(|p| p.u as f32).collect();
            b.pick_t.upload(s, 0, &t)?;
            b.pick_k.upload(s, 0, &k)?;
            b.pick_p.upload(s, 0, &tp)?;
            b.pick_u.upload(s, 0, &u)?;
            launch(
                s,
                &self.dev.k.sample_token,
                (n as u32, 1, 1),
                1024,
                &[
                    Arg::Ptr(b.logits.ptr()),
                    Arg::I32(self.cfg.vocab as i32),
                    Arg::Ptr(b.pick_t.ptr()),
                    Arg::Ptr(b.pick_k.ptr()),
                    Arg::Ptr(b.pick_p.ptr()),
                    Arg::Ptr(b.pick_u.ptr()),
                    Arg::Ptr(b.out_tok.ptr()),
                    Arg::Ptr(b.out_lp.ptr()),
                ],
            )?;
        }
        let mut tok = vec![0i32; n];
        let mut lp = vec![0f32; n];
        self.b.out_tok.download(&self.dev.stream, 0, &mut tok)?;
        self.b.out_lp.download(&self.dev.stream, 0, &mut lp)?;
        let mut out = vec![None; seqs.len()];
        for (i, &s) in plan.logit_seq.iter().enumerate() {
            out[s] = Some(GreedyToken {
                token: tok[i] as u32,
                logprob: lp[i],
            });
        }
        Ok(out)
    }

    /// Waits for the GPU and surfaces any asynchronous kernel error.
    pub fn synchronize(&self) -> CudaResult<()> {
        self.dev.synchronize()
    }

    fn plan(&self, seqs: &[SeqInput<'_>]) -> CudaResult<Plan> {
        let bs = self.opts.block_size;
        let mut p = Plan::default();
        let mut prefill_tables: Vec<&[u32]> = Vec::new();
        let mut decode_tables: Vec<&[u32]> = Vec::new();
        let n_seqs = seqs.iter().filter(|s| !s.tokens.is_empty()).count();
        if n_seqs > self.opts.max_batch {
            return Err(CudaError::InvalidStep(format!(
                "{n_seqs} sequences in one step (max_batch {})",
                self.opts.max_batch
            )));
        }
        for (si, seq) in seqs.iter().enumerate() {
            let len = seq.tokens.len();
            if len == 0 {
                continue;
            }
            let end = seq.start_pos + len;
            if end > self.opts.max_context {
                return Err(CudaError::InvalidStep(format!(
                    "sequence reaches position {end} (max_context {})",
                    self.opts.max_context
                )));
            }
            let need = end.div_ceil(bs);
            let table = seq.block_table.get(..need).ok_or_else(|| {
                CudaError::InvalidStep(format!("block table covers fewer than {end} positions"))
            })?;
            if let Some(b) = table.iter().find(|&&b| b as usize >= self.kv.num_blocks) {
                return Err(CudaError::InvalidStep(format!(
                    "block id {b} outside the pool"
                )));
            }
            let row0 = p.tokens.len();
            for (i, &tok) in seq.tokens.iter().enumerate() {
                if tok as usize >= self.cfg.vocab {
                    return Err(CudaError::InvalidStep(format!("token id {tok} >= vocab")));
                }
                let pos = seq.start_pos + i;
                p.tokens.push(tok as i32);
                p.pos.push(pos as i32);
                p.slot
                    .push((table[pos / bs] as usize * bs + pos % bs) as i32);
            }
            if len == 1 {
                p.q_rows.push(row0 as i32);
                p.ctx_lens.push(end as i32);
                decode_tables.push(table);
            } else {
                p.prefills.push(Prefill {
                    row0,
                    len,
                    start_pos: seq.start_pos,
                    table_row: 0,
                });
                prefill_tables.push(table);
            }
            if seq.want_logits {
                p.logit_rows.push((row0 + len - 1) as i32);
                p.logit_seq.push(si);
            }
        }
        if p.tokens.len() > self.opts.max_tokens {
            return Err(CudaError::InvalidStep(format!(
                "{} tokens in one step (max_tokens {})",
                p.tokens.len(),
                self.opts.max_tokens
            )));
        }
        let nd = decode_tables.len();
        for (i, pf) in p.prefills.iter_mut().enumerate() {
            pf.table_row = nd + i;
        }
        for t in decode_tables.iter().chain(&prefill_tables) {
            let start = p.tables.len();
            p.tables.extend(t.iter().map(|&b| b as i32));
            p.tables.resize(start + self.bt_stride, 0);
        }
        Ok(p)
    }

    fn run(&mut self, plan: &Plan, greedy: bool) -> CudaResult<()> {
        let nd = plan.q_rows.len();
        let decode_only = plan.prefills.is_empty() && nd == plan.tokens.len() && nd > 0;
        let s = self.dev.stream.clone();
        let b = &self.b;
        if decode_only {
            let bucket = *BUCKETS
                .iter()
                .find(|&&x| x >= nd)
                .unwrap_or(&self.opts.max_batch);
            let bucket = bucket.min(self.opts.max_batch).max(nd);
            let pad = |v: &[i32], fill: &dyn Fn(usize) -> i32| -> Vec<i32> {
                (0..bucket)
                    .map(|i| v.get(i).copied().unwrap_or_else(|| fill(i)))
                    .collect()
            };
            b.tokens.upload(&s, 0, &pad(&plan.tokens, &|_| 0))?;
            b.pos.upload(&s, 0, &pad(&plan.pos, &|_| 0))?;
            b.slot.upload(&s, 0, &pad(&plan.slot, &|_| -1))?;
            b.q_rows.upload(&s, 0, &pad(&plan.q_rows, &|i| i as i32))?;
            b.ctx_lens.upload(&s, 0, &pad(&plan.ctx_lens, &|_| 0))?;
            let mut tables = plan.tables.clone();
            tables.resize(bucket * self.bt_stride, 0);
            b.tables.upload(&s, 0, &tables)?;
            // Logit rows: the real ones, then the padding rows themselves.
            b.logit_rows
                .upload(&s, 0, &pad(&plan.logit_rows, &|i| i as i32))?;
            // The graph always computes every row's logits and greedy token; only the wanted ones are read.
            if !self.opts.cuda_graphs {
                return self.enqueue(bucket, bucket, &[], bucket, true);
            }
            if !self.graphs.contains_key(&bucket) {
                // Eager once first (loads cuBLAS kernels lazily, outside capture); rewriting the same K/V is
                // harmless.
                self.enqueue(bucket, bucket, &[], bucket, true)?;
                s.synchronize()?;
                s.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
                let res = self.enqueue(bucket, bucket, &[], bucket, true);
                let graph = s.end_capture(CUgraphInstantiate_flags(0));
                res?;
                let graph =
                    graph?.ok_or_else(|| CudaError::InvalidStep("empty CUDA graph".into()))?;
                graph.upload()?;
                tracing::debug!(bucket, "captured decode graph");
                self.graphs.insert(bucket, graph);
            }
            if let Some(g) = self.graphs.get(&bucket) {
                g.launch()?;
            }
            return Ok(());
        }
        b.tokens.upload(&s, 0, &plan.tokens)?;
        b.pos.upload(&s, 0, &plan.pos)?;
        b.slot.upload(&s, 0, &plan.slot)?;
        b.q_rows.upload(&s, 0, &plan.q_rows)?;
        b.ctx_lens.upload(&s, 0, &plan.ctx_lens)?;
        b.tables.upload(&s, 0, &plan.tables)?;
        b.logit_rows.upload(&s, 0, &plan.logit_rows)?;
        self.enqueue(
            plan.tokens.len(),
            nd,
            &plan.prefills,
            plan.logit_rows.len(),
            greedy,
        )
    }

    /// Enqueues one step on the stream (no host synchronization: this is what graphs capture): `n` token rows,
    /// the first `nd` of them decode rows, then `prefills`; the last `n_logits` steps run only for the rows in
    /// `logit_rows`.
    fn enqueue(
        &self,
        n: usize,
        nd: usize,
        prefills: &[Prefill],
        n_logits: usize,
        greedy: bool,
    ) -> CudaResult<()> {
        self.embed(n)?;
        for (l, lw) in self.weights.layers.iter().enumerate() {
            self.attention_block(l, lw, n, nd, prefills)?;
            self.ffn_block(lw, n)?;
        }
        if n_logits == 0 {
            return Ok(());
        }
        self.lm_head(n_logits, greedy)
    }

    /// The `n` tokens' embeddings into the residual stream `x`.
    fn embed(&self, n: usize) -> CudaResult<()> {
        let (dev, b, w) = (&*self.dev, &self.b, &self.weights);
        launch(
            &dev.stream,
            &dev.k.embed,
            (n as u32, 1, 1),
            256,
            &[
                Arg::Ptr(b.tokens.ptr()),
                Arg::Ptr(w.embed.ptr()),
                Arg::Ptr(b.x.ptr()),
                Arg::I32(self.cfg.hidden as i32),
            ],
        )
    }

    /// RMS norm of `rows` rows of `x` (those listed at `row_index`, or the first `rows` when it is 0) with
    /// `weight`, written to `out`.
    fn rmsnorm(&self, rows: usize, row_index: u64, weight: u64, out: u64) -> CudaResult<()> {
        let (dev, b) = (&*self.dev, &self.b);
        let h = self.cfg.hidden;
        let norm_threads = if h >= 4096 { 1024 } else { 256 };
        launch(
            &dev.stream,
            &dev.k.rmsnorm,
            (rows as u32, 1, 1),
            norm_threads,
            &[
                Arg::Ptr(b.x.ptr()),
                Arg::Ptr(row_index),
                Arg::Ptr(weight),
                Arg::Ptr(out),
                Arg::I32(h as i32),
                Arg::F32(self.cfg.rms_eps),
            ],
        )
    }

    /// Layer `l`'s attention half: norm, the fused QKV projection, RoPE (which writes K and V into the paged
    /// cache), decode and prefill attention, and the output projection added to `x`.
    fn attention_block(
        &self,
        l: usize,
        lw: &GpuLayer,
        n: usize,
        nd: usize,
        prefills: &[Prefill],
    ) -> CudaResult<()> {
        let cfg = &self.cfg;
        let (dev, b) = (&*self.dev, &self.b);
        let s = &dev.stream;
        let (h, qd, kvd) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim());
        let hd = cfg.head_dim;
        let i = |v: usize| Arg::I32(v as i32);
        let scale = 1.0 / (hd as f32).sqrt();
        let half_split = i(usize::from(cfg.rope_style == RopeStyle::HalfSplit));
        // Blocks per token for RoPE: one pair per thread at most (a decode step has few tokens).
        let rope_blocks = ((cfg.n_heads + cfg.n_kv_heads) * hd / 2).div_ceil(256) as u32;
        let (kc, vc) = (self.kv.k_layer(l), self.kv.v_layer(l));
        self.rmsnorm(n, 0, lw.attn_norm.ptr(), b.hn.ptr())?;
        dev.blas.linear(
            b.hn.ptr(),
            lw.wqkv.ptr(),
            b.qkv.ptr(),
            Ty::F32,
            n,
            qd + 2 * kvd,
            h,
            0.0,
        )?;
        launch(
            s,
            &dev.k.rope_kv,
            (n as u32, rope_blocks, 1),
            256,
            &[
                Arg::Ptr(b.qkv.ptr()),
                Arg::Ptr(b.pos.ptr()),
                Arg::Ptr(b.slot.ptr()),
                Arg::Ptr(b.inv_freq.ptr()),
                Arg::Ptr(b.q.ptr()),
                Arg::Ptr(kc),
                Arg::Ptr(vc),
                i(cfg.n_heads),
                i(cfg.n_kv_heads),
                i(hd),
                i(self.opts.block_size),
                half_split,
            ],
        )?;
        if nd > 0 {
            self.decode_attention(nd, kc, vc, b.q.ptr(), b.attn.ptr(), b.tables.ptr(), scale)?;
        }
        for pf in prefills {
            self.prefill_attention(pf, kc, vc, scale)?;
        }
        dev.blas
            .linear(b.attn.ptr(), lw.wo.ptr(), b.x.ptr(), Ty::F32, n, h, qd, 1.0)
    }

    /// A layer's feed-forward half: norm, the fused gate/up projection, SwiGLU, and the down projection added
    /// to `x`.
    fn ffn_block(&self, lw: &GpuLayer, n: usize) -> CudaResult<()> {
        let (dev, b) = (&*self.dev, &self.b);
        let (h, f) = (self.cfg.hidden, self.cfg.ffn);
        self.rmsnorm(n, 0, lw.ffn_norm.ptr(), b.hn.ptr())?;
        dev.blas.linear(
            b.hn.ptr(),
            lw.w_gate_up.ptr(),
            b.gu.ptr(),
            Ty::Bf16,
            n,
            2 * f,
            h,
            0.0,
        )?;
        launch_1d(
            &dev.stream,
            &dev.k.swiglu,
            n * f,
            &[
                Arg::Ptr(b.gu.ptr()),
                Arg::Ptr(b.act.ptr()),
                Arg::I32(f as i32),
                Arg::U64((n * f) as u64),
            ],
        )?;
        dev.blas.linear(
            b.act.ptr(),
            lw.w_down.ptr(),
            b.x.ptr(),
            Ty::F32,
            n,
            h,
            f,
            1.0,
        )
    }

    /// The final norm of the `n_logits` rows in `logit_rows`, the LM head into `logits`, and for a greedy step
    /// each row's argmax token and its log-probability.
    fn lm_head(&self, n_logits: usize, greedy: bool) -> CudaResult<()> {
        let cfg = &self.cfg;
        let (dev, b, w) = (&*self.dev, &self.b, &self.weights);
        self.rmsnorm(
            n_logits,
            b.logit_rows.ptr(),
            w.output_norm.ptr(),
            b.head_in.ptr(),
        )?;
        dev.blas.linear(
            b.head_in.ptr(),
            w.lm_head_ptr(),
            b.logits.ptr(),
            Ty::F32,
            n_logits,
            cfg.vocab,
            cfg.hidden,
            0.0,
        )?;
        if greedy {
            launch(
                &dev.stream,
                &dev.k.argmax_logprob,
                (n_logits as u32, 1, 1),
                1024,
                &[
                    Arg::Ptr(b.logits.ptr()),
                    Arg::I32(cfg.vocab as i32),
                    Arg::Ptr(b.out_tok.ptr()),
                    Arg::Ptr(b.out_lp.ptr()),
                ],
            )?;
        }
        Ok(())
    }

    /// Split-K paged decode attention for `nd` rows described by `q_rows`, `ctx_lens` and `tables`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn decode_attention(
        &self,
        nd: usize,
        kc: u64,
        vc: u64,
        q: u64,
        out: u64,
        tables: u64,
        scale: f32,
    ) -> CudaResult<()> {
        let cfg = &self.cfg;
        let (dev, b) = (&*self.dev, &self.b);
        let splits = decode_splits(cfg, dev.sm_count, self.opts.max_context, nd);
        decode_attention_raw(
            dev,
            &DecodeArgs {
                n_heads: cfg.n_heads,
                n_kv: cfg.n_kv_heads,
                head_dim: cfg.head_dim,
                block_size: self.opts.block_size,
                bt_stride: self.bt_stride,
                rows: nd,
                splits,
                q,
                kc,
                vc,
                q_rows: b.q_rows.ptr(),
                tables,
                ctx_lens: b.ctx_lens.ptr(),
                part_acc: b.part_acc.ptr(),
                part_ml: b.part_ml.ptr(),
                out,
                scale,
            },
        )
    }

    fn prefill_attention(&self, pf: &Prefill, kc: u64, vc: u64, scale: f32) -> CudaResult<()> {
        let cfg = &self.cfg;
        let (dev, b) = (&*self.dev, &self.b);
        let s = &dev.stream;
        let (hd, nkv, nh, qd) = (cfg.head_dim, cfg.n_kv_heads, cfg.n_heads, cfg.q_dim());
        let g = nh / nkv;
        let ctx = pf.start_pos + pf.len;
        let i = |v: usize| Arg::I32(v as i32);
        launch_1d(
            s,
            &dev.k.gather_kv,
            nkv * ctx * hd / 8,
            &[
                Arg::Ptr(kc),
                Arg::Ptr(vc),
                Arg::Ptr(b.tables.at(pf.table_row * self.bt_stride)),
                i(ctx),
                i(nkv),
                i(self.opts.block_size),
                i(hd),
                Arg::Ptr(b.kg.ptr()),
                Arg::Ptr(b.vg.ptr()),
            ],
        )?;
        let rows_per = (b.s.len() / (ctx * nh)).max(1);
        let mut r0 = 0;
        while r0 < pf.len {
            let rows = rows_per.min(pf.len - r0);
            let cs = pf.start_pos + r0 + rows;
            let q0 = (pf.row0 + r0) * qd;
            for r in 0..g {
                dev.blas.gemm(&Gemm {
                    trans_a: true,
                    trans_b: false,
                    m: cs,
                    n: rows,
                    k: hd,
                    alpha: scale,
                    a: b.kg.ptr(),
                    lda: hd,
                    stride_a: ctx * hd,
                    a_ty: Ty::Bf16,
                    b: b.q.at(q0 + r * hd),
                    ldb: qd,
                    stride_b: g * hd,
                    b_ty: Ty::Bf16,
                    beta: 0.0,
                    c: b.s.at(r * rows * cs),
                    ldc: cs,
                    stride_c: g * rows * cs,
                    c_ty: Ty::F32,
                    batch: nkv,
                })?;
            }
            launch(
                s,
                &dev.k.causal_softmax,
                (rows as u32, nh as u32, 1),
                256,
                &[
                    Arg::Ptr(b.s.ptr()),
                    Arg::Ptr(b.p.ptr()),
                    i(cs),
                    i(pf.start_pos + r0),
                ],
            )?;
            for r in 0..g {
                dev.blas.gemm(&Gemm {
                    trans_a: false,
                    trans_b: false,
                    m: hd,
                    n: rows,
                    k: cs,
                    alpha: 1.0,
                    a: b.vg.ptr(),
                    lda: hd,
                    stride_a: ctx * hd,
                    a_ty: Ty::Bf16,
                    b: b.p.at(r * rows * cs),
                    ldb: cs,
                    stride_b: g * rows * cs,
                    b_ty: Ty::Bf16,
                    beta: 0.0,
                    c: b.attn.at(q0 + r * hd),
                    ldc: qd,
                    stride_c: g * hd,
                    c_ty: Ty::Bf16,
                    batch: nkv,
                })?;
            }
            r0 += rows;
        }
        Ok(())
    }
}

/// Splits of the context per (KV head, sequence) so that about four CTAs per SM are in flight.
pub(crate) fn decode_splits(
    cfg: &ModelConfig,
    sms: usize,
    max_context: usize,
    rows: usize,
) -> usize {
    let ctas = (cfg.n_kv_heads * rows).max(1);
    (4 * sms)
        .div_ceil(ctas)
        .clamp(1, MAX_SPLITS)
        .min(max_context.div_ceil(32).max(1))
}

/// Everything the decode-attention kernels need, as raw addresses (also used by the attention benchmark).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DecodeArgs {
    pub n_heads: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub bt_stride: usize,
    pub rows: usize,
    pub splits: usize,
    pub q: u64,
    pub kc: u64,
    pub vc: u64,
    pub q_rows: u64,
    pub tables: u64,
    pub ctx_lens: u64,
    pub part_acc: u64,
    pub part_ml: u64,
    pub out: u64,
    pub scale: f32,
}

pub(crate) fn decode_attention_raw(dev: &GpuDevice, a: &DecodeArgs) -> CudaResult<()> {
    let s = &dev.stream;
    let i = |v: usize| Arg::I32(v as i32);
    let f = dev.k.attn_decode(a.head_dim, a.n_heads / a.n_kv)?;
    let smem = decode_smem(a.head_dim);
    launch_smem(
        s,
        f,
        (a.n_kv as u32, a.rows as u32, a.splits as u32),
        DECODE_THREADS,
        smem,
        &[
            Arg::Ptr(a.q),
            Arg::Ptr(a.kc),
            Arg::Ptr(a.vc),
            Arg::Ptr(a.q_rows),
            Arg::Ptr(a.tables),
            Arg::Ptr(a.ctx_lens),
            Arg::Ptr(a.part_acc),
            Arg::Ptr(a.part_ml),
            i(a.n_kv),
            i(a.block_size),
            i(a.bt_stride),
            Arg::F32(a.scale),
        ],
    )?;
    launch(
        s,
        &dev.k.attn_combine,
        (a.n_heads as u32, a.rows as u32, 1),
        a.head_dim as u32,
        &[
            Arg::Ptr(a.part_acc),
            Arg::Ptr(a.part_ml),
            Arg::Ptr(a.q_rows),
            Arg::Ptr(a.out),
            i(a.n_heads),
            i(a.splits),
        ],
    )
}
