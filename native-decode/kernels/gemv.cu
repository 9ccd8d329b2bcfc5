// Projections of small decode batches (n <= 4 rows), where cuBLAS's GEMMs leave bandwidth unused and every
// separate element-wise kernel costs a launch and a round trip of the activations.
//
// y[t][j] = sum_k W[j][k] * xs[t][k] with W bf16 [N][K] row-major (the layout `Blas::linear` takes). The input is
// staged once per CTA in shared memory as bf16, either copied (attention output, SwiGLU output) or RMS-normalized
// from the f32 residual stream with exactly the rounding of `rmsnorm` (so the fused path computes the same
// numbers as the unfused one). Warps then stream two weight rows at a time with 16-byte loads that skip L1,
// GEMV_UNROLL loads per row in flight per lane. Epilogues: store f32, add onto f32 (the residual stream), or
// SwiGLU of the (gate, up) row pair stored as bf16 (the fused gate/up weight holds gate rows then up rows).

#define GEMV_WARPS 8
#define GEMV_UNROLL 4
#define GEMV_STORE 0
#define GEMV_ADD 1
#define GEMV_SWIGLU 2

__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

// Dot product of 8 bf16 weights with 8 bf16 inputs, in f32.
__device__ __forceinline__ float dot8(uint4 a, uint4 b) {
    const u32 wa[4] = {a.x, a.y, a.z, a.w}, wb[4] = {b.x, b.y, b.z, b.w};
    float d = 0.f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        d += __uint_as_float(wa[i] << 16) * __uint_as_float(wb[i] << 16);
        d += __uint_as_float(wa[i] & 0xffff0000u) * __uint_as_float(wb[i] & 0xffff0000u);
    }
    return d;
}

