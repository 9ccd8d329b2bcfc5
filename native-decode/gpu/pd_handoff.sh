#!/usr/bin/env bash
# Two-GPU KV hand-off (run on a host with >= 2 GPUs, from a folder holding baton-engine and baton-cuda-bench
# built --features cuda, baton-gateway, and the folders of make_dummy_folders.py):
#  1. `baton-cuda-bench handoff`: the kv_import kernel pulling Llama-3-8B-shaped prompt KV from GPU 0 into GPU 1
#     over the peer link, next to cuMemcpyPeer's bandwidth (one process);
#  2. one CUDA engine on GPU 0 vs CUDA prefill (GPU 0) + CUDA decode (GPU 1) behind the gateway, dummy weights,
#     same seed, greedy: token-identical? and did the decode engine copy device-to-device (CUDA IPC)?
#  3. the Llama-3-8B shape with ~3k-token prompts through the same PD path: TTFT and import time per request.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"  # pd_identical.py lives beside this script
cd "${BIN_DIR:-$here}"
out="${OUT:-/tmp/out}"; mkdir -p "$out"
pids=()
# Gateway and engines share one fleet key (KV transfer is refused without it); a fresh one unless given.
export BATON_FLEET_KEY="${BATON_FLEET_KEY:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
stop_all() { for p in "${pids[@]}"; do kill $p 2>/dev/null; done; wait 2>/dev/null; pids=(); }
trap stop_all EXIT
wait_up() { for p in "$@"; do for _ in $(seq 1 240); do curl -sf http://127.0.0.1:$p/health >/dev/null && break; sleep 0.5; done; done; }
eng() { local n=$1 model=$2 gpu=$3 port=$4; shift 4
  ./baton-engine --model $model --load-format dummy --seed 7 --port $port --served-model-name m --device cuda --gpu $gpu "$@" >"$out/$n.log" 2>&1 & pids+=($!); }

echo "== 1. kernel vs link"
./baton-cuda-bench handoff --out "$out/handoff.json" 2>&1 | grep -v INFO

echo "== 2. small model: single engine vs PD across GPUs"
eng single dummy 0 41000 --role both
eng prefill dummy 0 41001 --role prefill
eng decode dummy 1 41002 --role decode
wait_up 41000 41001 41002
./baton-gateway --pd-disaggregation --prefill http://127.0.0.1:41001 --decode http://127.0.0.1:41002 --port 41010 >"$out/gateway.log" 2>&1 & pids+=($!)
wait_up 41010
python3 "$here/pd_identical.py" 41000 41010
curl -s http://127.0.0.1:41002/metrics | grep -E "^baton:kv_(pulls|pull_failures|pull_recomputes|device_imports|device_import_microseconds)_total"
grep -m2 -i "hand-off\|ipc" "$out/decode.log"
stop_all

echo "== 3. Llama-3-8B shape, ~3k-token prompts, prefill GPU 0 -> decode GPU 1"
eng p8 llama8b 0 41001 --role prefill --kv-memory-mb 30000 --max-num-batched-tokens 8192
eng d8 llama8b 1 41002 --role decode --kv-memory-mb 30000
wait_up 41001 41002
./baton-gateway --pd-disaggregation --prefill http://127.0.0.1:41001 --decode http://127.0.0.1:41002 --port 41010 >"$out/gateway8.log" 2>&1 & pids+=($!)
wait_up 41010
./baton-bench run --url http://127.0.0.1:41010 --model m --workload uniform:350:700:128:128 --num-requests 24 \
  --request-rate 2 --seed 3 --extra-body '{"ignore_eos": true}' --quiet --out "$out/pd8b.json" 2>&1 | tail -8
curl -s http://127.0.0.1:41002/metrics | grep -E "^baton:kv_(pulls|pull_failures|pull_recomputes|device_imports|device_import_microseconds)_total"
