#!/usr/bin/env python3
"""Builds a random-weight Llama with transformers, saves it (safetensors + config.json), writes a test case for
`baton-cuda-bench check` and the reference logits at every position the engine will report: transformers in bf16
(SDPA attention, its default), in bf16 with eager attention (a second bf16 implementation: how far two bf16
computations of the same model are apart), and in f32 on the same bf16 weights (the exact math)."""
import argparse, json, os
import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

PRESETS = {
    # name: hidden, heads, kv heads, head_dim, layers, ffn, vocab, sequence lengths, prefill lengths, chunk
    "mha64": (512, 8, 8, 64, 4, 1408, 8192, [2048, 700], [1984, 650], 512),
    "gqa128": (1024, 8, 2, 128, 4, 2816, 8192, [4096, 1500, 300], [4032, 1460, 280], 1024),
    "gqa64g3": (576, 9, 3, 64, 4, 1536, 8192, [1024, 333], [990, 300], 256),
    "mha128": (1024, 8, 8, 128, 2, 2816, 8192, [1200], [1170], 400),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", required=True, choices=sorted(PRESETS))
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", type=float, default=0.02, help="initializer_range (larger makes a chaotic model)")
    a = ap.parse_args()
    hidden, heads, kv, hd, layers, ffn, vocab, lens, prefill, chunk = PRESETS[a.preset]
    torch.manual_seed(a.seed)
    cfg = LlamaConfig(
        hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv, head_dim=hd,
        num_hidden_layers=layers, intermediate_size=ffn, vocab_size=vocab,
        max_position_embeddings=max(lens) + 64, rms_norm_eps=1e-5, tie_word_embeddings=False,
        initializer_range=a.init,
    )
    model = LlamaForCausalLM(cfg).to(torch.bfloat16).cuda().eval()
    # Norm weights are ones at init; perturb them so the test sees them.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    os.makedirs(a.out, exist_ok=True)
    model.save_pretrained(a.out, safe_serialization=True)
    g = torch.Generator().manual_seed(a.seed + 1)
    seqs = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lens]
    case = {"seqs": seqs, "prefill": prefill, "chunk": chunk, "block_size": 16, "prefix_reuse": True}
    json.dump(case, open(os.path.join(a.out, "case.json"), "w"))
    # References load the saved folder the way users load a model. `model.to(torch.bfloat16)` would also round
    # the RoPE `inv_freq` buffer to bf16 (5-7% logit error at 1-4k positions on its own: an artefact of building
    # the model in memory, which the first references here had); `from_pretrained(dtype=...)` keeps it in f32.
    del model
    refs, meta = {}, {}
    for tag, dtype, impl in (("bf16", torch.bfloat16, "sdpa"), ("bf16e", torch.bfloat16, "eager"),
                             ("f32", torch.float32, "sdpa")):
        m = LlamaForCausalLM.from_pretrained(a.out, dtype=dtype, attn_implementation=impl).cuda().eval()
        meta[tag] = {"dtype": str(dtype), "attn": impl, "inv_freq": str(m.model.rotary_emb.inv_freq.dtype)}
        for s, (toks, p) in enumerate(zip(seqs, prefill)):
            pos = sorted({min(c + chunk, p) - 1 for c in range(0, p, chunk)} | set(range(p, len(toks))))
            with torch.no_grad():
                lg = m(torch.tensor([toks], device="cuda")).logits[0].float()
            refs[f"pos_{s}"] = np.array(pos)
            refs[f"{tag}_{s}"] = lg[torch.tensor(pos, device="cuda")].cpu().numpy()
        del m
    np.savez(os.path.join(a.out, "ref.npz"), **refs)
    print(json.dumps({"preset": a.preset, "config": cfg.to_dict().get("rope_parameters"), "lens": lens, "refs": meta}))


if __name__ == "__main__":
    main()
