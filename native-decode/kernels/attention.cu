// Attention over the paged KV cache.
//
// Decode (one new token per sequence): `attn_decode_<HD>_<G>` is split-K ("flash-decoding"): grid
// (kv heads, sequences, splits); each CTA reads one KV head's keys/values for one slice of the context once and
// serves the G query heads that share that KV head (GQA). K/V tiles of 8 KiB each stream into shared memory
// through a 3-stage cp.async pipeline, so two tiles are in flight while the warps compute on the third: the
// kernel is bound by HBM bandwidth, not by load latency. Each CTA writes an unnormalized partial
// (max, sum, acc[HD]) per head; `attn_combine` merges the splits.
//
// Prefill (several new tokens of one sequence): `gather_kv` copies the sequence's K/V out of the pages
// (so chunked prefill and prefix-cache hits just work), cuBLAS computes S = QK^T and O = PV on tensor cores, and
// `causal_softmax` turns S into P between the two GEMMs.

#define DECODE_WARPS 4
#define DECODE_STAGES 3
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

__device__ __forceinline__ u32 smem_u32(const void* p) {
    u32 r;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
    return r;
}

// 16-byte global -> shared copy that bypasses registers; `bytes` 0 writes zeros (tokens past the end).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Block ids of the tokens this thread copies for the tile starting at t0 (looked up one tile ahead, so the
// copies never wait on a block-table load).
template <int HD, int TILE>
__device__ __forceinline__ void decode_tile_blocks(const int* bt, int t0, int end, int block_size, int* blk) {
    constexpr int CPT = HD / 8;
    constexpr int LOADS = TILE * CPT / (DECODE_WARPS * 32);
#pragma unroll
    for (int i = 0; i < LOADS; ++i) {
        const int t = t0 + (threadIdx.x + i * DECODE_WARPS * 32) / CPT;
        blk[i] = t < end ? bt[t / block_size] : -1;
    }
}

// Queues the copy of tokens [t0, t0 + TILE) of KV head g into one pipeline stage, `[token][HD]` bf16 each.
template <int HD, int TILE>
__device__ __forceinline__ void decode_issue_tile(bf16_t* sk, bf16_t* sv, const bf16_t* kc, const bf16_t* vc,
                                                  const int* blk, int t0, int g, int n_kv, int block_size) {
    constexpr int CPT = HD / 8;
    constexpr int LOADS = TILE * CPT / (DECODE_WARPS * 32);
#pragma unroll
    for (int i = 0; i < LOADS; ++i) {
        const int idx = threadIdx.x + i * DECODE_WARPS * 32;
        const int tok = idx / CPT, c = idx % CPT;
        const bool ok = blk[i] >= 0;
        const u64 off = ok ? kv_index(blk[i], g, (t0 + tok) % block_size, n_kv, block_size, HD) + c * 8 : 0;
        cp_async16(sk + tok * HD + c * 8, kc + off, ok ? 16 : 0);
        cp_async16(sv + tok * HD + c * 8, vc + off, ok ? 16 : 0);
    }
}

