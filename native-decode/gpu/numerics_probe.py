#!/usr/bin/env python3
"""Where does transformers' bf16 Llama lose precision? A Llama forward in f32 that can round to bf16 at each point
where a bf16 framework stores a tensor, checked against transformers f32 and bf16 on a make_case.py model.

Prints, for each set of rounding points, the relative logit error ||a-b||/||b|| against transformers f32 and
bf16: which points make up transformers' bf16 error, and how close an engine rounding at the same points gets."""
import argparse, json, math, sys
import torch
from transformers import LlamaForCausalLM

HF = ["res", "norm_pre", "norm_out", "qkv_out", "rope_cs", "rope_ops", "attn_p", "attn_out", "o_out", "gu_out",
      "act", "down_out", "logits"]
# What the engine rounds today (kernels/*.cu): GEMM inputs and the KV cache, never the residual stream.
ENGINE = ["norm_pre", "norm_out", "rope_out", "attn_p", "attn_out", "gu_out", "act"]


def rb(t):
    return t.to(torch.bfloat16).float()


def rms(x, w, eps, f):
    var = x.pow(2).mean(-1, keepdim=True)
    n = x * torch.rsqrt(var + eps)
    if "norm_pre" in f:
        n = rb(n)
    o = w * n
    return rb(o) if "norm_out" in f else o


def forward(m, ids, f, cfg):
    R = lambda t, k: rb(t) if k in f else t
    sd = {k: v.float() for k, v in m.state_dict().items()}
    nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    T = ids.shape[0]
    x = sd["model.embed_tokens.weight"][ids]
    pos = torch.arange(T, device=ids.device, dtype=torch.float32)
    theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta") or getattr(cfg, "rope_theta", 10000.0)
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, device=ids.device).float() / hd))
    fr = pos[:, None] * inv[None, :]
    emb = torch.cat([fr, fr], -1)
    cos, sin = R(emb.cos(), "rope_cs"), R(emb.sin(), "rope_cs")

    def rope(q):
        h = q.shape[-1] // 2
        rot = torch.cat([-q[..., h:], q[..., :h]], -1)
        o = R(R(q * cos[:, None], "rope_ops") + R(rot * sin[:, None], "rope_ops"), "rope_ops")
        return R(o, "rope_out")

    mask = torch.ones(T, T, device=ids.device, dtype=torch.bool).tril()
    for l in range(cfg.num_hidden_layers):
        p = f"model.layers.{l}."
        hn = rms(x, sd[p + "input_layernorm.weight"], cfg.rms_norm_eps, f)
        q = R(hn @ sd[p + "self_attn.q_proj.weight"].T, "qkv_out").view(T, nh, hd)
        k = R(hn @ sd[p + "self_attn.k_proj.weight"].T, "qkv_out").view(T, nkv, hd)
        v = R(R(hn @ sd[p + "self_attn.v_proj.weight"].T, "qkv_out"), "rope_out").view(T, nkv, hd)
        q, k = rope(q), rope(k)
        g = nh // nkv
        out = torch.empty(T, nh, hd, device=ids.device)
        for hh in range(nh):
            s = (q[:, hh] @ k[:, hh // g].T) / math.sqrt(hd)
            s = s.masked_fill(~mask, float("-inf"))
            mx = s.max(-1, keepdim=True).values
            e = torch.exp(s - mx)
            # Flash-style: unnormalized P rounded to bf16 for the PV product, normalizer summed in f32.
            pv = R(e, "attn_p") @ v[:, hh // g]
            out[:, hh] = pv / e.sum(-1, keepdim=True)
        a = R(out.reshape(T, nh * hd), "attn_out")
        x = R(x + R(a @ sd[p + "self_attn.o_proj.weight"].T, "o_out"), "res")
        hn = rms(x, sd[p + "post_attention_layernorm.weight"], cfg.rms_norm_eps, f)
        gt = R(hn @ sd[p + "mlp.gate_proj.weight"].T, "gu_out")
        up = R(hn @ sd[p + "mlp.up_proj.weight"].T, "gu_out")
        act = R(R(torch.nn.functional.silu(gt), "act") * up, "act")
        x = R(x + R(act @ sd[p + "mlp.down_proj.weight"].T, "down_out"), "res")
    hn = rms(x, sd["model.norm.weight"], cfg.rms_norm_eps, f)
    return R(hn @ sd["lm_head.weight"].T, "logits")


def rel(a, b):
    r = (a - b).norm(dim=-1) / b.norm(dim=-1)
    return {"mean": round(float(r.mean()), 5), "max": round(float(r.max()), 5),
            "top1": round(float((a.argmax(-1) == b.argmax(-1)).float().mean()), 4)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a make_case.py output folder")
    ap.add_argument("--seq", type=int, default=0)
    ap.add_argument("--tokens", type=int, default=2048)
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    case = json.load(open(a.model + "/case.json"))
    ids = torch.tensor(case["seqs"][a.seq][: a.tokens], device="cuda")
    m32 = LlamaForCausalLM.from_pretrained(a.model, dtype=torch.float32).cuda().eval()
    cfg = m32.config
    out = {"attn_impl": cfg._attn_implementation, "tokens": int(ids.shape[0]), "runs": {}}
    with torch.no_grad():
        hf32 = m32(ids[None]).logits[0].float()
        mb = LlamaForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16).cuda().eval()
        hfb = mb(ids[None]).logits[0].float()
        me = LlamaForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16, attn_implementation="eager")
        hfe = me.cuda().eval()(ids[None]).logits[0].float()
        del me
        out["hf_bf16_vs_f32"] = rel(hfb, hf32)
        out["hf_bf16_eager_vs_sdpa"] = rel(hfe, hfb)
        sets = {"none": [], "hf_all": HF, "engine": ENGINE}
        for k in HF:
            sets["only_" + k] = [k]
            sets["hf_minus_" + k] = [x for x in HF if x != k]
        sets["engine_plus_res"] = ENGINE + ["res"]
        sets["engine_plus_res_o_down"] = ENGINE + ["res", "o_out", "down_out"]
        sets["engine_plus_res_o_down_qkv_rope"] = ENGINE + ["res", "o_out", "down_out", "qkv_out", "rope_cs", "rope_ops"]
        for name, fl in sets.items():
            y = forward(m32, ids, set(fl), cfg)
            out["runs"][name] = {"vs_f32": rel(y, hf32), "vs_bf16": rel(y, hfb)}
            print(name, out["runs"][name], file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
