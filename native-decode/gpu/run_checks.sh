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
    "$BIN" check --model "$MODELS/$c" --case "$MODELS/$c/case.json" --out "$MODELS/check-$c" 2> "$RES/check-$c.log" || { echo "check $c failed"; tail -5 "$RES/check-$c.log"; continue; }
    python3 "$HERE/compare.py" --model "$MODELS/$c" --engine "$MODELS/check-$c" > "$RES/compare-$c.json" 2>&1
    echo "$c: $(python3 -c "import json,sys; d=json.load(open('$RES/compare-$c.json')); r=lambda s: '%.4f/%.4f/%.3f' % (s['rel_err_mean'], s['rel_err_max'], s['top1_agree']); print('pass' if d['pass'] else 'FAIL', d['checks'], 'eng-f32', r(d['engine_vs_hf_f32']), 'eng-bf16', r(d['engine_vs_hf_bf16']), 'hfbf16-f32', r(d['hf_bf16_vs_hf_f32']), 'hfeager-hfsdpa', r(d['hf_bf16_eager_vs_hf_bf16']), 'stated', d['stated_bar'], d['hf_eager_meets_stated_bar'])" 2>&1)"
  done
fi
if [[ -d $MODELS/mha64 && ($MODE == full || $MODE == check) ]]; then
  # Which of transformers' bf16 rounding points make up its distance from f32 (see numerics_probe.py).
  python3 "$HERE/numerics_probe.py" --model "$MODELS/mha64" > "$RES/probe-mha64.json" 2> "$RES/probe-mha64.log"; echo "probe rc=$?"
fi
if [[ $MODE == full || $MODE == check || $MODE == quick ]]; then
  "$BIN" sample-check --out "$RES/sample.json" 2> "$RES/sample.log"; echo "sample-check rc=$?"; grep -v INFO "$RES/sample.log" | tail -8
fi
if [[ $MODE == full || $MODE == perf || $MODE == quick ]]; then
  Q=""; [[ $MODE == quick ]] && Q="--quick"
  "$BIN" perf --out "$RES/perf.json" $Q 2> "$RES/perf.log"; echo "perf rc=$?"; grep -v INFO "$RES/perf.log" | tail -30
  python3 "$HERE/attn_sdpa.py" > "$RES/sdpa.json" 2> "$RES/sdpa.log"; echo "sdpa rc=$?"
  python3 -c "import json; d=json.load(open('$RES/sdpa.json')); print('torch copy', round(d['torch_copy_gbs']), 'GB/s'); [print(r) for r in d['sdpa_decode']]" 2>&1
fi
mkdir -p "$DEST" && tar czf "$DEST/results.tgz" -C "$RES" . && echo "results in $DEST/results.tgz"
