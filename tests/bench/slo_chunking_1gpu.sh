#!/usr/bin/env bash
# One GPU, one engine serving both phases (Llama-3-8B shape, dummy weights): fixed 2048-token prefill chunks
# (`--slo-scheduling off`, today's scheduler) against SLO-driven chunking (`--slo-scheduling on`: each step's
# prefill sized to the decoding sequences' TPOT budgets, prompts in first-token-deadline order), behind the same
# gateway (aggregated, one worker), which sends every request's budget to the engine (`x-baton-slo`) and its own
# prediction back to the client (`x-baton-predicted`). Each SLO tier is a run of its own, with its class sent.
# Run from a folder holding baton-engine (--features cuda), baton-gateway and baton-bench (BIN_DIR).
#   SETUPS=fixed,slo   WORKLOADS=summarization,mix   TIERS=interactive,standard,strict   SECS=8
# Results: $OUT/slo1gpu.tgz (one baton-bench sweep JSON with records per setup × workload × tier, logs), read by
#   python3 tests/bench/headline_report.py slo1gpu.tgz --gpus 1 --details
set -uo pipefail
cd "${BIN_DIR:-$(dirname "$0")}"
out="${OUT:-/tmp/out}"; mkdir -p "$out/slo1gpu"
setups="${SETUPS:-fixed,slo}"; secs="${SECS:-8}"
export BATON_FLEET_KEY="${BATON_FLEET_KEY:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
pids=()
stop_all() { for p in "${pids[@]}"; do kill $p 2>/dev/null; done; wait 2>/dev/null; pids=(); }
trap stop_all EXIT
wait_up() { for p in "$@"; do for _ in $(seq 1 240); do curl -sf http://127.0.0.1:$p/health >/dev/null && break; sleep 0.5; done; done; }
cat >"$out/slo1gpu/gateway.toml" <<'TOML'
[slo]
routing = true
[slo.classes.interactive]
ttft_ms = 500
tpot_ms = 30
[slo.classes.standard]
ttft_ms = 2000
tpot_ms = 100
[slo.classes.strict]
ttft_ms = 4000
tpot_ms = 20
[slo.policy]
# One engine: nothing to choose, and a rejection would hide what the engine's scheduler did.
admission = "off"
TOML
# name  workload spec  rates (one GPU: half the headline's 2-GPU rates)  seed
declare -A SPEC=(
  [summarization]="uniform:350:700:128:256 ${SUM_RATES:-2,4,6,8} 100"
  [chat]="uniform:16:80:64:256 ${CHAT_RATES:-8,16,24,32} 200"
  [mix]="mix:uniform:350:700:128:256@1,uniform:16:80:64:256@1 ${MIX_RATES:-4,8,12,16} 300"
)
declare -A TIER=([interactive]="500 30" [standard]="2000 100" [strict]="4000 20")
start() { local setup=$1; shift
  ./baton-engine --model llama8b --load-format dummy --seed 1 --port 43001 --gpu 0 --served-model-name m \
    --device cuda --kv-memory-mb 30000 --max-num-seqs 128 --role both "$@" >>"$out/slo1gpu/engine-$setup.log" 2>&1 & pids+=($!)
  ./baton-gateway --config "$out/slo1gpu/gateway.toml" --worker-urls http://127.0.0.1:43001 \
    --policy least_load --port 43000 >>"$out/slo1gpu/gw-$setup.log" 2>&1 & pids+=($!)
  wait_up 43001 43000
}
for setup in ${setups//,/ }; do
  case $setup in
    fixed) flags=(--slo-scheduling off --max-num-batched-tokens 2048) ;;
    slo) flags=(--slo-scheduling on --max-num-batched-tokens 8192) ;;
    *) echo "unknown setup $setup"; exit 2 ;;
  esac
  # One engine per setup; every run has its own seed, so no run is served from another's prefix cache.
  start $setup "${flags[@]}"
  t=0
  for w in $(echo "${WORKLOADS:-summarization,mix}" | tr , ' '); do
    for tier in $(echo "${TIERS:-interactive,standard,strict}" | tr , ' '); do
      read -r spec rates seed <<<"${SPEC[$w]}"
      read -r ttft tpot <<<"${TIER[$tier]}"
      t=$((t + 1))
      curl -sf http://127.0.0.1:43001/health >/dev/null || { echo "engine down: restarting"; stop_all; start $setup "${flags[@]}"; }
      echo "-- $setup / $w / $tier (rates $rates)"
      ./baton-bench sweep --url http://127.0.0.1:43000 --model m --workload "$spec" --rates "$rates" \
        --duration "$secs" --max-requests 1000 --timeout 60 --seed $((seed + 10 * t)) --extra-body '{"ignore_eos": true}' \
        --goodput ttft:$ttft tpot:$tpot --slo-class $tier --label "$setup-$w-$tier" --save-records --quiet \
        --out "$out/slo1gpu/$setup-$w-$tier.json" 2>&1 | grep -E "attainment|goodput" | head -3
    done
  done
  curl -s http://127.0.0.1:43001/metrics | grep -E "^baton:(step_model_ms|step_duration)" >"$out/slo1gpu/metrics-$setup.txt"
  stop_all
done
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1 | tee "$out/slo1gpu/gpus.txt"
tar -C "$out" -czf "$out/slo1gpu.tgz" slo1gpu && rm -rf "$out/slo1gpu"
