// Attention over the paged KV cache.
//
// Decode (one new token per sequence): `attn_decode_<HD>_<G>` is split-K ("flash-decoding"): grid
// (kv heads, sequences, splits); each CTA reads one KV head's keys/values for one slice of the context once and
// serves the G query heads that share that KV head (GQA). Its 4 warps take chunks of 8-16 tokens in turn and do
// the online-softmax update once per chunk.
// Each CTA writes an unnormalized partial (max, sum, acc[HD]) per head; `attn_combine` merges the splits.
//
// Prefill (several new tokens of one sequence): `gather_kv` copies the sequence's K/V out of the pages
// (so chunked prefill and prefix-cache hits just work), cuBLAS computes S = QK^T and O = PV on tensor cores, and
// `causal_softmax` turns S into P between the two GEMMs.

#define DECODE_WARPS 4

template <int HD, int G>
__device__ __forceinline__ void attn_decode_impl(const bf16_t* __restrict__ q, const bf16_t* __restrict__ kc,
                                                 const bf16_t* __restrict__ vc, const int* __restrict__ q_rows,
                                                 const int* __restrict__ block_tables,
                                                 const int* __restrict__ ctx_lens, float* __restrict__ part_acc,
                                                 float* __restrict__ part_ml, int n_kv, int block_size,
                                                 int bt_stride, float scale) {
    // A half-warp (16 lanes) owns one token at a time, each lane EPL consecutive dims (16-byte loads at HD 128):
    // a warp covers 2 tokens per iteration and IT iterations per chunk, with every load of a chunk issued before
    // any use. Scores need a 4-step reduction inside the half-warp; probabilities never leave the lanes.
    constexpr int EPL = HD / 16;
    constexpr int IT = (G * EPL > 32) ? 4 : 8;
    constexpr int CH = 2 * IT;
    const int g = blockIdx.x, b = blockIdx.y, z = blockIdx.z, splits = gridDim.z;
    const int n_heads = n_kv * G;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int grp = lane >> 4, sub = lane & 15;
    const int ctx = ctx_lens[b];
    int part = (ctx + splits - 1) / splits;
    if (part < 32) part = 32;
    const int start = z * part;
    const int end = min(ctx, start + part);

    __shared__ float sm_m[DECODE_WARPS][G];
    __shared__ float sm_l[DECODE_WARPS][G];
    __shared__ float sm_acc[DECODE_WARPS][G][HD];

    if (start >= end) {
        if (threadIdx.x < G) {
            const u64 pi = ((u64)b * n_heads + g * G + threadIdx.x) * splits + z;
            part_ml[2 * pi] = NEG_INF;
            part_ml[2 * pi + 1] = 0.f;
        }
        return;
    }

    const bf16_t* qb = q + (u64)q_rows[b] * n_heads * HD + (u64)g * G * HD + sub * EPL;
    float qr[G][EPL];
#pragma unroll
    for (int h = 0; h < G; ++h) {
        load_bf16<EPL>(qb + h * HD, qr[h]);
#pragma unroll
        for (int e = 0; e < EPL; ++e) qr[h][e] *= scale;
    }
    float m[G], l[G], acc[G][EPL];
#pragma unroll
    for (int h = 0; h < G; ++h) {
        m[h] = NEG_INF;
        l[h] = 0.f;
#pragma unroll
        for (int e = 0; e < EPL; ++e) acc[h][e] = 0.f;
    }
    const int* bt = block_tables + (u64)b * bt_stride;

    for (int c0 = start + w * CH; c0 < end; c0 += DECODE_WARPS * CH) {
        // Lane j < CH looks up the block of token c0 + j; the others get it by shuffle.
        const int my_blk = (lane < CH && c0 + lane < end) ? bt[(c0 + lane) / block_size] : 0;
        u64 off[IT];
        bool ok[IT];
#pragma unroll
        for (int i = 0; i < IT; ++i) {
            const int t = c0 + 2 * i + grp;
            const int blk = __shfl_sync(FULL_MASK, my_blk, 2 * i + grp);
            ok[i] = t < end;
            off[i] = kv_index(blk, g, t % block_size, n_kv, block_size, HD) + sub * EPL;
        }
        float kv[IT][EPL];
#pragma unroll
        for (int i = 0; i < IT; ++i) {
            if (ok[i]) {
                load_bf16<EPL>(kc + off[i], kv[i]);
            } else {
#pragma unroll
                for (int e = 0; e < EPL; ++e) kv[i][e] = 0.f;
            }
        }
        float s[IT][G];
#pragma unroll
        for (int i = 0; i < IT; ++i) {
#pragma unroll
            for (int h = 0; h < G; ++h) {
                float d = 0.f;
#pragma unroll
                for (int e = 0; e < EPL; ++e) d += qr[h][e] * kv[i][e];
#pragma unroll
                for (int o = 8; o > 0; o >>= 1) d += __shfl_xor_sync(FULL_MASK, d, o);
                s[i][h] = ok[i] ? d : NEG_INF;
            }
        }
#pragma unroll
        for (int i = 0; i < IT; ++i) {
            if (ok[i]) {
                load_bf16<EPL>(vc + off[i], kv[i]);
            } else {
#pragma unroll
                for (int e = 0; e < EPL; ++e) kv[i][e] = 0.f;
            }
        }
#pragma unroll
        for (int h = 0; h < G; ++h) {
            float cm = s[0][h];
#pragma unroll
            for (int i = 1; i < IT; ++i) cm = fmaxf(cm, s[i][h]);
            cm = fmaxf(cm, __shfl_xor_sync(FULL_MASK, cm, 16));
            const float nm = fmaxf(m[h], cm);
            const float alpha = __expf(m[h] - nm);
            m[h] = nm;
            l[h] *= alpha;
#pragma unroll
            for (int e = 0; e < EPL; ++e) acc[h][e] *= alpha;
#pragma unroll
            for (int i = 0; i < IT; ++i) {
                const float p = __expf(s[i][h] - nm);
                l[h] += p;
#pragma unroll
                for (int e = 0; e < EPL; ++e) acc[h][e] += p * kv[i][e];
            }
        }
    }

    // Merge the two half-warps (same running max: it was reduced across them).
#pragma unroll
    for (int h = 0; h < G; ++h) {
        l[h] += __shfl_xor_sync(FULL_MASK, l[h], 16);
#pragma unroll
        for (int e = 0; e < EPL; ++e) acc[h][e] += __shfl_xor_sync(FULL_MASK, acc[h][e], 16);
        if (lane == 0) {
            sm_m[w][h] = m[h];
            sm_l[w][h] = l[h];
        }
        if (grp == 0) {
#pragma unroll
            for (int e = 0; e < EPL; ++e) sm_acc[w][h][sub * EPL + e] = acc[h][e];
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < G * HD; i += blockDim.x) {
        const int h = i / HD, d = i % HD;
        float mx = NEG_INF;
#pragma unroll
        for (int ww = 0; ww < DECODE_WARPS; ++ww) mx = fmaxf(mx, sm_m[ww][h]);
        float L = 0.f, A = 0.f;
#pragma unroll
        for (int ww = 0; ww < DECODE_WARPS; ++ww) {
            const float f = sm_m[ww][h] == NEG_INF ? 0.f : __expf(sm_m[ww][h] - mx);
            L += sm_l[ww][h] * f;
            A += sm_acc[ww][h][d] * f;
        }
        const u64 pi = ((u64)b * n_heads + g * G + h) * splits + z;
        part_acc[pi * HD + d] = A;
        if (d == 0) {
            part_ml[2 * pi] = mx;
            part_ml[2 * pi + 1] = L;
        }
    }
}

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
