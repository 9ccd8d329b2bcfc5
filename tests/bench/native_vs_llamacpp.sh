#!/usr/bin/env bash
# Native engine vs llama.cpp on this CPU, same model (SmolLM2-135M-Instruct Q4_1 GGUF), same client, same
# workload: 16-token prompts, 64 greedy output tokens; one stream (8 requests) and 16 concurrent streams
# (64 requests). The two servers never run at the same time; rounds alternate which goes first and the
# table reports the median of the rounds. llama.cpp is llama-cpp-python's OpenAI server (2 threads, its
# default batch settings; it serves one request at a time, and with --interrupt_requests False it queues the
# others instead of aborting the running one, which its default does). It ignores `ignore_eos`, so some of its
# outputs end early at EOS; tok/s counts the tokens actually produced.
# Usage: tests/bench/native_vs_llamacpp.sh [OUT_DIR]   (ROUNDS=3 by default)
# First use builds llama-cpp-python[server]==0.3.36 from source into .cache/llama-venv (~25 min on 2 cores).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
out="${1:-target/bench/native_vs_llamacpp}"; mkdir -p "$out"
rounds="${ROUNDS:-3}"
"$root/tests/fetch-model.sh" >/dev/null
model="$("$root/tests/fetch-model.sh" --print-dir)/SmolLM2-135M-Instruct.Q4_1.gguf"
venv="$root/.cache/llama-venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
    echo "building llama-cpp-python (once)..."
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "llama-cpp-python[server]==0.3.36"
fi
cargo build --release -q -p baton-native --bin baton-engine -p baton-loadgen --bin baton-bench
pid=""
trap '[ -n "$pid" ] && kill $pid 2>/dev/null || true' EXIT
wait_up() { for _ in $(seq 1 240); do curl -sf "http://127.0.0.1:$1/v1/models" >/dev/null && return 0; sleep 0.5; done; return 1; }
bench() { # name port round
    local name=$1 port=$2 r=$3
    # Warm-up, then the measured runs.
    target/release/baton-bench run --url "http://127.0.0.1:$port" --model smollm2 --workload fixed:16:64 \
        --num-requests 2 --request-rate inf --max-concurrency 1 --temperature 0 --quiet --out "$out/warm.json" >/dev/null
    for c in 1 16; do
        n=$((c * 4)); [ "$c" -eq 1 ] && n=8
        target/release/baton-bench run --url "http://127.0.0.1:$port" --model smollm2 --workload fixed:16:64 \
            --num-requests "$n" --request-rate inf --max-concurrency "$c" --temperature 0 --seed "$r" --quiet \
            --out "$out/$name-c$c-r$r.json" >/dev/null
    done
}
for r in $(seq 1 "$rounds"); do
    order="baton llamacpp"; [ $((r % 2)) -eq 0 ] && order="llamacpp baton"
    for name in $order; do
        port=$((20000 + RANDOM % 20000))
        if [ "$name" = baton ]; then
            target/release/baton-engine --model "$model" --port "$port" --served-model-name smollm2 >"$out/$name.log" 2>&1 &
        else
            "$venv/bin/python" -m llama_cpp.server --model "$model" --model_alias smollm2 --n_ctx 2048 \
                --n_threads 2 --interrupt_requests False --host 127.0.0.1 --port "$port" >"$out/$name.log" 2>&1 &
        fi
        pid=$!
        wait_up "$port"
        bench "$name" "$port" "$r"
        kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    done
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def runs(name, c):
    return [json.load(open(f"{out}/{name}-c{c}-r{r}.json"))["runs"][0]["summary"] for r in range(1, rounds + 1)]
med = statistics.median
print("| engine | 1 stream: TTFT p50 (ms) | 1 stream: tok/s (1000/TPOT p50) | 16 streams: aggregate output tok/s |")
print("|---|---:|---:|---:|")
res = {}
for name in ("llamacpp", "baton"):
    one, many = runs(name, 1), runs(name, 16)
    ttft = med(s["ttft_ms"]["p50"] for s in one)
    tps = med(1000 / s["tpot_ms"]["p50"] for s in one)
    agg = med(s["output_throughput"] for s in many)
    res[name] = (ttft, tps, agg)
    print(f"| {name} | {ttft:.1f} | {tps:.1f} | {agg:.1f} |")
b, l = res["baton"], res["llamacpp"]
print(f"\nbaton / llama.cpp: single-stream {b[1] / l[1]:.2f}x, 16-stream aggregate {b[2] / l[2]:.2f}x "
      f"(median of {rounds} rounds)")
PY
