#!/usr/bin/env bash
# Headline: goodput per GPU of (a) colocated, (b) disaggregated and (c) Baton SLO-aware serving on 2 GPUs of
# one host, Llama-3-8B-shaped model with dummy weights (ignore_eos, so output lengths follow the workload).
# Run from a folder holding baton-engine (--features cuda), baton-gateway, baton-bench and the folders written
# by native-decode/gpu/make_dummy_folders.py (BIN_DIR). The dummy tokenizer is byte-level, so the workload's
# "tokens" are words of ~6 bytes: summarization 350–700 words ≈ 2–4k prompt tokens, chat 16–80 words ≈
# 100–500 tokens.
#   SETUPS=a,b,c  which setups to run (default all; one device call may not fit all three)
#   SECS=15       seconds of Poisson arrivals per rate point
# Results: $OUT/headline-<setups>.tgz (one JSON report per setup × workload, with per-request records, so
# attainment can be recomputed for any SLO tier by tests/bench/headline_report.py) and the engine/gateway logs.
set -uo pipefail
cd "${BIN_DIR:-$(dirname "$0")}"
out="${OUT:-/tmp/out}"; mkdir -p "$out/headline"
setups="${SETUPS:-a,b,c}"; secs="${SECS:-15}"
pids=()
# Gateway and engines share one fleet key (KV transfer is refused without it); a fresh one unless given.
export BATON_FLEET_KEY="${BATON_FLEET_KEY:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
stop_all() { for p in "${pids[@]}"; do kill $p 2>/dev/null; done; wait 2>/dev/null; pids=(); }
trap stop_all EXIT
# Engines on distinct GPUs by ordinal (not CUDA_VISIBLE_DEVICES): the device-to-device KV hand-off maps the
# other engine's pool, so both GPUs must stay visible to both processes.
eng() { local n=$1 gpu=$2 port=$3; shift 3
  ./baton-engine --model llama8b --load-format dummy --seed 1 --port $port --gpu $gpu \
    --served-model-name m --device cuda --kv-memory-mb 30000 --max-num-seqs 128 "$@" >"$out/headline/$n.log" 2>&1 & pids+=($!); }
wait_up() { for p in "$@"; do for _ in $(seq 1 240); do curl -sf http://127.0.0.1:$p/health >/dev/null && break; sleep 0.5; done; done; }
# name  workload spec  rates  slo class sent to the gateway  seed (rate point i uses seed + i: prompts never
# repeat within a setup, so no point is served from the prefix cache of an earlier one; every setup starts on
# fresh engines and sees the same prompts)
WORKLOADS=(
  "summarization uniform:350:700:128:256 ${SUM_RATES:-4,8,12,16,20} standard 100"
  "chat uniform:16:80:64:256 ${CHAT_RATES:-16,32,48,64} interactive 200"
  "mix mix:uniform:350:700:128:256@1,uniform:16:80:64:256@1 ${MIX_RATES:-8,16,24,32} standard 300"
)
sweep_all() { local setup=$1
  for w in "${WORKLOADS[@]}"; do
    read -r name spec rates class seed <<<"$w"
    local ttft=2000 tpot=100
    [ "$class" = interactive ] && { ttft=500; tpot=30; }
    echo "-- $setup / $name (rates $rates, $class)"
    ./baton-bench sweep --url http://127.0.0.1:42000 --model m --workload "$spec" --rates "$rates" \
      --duration "$secs" --max-requests 1000 --timeout 60 --seed $seed --extra-body '{"ignore_eos": true}' \
      --goodput ttft:$ttft tpot:$tpot --slo-class $class --label "$setup-$name" --save-records --quiet \
      --out "$out/headline/$setup-$name.json" 2>&1 | grep -E "attainment|goodput" | head -3
  done
}
# Two engines serving both phases, chunked prefill in 2048-token steps: (a) and (c).
both_engines() {
  eng ${1}0 0 42001 --role both --max-num-batched-tokens 2048
  eng ${1}1 1 42002 --role both --max-num-batched-tokens 2048
  wait_up 42001 42002
}
case ",$setups," in *,a,*)
  echo "== (a) colocated: 2 x role both, chunked prefill (2048-token steps), least_load"
  both_engines a
  ./baton-gateway --worker-urls http://127.0.0.1:42001 http://127.0.0.1:42002 --policy least_load --port 42000 \
    >"$out/headline/gw-a.log" 2>&1 & pids+=($!)
  wait_up 42000; sweep_all colocated; stop_all ;;
esac
pd_engines() {
  eng $1p 0 42001 --role prefill --max-num-batched-tokens 8192
  eng $1d 1 42002 --role decode --max-num-batched-tokens 2048
  wait_up 42001 42002
}
case ",$setups," in *,b,*)
  echo "== (b) disaggregated: prefill GPU0 -> decode GPU1 (CUDA IPC KV hand-off)"
  pd_engines b
  ./baton-gateway --pd-disaggregation --prefill http://127.0.0.1:42001 --decode http://127.0.0.1:42002 --port 42000 \
    >"$out/headline/gw-b.log" 2>&1 & gw=$!
  wait_up 42000; sweep_all disaggregated; kill $gw; wait $gw 2>/dev/null
  curl -s http://127.0.0.1:42002/metrics | grep -E "^baton:kv_(pulls|pull_recomputes|device_imports|device_import_microseconds)_total"
  stop_all ;;
esac
case ",$setups," in *,c,*)
  # Both engines serve both phases; per request the gateway predicts TTFT/TPOT for every placement -- prefill on
  # one GPU and decode on the other (either way), or the whole request on one GPU (conditional disaggregation,
  # any prompt length) -- takes the one with the most slack against the request's SLO class, and answers 429
  # early when none is predicted to meet it (a rejection counts as a miss).
  echo "== (c) SLO-aware: 2 x role both, per-request choice of colocated or disaggregated placement, admission"
  both_engines c
  cat >"$out/headline/c.toml" <<'TOML'
[slo]
routing = true
prior_prefill_tokens_per_s = 30000.0
[slo.policy]
admission = "reject"
conditional_disaggregation = true
local_prefill_max_tokens = 1000000
TOML
  ./baton-gateway --config "$out/headline/c.toml" --pd-disaggregation \
    --prefill http://127.0.0.1:42001 --prefill http://127.0.0.1:42002 \
    --decode http://127.0.0.1:42001 --decode http://127.0.0.1:42002 --port 42000 \
    >"$out/headline/gw-c.log" 2>&1 & gw=$!
  wait_up 42000; sweep_all slo_aware
  curl -s http://127.0.0.1:42000/metrics | grep -E "^baton_(slo_local_prefills|pd_local_prefills|slo_requests)" | head -12
  kill $gw; wait $gw 2>/dev/null ;;
esac
stop_all
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -2 | tee "$out/headline/gpus.txt"
tar -C "$out" -czf "$out/headline-${setups//,/}.tgz" headline && rm -rf "$out/headline"
