// Attention over the paged KV cache.
//
// Decode (one new token per sequence): `attn_decode_<HD>_<G>` is split-K ("flash-decoding"): grid
// (kv heads, sequences, splits); each CTA reads one KV head's keys/values for one slice of the context once and
// serves the G query heads that share that KV head (GQA). K/V tiles stream into shared memory through a 3-stage
// cp.async pipeline, and both products run on tensor cores (mma.sync bf16, f32 accumulate): the G query heads
// are the rows of the A operand, so a warp handles 8 tokens of a tile with 8 (QK^T) + HD/8 (PV) mma
// instructions instead of ~G * HD FMAs per lane — few enough instructions that the kernel is bound by HBM
// bandwidth. The probabilities go from the QK^T accumulator straight into the PV A operand (same fragment
// layout), rounded to bf16 as flash-attention does. Each CTA writes an unnormalized partial (max, sum, acc[HD])
// per head; `attn_combine` merges the splits.
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

// d = A(16x16, rows 8-15 zero) * B(16x8) + d, bf16 in, f32 out; only d[0..1] (rows 0-7) are kept.
__device__ __forceinline__ void mma_16816(float* d, u32 a0, u32 a2, u32 b0, u32 b1) {
    float z0 = 0.f, z1 = 0.f;
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(z0), "+f"(z1)
        : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
}

// d = A(16x8, rows 8-15 zero) * B(8x8) + d; only d[0..1] are kept.
__device__ __forceinline__ void mma_1688(float* d, u32 a0, u32 b0) {
    float z0 = 0.f, z1 = 0.f;
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(z0), "+f"(z1)
        : "r"(a0), "r"(0u), "r"(b0));
}

