//! Measurements for `baton-cuda-bench`: ceilings (copy bandwidth, cuBLAS throughput) and the decode-attention
//! kernel alone, timed with CUDA events after warm-up (median of repetitions).

use cudarc::driver::sys::CUevent_flags;

use super::blas::Ty;
use super::buffer::DevBuf;
use super::device::GpuDevice;
use super::kernels::{launch, Arg};
use super::model::{decode_attention_raw, DecodeArgs};
use super::CudaResult;

/// Median milliseconds per call of `f` over `reps` timed batches of `iters` calls (after two warm-up calls).
pub fn time_ms(
    dev: &GpuDevice,
    reps: usize,
    iters: usize,
    mut f: impl FnMut(usize) -> CudaResult<()>,
) -> CudaResult<f64> {
    let s = &dev.stream;
    let start = dev.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    let end = dev.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    f(0)?;
    f(1)?;
    let mut times = Vec::with_capacity(reps);
    let mut k = 2;
    for _ in 0..reps.max(1) {
        start.record(s)?;
        for _ in 0..iters.max(1) {
            f(k)?;
            k += 1;
        }
        end.record(s)?;
        end.synchronize()?;
        times.push(start.elapsed_ms(&end)? as f64 / iters.max(1) as f64);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Device-to-device copy bandwidth of a plain 16-byte copy kernel, in GB/s counting bytes read plus written.
pub fn copy_bandwidth(dev: &GpuDevice, bytes: usize) -> CudaResult<f64> {
    let n = bytes / 16;
    let src = DevBuf::<u8>::zeros(&dev.stream, n * 16)?;
    let dst = DevBuf::<u8>::zeros(&dev.stream, n * 16)?;
    let blocks = (dev.sm_count * 8) as u32;
    let ms = time_ms(dev, 7, 10, |k| {
        let (a, b) = if k % 2 == 0 {
            (&src, &dst)
        } else {
            (&dst, &src)
        };
        launch(
            &dev.stream,
            &dev.k.copy_u4,
            (blocks, 1, 1),
            512,
            &[Arg::Ptr(a.ptr()), Arg::Ptr(b.ptr()), Arg::U64(n as u64)],
        )
    })?;
    Ok(2.0 * (n * 16) as f64 / (ms * 1e-3) / 1e9)
}

/// cuBLAS bf16 GEMM throughput (f32 compute) for `y[n, m] = x[n, k] · w[m, k]^T`, in TFLOP/s.
pub fn gemm_tflops(dev: &GpuDevice, n: usize, m: usize, k: usize) -> CudaResult<f64> {
    let x = DevBuf::<u16>::zeros(&dev.stream, n * k)?;
    let w = DevBuf::<u16>::zeros(&dev.stream, m * k)?;
    let y = DevBuf::<u16>::zeros(&dev.stream, n * m)?;
    for (i, b) in [&x, &w].into_iter().enumerate() {
        super::kernels::launch_1d(
            &dev.stream,
            &dev.k.fill_random_bf16,
            b.len(),
            &[
                Arg::Ptr(b.ptr()),
                Arg::U64(b.len() as u64),
                Arg::U64(i as u64 + 7),
                Arg::F32(0.05),
            ],
        )?;
    }
    let ms = time_ms(dev, 5, 10, |_| {
        dev.blas
            .linear(x.ptr(), w.ptr(), y.ptr(), Ty::Bf16, n, m, k, 0.0)
    })?;
    Ok(2.0 * (n * m * k) as f64 / (ms * 1e-3) / 1e12)
}

/// One decode-attention measurement.
#[derive(Debug, Clone, Copy)]
pub struct AttentionTiming {
    pub ms: f64,
    /// K and V bytes the step must read.
    pub kv_bytes: usize,
    pub splits: usize,
}

/// Times paged decode attention alone (kernel + split combine) for `batch` sequences of `ctx` tokens, blocks
/// of 16 scattered over the pool; several pool copies are cycled so the KV does not sit in L2.
pub fn decode_attention(
    dev: &GpuDevice,
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
    batch: usize,
    ctx: usize,
) -> CudaResult<AttentionTiming> {
    let bs = 16;
    let blocks_per_seq = ctx.div_ceil(bs);
    let kv_dim = n_kv * head_dim;
    let kv_bytes = 2 * batch * ctx * kv_dim * 2;
    let copies = (512usize << 20).div_ceil(kv_bytes).clamp(1, 16);
    let per_copy = batch * blocks_per_seq;
    let num_blocks = copies * per_copy;
    let s = &dev.stream;
    let pool_elems = num_blocks * bs * kv_dim;
    let k = DevBuf::<u16>::zeros(s, pool_elems)?;
    let v = DevBuf::<u16>::zeros(s, pool_elems)?;
    let q = DevBuf::<u16>::zeros(s, batch * n_heads * head_dim)?;
    for (i, b) in [&k, &v, &q].into_iter().enumerate() {
        super::kernels::launch_1d(
            s,
            &dev.k.fill_random_bf16,
            b.len(),
            &[
                Arg::Ptr(b.ptr()),
                Arg::U64(b.len() as u64),
                Arg::U64(i as u64 + 1),
                Arg::F32(1.0),
            ],
        )?;
    }
    // Scatter each copy's blocks with a multiplicative permutation (odd stride, coprime with a power of two
    // pool only when the pool is one; fall back to identity otherwise).
    let mut tables = vec![0i32; copies * batch * blocks_per_seq];
    let stride = if per_copy > 1 { 7919 % per_copy } else { 0 };
    let coprime = gcd(stride, per_copy) == 1;
    for c in 0..copies {
        for i in 0..per_copy {
            let j = if coprime { (i * stride) % per_copy } else { i };
            tables[c * per_copy + i] = (c * per_copy + j) as i32;
        }
    }
    let tables = DevBuf::from_host(s, &tables)?;
    let q_rows = DevBuf::from_host(s, &(0..batch as i32).collect::<Vec<_>>())?;
    let ctx_lens = DevBuf::from_host(s, &vec![ctx as i32; batch])?;
    let sms = dev.sm_count;
    let splits = (4 * sms)
        .div_ceil(n_kv * batch)
        .clamp(1, 64)
        .min(ctx.div_ceil(32));
    let part_acc = DevBuf::<f32>::zeros(s, batch * splits * n_heads * head_dim)?;
    let part_ml = DevBuf::<f32>::zeros(s, batch * splits * n_heads * 2)?;
    let out = DevBuf::<u16>::zeros(s, batch * n_heads * head_dim)?;
    let ms = time_ms(dev, 7, 10, |it| {
        let c = it % copies;
        decode_attention_raw(
            dev,
            &DecodeArgs {
                n_heads,
                n_kv,
                head_dim,
                block_size: bs,
                bt_stride: blocks_per_seq,
                rows: batch,
                splits,
                q: q.ptr(),
                kc: k.ptr(),
                vc: v.ptr(),
                q_rows: q_rows.ptr(),
                tables: tables.at(c * per_copy),
                ctx_lens: ctx_lens.ptr(),
                part_acc: part_acc.ptr(),
                part_ml: part_ml.ptr(),
                out: out.ptr(),
                scale: 1.0 / (head_dim as f32).sqrt(),
            },
        )
    })?;
    dev.synchronize()?;
    Ok(AttentionTiming {
        ms,
        kv_bytes,
        splits,
    })
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// GPU-to-GPU KV hand-off on one host: the `kv_import` kernel on `dst` pulling `tokens` positions of a
/// `cfg`-shaped sequence out of a pool on `src` over the peer link, next to the link's own ceiling (a
/// `cuMemcpyPeer` of the same byte count). Returns (kernel GB/s, link GB/s, bytes moved).
pub fn kv_handoff(
    src: &GpuDevice,
    dst: &GpuDevice,
    cfg: &crate::model::ModelConfig,
    tokens: usize,
) -> CudaResult<(f64, f64, usize)> {
    use super::kv::GpuKvPool;
    let bs = 16;
    let nblocks = tokens.div_ceil(bs);
    // Several sequences' worth of blocks so repeated copies do not just hit L2.
    let pool_blocks = nblocks * 4;
    let sp = GpuKvPool::new(src, cfg, bs, pool_blocks)?;
    sp.fill_random(src, 3)?;
    let dp = GpuKvPool::new(dst, cfg, bs, pool_blocks)?;
    // Both directions, so cuMemcpyPeer takes the direct NVLink/PCIe path instead of staging through the host.
    super::ipc::enable_peer_access(&dst.ctx, &src.ctx)?;
    super::ipc::enable_peer_access(&src.ctx, &dst.ctx)?;
    let bytes = GpuKvPool::bytes_per_block(cfg, bs) / bs * tokens;
    let ids = |k: usize| -> Vec<u32> {
        (0..nblocks)
            .map(|b| ((k % 4) * nblocks + b) as u32)
            .collect()
    };
    dst.ctx.bind_to_thread()?;
    let ms = time_ms(dst, 5, 5, |k| {
        dp.copy_in(dst, sp.raw_parts(), bs, &ids(k), &ids(k + 1), 0, tokens)
    })?;
    // Plain cuMemAlloc memory: peer access covers it (stream-ordered pool memory would need its own pool
    // access grant, and cuMemcpyPeer would silently stage through the host).
    let a = DevBuf::<u8>::zeros_shareable(&src.ctx, &src.stream, bytes)?;
    let b = DevBuf::<u8>::zeros_shareable(&dst.ctx, &dst.stream, bytes)?;
    src.synchronize()?;
    dst.ctx.bind_to_thread()?;
    let link_ms = time_ms(dst, 5, 5, |_| {
        // SAFETY: both buffers hold `bytes` bytes and outlive the timed copies (time_ms synchronizes).
        unsafe {
            cudarc::driver::sys::cuMemcpyPeerAsync(
                b.ptr(),
                dst.ctx.cu_ctx(),
                a.ptr(),
                src.ctx.cu_ctx(),
                bytes,
                dst.stream.cu_stream(),
            )
        }
        .result()?;
        Ok(())
    })?;
    let gbps = |ms: f64| bytes as f64 / (ms * 1e-3) / 1e9;
    Ok((gbps(ms), gbps(link_ms), bytes))
}

/// Tokens (and log-probabilities) `sample_token` picks from `logits` (one row, repeated) for each uniform draw
/// in `draws`, with the given temperature / top-k / top-p; plus the kernel's time for one launch of `rows_per_launch` rows.
pub fn sample_draws(
    dev: &GpuDevice,
    logits: &[f32],
    (temperature, top_k, top_p): (f32, usize, f32),
    draws: &[f32],
    rows_per_launch: usize,
) -> CudaResult<(Vec<u32>, Vec<f32>, f64)> {
    let s = &dev.stream;
    let v = logits.len();
    let rows = rows_per_launch.max(1);
    let mut all = Vec::with_capacity(rows * v);
    for _ in 0..rows {
        all.extend_from_slice(logits);
    }
    let l = DevBuf::from_host(s, &all)?;
    let t = DevBuf::from_host(s, &vec![temperature; rows])?;
    let k = DevBuf::from_host(s, &vec![top_k as i32; rows])?;
    let p = DevBuf::from_host(s, &vec![top_p; rows])?;
    let u = DevBuf::<f32>::zeros(s, rows)?;
    let tok = DevBuf::<i32>::zeros(s, rows)?;
    let lp = DevBuf::<f32>::zeros(s, rows)?;
    let run = |n: usize| {
        launch(
            s,
            &dev.k.sample_token,
            (n as u32, 1, 1),
            1024,
            &[
                Arg::Ptr(l.ptr()),
                Arg::I32(v as i32),
                Arg::Ptr(t.ptr()),
                Arg::Ptr(k.ptr()),
                Arg::Ptr(p.ptr()),
                Arg::Ptr(u.ptr()),
                Arg::Ptr(tok.ptr()),
                Arg::Ptr(lp.ptr()),
            ],
        )
    };
    let (mut tokens, mut lps) = (Vec::new(), Vec::new());
    for batch in draws.chunks(rows) {
        u.upload(s, 0, batch)?;
        run(batch.len())?;
        let mut tb = vec![0i32; batch.len()];
        let mut lb = vec![0f32; batch.len()];
        tok.download(s, 0, &mut tb)?;
        lp.download(s, 0, &mut lb)?;
        tokens.extend(tb.into_iter().map(|x| x as u32));
        lps.extend(lb);
    }
    let ms = time_ms(dev, 5, 5, |_| run(rows))?;
    Ok((tokens, lps, ms))
}
