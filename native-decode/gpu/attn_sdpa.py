#!/usr/bin/env python3
"""PyTorch SDPA as a peer of our paged decode-attention kernel: same shapes (Llama-3-8B heads: 32 query heads,
8 KV heads, head_dim 128, one query token per sequence), contiguous (non-paged) bf16 KV, CUDA-event timing,
several KV copies cycled so that small cases do not sit in L2. Also torch's own copy bandwidth."""
import json
import torch
import torch.nn.functional as F


def timeit(fn, reps=7, iters=10):
    fn(0); fn(1)
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ts, k = [], 2
    for _ in range(reps):
        s.record()
        for _ in range(iters):
            fn(k); k += 1
        e.record(); e.synchronize()
        ts.append(s.elapsed_time(e) / iters)
    return sorted(ts)[len(ts) // 2]


def main():
    H, HKV, D = 32, 8, 128
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    a = torch.empty(1 << 29, dtype=torch.bfloat16, device="cuda")  # 1 GiB
    b = torch.empty_like(a)
    ms = timeit(lambda k: b.copy_(a))
    out["torch_copy_gbs"] = 2 * a.numel() * 2 / (ms * 1e-3) / 1e9
    del a, b
    res = []
    for B in [1, 8, 32, 128]:
        for ctx in [512, 4096, 32768]:
            kv_bytes = 2 * B * ctx * HKV * D * 2
            copies = max(1, min(16, -(-(512 << 20) // kv_bytes)))
            q = torch.randn(B, H, 1, D, dtype=torch.bfloat16, device="cuda")
            ks = [torch.randn(B, HKV, ctx, D, dtype=torch.bfloat16, device="cuda") for _ in range(copies)]
            vs = [torch.randn(B, HKV, ctx, D, dtype=torch.bfloat16, device="cuda") for _ in range(copies)]
            try:
                ms = timeit(lambda k: F.scaled_dot_product_attention(q, ks[k % copies], vs[k % copies], enable_gqa=True))
                res.append({"batch": B, "ctx": ctx, "us": ms * 1e3, "gbs": kv_bytes / (ms * 1e-3) / 1e9})
            except Exception as ex:  # noqa: BLE001
                res.append({"batch": B, "ctx": ctx, "error": str(ex)[:200]})
            del ks, vs, q
            torch.cuda.empty_cache()
    out["sdpa_decode"] = res
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