template <int HD, int G>
__device__ __forceinline__ void attn_decode_impl(const bf16_t* __restrict__ q, const bf16_t* __restrict__ kc,
                                                 const bf16_t* __restrict__ vc, const int* __restrict__ q_rows,
                                                 const int* __restrict__ block_tables,
                                                 const int* __restrict__ ctx_lens, float* __restrict__ part_acc,
                                                 float* __restrict__ part_ml, int n_kv, int block_size,
                                                 int bt_stride, float scale) {
    // LPT lanes share one token, each owning DPL dims (whole 16-byte chunks, so a quarter-warp reads 128
    // contiguous bytes of shared memory: no bank conflicts). Wide GQA groups use more lanes per token to keep
    // q and the accumulators (G * DPL floats each) in registers.
    constexpr int LPT = (HD == 128 && G > 2) ? 16 : 8;
    constexpr int DPL = HD / LPT, CPL = DPL / 8, TPP = 32 / LPT;
    constexpr int TILE = 4096 / HD;  // tokens per stage: 8 KiB of K and 8 KiB of V
    constexpr int TPW = TILE / DECODE_WARPS, PASSES = TPW / TPP;
    __shared__ __align__(16) bf16_t sk[DECODE_STAGES][TILE * HD];
    __shared__ __align__(16) bf16_t sv[DECODE_STAGES][TILE * HD];

    constexpr int LOADS = TILE * (HD / 8) / (DECODE_WARPS * 32);
    pdl_wait();
    pdl_launch();
    const int g = blockIdx.x, b = blockIdx.y, z = blockIdx.z, splits = gridDim.z;
    const int n_heads = n_kv * G;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int grp = lane / LPT, sub = lane % LPT;
    const int ctx = ctx_lens[b];
    const int part = ((ctx + splits - 1) / splits + TILE - 1) / TILE * TILE;
    const int start = z * part;
    const int end = min(ctx, start + part);

    if (start >= end) {
        if (threadIdx.x < G) {
            const u64 pi = ((u64)b * n_heads + g * G + threadIdx.x) * splits + z;
            part_ml[2 * pi] = NEG_INF;
            part_ml[2 * pi + 1] = 0.f;
        }
        return;
    }
    const int* bt = block_tables + (u64)b * bt_stride;
    const int n_tiles = (end - start + TILE - 1) / TILE;
    int blk[LOADS];
#pragma unroll
    for (int s = 0; s < DECODE_STAGES - 1; ++s) {
        if (s < n_tiles) {
            decode_tile_blocks<HD, TILE>(bt, start + s * TILE, end, block_size, blk);
            decode_issue_tile<HD, TILE>(sk[s], sv[s], kc, vc, blk, start + s * TILE, g, n_kv, block_size);
        }
        cp_async_commit();
    }
    decode_tile_blocks<HD, TILE>(bt, start + (DECODE_STAGES - 1) * TILE, end, block_size, blk);

    // Scores live in the log2 domain (q pre-scaled by log2 e) so the softmax uses exp2.
    const bf16_t* qb = q + (u64)q_rows[b] * n_heads * HD + (u64)g * G * HD;
    float qr[G][DPL];
#pragma unroll
    for (int h = 0; h < G; ++h) {
#pragma unroll
        for (int j = 0; j < CPL; ++j) load_bf16<8>(qb + h * HD + (sub + j * LPT) * 8, qr[h] + j * 8);
#pragma unroll
        for (int e = 0; e < DPL; ++e) qr[h][e] *= scale * LOG2E;
    }
    float m[G], l[G], acc[G][DPL];
#pragma unroll
    for (int h = 0; h < G; ++h) {
        m[h] = NEG_INF;
        l[h] = 0.f;
#pragma unroll
        for (int e = 0; e < DPL; ++e) acc[h][e] = 0.f;
    }

    for (int it = 0; it < n_tiles; ++it) {
        cp_async_wait<DECODE_STAGES - 2>();
        // Tile `it` has landed for every thread, and every warp is done with tile it - 1, whose stage is refilled next.
        __syncthreads();
        {
            const int nt = it + DECODE_STAGES - 1;
            if (nt < n_tiles) {
                decode_issue_tile<HD, TILE>(sk[nt % DECODE_STAGES], sv[nt % DECODE_STAGES], kc, vc, blk,
                                            start + nt * TILE, g, n_kv, block_size);
                decode_tile_blocks<HD, TILE>(bt, start + (nt + 1) * TILE, end, block_size, blk);
            }
            cp_async_commit();
        }
        const bf16_t* ks = sk[it % DECODE_STAGES];
        const bf16_t* vs = sv[it % DECODE_STAGES];
        const int t0 = start + it * TILE;
        float s[PASSES][G];
#pragma unroll
        for (int p = 0; p < PASSES; ++p) {
            const int tok = w * TPW + p * TPP + grp;
            float kf[DPL];
#pragma unroll
            for (int j = 0; j < CPL; ++j) load_bf16<8>(ks + tok * HD + (sub + j * LPT) * 8, kf + j * 8);
#pragma unroll
            for (int h = 0; h < G; ++h) {
                float d = 0.f;
#pragma unroll
                for (int e = 0; e < DPL; ++e) d += qr[h][e] * kf[e];
#pragma unroll
                for (int o = LPT / 2; o > 0; o >>= 1) d += __shfl_xor_sync(FULL_MASK, d, o);
                s[p][h] = (t0 + tok < end) ? d : NEG_INF;
            }
        }
        // One running-max update per tile; the max is reduced over the whole warp, so the branch is uniform.
#pragma unroll
        for (int h = 0; h < G; ++h) {
            float cm = s[0][h];
#pragma unroll
            for (int p = 1; p < PASSES; ++p) cm = fmaxf(cm, s[p][h]);
#pragma unroll
            for (int o = LPT; o < 32; o <<= 1) cm = fmaxf(cm, __shfl_xor_sync(FULL_MASK, cm, o));
            if (cm > m[h]) {
                const float alpha = exp2f(m[h] - cm);
                m[h] = cm;
                l[h] *= alpha;
#pragma unroll
                for (int e = 0; e < DPL; ++e) acc[h][e] *= alpha;
            }
        }
#pragma unroll
        for (int p = 0; p < PASSES; ++p) {
            const int tok = w * TPW + p * TPP + grp;
            float vf[DPL];
#pragma unroll
            for (int j = 0; j < CPL; ++j) load_bf16<8>(vs + tok * HD + (sub + j * LPT) * 8, vf + j * 8);
#pragma unroll
            for (int h = 0; h < G; ++h) {
                // Masked tokens add nothing (their V was zero-filled, and -inf - -inf must not become NaN).
                const float pr = s[p][h] == NEG_INF ? 0.f : exp2f(s[p][h] - m[h]);
                l[h] += pr;
#pragma unroll
                for (int e = 0; e < DPL; ++e) acc[h][e] += pr * vf[e];
            }
        }
    }

    // The lane groups of a warp share the running max: sum them, then merge the warps through shared memory
    // (the pipeline stages are free now).
    cp_async_wait<0>();
    __syncthreads();
    float* sm_m = reinterpret_cast<float*>(&sk[0][0]);
    float* sm_l = sm_m + DECODE_WARPS * G;
    float* sm_acc = reinterpret_cast<float*>(&sv[0][0]);
#pragma unroll
    for (int h = 0; h < G; ++h) {
#pragma unroll
        for (int o = LPT; o < 32; o <<= 1) {
            l[h] += __shfl_xor_sync(FULL_MASK, l[h], o);
#pragma unroll
            for (int e = 0; e < DPL; ++e) acc[h][e] += __shfl_xor_sync(FULL_MASK, acc[h][e], o);
        }
        if (lane == 0) {
            sm_m[w * G + h] = m[h];
            sm_l[w * G + h] = l[h];
        }
        if (grp == 0) {
#pragma unroll
            for (int j = 0; j < CPL; ++j)
#pragma unroll
                for (int e = 0; e < 8; ++e) sm_acc[(w * G + h) * HD + (sub + j * LPT) * 8 + e] = acc[h][j * 8 + e];
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < G * HD; i += blockDim.x) {
        const int h = i / HD, d = i % HD;
        float mx = NEG_INF;
#pragma unroll
        for (int ww = 0; ww < DECODE_WARPS; ++ww) mx = fmaxf(mx, sm_m[ww * G + h]);
        float L = 0.f, A = 0.f;
#pragma unroll
        for (int ww = 0; ww < DECODE_WARPS; ++ww) {
            const float mw = sm_m[ww * G + h];
            const float f = mw == NEG_INF ? 0.f : exp2f(mw - mx);
            L += sm_l[ww * G + h] * f;
            A += sm_acc[(ww * G + h) * HD + d] * f;
        }
        const u64 pi = ((u64)b * n_heads + g * G + h) * splits + z;
        part_acc[pi * HD + d] = A;
        if (d == 0) {
            // Back to natural-log units for `attn_combine`.
            part_ml[2 * pi] = mx * LN2;
            part_ml[2 * pi + 1] = L;
        }
    }
}

#define DECODE_KERNEL(HD, G)                                                                                      \
    extern "C" __global__ void __launch_bounds__(DECODE_WARPS * 32, G <= 4 ? 4 : 2) attn_decode_##HD##_##G(                     \
        const bf16_t* q, const bf16_t* kc, const bf16_t* vc, const int* q_rows, const int* block_tables,          \
        const int* ctx_lens, float* part_acc, float* part_ml, int n_kv, int block_size, int bt_stride,            \
        float scale) {                                                                                            \
        attn_decode_impl<HD, G>(q, kc, vc, q_rows, block_tables, ctx_lens, part_acc, part_ml, n_kv, block_size,  \
                                bt_stride, scale);                                                                \
    }

