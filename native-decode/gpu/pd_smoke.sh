#!/usr/bin/env bash
# GPU smoke (run from a folder holding baton-engine built --features cuda,
# baton-gateway, and the folders of make_dummy_folders.py): one CUDA engine vs CUDA prefill + CUDA decode behind the gateway
# (dummy weights, same seed), greedy, token-identical?
set -uo pipefail
# BIN_DIR holds baton-engine (--features cuda), baton-gateway, baton-bench and the
# folders written by native-decode/gpu/make_dummy_folders.py.
here="$(cd "$(dirname "$0")" && pwd)"  # pd_identical.py lives beside this script
cd "${BIN_DIR:-$here}"
out="${OUT:-/tmp/out}"; mkdir -p "$out"
pids=()
# Gateway and engines share one fleet key (KV transfer is refused without it); a fresh one unless given.
export BATON_FLEET_KEY="${BATON_FLEET_KEY:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null; done' EXIT
eng() { local n=$1 port=$2; shift 2
  ./baton-engine --model dummy --load-format dummy --seed 7 --port $port --served-model-name m --device cuda "$@" >"$out/$n.log" 2>&1 & pids+=($!); }
eng single 41000 --role both
eng prefill 41001 --role prefill
eng decode 41002 --role decode
./baton-gateway --pd-disaggregation --prefill http://127.0.0.1:41001 --decode http://127.0.0.1:41002 --port 41010 >"$out/gateway.log" 2>&1 & pids+=($!)
for p in 41000 41001 41002 41010; do for _ in $(seq 1 180); do curl -sf http://127.0.0.1:$p/health >/dev/null && break; sleep 0.5; done; done
grep -h "device" "$out"/single.log | head -3
python3 "$here/pd_identical.py" 41000 41010
python3 "$here/sampling_smoke.py" 41000
curl -s http://127.0.0.1:41010/metrics | grep -E "^baton_pd_local_prefills_total|^baton_prefill_leg_duration_seconds_count"
tail -3 "$out/decode.log"
