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
    # How much room the model leaves for a different draw: the largest probability of a non-greedy token at any
    # of the 40 positions at temperature 1.5 (from the raw log-probabilities, picked on the host).
    top = gen(port, temperature=0, logprobs=5)["logprobs"]["top_logprobs"]
    alt = max(sorted((v / 1.5 for v in pos.values()), reverse=True)[1] - max(v / 1.5 for v in pos.values())
              for pos in top if len(pos) > 1)
    print(f"{len(hot)} distinct texts from 8 seeds; largest runner-up/best probability ratio at T=1.5: "
          f"{2.718281828 ** alt:.3g}")
    greedy = gen(port, temperature=0)["text"]
    top1 = gen(port, temperature=1.0, top_k=1, seed=3)["text"]
    lp = gen(port, seed=1, logprobs=2, **sampled)
    checks = {
        "same seed repeats": a == b,
        # With a runner-up at >= 20% of the best token somewhere, 8 seeds agreeing everywhere is very unlikely.
        "seeds differ at temperature 1.5": len(hot) > 1 or 2.718281828 ** alt < 0.2,
        "top_k 1 equals greedy": top1 == greedy,
        "host path (logprobs 2) answers": len(lp["logprobs"]["tokens"]) == 40,
    }
    for k, v in checks.items():
        print(f"{k}: {v}")
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
