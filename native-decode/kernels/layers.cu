// Element-wise and row-wise kernels of a Llama layer, plus weight fill and a copy kernel for the bandwidth ceiling.

__device__ __forceinline__ u64 splitmix64(u64 x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// p[i] = uniform(-scale, scale), a pure function of (seed, i).
extern "C" __global__ void fill_random_bf16(bf16_t* p, u64 n, u64 seed, float scale) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const u64 r = splitmix64(seed ^ (i * 0x2545f4914f6cdd1dull));
        const float u = (float)(r >> 40) * (1.0f / 16777216.0f);
        p[i] = f2bf((2.f * u - 1.f) * scale);
    }
}

extern "C" __global__ void fill_const_bf16(bf16_t* p, u64 n, float v) {
    const bf16_t b = f2bf(v);
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) p[i] = b;
}

// Plain 16-byte copy: the achievable-bandwidth ceiling measured next to our kernels.
extern "C" __global__ void copy_u4(const uint4* __restrict__ src, uint4* __restrict__ dst, u64 n) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) dst[i] = src[i];
}

// x[t, :] = table[tokens[t], :] (grid: one block per token).
extern "C" __global__ void embed(const int* __restrict__ tokens, const bf16_t* __restrict__ table,
                                 float* __restrict__ x, int hidden) {
    const bf16_t* row = table + (u64)tokens[blockIdx.x] * hidden;
    float* o = x + (u64)blockIdx.x * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = bf2f(row[i]);
}

// out[i, :] = w * rmsnorm(x[rows[i] or i, :]) in bf16 (HF order: normalize in f32, round, multiply by weight).
// The residual add is fused into the preceding GEMM (beta = 1 onto the f32 residual stream).
extern "C" __global__ void rmsnorm(const float* __restrict__ x, const int* __restrict__ rows,
                                   const bf16_t* __restrict__ w, bf16_t* __restrict__ out, int hidden, float eps) {
    __shared__ float sh[32];
    const int r = rows ? rows[blockIdx.x] : (int)blockIdx.x;
    const float* xr = x + (u64)r * hidden;
    float ss = 0.f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        const float v = xr[i];
        ss += v * v;
    }
    ss = block_sum(ss, sh);
    const float inv = rsqrtf(ss / (float)hidden + eps);
    bf16_t* o = out + (u64)blockIdx.x * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = f2bf(bf2f(w[i]) * round_bf(xr[i] * inv));
}

// RoPE on q and k of each token (row layout [q | k | v] in f32, straight from the fused QKV GEMM), q written as bf16
// for attention, k and v written into the paged cache at slot[t] (skipped when slot < 0: padding rows).
// Grid (tokens, y): the y blocks of a token share its pairs, so a one-token decode step is not one block's serial
// loop of sincosf and loads.
extern "C" __global__ void rope_kv(const float* __restrict__ qkv, const int* __restrict__ pos,
                                   const int* __restrict__ slot, const float* __restrict__ inv_freq,
                                   bf16_t* __restrict__ q_out, bf16_t* __restrict__ kc, bf16_t* __restrict__ vc,
                                   int n_heads, int n_kv, int hd, int block_size, int half_split) {
    const int t = blockIdx.x;
    const int p = pos[t], s = slot[t];
    const int qd = n_heads * hd, kvd = n_kv * hd, half = hd / 2;
    const float* row = qkv + (u64)t * (qd + 2 * kvd);
    const int blk = s >= 0 ? s / block_size : 0, off = s >= 0 ? s % block_size : 0;
    const int npairs = (n_heads + n_kv) * half;
    const int first = blockIdx.y * blockDim.x + threadIdx.x, stride = gridDim.y * blockDim.x;
    for (int idx = first; idx < npairs; idx += stride) {
        const int head = idx / half, i = idx % half;
        float sn, c;
        sincosf((float)p * inv_freq[i], &sn, &c);
        const int ia = half_split ? i : 2 * i;
        const int ib = half_split ? i + half : 2 * i + 1;
        const float* src = row + head * hd;  // k heads follow the q heads in the row
        const float a = src[ia], b = src[ib];
        const float ra = a * c - b * sn, rb = a * sn + b * c;
        if (head < n_heads) {
            bf16_t* qo = q_out + (u64)t * qd + head * hd;
            qo[ia] = f2bf(ra);
            qo[ib] = f2bf(rb);
        } else if (s >= 0) {
            bf16_t* ko = kc + kv_index(blk, head - n_heads, off, n_kv, block_size, hd);
            ko[ia] = f2bf(ra);
            ko[ib] = f2bf(rb);
        }
    }
    if (s >= 0) {
        for (int idx = first; idx < kvd; idx += stride) {
            const int g = idx / hd, d = idx % hd;
            vc[kv_index(blk, g, off, n_kv, block_size, hd) + d] = f2bf(row[qd + kvd + idx]);
        }
    }
}

