#!/usr/bin/env bash
# Native engine on CPU: single-stream decode tok/s and TTFT (16-token prompt,
# 64 output tokens) and aggregate throughput at 1/4/16 concurrent streams,
# plus resident memory, on SmolLM2-135M-Instruct Q4_1. Compare with
# llama.cpp's 69.6 tok/s single stream on the same machine kind
# (docs/BENCHMARKS.md). Usage: tests/bench/native_cpu.sh [OUT_DIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
out="${1:-target/bench/native_cpu}"
mkdir -p "$out"
"$root/tests/fetch-model.sh" >/dev/null
model="$("$root/tests/fetch-model.sh" --print-dir)/SmolLM2-135M-Instruct.Q4_1.gguf"
echo "building release binaries..."
cargo build --release -q -p baton-native --bin baton-engine -p baton-loadgen --bin baton-bench
port=$((20000 + RANDOM % 20000))
target/release/baton-engine --model "$model" --port "$port" --served-model-name smollm2 >"$out/engine.log" 2>&1 &
engine=$!
trap 'kill $engine 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    sleep 0.5
done
rss_idle=$(awk '/VmRSS/ {print $2}' /proc/$engine/status)
# Warm-up.
target/release/baton-bench run --url "http://127.0.0.1:$port" --model smollm2 --workload fixed:16:64 \
    --num-requests 2 --request-rate inf --max-concurrency 1 --quiet --out "$out/warmup.json" >/dev/null
printf '| streams | requests | TTFT p50 (ms) | TPOT p50 (ms) | per-stream tok/s | aggregate output tok/s |\n|---:|---:|---:|---:|---:|---:|\n'
for c in 1 4 16; do
    n=$((c * 4))
    [ "$c" -eq 1 ] && n=8
    target/release/baton-bench run --url "http://127.0.0.1:$port" --model smollm2 --workload fixed:16:64 \
        --num-requests "$n" --request-rate inf --max-concurrency "$c" --quiet --out "$out/c$c.json" >/dev/null
    python3 - "$out/c$c.json" "$c" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["runs"][0]["summary"]
ttft = s["ttft_ms"]["p50"]; tpot = s["tpot_ms"]["p50"]
print(f"| {sys.argv[2]} | {s['completed']} | {ttft:.1f} | {tpot:.1f} | {1000/tpot:.1f} | {s['output_throughput']:.1f} |")
PY
done
rss_peak=$(awk '/VmHWM/ {print $2}' /proc/$engine/status)
echo
echo "engine RSS: idle $((rss_idle / 1024)) MiB, peak $((rss_peak / 1024)) MiB"