// Four 8x8 bf16 matrices, transposed: the B operands of PV for 8 tokens x 32 dims.
__device__ __forceinline__ void ldsm_x4_trans(u32* r, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// Shared-memory rows are padded by 16 bytes so the 8 rows an mma fragment or ldmatrix touches hit distinct banks.
template <int HD> struct DecodeTile {
    static constexpr int NT = 128 / HD;                   // 8-token groups per warp per tile
    static constexpr int TOKENS = DECODE_WARPS * 8 * NT;  // 32 at HD 128, 64 at HD 64
    static constexpr int ROW = HD + 8;
};

// Queues the copy of tokens [t0, t0 + TOKENS) of KV head g into one pipeline stage.
template <int HD>
__device__ __forceinline__ void decode_issue_tile(bf16_t* sk, bf16_t* sv, const bf16_t* kc, const bf16_t* vc,
                                                  const int* bt, int t0, int end, int g, int n_kv, int block_size) {
    constexpr int CPT = HD / 8, ROW = DecodeTile<HD>::ROW;
    constexpr int LOADS = DecodeTile<HD>::TOKENS * CPT / (DECODE_WARPS * 32);
#pragma unroll
    for (int i = 0; i < LOADS; ++i) {
        const int idx = threadIdx.x + i * DECODE_WARPS * 32;
        const int tok = idx / CPT, c = idx % CPT;
        const int t = t0 + tok;
        const bool ok = t < end;
        const u64 off = ok ? kv_index(bt[t / block_size], g, t % block_size, n_kv, block_size, HD) + c * 8 : 0;
        cp_async16(sk + tok * ROW + c * 8, kc + off, ok ? 16 : 0);
        cp_async16(sv + tok * ROW + c * 8, vc + off, ok ? 16 : 0);
    }
}

template <int HD, int G>
__device__ __forceinline__ void attn_decode_impl(const bf16_t* __restrict__ q, const bf16_t* __restrict__ kc,
                                                 const bf16_t* __restrict__ vc, const int* __restrict__ q_rows,
                                                 const int* __restrict__ block_tables,
                                                 const int* __restrict__ ctx_lens, float* __restrict__ part_acc,
                                                 float* __restrict__ part_ml, int n_kv, int block_size,
                                                 int bt_stride, float scale) {
    constexpr int NT = DecodeTile<HD>::NT, TILE = DecodeTile<HD>::TOKENS, ROW = DecodeTile<HD>::ROW;
    constexpr int KS = HD / 16, DT = HD / 8;
    extern __shared__ __align__(16) unsigned char attn_smem[];
    bf16_t* sk = reinterpret_cast<bf16_t*>(attn_smem);  // [STAGES][TILE][ROW]
    bf16_t* sv = sk + DECODE_STAGES * TILE * ROW;

    const int g = blockIdx.x, b = blockIdx.y, z = blockIdx.z, splits = gridDim.z;
    const int n_heads = n_kv * G;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    // mma fragment coordinates: `row` = query head of the group (rows >= G are padding), `quad` picks columns.
    const int row = lane >> 2, quad = lane & 3;
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
#pragma unroll
    for (int s = 0; s < DECODE_STAGES - 1; ++s) {
        if (s < n_tiles)
            decode_issue_tile<HD>(sk + s * TILE * ROW, sv + s * TILE * ROW, kc, vc, bt, start + s * TILE, end, g,
                                  n_kv, block_size);
        cp_async_commit();
    }

    // A operand of QK^T: q of head `row` (zero for padding rows), dims quad*2.. of each 16-dim step.
    const bf16_t* qb = q + (u64)q_rows[b] * n_heads * HD + (u64)g * G * HD + (u64)row * HD + quad * 2;
    u32 qa[KS][2];
#pragma unroll
    for (int k = 0; k < KS; ++k) {
        qa[k][0] = row < G ? *reinterpret_cast<const u32*>(qb + k * 16) : 0u;
        qa[k][1] = row < G ? *reinterpret_cast<const u32*>(qb + k * 16 + 8) : 0u;
    }
    // Scores in the log2 domain so the softmax uses exp2; m and l are per row, the same on the 4 lanes of a quad.
    const float sc = scale * LOG2E;
    float m = NEG_INF, l = 0.f;
    float o[DT][2];
#pragma unroll
    for (int j = 0; j < DT; ++j) o[j][0] = o[j][1] = 0.f;

    for (int it = 0; it < n_tiles; ++it) {
        cp_async_wait<DECODE_STAGES - 2>();
        // Tile `it` has landed for every thread, and every warp is done with tile it - 1, whose stage is refilled next.
        __syncthreads();
        {
            const int nt = it + DECODE_STAGES - 1;
            if (nt < n_tiles)
                decode_issue_tile<HD>(sk + (nt % DECODE_STAGES) * TILE * ROW, sv + (nt % DECODE_STAGES) * TILE * ROW,
                                      kc, vc, bt, start + nt * TILE, end, g, n_kv, block_size);
            cp_async_commit();
        }
        const bf16_t* ks = sk + (it % DECODE_STAGES) * TILE * ROW;
        const bf16_t* vs = sv + (it % DECODE_STAGES) * TILE * ROW;
#pragma unroll
        for (int n8 = 0; n8 < NT; ++n8) {
            const int tok0 = (w * NT + n8) * 8;
            // S[row][tok0 + quad*2 + {0,1}]; B = K^T: token = lane/4, dims quad*2.. (one 32-bit load each).
            float sacc[2] = {0.f, 0.f};
            const bf16_t* kr = ks + (tok0 + row) * ROW + quad * 2;
#pragma unroll
            for (int k = 0; k < KS; ++k)
                mma_16816(sacc, qa[k][0], qa[k][1], *reinterpret_cast<const u32*>(kr + k * 16),
                          *reinterpret_cast<const u32*>(kr + k * 16 + 8));
            const int ta = start + it * TILE + tok0 + quad * 2;
            const float s0 = ta < end ? sacc[0] * sc : NEG_INF;
            const float s1 = ta + 1 < end ? sacc[1] * sc : NEG_INF;
            float cm = fmaxf(s0, s1);
            cm = fmaxf(cm, __shfl_xor_sync(FULL_MASK, cm, 1));
            cm = fmaxf(cm, __shfl_xor_sync(FULL_MASK, cm, 2));
            const float nm = fmaxf(m, cm);
            // Rescale only when some row's max grew (rare after the first tiles).
            if (__any_sync(FULL_MASK, nm > m)) {
                const float alpha = nm == NEG_INF ? 1.f : exp2f(m - nm);
                l *= alpha;
#pragma unroll
                for (int j = 0; j < DT; ++j) {
                    o[j][0] *= alpha;
                    o[j][1] *= alpha;
                }
            }
            m = nm;
            // Masked tokens add nothing (their V was zero-filled, and -inf - -inf must not become NaN).
            const float p0 = s0 == NEG_INF ? 0.f : exp2f(s0 - m);
            const float p1 = s1 == NEG_INF ? 0.f : exp2f(s1 - m);
            l += p0 + p1;
            const u32 pa = pack_bf16x2(p0, p1);
            // B = V: ldmatrix.trans of rows tok0..tok0+7, 32 dims per instruction.
            const bf16_t* vr = vs + (tok0 + (lane & 7)) * ROW + (lane >> 3) * 8;
#pragma unroll
            for (int d4 = 0; d4 < DT / 4; ++d4) {
                u32 vb[4];
                ldsm_x4_trans(vb, vr + d4 * 32);
#pragma unroll
                for (int j = 0; j < 4; ++j) mma_1688(o[d4 * 4 + j], pa, vb[j]);
            }
        }
    }

    // Sum l over the quad, then merge the warps through shared memory (the pipeline stages are free now; every
    // configuration has room for WARPS * G * (HD + 2) floats).
    cp_async_wait<0>();
    __syncthreads();
    l += __shfl_xor_sync(FULL_MASK, l, 1);
    l += __shfl_xor_sync(FULL_MASK, l, 2);
    float* sm_acc = reinterpret_cast<float*>(attn_smem);  // [WARPS][G][HD]
    float* sm_m = sm_acc + DECODE_WARPS * G * HD;
    float* sm_l = sm_m + DECODE_WARPS * G;
    if (row < G) {
#pragma unroll
        for (int j = 0; j < DT; ++j) {
            sm_acc[(w * G + row) * HD + j * 8 + quad * 2] = o[j][0];
            sm_acc[(w * G + row) * HD + j * 8 + quad * 2 + 1] = o[j][1];
        }
        if (quad == 0) {
            sm_m[w * G + row] = m;
            sm_l[w * G + row] = l;
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

// Dynamic shared memory: DECODE_STAGES * TOKENS * (HD + 8) * 2 (K and V) * 2 bytes (`decode_smem` in kernels.rs).
#define DECODE_KERNEL(HD, G)                                                                                      \
    extern "C" __global__ void __launch_bounds__(DECODE_WARPS * 32) attn_decode_##HD##_##G(                       \
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