// out[t, j] = silu(gate[t, j]) * up[t, j]; gu rows are [gate | up] (the fused gate/up GEMM), all bf16.
extern "C" __global__ void swiglu(const bf16_t* __restrict__ gu, bf16_t* __restrict__ out, int ffn, u64 total) {
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (u64)gridDim.x * blockDim.x) {
        const u64 t = i / ffn, j = i % ffn;
        const float g = bf2f(gu[t * 2 * ffn + j]);
        const float u = bf2f(gu[t * 2 * ffn + ffn + j]);
        out[i] = f2bf(round_bf(g / (1.f + expf(-g))) * u);
    }
}

// Argmax of a logits row (lowest index on ties) and log of the softmax normalizer, sum(exp(l - max)), for the
// whole block; `sh*` hold >= 32 entries.
__device__ __forceinline__ void row_argmax_logz(const float* row, int vocab, float* shv, int* shi, float* sh,
                                                float& best, int& bi, float& log_z) {
    best = NEG_INF;
    bi = 0x7fffffff;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float v = row[i];
        if (v > best) { best = v; bi = i; }
    }
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int round = 0; round < 2; ++round) {
        if (round == 1) {
            // Second round: across the warps' winners.
            if (lane == 0) { shv[wid] = best; shi[wid] = bi; }
            __syncthreads();
            best = lane < nw ? shv[lane] : NEG_INF;
            bi = lane < nw ? shi[lane] : 0x7fffffff;
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(FULL_MASK, best, o);
            const int oi = __shfl_xor_sync(FULL_MASK, bi, o);
            if (ov > best || (ov == best && oi < bi)) { best = ov; bi = oi; }
        }
    }
    float s = 0.f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) s += expf(row[i] - best);
    log_z = logf(block_sum(s, sh));
}

// Greedy token and its log-probability for each logits row (grid: one block of 1024 threads per row).
extern "C" __global__ void argmax_logprob(const float* __restrict__ logits, int vocab, int* __restrict__ tok,
                                          float* __restrict__ lp) {
    __shared__ float shv[32];
    __shared__ int shi[32];
    __shared__ float sh[32];
    float best, log_z;
    int bi;
    row_argmax_logz(logits + (u64)blockIdx.x * vocab, vocab, shv, shi, sh, best, bi, log_z);
    if (threadIdx.x == 0) {
        tok[blockIdx.x] = bi;
        lp[blockIdx.x] = -log_z;
    }
}

// Copies KV positions [from, from + gridDim.x) of one sequence out of another engine's pool (mapped through CUDA
// IPC; it may live on a peer GPU, read over NVLink/PCIe) into ours. Both pools hold, per layer,
// [block][n_kv][block_size][head_dim] bf16; the block sizes may differ, so the copy goes position by position.
// Grid: x = position - from, y = layer * 2 + (0: K, 1: V); threads stride over the 16-byte chunks of a position.
extern "C" __global__ void kv_import(const bf16_t* __restrict__ src_k, const bf16_t* __restrict__ src_v,
                                     bf16_t* __restrict__ dst_k, bf16_t* __restrict__ dst_v,
                                     const int* __restrict__ src_blocks, const int* __restrict__ dst_blocks,
                                     int from, int src_bs, int dst_bs, int n_kv, int head_dim,
                                     u64 src_layer, u64 dst_layer) {
    const int p = from + blockIdx.x;
    const u64 l = blockIdx.y >> 1;
    const bf16_t* src = (blockIdx.y & 1) ? src_v : src_k;
    bf16_t* dst = (blockIdx.y & 1) ? dst_v : dst_k;
    const u64 sb = (u64)src_blocks[p / src_bs], so = (u64)(p % src_bs);
    const u64 db = (u64)dst_blocks[p / dst_bs], dof = (u64)(p % dst_bs);
    const int chunks = head_dim / 8;
    for (int c = threadIdx.x; c < n_kv * chunks; c += blockDim.x) {
        const u64 g = (u64)(c / chunks), d = (u64)(c % chunks) * 8;
        const uint4* s = (const uint4*)(src + l * src_layer + ((sb * n_kv + g) * src_bs + so) * head_dim + d);
        uint4* t = (uint4*)(dst + l * dst_layer + ((db * n_kv + g) * dst_bs + dof) * head_dim + d);
        *t = *s;
    }
}

