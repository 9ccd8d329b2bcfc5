#!/usr/bin/env python3
"""SmolLM2-135M on the native engine vs the exact-math reference (HF transformers f32 greedy, 32 tokens per case).

Starts `baton-engine --model GGUF --device DEVICE`, sends every reference case's prompt ids to /v1/completions
(greedy, ignore_eos, top-5 log-probabilities as token ids) and reports per case: whether the greedy tokens are
identical, where they first diverge, and the log-probability gap there (the reference's margin between its own
choice and the engine's choice: a small gap means a near-tie that bf16 rounding can flip), plus the largest
top-1 log-probability error over the identical prefix. Writes the JSON report to --out.

    python3 smollm2_check.py --engine ./baton-engine --model SmolLM2-135M-Instruct.Q4_1.gguf \\
        --reference smollm2-hf-f32-greedy.json --device cuda --out smollm2-cuda.json
"""

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", json.dumps(body).encode(),
                                 {"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=300))


def tid(s: str) -> int:
    return int(s.split(":", 1)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--reference", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    ref = json.load(open(a.reference))
    port = free_port()
    log = open(a.out + ".engine.log", "w")
    eng = subprocess.Popen([a.engine, "--model", a.model, "--device", a.device, "--port", str(port),
                            "--served-model-name", "m"], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                if eng.poll() is not None:
                    sys.exit(f"engine exited; see {a.out}.engine.log")
                time.sleep(0.2)
        rows = []
        for c in ref["cases"]:
            prompt = json.loads(c["prompt_ids"]) if isinstance(c["prompt_ids"], str) else c["prompt_ids"]
            want = json.loads(c["greedy_ids"]) if isinstance(c["greedy_ids"], str) else c["greedy_ids"]
            top5 = json.loads(c["top5"]) if isinstance(c["top5"], str) else c["top5"]
            r = post(port, {"model": "m", "prompt": prompt, "max_tokens": len(want), "temperature": 0,
                            "ignore_eos": True, "skip_special_tokens": False, "logprobs": 5,
                            "return_tokens_as_token_ids": True})
            lp = r["choices"][0]["logprobs"]
            got = [tid(t) for t in lp["tokens"]]
            div = next((i for i, (x, y) in enumerate(zip(got, want)) if x != y), None)
            upto = len(want) if div is None else div
            # Top-1 log-probability error over the identical prefix.
            err = max((abs(lp["token_logprobs"][i] - top5[i][0][1]) for i in range(upto)), default=0.0)
            row = {"case": c["name"], "identical": div is None, "first_divergence": div, "max_top1_logprob_err": err}
            if div is not None:
                ref_lp = dict((t, l) for t, l in top5[div])
                ours = got[div]
                row["reference_choice"] = [want[div], top5[div][0][1]]
                row["engine_choice"] = [ours, lp["token_logprobs"][div]]
                # The reference's margin between its choice and ours (None: ours is outside its top 5).
                row["reference_gap"] = top5[div][0][1] - ref_lp[ours] if ours in ref_lp else None
            rows.append(row)
            print(json.dumps(row))
        same = sum(r["identical"] for r in rows)
        print(f"{same}/{len(rows)} cases greedy-identical to the f32 reference ({a.device})")
        json.dump({"device": a.device, "cases": rows}, open(a.out, "w"), indent=1)
    finally:
        eng.terminate()
        eng.wait(timeout=30)


if __name__ == "__main__":
    main()
