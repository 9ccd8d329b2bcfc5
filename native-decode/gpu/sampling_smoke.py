#!/usr/bin/env python3
"""Sampling through a running engine's OpenAI API (on a GPU engine: picked on the device).

    python3 sampling_smoke.py PORT

Seeded requests with temperature / top-k / top-p must repeat exactly, eight seeds at a high temperature must not
all give the same text (dummy-weight models are peaky), top_k 1 must equal greedy, and a request asking for alternatives' log-probabilities (picked on the host) must still work. Exits 1
unless every check holds."""
import json
import sys
import urllib.request

PROMPT = "Once upon a time, in a land far away, there lived"


def gen(port: int, **kw) -> dict:
    body = {"model": "m", "prompt": PROMPT, "max_tokens": 40, "ignore_eos": True, **kw}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", json.dumps(body).encode(),
                                 {"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=120))["choices"][0]


def main() -> None:
    port = int(sys.argv[1])
    sampled = dict(temperature=0.8, top_p=0.9, top_k=50)
    a = gen(port, seed=1, **sampled)["text"]
    b = gen(port, seed=1, **sampled)["text"]
    hot = {gen(port, seed=s, temperature=1.5)["text"] for s in range(8)}
    greedy = gen(port, temperature=0)["text"]
    top1 = gen(port, temperature=1.0, top_k=1, seed=3)["text"]
    lp = gen(port, seed=1, logprobs=2, **sampled)
    checks = {
        "same seed repeats": a == b,
        "seeds differ at temperature 1.5": len(hot) > 1,
        "top_k 1 equals greedy": top1 == greedy,
        "host path (logprobs 2) answers": len(lp["logprobs"]["tokens"]) == 40,
    }
    for k, v in checks.items():
        print(f"{k}: {v}")
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