// Order-preserving map of a float to an unsigned key (larger float, larger key).
__device__ __forceinline__ u32 order_key(float f) {
    const u32 b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Tokens of `row` whose key is >= t: how many, and their mass exp2((l - mx) * c).
__device__ __forceinline__ float count_at_least(const float* row, int vocab, u32 t, float* sh) {
    float n = 0.f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) n += order_key(row[i]) >= t ? 1.f : 0.f;
    return block_sum(n, sh);
}
__device__ __forceinline__ float mass_at_least(const float* row, int vocab, u32 t, float mx, float c, float* sh) {
    float m = 0.f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float l = row[i];
        if (order_key(l) >= t) m += exp2f((l - mx) * c);
    }
    return block_sum(m, sh);
}

// Picks one token per logits row on the device, so only 8 bytes a sequence leave the GPU: greedy when temp[r]
// is 0, else sampled with temperature, top-k (0 = off) and top-p (1 = off) using the uniform draw u[r] of the
// request's seeded generator on the host. The kept set is the CPU sampler's: the top-k logits, then the smallest
// most-likely prefix whose mass reaches top-p (both thresholds found by bisection on the logits' order keys, so
// no sort). The draw walks the kept tokens in index order: the same distribution as the CPU sampler, not
// necessarily the same token for the same u. lp[r] is the token's log-probability under the raw logits.
// Grid: one block of 1024 threads per row.
extern "C" __global__ void sample_token(const float* __restrict__ logits, int vocab, const float* __restrict__ temp,
                                        const int* __restrict__ top_k, const float* __restrict__ top_p,
                                        const float* __restrict__ unif, int* __restrict__ tok, float* __restrict__ lp) {
    __shared__ float sh[32];
    __shared__ float shv[32];
    __shared__ int shi[32];
    __shared__ int win_lo, win_last;
    const float* row = logits + (u64)blockIdx.x * vocab;
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    float best, log_z;
    int bi;
    row_argmax_logz(row, vocab, shv, shi, sh, best, bi, log_z);

    int chosen = bi;
    const float T = temp[blockIdx.x];
    if (T > 1e-5f) {
        const float c = 1.4426950408889634f / T;  // p_i = exp2((l_i - best) * c), up to normalization
        const int k = top_k[blockIdx.x];
        u32 cut = 0;
        if (k > 0 && k < vocab) {
            // The largest key with at least k tokens at or above it: the k-th largest logit.
            u32 lo = 0, hi = order_key(best);
            while (lo < hi) {
                const u32 mid = lo + (hi - lo + 1) / 2;
                if (count_at_least(row, vocab, mid, sh) >= (float)k) lo = mid; else hi = mid - 1;
            }
            cut = lo;
        }
        const float P = top_p[blockIdx.x];
        if (P < 1.f) {
            const float need = P * mass_at_least(row, vocab, cut, best, c, sh);
            u32 lo = cut, hi = order_key(best);
            while (lo < hi) {
                const u32 mid = lo + (hi - lo + 1) / 2;
                if (mass_at_least(row, vocab, mid, best, c, sh) >= need) lo = mid; else hi = mid - 1;
            }
            cut = lo;
        }
        // Each thread owns a contiguous chunk; a block scan of the chunks' kept mass finds the chunk where the
        // draw lands, and that thread walks it.
        const int chunk = (vocab + blockDim.x - 1) / blockDim.x;
        const int beg = min(vocab, (int)threadIdx.x * chunk), fin = min(vocab, beg + chunk);
        float mine = 0.f;
        int last = -1;
        for (int i = beg; i < fin; ++i) {
            const float l = row[i];
            if (order_key(l) >= cut) { mine += exp2f((l - best) * c); last = i; }
        }
        float incl = mine;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const float v = __shfl_up_sync(FULL_MASK, incl, o);
            if (lane >= o) incl += v;
        }
        if (threadIdx.x == 0) { win_lo = 0x7fffffff; win_last = -1; }
        __syncthreads();
        if (lane == 31) shv[wid] = incl;
        __syncthreads();
        float before = 0.f, total = 0.f;
        for (int ww = 0; ww < nw; ++ww) {
            if (ww < wid) before += shv[ww];
            total += shv[ww];
        }
        const float excl = before + incl - mine;
        const float target = unif[blockIdx.x] * total;
        if (mine > 0.f && excl <= target && target < excl + mine) {
            float acc = excl;
            int pickd = last;
            for (int i = beg; i < fin; ++i) {
                const float l = row[i];
                if (order_key(l) >= cut) {
                    acc += exp2f((l - best) * c);
                    if (acc > target) { pickd = i; break; }
                }
            }
            atomicMin(&win_lo, pickd);
        }
        if (last >= 0) atomicMax(&win_last, last);
        __syncthreads();
        // Rounding can leave the draw past the last chunk's end: take the last kept token then.
        chosen = win_lo != 0x7fffffff ? win_lo : win_last;
    }
    if (threadIdx.x == 0) {
        tok[blockIdx.x] = chosen;
        lp[blockIdx.x] = row[chosen] - best - log_z;
    }
}
