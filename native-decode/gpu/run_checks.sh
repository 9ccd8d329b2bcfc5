#!/usr/bin/env bash
# Runs the CUDA backend's correctness checks and benchmarks on a GPU machine (no Rust needed there).
# Usage, from the repository root:  native-decode/gpu/run_checks.sh [BIN] [OUT] [full|quick|check|perf]
# BIN: a `baton-cuda-bench` built elsewhere (`cargo build --release -p baton-native --features cuda
# --bin baton-cuda-bench`); OUT: where results.tgz goes (default $OUT or /tmp/baton-gpu).
set -uo pipefail
BIN=${1:-.devbin/baton-cuda-bench}
DEST=${2:-${OUT:-/tmp/baton-gpu}}
RES=/tmp/baton-gpu-results
MODE=${3:-full}
HERE=$(cd "$(dirname "$0")" && pwd)
MODELS=${MODELS:-/tmp/baton-gpu-models}
mkdir -p "$RES" "$MODELS"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$RES/nvidia-smi.csv" 2>&1
"$BIN" info > "$RES/info.json" 2> "$RES/info.log" || { echo "info failed"; cat "$RES/info.log"; exit 1; }

if [[ $MODE == full || $MODE == check || $MODE == quick ]]; then
  for c in ${CASES:-mha64 gqa128 gqa64g3 mha128}; do
    python3 "$HERE/make_case.py" --preset "$c" --out "$MODELS/$c" > "$RES/make-$c.log" 2>&1 || { echo "make $c failed"; tail -5 "$RES/make-$c.log"; continue; }
    # Twice: small steps through the fused small-batch projection kernels (default), then through cuBLAS only.
    for v in "$c:4" "$c-cublas:0"; do
      n=${v%%:*}; rows=${v##*:}
      "$BIN" check --model "$MODELS/$c" --case "$MODELS/$c/case.json" --out "$MODELS/check-$n" --gemv-max-rows "$rows" 2> "$RES/check-$n.log" || { echo "check $n failed"; tail -5 "$RES/check-$n.log"; continue; }
      python3 "$HERE/compare.py" --model "$MODELS/$c" --engine "$MODELS/check-$n" > "$RES/compare-$n.json" 2>&1
      echo "$n: $(python3 -c "import json,sys; d=json.load(open('$RES/compare-$n.json')); print('pass' if d['pass'] else 'FAIL', 'vs bf16', d['engine_vs_hf_bf16'], 'vs f32', d['engine_vs_hf_f32'], 'hf_bf16_vs_f32', d['hf_bf16_vs_hf_f32'], 'greedy', d.get('gpu_greedy_matches_host'))" 2>&1)"
    done
  done
fi
if [[ $MODE == full || $MODE == perf || $MODE == quick ]]; then
  Q=""; [[ $MODE == quick ]] && Q="--quick"
  "$BIN" perf --out "$RES/perf.json" $Q 2> "$RES/perf.log"; echo "perf rc=$?"; grep -v INFO "$RES/perf.log" | tail -30
  python3 "$HERE/attn_sdpa.py" > "$RES/sdpa.json" 2> "$RES/sdpa.log"; echo "sdpa rc=$?"
  python3 -c "import json; d=json.load(open('$RES/sdpa.json')); print('torch copy', round(d['torch_copy_gbs']), 'GB/s'); [print(r) for r in d['sdpa_decode']]" 2>&1
fi
mkdir -p "$DEST" && tar czf "$DEST/results.tgz" -C "$RES" . && echo "results in $DEST/results.tgz"
