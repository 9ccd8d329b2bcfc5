#!/usr/bin/env python3
"""Compares the logits written by `baton-cuda-bench check` with make_case.py's references.
Pass criteria (bf16 engine vs transformers bf16): relative error ||a-b||/||b|| < 1e-2, top-1 agreement >= 99%."""
import argparse, json
import numpy as np


def stats(a, b):
    rel = np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)
    top = (a.argmax(-1) == b.argmax(-1))
    return {"rel_err_mean": float(rel.mean()), "rel_err_max": float(rel.max()), "top1_agree": float(top.mean())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--engine", required=True, help="prefix of the engine's .json/.f32 output")
    a = ap.parse_args()
    meta = json.load(open(a.engine + ".json"))
    vocab = meta["vocab"]
    data = np.fromfile(a.engine + ".f32", dtype="<f4").reshape(-1, vocab)
    ref = np.load(a.model + "/ref.npz")
    eng, rb, rf, kinds = [], [], [], []
    for i, r in enumerate(meta["records"]):
        pos = list(ref[f"pos_{r['seq']}"])
        j = pos.index(r["pos"])
        eng.append(data[i]); rb.append(ref[f"bf16_{r['seq']}"][j]); rf.append(ref[f"f32_{r['seq']}"][j])
        kinds.append(r["kind"])
    eng, rb, rf, kinds = np.array(eng), np.array(rb), np.array(rf), np.array(kinds)
    out = {"records": len(kinds), "engine_vs_hf_bf16": stats(eng, rb), "engine_vs_hf_f32": stats(eng, rf),
           "hf_bf16_vs_hf_f32": stats(rb, rf), "by_kind_vs_hf_bf16": {}, "by_kind_vs_hf_f32": {}}
    for k in sorted(set(kinds)):
        out["by_kind_vs_hf_bf16"][k] = stats(eng[kinds == k], rb[kinds == k])
        out["by_kind_vs_hf_f32"][k] = stats(eng[kinds == k], rf[kinds == k])
    g = meta["greedy_last"]
    last = [i for i, r in enumerate(meta["records"]) if r["seq"] == 0 and r["pos"] == g["pos"] and r["kind"] == "decode"]
    if last:
        row = data[last[-1]]
        lse = row.max() + np.log(np.exp(row - row.max()).sum())
        out["gpu_greedy_matches_host"] = bool(int(row.argmax()) == g["token"] and abs((row.max() - lse) - g["logprob"]) < 1e-3)
    out["kv_block_roundtrip"] = meta["kv_block_roundtrip"]
    s = out["engine_vs_hf_bf16"]
    out["pass"] = bool(s["rel_err_max"] < 1e-2 and s["top1_agree"] >= 0.99)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