DECODE_KERNEL(64, 1)
DECODE_KERNEL(64, 2)
DECODE_KERNEL(64, 3)
DECODE_KERNEL(64, 4)
DECODE_KERNEL(64, 5)
DECODE_KERNEL(64, 6)
DECODE_KERNEL(64, 7)
DECODE_KERNEL(64, 8)
DECODE_KERNEL(128, 1)
DECODE_KERNEL(128, 2)
DECODE_KERNEL(128, 3)
DECODE_KERNEL(128, 4)
DECODE_KERNEL(128, 5)
DECODE_KERNEL(128, 6)
DECODE_KERNEL(128, 7)
DECODE_KERNEL(128, 8)

// Merges the split partials: grid (n_heads, rows), block = head_dim threads. Rows with an empty context get 0.
extern "C" __global__ void attn_combine(const float* __restrict__ part_acc, const float* __restrict__ part_ml,
                                        const int* __restrict__ q_rows, bf16_t* __restrict__ out, int n_heads,
                                        int splits) {
    pdl_wait();
    pdl_launch();
    const int head = blockIdx.x, b = blockIdx.y, hd = blockDim.x, d = threadIdx.x;
    const u64 base = ((u64)b * n_heads + head) * splits;
    float mx = NEG_INF;
    for (int z = 0; z < splits; ++z)
        if (part_ml[2 * (base + z) + 1] > 0.f) mx = fmaxf(mx, part_ml[2 * (base + z)]);
    float L = 0.f, A = 0.f;
    for (int z = 0; z < splits; ++z) {
        const float lz = part_ml[2 * (base + z) + 1];
        if (lz > 0.f) {
            const float f = __expf(part_ml[2 * (base + z)] - mx);
            L += lz * f;
            A += part_acc[(base + z) * hd + d] * f;
        }
    }
    out[(u64)q_rows[b] * n_heads * hd + (u64)head * hd + d] = f2bf(L > 0.f ? A / L : 0.f);
}

