#!/usr/bin/env python3
"""Greedy outputs of one engine vs the PD path through the gateway, prompt by prompt.

    python3 pd_identical.py SINGLE_PORT GATEWAY_PORT

Sends each prompt (13 to 3000 characters) to both with temperature 0, ignore_eos and 48 tokens, prints whether the
texts are identical and exits 1 unless all are."""
import json
import sys
import urllib.request

PROMPTS = ["hi there, how are you today?", "The quick brown fox jumps over the lazy dog " * 20, "0123456789" * 30,
           "a b c d e f g", "x" * 3000]


def gen(port: int, prompt: str, n: int = 48) -> str:
    b = json.dumps({"model": "m", "prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": True}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", b, {"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=120))["choices"][0]["text"]


def main() -> None:
    single, pd = int(sys.argv[1]), int(sys.argv[2])
    ok = 0
    for p in PROMPTS:
        same = gen(single, p) == gen(pd, p)
        print(f"prompt {len(p)} chars: PD == single: {same}")
        ok += same
    print(f"{ok}/{len(PROMPTS)} token-identical")
    sys.exit(0 if ok == len(PROMPTS) else 1)


if __name__ == "__main__":
    main()