template <int NB>
__device__ __forceinline__ void gemv_impl(const bf16_t* __restrict__ W, int N, int K, const bf16_t* __restrict__ xb,
                                          const float* __restrict__ xf, const int* __restrict__ rows,
                                          const bf16_t* __restrict__ nw, float eps, float* __restrict__ yf,
                                          bf16_t* __restrict__ yb, int mode) {
    extern __shared__ __align__(16) unsigned char gemv_smem[];
    bf16_t* xs = reinterpret_cast<bf16_t*>(gemv_smem);  // [NB][K]
    __shared__ float sh[32];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int chunks = K / 8;
    const int ffn = N / 2;
    const int groups = mode == GEMV_SWIGLU ? ffn : (N + 1) / 2;
    // Weights depend on nothing earlier in the step: pull this warp's first loads into L2 while the previous
    // kernel finishes (programmatic dependent launch) and while the input is staged.
    {
        const int rg = blockIdx.x * GEMV_WARPS + w;
        if (rg < groups) {
            const int r0 = mode == GEMV_SWIGLU ? rg : 2 * rg;
            const int r1 = mode == GEMV_SWIGLU ? rg + ffn : min(2 * rg + 1, N - 1);
#pragma unroll
            for (int i = 0; i < GEMV_UNROLL; ++i) {
                const int c = lane + 32 * i;
                if (c < chunks) {
                    prefetch_l2(W + (u64)r0 * K + c * 8);
                    prefetch_l2(W + (u64)r1 * K + c * 8);
                }
            }
        }
    }
    pdl_wait();
    pdl_launch();
    if (nw) {
        // K is a multiple of 8: 4 floats / 4 bf16 per load, several loads in flight per thread.
        for (int t = 0; t < NB; ++t) {
            const float4* xr = reinterpret_cast<const float4*>(xf + (u64)(rows ? rows[t] : t) * K);
            const uint2* w4 = reinterpret_cast<const uint2*>(nw);
            uint2* o4 = reinterpret_cast<uint2*>(xs + t * K);
            float ss = 0.f;
#pragma unroll 4
            for (int i = threadIdx.x; i < K / 4; i += blockDim.x) {
                const float4 v = xr[i];
                ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
            }
            ss = block_sum(ss, sh);
            const float inv = rsqrtf(ss / (float)K + eps);
#pragma unroll 4
            for (int i = threadIdx.x; i < K / 4; i += blockDim.x) {
                const float4 v = xr[i];
                const uint2 g = w4[i];
                const u32 a = f2bf(__uint_as_float(g.x << 16) * round_bf(v.x * inv));
                const u32 b = f2bf(__uint_as_float(g.x & 0xffff0000u) * round_bf(v.y * inv));
                const u32 c = f2bf(__uint_as_float(g.y << 16) * round_bf(v.z * inv));
                const u32 d = f2bf(__uint_as_float(g.y & 0xffff0000u) * round_bf(v.w * inv));
                o4[i] = make_uint2(a | (b << 16), c | (d << 16));
            }
        }
    } else {
        const uint4* src = reinterpret_cast<const uint4*>(xb);
        uint4* dst = reinterpret_cast<uint4*>(xs);
#pragma unroll 4
        for (int i = threadIdx.x; i < NB * chunks; i += blockDim.x) dst[i] = src[i];
    }
    __syncthreads();

    const uint4* x4 = reinterpret_cast<const uint4*>(xs);
    for (int rg = blockIdx.x * GEMV_WARPS + w; rg < groups; rg += gridDim.x * GEMV_WARPS) {
        // Two rows per warp: (gate j, up j) for SwiGLU, else (2 rg, 2 rg + 1), the last one repeated when N is odd.
        const int r0 = mode == GEMV_SWIGLU ? rg : 2 * rg;
        const int r1 = mode == GEMV_SWIGLU ? rg + ffn : min(2 * rg + 1, N - 1);
        const uint4* w0 = reinterpret_cast<const uint4*>(W + (u64)r0 * K);
        const uint4* w1 = reinterpret_cast<const uint4*>(W + (u64)r1 * K);
        float a0[NB], a1[NB];
#pragma unroll
        for (int t = 0; t < NB; ++t) a0[t] = a1[t] = 0.f;
        int c = lane;
        for (; c + 32 * (GEMV_UNROLL - 1) < chunks; c += 32 * GEMV_UNROLL) {
            uint4 u0[GEMV_UNROLL], u1[GEMV_UNROLL];
#pragma unroll
            for (int i = 0; i < GEMV_UNROLL; ++i) {
                u0[i] = ld_stream(w0 + c + 32 * i);
                u1[i] = ld_stream(w1 + c + 32 * i);
            }
#pragma unroll
            for (int i = 0; i < GEMV_UNROLL; ++i) {
#pragma unroll
                for (int t = 0; t < NB; ++t) {
                    const uint4 xv = x4[t * chunks + c + 32 * i];
                    a0[t] += dot8(u0[i], xv);
                    a1[t] += dot8(u1[i], xv);
                }
            }
        }
        for (; c < chunks; c += 32) {
            const uint4 v0 = ld_stream(w0 + c), v1 = ld_stream(w1 + c);
#pragma unroll
            for (int t = 0; t < NB; ++t) {
                const uint4 xv = x4[t * chunks + c];
                a0[t] += dot8(v0, xv);
                a1[t] += dot8(v1, xv);
            }
        }
#pragma unroll
        for (int t = 0; t < NB; ++t) {
            a0[t] = warp_sum(a0[t]);
            a1[t] = warp_sum(a1[t]);
        }
        if (lane < NB) {
            // Lane t writes row t (a register array indexed by a constant after unrolling).
#pragma unroll
            for (int t = 0; t < NB; ++t) {
                if (t != lane) continue;
                if (mode == GEMV_SWIGLU) {
                    // Same roundings as the unfused path: bf16 GEMM output, bf16 silu, bf16 product.
                    const float gt = round_bf(a0[t]), up = round_bf(a1[t]);
                    yb[(u64)t * ffn + rg] = f2bf(round_bf(gt / (1.f + expf(-gt))) * up);
                } else {
                    float* y = yf + (u64)t * N;
                    const bool second = r1 != r0 && 2 * rg + 1 < N;
                    if (mode == GEMV_ADD) {
                        y[r0] += a0[t];
                        if (second) y[r1] += a1[t];
                    } else {
                        y[r0] = a0[t];
                        if (second) y[r1] = a1[t];
                    }
                }
            }
        }
    }
}

// Dynamic shared memory: NB * K * 2 bytes. `nw` non-null selects the RMSNorm input (xf rows, optionally through
// `rows`), otherwise `xb` is copied.
#define GEMV_KERNEL(NB)                                                                                           \
    extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32) gemv_##NB(                                      \
        const bf16_t* W, int N, int K, const bf16_t* xb, const float* xf, const int* rows, const bf16_t* nw,      \
        float eps, float* yf, bf16_t* yb, int mode) {                                                             \
        gemv_impl<NB>(W, N, K, xb, xf, rows, nw, eps, yf, yb, mode);                                              \
    }

GEMV_KERNEL(1)
GEMV_KERNEL(2)
GEMV_KERNEL(3)
GEMV_KERNEL(4)
