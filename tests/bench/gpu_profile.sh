#!/usr/bin/env bash
# Step-time profile of the GPU engine: `baton-engine profile` on the Llama-3-8B shape with dummy weights, loaded
# exactly as tests/bench/headline_2gpu.sh runs its engines (--model llama8b --load-format dummy --seed 1
# --device cuda --kv-memory-mb 30000 --max-num-seqs 128), over decode batch B x context C x prefill chunk P
# (engine defaults: B 1..128, C 256/1024/4096, P 0..8192; shapes whose KV does not fit the 30 GB pool, or with
# more than 128 sequences, are skipped). ~2.5 min on one H100 (model start ~15 s, then ~20 s per round over the
# grid: warmup 1 + 5 repeats).
# Run from a folder holding baton-engine built with --features cuda and the `llama8b/` folder written by
# native-decode/gpu/make_dummy_folders.py (BIN_DIR, as for the headline; the folder is made here when
# gpu/make_dummy_folders.py or native-decode/gpu/make_dummy_folders.py is at hand).
#   GPU=0        ordinal of the GPU to profile
#   WARMUP=1 REPEATS=5 MAX_SECS=2   untimed steps, timed steps, seconds per shape after 3 timed steps
#   BATCH=... CONTEXT=... PREFILL=...   comma-separated grid overrides (default: the engine's)
# Writes $OUT/profile-<gpu name>.json (e.g. profile-h100-80gb-hbm3.json) and its log next to it.
set -euo pipefail
out="${OUT:-/tmp/out}"; mkdir -p "$out"; out="$(cd "$out" && pwd)"
cd "${BIN_DIR:-$(dirname "$0")}"
gpu="${GPU:-0}"
if [ ! -d llama8b ]; then
  for s in gpu/make_dummy_folders.py native-decode/gpu/make_dummy_folders.py; do
    [ -f "$s" ] && { python3 "$s" . >/dev/null; break; }
  done
fi
[ -d llama8b ] || { echo "no llama8b/ here: run python3 native-decode/gpu/make_dummy_folders.py $(pwd)" >&2; exit 2; }
name="$(nvidia-smi --query-gpu=name --format=csv,noheader -i "$gpu" 2>/dev/null | head -1)"
slug="$(printf '%s' "${name:-gpu$gpu}" | tr 'A-Z' 'a-z' | sed -e 's/^nvidia //' -e 's/[^a-z0-9]\{1,\}/-/g' -e 's/^-//' -e 's/-$//')"
grid=()
[ -n "${BATCH:-}" ] && grid+=(--batch "$BATCH")
[ -n "${CONTEXT:-}" ] && grid+=(--context "$CONTEXT")
[ -n "${PREFILL:-}" ] && grid+=(--prefill "$PREFILL")
echo "profiling ${name:-GPU $gpu} -> $out/profile-$slug.json"
./baton-engine profile --model llama8b --load-format dummy --seed 1 --device cuda --gpu "$gpu" \
  --kv-memory-mb 30000 --max-num-seqs 128 \
  --warmup "${WARMUP:-1}" --repeats "${REPEATS:-5}" --max-secs-per-shape "${MAX_SECS:-2}" "${grid[@]}" \
  --out "$out/profile-$slug.json" 2>&1 | tee "$out/profile-$slug.log"