// Copies positions [0, ctx) of one sequence out of the pages into contiguous [n_kv][ctx][hd] K and V.
extern "C" __global__ void gather_kv(const bf16_t* __restrict__ kc, const bf16_t* __restrict__ vc,
                                     const int* __restrict__ bt, int ctx, int n_kv, int block_size, int hd,
                                     bf16_t* __restrict__ ko, bf16_t* __restrict__ vo) {
    const int v8 = hd / 8;
    const u64 total = (u64)n_kv * ctx * v8;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (u64)gridDim.x * blockDim.x) {
        const int d8 = (int)(i % v8);
        const u64 r = i / v8;
        const int t = (int)(r % ctx), g = (int)(r / ctx);
        const u64 src = kv_index(bt[t / block_size], g, t % block_size, n_kv, block_size, hd) / 8 + d8;
        reinterpret_cast<uint4*>(ko)[i] = reinterpret_cast<const uint4*>(kc)[src];
        reinterpret_cast<uint4*>(vo)[i] = reinterpret_cast<const uint4*>(vc)[src];
    }
}

// P = softmax(S) per row with the causal mask: row r (absolute position q_pos0 + r) sees keys [0, q_pos0 + r].
// Layout [head][row][ctx]; grid (rows, heads).
extern "C" __global__ void causal_softmax(const float* __restrict__ S, bf16_t* __restrict__ P, int ctx, int q_pos0) {
    __shared__ float sh[32];
    const int r = blockIdx.x, h = blockIdx.y, rows = gridDim.x;
    const u64 off = ((u64)h * rows + r) * ctx;
    const int valid = min(ctx, q_pos0 + r + 1);
    const float* s = S + off;
    bf16_t* p = P + off;
    float mx = NEG_INF;
    for (int j = threadIdx.x; j < valid; j += blockDim.x) mx = fmaxf(mx, s[j]);
    mx = block_max(mx, sh);
    float sum = 0.f;
    for (int j = threadIdx.x; j < valid; j += blockDim.x) sum += expf(s[j] - mx);
    sum = block_sum(sum, sh);
    const float inv = 1.f / sum;
    for (int j = threadIdx.x; j < ctx; j += blockDim.x) p[j] = j < valid ? f2bf(expf(s[j] - mx) * inv) : (bf16_t)0;
}
