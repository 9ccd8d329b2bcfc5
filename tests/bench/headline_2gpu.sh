#!/usr/bin/env bash
# Headline (reduced): colocated vs disaggregated vs SLO-aware on 2 GPUs,
# Llama-3-8B-shaped dummy model, summarization-like workload (the dummy
# tokenizer is byte-level: 350–700 words ≈ 2–4k tokens), rate sweep.
set -uo pipefail
# BIN_DIR holds baton-engine (--features cuda), baton-gateway, baton-bench and the
# folders written by native-decode/gpu/make_dummy_folders.py.
cd "${BIN_DIR:-$(dirname "$0")}"
out="${OUT:-/tmp/out}"; mkdir -p "$out"
rates="${RATES:-2,4,6,8}"; secs="${SECS:-20}"
pids=()
stop_all() { for p in "${pids[@]}"; do kill $p 2>/dev/null; done; wait 2>/dev/null; pids=(); }
trap stop_all EXIT
eng() { local n=$1 gpu=$2 port=$3; shift 3
  CUDA_VISIBLE_DEVICES=$gpu ./baton-engine --model llama8b --load-format dummy --seed 1 --port $port \
    --served-model-name m --device cuda --kv-memory-mb 30000 --max-num-seqs 128 "$@" >"$out/$n.log" 2>&1 & pids+=($!); }
wait_up() { for p in "$@"; do for _ in $(seq 1 240); do curl -sf http://127.0.0.1:$p/health >/dev/null && break; sleep 0.5; done; done; }
bench() { local label=$1
  ./baton-bench sweep --url http://127.0.0.1:42000 --model m --workload uniform:350:700:128:256 \
    --rates "$rates" --duration "$secs" --max-requests 400 --timeout 120 --seed 3 --extra-body '{"ignore_eos": true}' \
    --goodput ttft:2000 tpot:100 --slo-class standard --label "$label" --quiet --out "$out/$label.json" 2>&1 | tail -12; }
echo "== (a) colocated: 2 x role both, chunked prefill (2048), least_load"
eng a0 0 42001 --role both --max-num-batched-tokens 2048
eng a1 1 42002 --role both --max-num-batched-tokens 2048
wait_up 42001 42002
./baton-gateway --worker-urls http://127.0.0.1:42001 http://127.0.0.1:42002 --policy least_load --port 42000 >"$out/gw-a.log" 2>&1 & pids+=($!)
wait_up 42000; bench colocated; stop_all
echo "== (b) disaggregated: prefill GPU0, decode GPU1"
eng bp 0 42001 --role prefill --max-num-batched-tokens 8192
eng bd 1 42002 --role decode --max-num-batched-tokens 512
wait_up 42001 42002
./baton-gateway --pd-disaggregation --prefill http://127.0.0.1:42001 --decode http://127.0.0.1:42002 --port 42000 >"$out/gw-b.log" 2>&1 & pids+=($!)
wait_up 42000; bench disaggregated
echo "== (c) SLO-aware: same engines, predictive admission + conditional disaggregation"
kill "${pids[-1]}"; sleep 1
./baton-gateway --pd-disaggregation --prefill http://127.0.0.1:42001 --decode http://127.0.0.1:42002 --port 42000 --slo-routing --slo-admission reject >"$out/gw-c.log" 2>&1 & pids+=($!)
wait_up 42000; bench slo_aware
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -2
