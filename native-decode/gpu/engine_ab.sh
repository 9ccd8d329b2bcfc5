#!/usr/bin/env bash
# A/B of two baton-engine builds on one GPU: Llama-3-8B shape (dummy weights), 64 concurrent greedy streams,
# 512-token prompts, 128 output tokens; the engines run one after the other, twice each (A B A B).
# Usage (from a folder holding both binaries, baton-bench and make_dummy_folders.py's llama8b/):
#   engine_ab.sh ./baton-engine-old ./baton-engine
set -uo pipefail
a=$1; b=$2; out="${OUT:-/tmp/out}"; mkdir -p "$out"
for round in 1 2; do
  for bin in "$a" "$b"; do
    "$bin" --model llama8b --load-format dummy --seed 1 --port 43001 --served-model-name m --device cuda \
      --kv-memory-mb 30000 --max-num-seqs 128 >"$out/ab.log" 2>&1 & pid=$!
    for _ in $(seq 1 240); do curl -sf http://127.0.0.1:43001/health >/dev/null && break; sleep 0.5; done
    ./baton-bench run --url http://127.0.0.1:43001 --model m --workload fixed:512:128 --num-requests 256 \
      --request-rate inf --max-concurrency 64 --temperature 0 --seed $round --quiet --out "$out/r.json" >/dev/null
    python3 -c "
import json,sys; s=json.load(open('$out/r.json'))['runs'][0]['summary']
print(f'$bin round $round: {s[\"output_throughput\"]:.0f} output tok/s, TPOT p50 {s[\"tpot_ms\"][\"p50\"]:.2f} ms, TTFT p50 {s[\"ttft_ms\"][\"p50\"]:.0f} ms, {s[\"completed\"]}/{s[\"sent\"]} ok')"
    kill $pid; wait $pid 2>/dev/null
  done
done
