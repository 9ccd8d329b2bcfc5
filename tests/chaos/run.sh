#!/usr/bin/env bash
# Compose-based deployment + chaos suite (see docs/RELIABILITY.md).
#
#   tests/chaos/run.sh            # everything: build, smoke, Prometheus, bad input, faults
#   CHAOS_PHASES="smoke badinput hostile" tests/chaos/run.sh
#
# 1. `docker/stack.sh build`: the release binaries on the host (the same build
#    as `baton up` and the tests) and the images from them (base images from
#    a registry, or from docker/build-base.sh where there is none);
# 2. starts docker/compose.yaml through `docker/stack.sh compose` (Compose v2
#    or v1; profile cpu: gateway + 2 prefill + 2 decode engines + Redis +
#    Prometheus) with docker/gateway/chaos.toml;
# 3. smoke: streaming requests through the gateway (curl, baton-bench), and
#    Prometheus' `up` for the gateway and every engine;
# 4. badinput: hostile requests and slow-drip clients (badinput.py);
# 4b. hostile: the security review's attacks (hostile.py) beside a normal load,
#    whose attainment must match a run without them (attainment.py);
# 5. faults: under a steady streaming load (load.py), kill / pause / cut off a
#    decode engine, restart Redis, crash Redis, kill a prefill engine; after
#    each, checks that the gateway lived, failures were bounded (bounds
#    derived from the gateway config), routing went around the worker, the
#    engines' KV usage went back to baseline, and every request was counted
#    once: /v1/slo (cluster-wide) = Redis = the gateway's own counter;
# 5b. failover (CHAOS_PHASES="smoke failover"; not with faults): Redis behind
#    Sentinel (a replica and three sentinels added by an override, the
#    gateway on chaos-failover.toml); the primary is killed under load: no
#    request fails, the promoted replica's total = /v1/slo = the gateway's
#    own counter;
# 5c. scale (CHAOS_PHASES="scale", on its own stack): profile scale (one
#    prefill and one decode service, found by DNS: docker/gateway/chaos-scale.toml);
#    under load, `--scale prefill=3 --scale decode=2`, then back to 1 + 1,
#    with no gateway change: the gateway lists every replica, then only the
#    survivors, and no request is lost;
# 6. no container log says "panicked".
# Results: tests/chaos/out/ (summary.md, *.json, logs). Always tears down
# (docker compose down -v). Bounded: every wait has a limit.
#
# Knobs: CHAOS_ENGINE=real|mock (mock: baton-mock-engine, no model needed),
# CHAOS_SKIP_BUILD=1 (reuse the images when they exist), CHAOS_KEEP=1 (leave the stack up),
# CHAOS_CONCURRENCY or CHAOS_RATE / CHAOS_DURATION / CHAOS_MAX_TOKENS (load per fault phase).
set -euo pipefail
root="${CHAOS_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}"
cd "$root"
# Run from a copy: bash reads a script as it goes, so editing run.sh while it
# runs would otherwise derail the run.
if [[ -z ${CHAOS_COPY:-} ]]; then
  copy=$(mktemp /tmp/baton-chaos-run.XXXXXX)
  cp "$0" "$copy"
  CHAOS_COPY=$copy CHAOS_ROOT=$root exec bash "$copy" "$@"
fi
rm -f "$CHAOS_COPY" # bash keeps reading the open file
here="$root/tests/chaos"  # (the copy runs from /tmp)
out="$here/out"
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.jsonl "$out"/*.log "$out"/summary.md "$out"/*.redis-* "$out"/*.lua

PHASES=${CHAOS_PHASES:-"smoke badinput hostile faults"} # or "smoke failover" (5b)
ENGINE=${CHAOS_ENGINE:-real}
# Closed-loop load (CHAOS_CONCURRENCY clients, each sending its next request
# when the last ended) adapts to how fast this machine is; CHAOS_RATE=R
# switches to open-loop Poisson arrivals.
CONCURRENCY=${CHAOS_CONCURRENCY:-4}
RATE=${CHAOS_RATE:-}
if [[ -n $RATE ]]; then LOAD=(--rate "$RATE"); LOAD_DESC="$RATE req/s"; else
  LOAD=(--concurrency "$CONCURRENCY"); LOAD_DESC="$CONCURRENCY concurrent streams"; fi
DURATION=${CHAOS_DURATION:-20}
FAULT_AT=${CHAOS_FAULT_AT:-6}
MAX_TOKENS=${CHAOS_MAX_TOKENS:-64}
MODEL_NAME=smollm2
TAG=${CHAOS_TAG:-chaos}
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-batonchaos}
export BATON_PORT=${BATON_PORT:-30480}
export PROMETHEUS_PORT=${PROMETHEUS_PORT:-39490}
export BATON_BIND=127.0.0.1
export BATON_GATEWAY_CONFIG=chaos.toml
export BATON_RESTART=no
export BATON_GATEWAY_IMAGE=baton/gateway:$TAG
export BATON_ENGINE_IMAGE=baton/engine:$TAG
export BATON_MODEL_DIR="${BATON_MODEL_DIR:-$("$root/tests/fetch-model.sh" --print-dir)}"
export BATON_ENGINE=$ENGINE BATON_PROFILE=cpu
# The scale phase (5c) runs on the scalable services, found by DNS.
if [[ " $PHASES " == *" scale "* ]]; then
  [[ $PHASES == scale ]] || { echo "run the scale phase on its own: CHAOS_PHASES=scale" >&2; exit 2; }
  export BATON_PROFILE=scale BATON_GATEWAY_CONFIG=chaos-scale.toml
  ENGINE_SERVICES="prefill decode" N_WORKERS=2
fi
ENGINE_SERVICES=${ENGINE_SERVICES:-"prefill-1 prefill-2 decode-1 decode-2"}
N_WORKERS=${N_WORKERS:-4}
SCALE_DURATION=${CHAOS_SCALE_DURATION:-60}
export BATON_MODEL_NAME=$MODEL_NAME
export BATON_KV_LEASE_SECS=5
export BATON_KV_MEMORY_MB=64
export BATON_ENGINE_ARGS="--max-model-len 2048"
GW="http://127.0.0.1:$BATON_PORT"
PROM="http://127.0.0.1:$PROMETHEUS_PORT"
# Every time bound of a check derives from the gateway config under test,
# with a margin, so a slow (saturated) machine or a changed config does not
# turn into false failures; waits poll a condition up to a deadline instead
# of sleeping a fixed time.
read -r IDLE_S FIRST_BYTE_S REQUEST_S HEALTH_INTERVAL_S HEALTH_TIMEOUT_S HEALTH_FAILS < <(
  python3 - "$root/docker/gateway/$BATON_GATEWAY_CONFIG" <<'PY'
import sys, tomllib
c = tomllib.load(open(sys.argv[1], "rb"))
t, h = c["timeouts"], c["health"]
print(t["idle_secs"], t["first_byte_secs"], t["request_secs"],
      h["interval_secs"], h["timeout_secs"], h["failure_threshold"])
PY
)
calc() { python3 -c "print(round($1, 2))"; }
# A stream cut by a fault ends by the idle (or first-byte) timeout; margin:
# half of it, at least 3 s (client-side scheduling on a loaded machine).
FAIL_END_S=$(calc "max($IDLE_S, $FIRST_BYTE_S) + max(3, 0.5 * max($IDLE_S, $FIRST_BYTE_S))")
# Health marks a worker down after failure_threshold probes of interval +
# timeout each; requests sent later must not fail (+1 s margin).
ROUTE_S=$(calc "$HEALTH_FAILS * ($HEALTH_INTERVAL_S + $HEALTH_TIMEOUT_S) + 1")
# The load generator's own bound per request: beyond the gateway's request
# timeout, so a client-side timeout means a hung request, never a slow one.
CLIENT_TIMEOUT_S=$(calc "$REQUEST_S + 15")
# A TTFT this long after the fault means the request waited out the
# first-byte timeout on the faulty worker before its retry.
SLOW_TTFT_S=$(calc "0.9 * $FIRST_BYTE_S")
t_start=$(date +%s)
log() { echo "[chaos $(($(date +%s) - t_start))s] $*" >&2; }
die() { log "FAIL: $*"; exit 1; }
FAILED=()
check() { # NAME CONDITION-COMMAND...
  local name=$1
  shift
  if "$@"; then log "  ok: $name"; else log "  FAILED: $name"; FAILED+=("$name"); fi
}
# Compose v2 or v1, the stack's file and profile, the fleet key: docker/stack.sh.
compose() { "$root/docker/stack.sh" compose "$@"; }
cid() { compose ps -q "$1"; }
NET="${COMPOSE_PROJECT_NAME}_baton"

cleanup() {
  local rc=$?
  set +e
  if [[ -n ${STACK_UP:-} ]]; then
    docker ps -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" --filter status=paused |
      xargs -r docker unpause >/dev/null 2>&1
    compose logs --no-color >"$out/compose.log" 2>&1
    if [[ ${CHAOS_KEEP:-0} == 1 ]]; then
      log "CHAOS_KEEP=1: stack left up ($GW, $PROM); stop it with: COMPOSE_PROJECT_NAME=$COMPOSE_PROJECT_NAME docker/stack.sh down"
    else
      compose down -v --remove-orphans >/dev/null 2>&1
    fi
  fi
  log "done in $(($(date +%s) - t_start))s (rc=$rc)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- 1. binaries and images --------------------------------------------------
if [[ $ENGINE == real ]]; then
  "$root/tests/fetch-model.sh" >&2
fi
if [[ ${CHAOS_SKIP_BUILD:-0} == 1 ]] && docker image inspect "$BATON_GATEWAY_IMAGE" "$BATON_ENGINE_IMAGE" >/dev/null 2>&1; then
  log "CHAOS_SKIP_BUILD=1: reusing $BATON_GATEWAY_IMAGE and $BATON_ENGINE_IMAGE"
else
  "$root/docker/stack.sh" build || die "docker/stack.sh build failed"
fi
# Local Redis/Prometheus images where the official ones are absent (no registry).
if ! docker image inspect "${REDIS_IMAGE:-redis:7-bookworm}" >/dev/null 2>&1 &&
  docker image inspect baton-local/redis:latest >/dev/null 2>&1; then
  export REDIS_IMAGE=baton-local/redis:latest PROMETHEUS_IMAGE=baton-local/prometheus:latest
fi
docker image ls --format '  {{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "baton/|baton-local/" >&2

# ---- 2. the stack --------------------------------------------------------------
compose down -v --remove-orphans >/dev/null 2>&1 || true
if [[ $ENGINE == mock ]]; then
  # Same services, mock engines speaking the vLLM PD protocol (--lenient: a
  # prefill and a decode in separate processes). Written to a temp override.
  cat >"$out/compose.mock.yaml" <<EOF
services:
  prefill-1: { command: --flavor vllm-prefill --lenient --host 0.0.0.0 --port 8000 --model $MODEL_NAME --token-delay-us 20000 }
  prefill-2: { command: --flavor vllm-prefill --lenient --host 0.0.0.0 --port 8000 --model $MODEL_NAME --token-delay-us 20000 }
  decode-1: { command: --flavor vllm-decode --lenient --host 0.0.0.0 --port 8000 --model $MODEL_NAME --token-delay-us 20000 }
  decode-2: { command: --flavor vllm-decode --lenient --host 0.0.0.0 --port 8000 --model $MODEL_NAME --token-delay-us 20000 }
  prefill: { entrypoint: [/usr/local/bin/baton-mock-engine], command: --flavor vllm-prefill --lenient --host 0.0.0.0 --port 8000 --model $MODEL_NAME --token-delay-us 20000 }
  decode: { entrypoint: [/usr/local/bin/baton-mock-engine], command: --flavor vllm-decode --lenient --host 0.0.0.0 --port 8000 --model $MODEL_NAME --token-delay-us 20000 }
EOF
  export BATON_COMPOSE_EXTRA="$out/compose.mock.yaml"
fi
if [[ " $PHASES " == *" failover "* ]]; then
  [[ " $PHASES " != *" faults "* ]] || die "run the failover phase apart from faults (its Redis faults would fail over)"
  # Redis behind Sentinel: the compose Redis is the first primary, plus a
  # replica and three sentinels (the same image: redis-server --sentinel),
  # down after 1 s, quorum 2. Appended to the (mock) override, if any.
  export BATON_GATEWAY_CONFIG=chaos-failover.toml
  extra="$out/compose.failover.yaml"
  redis_image=${REDIS_IMAGE:-redis:7-bookworm}
  if ! docker image inspect "$redis_image" >/dev/null 2>&1 && docker image inspect baton-local/redis:latest >/dev/null 2>&1; then
    redis_image=baton-local/redis:latest
  fi
  sentinel_conf='sentinel resolve-hostnames yes\nsentinel monitor baton redis 6379 2\nsentinel down-after-milliseconds baton 1000\nsentinel failover-timeout baton 10000\n'
  {
    if [[ -n ${BATON_COMPOSE_EXTRA:-} ]]; then cat "$BATON_COMPOSE_EXTRA"; else echo "services:"; fi
    echo "  redis-replica:"
    echo "    image: $redis_image"
    echo '    command: ["redis-server", "--protected-mode", "no", "--save", "", "--appendonly", "yes", "--dir", "/tmp", "--replicaof", "redis", "6379"]'
    echo "    depends_on: [redis]"
    echo "    networks: [baton]"
    for i in 1 2 3; do
      echo "  sentinel-$i:"
      echo "    image: $redis_image"
      echo "    command: [\"sh\", \"-c\", \"printf '$sentinel_conf' >/tmp/sentinel.conf && exec redis-server /tmp/sentinel.conf --sentinel --port 26379 --protected-mode no\"]"
      echo "    depends_on: [redis, redis-replica]"
      echo "    networks: [baton]"
    done
  } >"$extra"
  export BATON_COMPOSE_EXTRA="$extra"
fi
log "compose up ($ENGINE engines, project $COMPOSE_PROJECT_NAME, gateway $GW, Prometheus $PROM)"
STACK_UP=1
# Retried: a published port of the previous stack can stay bound for a moment
# after `down` (seen once: "bind: address already in use" for Prometheus).
for try in 1 2 3; do
  compose up -d --no-build >&2 && break
  ((try < 3)) || die "compose up failed 3 times"
  log "compose up failed (try $try); retrying in 5 s"
  sleep 5
done

metric() { curl -fsS --max-time 5 "$GW/metrics" 2>/dev/null; }
all_healthy() { # every worker of the gateway healthy, no breaker open
  # (a breaker stays half-open, 2, until traffic closes it: that counts as back)
  local m
  m=$(metric) || return 1
  [[ $(grep -c '^baton_worker_healthy{.*} 1$' <<<"$m") -eq $N_WORKERS ]] &&
    ! grep -qE '^baton_breaker_state\{.*\} 1$' <<<"$m"
}
wait_for() { # SECONDS DESCRIPTION COMMAND...
  # Polls COMMAND until it succeeds or SECONDS of wall time have passed (a
  # deadline, however slow each poll is); WAITED = seconds it took.
  local limit=$1 what=$2 t0 deadline
  shift 2
  t0=$(date +%s.%N)
  deadline=$(($(date +%s) + limit))
  while :; do
    if "$@"; then
      WAITED=$(python3 -c "import time;print(round(time.time()-$t0,1))")
      return 0
    fi
    (($(date +%s) < deadline)) || break
    sleep 0.2
  done
  log "timed out after ${limit}s waiting for: $what"
  return 1
}
# The gateway counts a worker healthy until its probes say otherwise, so it
# can look ready before the engines listen (they load the model first): also
# ask each engine's /health from the gateway's network.
GW_CID=$(cid gateway)
engines_up() {
  local s
  for s in $ENGINE_SERVICES; do
    docker exec "$GW_CID" curl -fsS --max-time 3 -o /dev/null "http://$s:8000/health" 2>/dev/null || return 1
  done
}
stack_ready() { engines_up && all_healthy; }
wait_for 180 "engines ($ENGINE_SERVICES) answering /health + $N_WORKERS healthy workers" stack_ready ||
  { compose ps >&2; compose logs --tail 30 >&2; die "stack did not become healthy"; }
log "stack healthy after $(($(date +%s) - t_start))s"

prom_query() { # PROMQL → JSON result array
  curl -fsS --max-time 5 "$PROM/api/v1/query" --data-urlencode "query=$1" | jq -c '.data.result'
}
kv_usage() { # → "instance=value ..." of every engine, from Prometheus
  prom_query 'vllm:kv_cache_usage_perc' | jq -r 'map("\(.metric.instance)=\(.value[1])") | sort | join(" ")'
}
# Cluster-wide count as the gateway reports it (/v1/slo: from Redis while
# the store is healthy, else this replica's local mirror).
slo_requests() { curl -fsS --max-time 5 "$GW/v1/slo" | jq '[.rows[].requests] | add // 0'; }
# This replica's own count (Prometheus counter, not the shared store). With
# several gateways, the cluster-wide count must equal the sum of these.
local_slo_requests() {
  local m
  m=$(metric) || return 1
  awk '/^baton_slo_requests_total\{/ { n += $2 } END { print n + 0 }' <<<"$m"
}
# The shared store as this replica sees it: healthy, backlog, flushed, ...
store_stat() { # STAT
  local m
  m=$(metric) || return 1
  awk -v s="baton_slo_store{stat=\"$1\"}" '$1 == s { print $2 + 0; f = 1 } END { if (!f) exit 1 }' <<<"$m"
}
# Requests counted in Redis itself (every goodput bucket), read with
# redis-cli inside the container: independent of any gateway.
REDIS_TOTAL_LUA="$out/redis-total.lua"
cat >"$REDIS_TOTAL_LUA" <<'LUA'
local n = 0
for _, k in ipairs(redis.call('KEYS', ARGV[1])) do
  local kv = redis.call('HGETALL', k)
  for i = 1, #kv, 2 do
    if string.sub(kv[i], -8) == 'requests' then n = n + tonumber(kv[i + 1]) end
  end
end
return n
LUA
redis_primary() { # the Redis service that is primary now (redis; after a failover, redis-replica)
  local svc c
  for svc in redis redis-replica; do
    c=$(cid "$svc" 2>/dev/null) || continue
    [[ -n $c ]] || continue
    if [[ $(docker exec "$c" redis-cli role 2>/dev/null | head -n 1) == master ]]; then echo "$svc"; return 0; fi
  done
  return 1
}
redis_total() {
  local svc=redis
  if [[ " $PHASES " == *" failover "* ]]; then svc=$(redis_primary) || return 1; fi
  docker exec "$(cid "$svc")" redis-cli --raw EVAL "$(cat "$REDIS_TOTAL_LUA")" 0 'baton:{slo}:gp:*' 2>/dev/null
}

# ---- 3. smoke ----------------------------------------------------------------------
if [[ " $PHASES " == *" smoke "* ]]; then
  log "smoke: one streaming chat completion (curl)"
  curl -sS -N --max-time 60 "$GW/v1/chat/completions" -H 'content-type: application/json' \
    -d "{\"model\":\"$MODEL_NAME\",\"messages\":[{\"role\":\"user\",\"content\":\"Say hi\"}],\"max_tokens\":16,\"stream\":true}" \
    >"$out/smoke-curl.txt"
  check "curl stream ends with [DONE]" grep -q 'data: \[DONE\]' "$out/smoke-curl.txt"
  text=$(grep '^data: {' "$out/smoke-curl.txt" | sed 's/^data: //' | jq -rj '.choices[0].delta.content // empty' 2>/dev/null || true)
  log "  answer: ${text:0:120}"

  log "smoke: baton-bench, 12 streaming requests (4 at a time) through the gateway"
  target/release/baton-bench run --url "$GW" --endpoint chat --model "$MODEL_NAME" \
    --workload fixed:32:24 --num-requests 12 --max-concurrency 4 --timeout 60 \
    --out "$out/smoke-bench.json" >"$out/smoke-bench.log" 2>&1 || true
  tail -n 12 "$out/smoke-bench.log" >&2
  check "baton-bench: 12 of 12 requests completed" \
    jq -e '.runs[0].summary | .sent == 12 and .completed == 12' "$out/smoke-bench.json" >/dev/null

  log "smoke: Prometheus scraped the gateway and all four engines"
  want_up=5
  if [[ $ENGINE == mock ]]; then want_up=1; fi  # mock engines serve no /metrics
  prom_up() {
    local r
    r=$(prom_query 'up{job=~"baton-gateway|baton-engine"}') || return 1
    [[ $(jq '[.[] | select(.value[1] == "1")] | length' <<<"$r") -eq $want_up ]]
  }
  check "Prometheus: up == 1 for the gateway (+ 4 engines)" wait_for 40 "Prometheus up" prom_up
  prom_query 'up' | jq -r '.[] | "  up{job=\(.metric.job),instance=\(.metric.instance)} = \(.value[1])"' >&2
  check "Prometheus has gateway histograms" bash -c \
    "curl -fsS '$PROM/api/v1/query' --data-urlencode 'query=baton_time_to_first_token_seconds_count' | jq -e '.data.result | length > 0' >/dev/null"
  if [[ $ENGINE == real ]]; then check "Prometheus has engine KV usage" bash -c "[[ -n \"\$(curl -fsS '$PROM/api/v1/query' --data-urlencode 'query=vllm:kv_cache_usage_perc' | jq -r '.data.result[0].value[1] // empty')\" ]]"; fi
fi

# ---- 4. bad input ---------------------------------------------------------------
if [[ " $PHASES " == *" badinput "* ]]; then
  log "bad input (raw sockets; slow-drip clients finish last, ~60 s)"
  extra=()
  if [[ $ENGINE == mock ]]; then extra=(--skip-engine-cases); fi  # mock engines accept any prompt and model
  if python3 "$here/badinput.py" --port "$BATON_PORT" --model "$MODEL_NAME" --max-payload 1048576 \
    --context-words 3000 "${extra[@]}" --out "$out/badinput.json" >&2; then
    log "  ok: every bad input got its 4xx"
  else
    FAILED+=("bad input")
  fi
fi

# ---- 4b. hostile clients beside a normal load ---------------------------------------
# The security review's attacks (hostile.py) run through the public port while
# the same closed-loop load as the fault phases runs; that load's attainment
# must match a run of it without attacks (attainment.py: SLO derived from the
# baseline run, so machine speed does not matter).
if [[ " $PHASES " == *" hostile "* ]]; then
  holder_ip=$(docker network inspect "$NET" -f '{{(index .IPAM.Config 0).Gateway}}' 2>/dev/null || true)
  first_byte_deadline=$(python3 - "$root/docker/gateway/$BATON_GATEWAY_CONFIG" <<'PY'
import sys, tomllib
c = tomllib.load(open(sys.argv[1], "rb"))
print(c.get("connections", {}).get("first_byte_secs", 10))
PY
  )
  log "hostile: baseline load, ${DURATION}s ($LOAD_DESC)"
  python3 "$here/load.py" --url "$GW" --model "$MODEL_NAME" "${LOAD[@]}" --duration "$DURATION" \
    --max-tokens "$MAX_TOKENS" --name hostile-baseline --timeout "$CLIENT_TIMEOUT_S" \
    --out "$out/hostile-baseline.json" --records "$out/hostile-baseline.jsonl" >&2
  log "hostile: the same load with the attacks (holder address ${holder_ip:-none})"
  python3 "$here/hostile.py" --port "$BATON_PORT" --model "$MODEL_NAME" --max-payload 1048576 \
    ${holder_ip:+--holder-bind "$holder_ip"} --first-byte-deadline "$first_byte_deadline" \
    --out "$out/hostile-attacks.json" >&2 &
  hostile_pid=$!
  python3 "$here/load.py" --url "$GW" --model "$MODEL_NAME" "${LOAD[@]}" --duration "$DURATION" \
    --max-tokens "$MAX_TOKENS" --name hostile-load --timeout "$CLIENT_TIMEOUT_S" \
    --out "$out/hostile-load.json" --records "$out/hostile-load.jsonl" >&2
  if wait "$hostile_pid"; then log "  ok: every attack got its answer"; else FAILED+=("hostile: attacks"); fi
  jq -c '.attacks | map_values(.ok)' "$out/hostile-attacks.json" >&2 || true
  check "hostile: normal load completed every request under attack" \
    jq -e '.failed == 0' "$out/hostile-load.json"
  if python3 "$here/attainment.py" "$out/hostile-baseline.jsonl" "$out/hostile-load.jsonl" \
    >"$out/hostile-attainment.json"; then
    log "  ok: attainment unchanged $(cat "$out/hostile-attainment.json")"
  else
    log "  FAILED: attainment changed $(cat "$out/hostile-attainment.json")"
    FAILED+=("hostile: attainment")
  fi
  check "hostile: gateway and engines never restarted" bash -c \
    "[[ -z \$(docker ps -a --filter label=com.docker.compose.project=$COMPOSE_PROJECT_NAME --format '{{.Status}}' | grep -v '^Up') ]]"
fi

# ---- 5. faults under load --------------------------------------------------------
declare -a SUMMARIES=()
# Store counters of the gateway, as JSON (for the phase summaries).
store_stats_json() {
  local m
  m=$(metric) || { echo '{}'; return; }
  awk '/^baton_slo_store\{stat="/ { split($1, a, "\""); printf "%s\"%s\": %s", (n++ ? ", " : "{"), a[2], $2 }
       END { print (n ? "}" : "{}") }' <<<"$m"
}
phase() { # NAME CANDIDATES FAULT_CMD RESTORE_CMD [DESCRIPTION]
  # CANDIDATES: WORKER=CONTAINER,... ; load.py hits the one with the most
  # requests in flight at fault time. {container} / {worker} in the commands.
  local name=$1 cands=$2 fault=$3 restore=$4
  local before after sent kv0 kv1 lbefore lafter rbefore rafter st0 st1 started
  wait_for 60 "all workers healthy before $name" all_healthy || { FAILED+=("$name: not healthy before"); return; }
  kv4() { kv0=$(kv_usage) && [[ $(wc -w <<<"$kv0") -eq 4 ]]; }
  if [[ $ENGINE == real ]]; then wait_for 30 "KV usage of 4 engines in Prometheus" kv4 || true; else kv0=$(kv_usage); fi
  # Counts before the load: the gateway's /v1/slo (cluster-wide), its own
  # counter, and Redis itself; they must agree before the fault too.
  consistent0() { before=$(slo_requests) && lbefore=$(local_slo_requests) && rbefore=$(redis_total) &&
    [[ $before -eq $lbefore && $rbefore -eq $lbefore ]]; }
  wait_for 30 "/v1/slo = Redis = the gateway's own count before $name" consistent0 || true
  st0=$(store_stats_json)
  started=$(docker inspect -f '{{.State.StartedAt}}' "$(cid gateway)")
  log "fault phase '$name': $LOAD_DESC for ${DURATION}s, fault at ${FAULT_AT}s: ${5:-$fault}"
  python3 "$here/load.py" --url "$GW" --model "$MODEL_NAME" "${LOAD[@]}" --duration "$DURATION" \
    --max-tokens "$MAX_TOKENS" --fault-at "$FAULT_AT" --fault-cmd "$fault" ${cands:+--candidates "$cands"} \
    --name "$name" --timeout "$CLIENT_TIMEOUT_S" --slow-ttft "$SLOW_TTFT_S" \
    --out "$out/$name.json" --records "$out/$name.jsonl" >&2
  restore=${restore//\{container\}/$(jq -r '.target_container // ""' "$out/$name.json")}
  restore=${restore//\{worker\}/$(jq -r '.target // ""' "$out/$name.json")}
  log "  restore: $restore"
  bash -c "$restore" >&2 || { FAILED+=("$name: restore"); }
  local rec_s=""
  wait_for 90 "workers healthy after $name" all_healthy && rec_s=$WAITED
  # Every engine back to its KV baseline (leases of unpulled KV expire after 5 s).
  local kv_s=""
  kv_back() { [[ $(kv_usage) == "$kv0" ]]; }
  wait_for 40 "KV usage back to baseline ($kv0)" kv_back && kv_s=$WAITED
  kv1=$(kv_usage)
  # The shared store in use again with its backlog flushed (after a Redis
  # fault: the resync), then every count agrees: /v1/slo (cluster-wide, read
  # from Redis about once a second) = Redis = the gateway's own counter, and
  # this phase's requests were counted once each.
  sent=$(jq .sent "$out/$name.json")
  local store_s=""
  store_ok() { [[ $(store_stat healthy) == 1 && $(store_stat backlog) == 0 ]]; }
  wait_for 60 "SLO store healthy, backlog flushed" store_ok && store_s=$WAITED
  consistent() { after=$(slo_requests) && lafter=$(local_slo_requests) && rafter=$(redis_total) &&
    [[ $((after - before)) -eq $sent && $after -eq $lafter && $rafter -eq $lafter ]]; }
  wait_for 30 "/v1/slo = Redis = the gateway's own count, $sent more" consistent || true
  after=$(slo_requests || echo "?")
  lafter=$(local_slo_requests || echo "?")
  rafter=$(redis_total || echo "?")
  st1=$(store_stats_json)
  local gw_state
  gw_state=$(docker inspect -f '{{.State.Status}} restarts={{.RestartCount}} started={{.State.StartedAt}}' "$(cid gateway)")
  local rr_before rr_after
  rr_before=$(cat "$out/$name.redis-before" 2>/dev/null || true)
  rr_after=$(cat "$out/$name.redis-after" 2>/dev/null || true)
  jq --arg kv0 "$kv0" --arg kv1 "$kv1" --arg kv_s "$kv_s" --arg rec_s "$rec_s" --arg slo_before "$before" \
    --arg slo_after "$after" --arg gw "$gw_state" --arg lb "$lbefore" --arg la "$lafter" \
    --arg rb "$rbefore" --arg ra "$rafter" --arg store_s "$store_s" --argjson st0 "$st0" --argjson st1 "$st1" \
    --arg rrb "$rr_before" --arg rra "$rr_after" \
    '. + {kv_before: $kv0, kv_after: $kv1, kv_back_s: $kv_s, healthy_again_s: $rec_s,
          slo_before: ($slo_before|tonumber? // null), slo_after: ($slo_after|tonumber? // null),
          local_before: ($lb|tonumber? // null), local_after: ($la|tonumber? // null),
          redis_before: ($rb|tonumber? // null), redis_after: ($ra|tonumber? // null),
          slo_delta: (($slo_after|tonumber? // -1) - ($slo_before|tonumber? // 0)),
          local_slo_delta: (($la|tonumber? // -1) - ($lb|tonumber? // 0)),
          store_ok_after_s: $store_s, store_before: $st0, store_after: $st1,
          redis_at_fault: ($rrb|tonumber? // null), redis_after_restart: ($rra|tonumber? // null),
          gateway: $gw}' \
    "$out/$name.json" >"$out/$name.tmp" && mv "$out/$name.tmp" "$out/$name.json"
  local j="$out/$name.json"
  log "  $(jq -c '{sent,completed,failed,outcomes,inflight_at_fault,inflight_failed,after_fault_failed,detect_s,route_around_s,kv_back_s,slo_delta,local_slo_delta,slo_after,local_after,redis_after,redis_at_fault,redis_after_restart,store_down_s,store_back_s,gateway_slow_samples,gateway_max_gap_s}' "$j")"
  # Alive = same container start, no restart, and no poll refused; a poll
  # that was merely slow on a saturated machine is not a crash.
  check "$name: gateway kept running (never restarted, no poll refused)" bash -c \
    "jq -e '.gateway_refused_samples == 0' '$j' >/dev/null && [[ '$gw_state' == 'running restarts=0 started=$started' ]]"
  check "$name: baton_slo_requests_total counted every request ($sent)" bash -c \
    "jq -e '.local_slo_delta == .sent' '$j' >/dev/null"
  check "$name: SLO store healthy again, backlog flushed" test -n "$store_s"
  check "$name: /v1/slo (cluster-wide) counted every request once ($sent)" bash -c \
    "jq -e '.slo_delta == .sent' '$j' >/dev/null"
  check "$name: cluster-wide count = the gateways' own counts (/v1/slo = Redis = counter)" bash -c \
    "jq -e '.slo_after == .local_after and .redis_after == .local_after' '$j' >/dev/null"
  check "$name: KV usage back to baseline" test -n "$kv_s"
  check "$name: failed requests ended within the idle timeout + margin (${FAIL_END_S} s)" bash -c \
    "jq -e '(.inflight_failed_end_after_fault_max_s // 0) <= $FAIL_END_S' '$j' >/dev/null"
  check "$name: no request sent >= ${ROUTE_S} s after the fault failed (health detection bound)" bash -c \
    "jq -e '[.after_fault_failed_sent_at_s[] | select(. >= $ROUTE_S)] | length == 0' '$j' >/dev/null"
  check "$name: every failure is a clear error (HTTP error or SSE error event)" bash -c \
    "jq -e '(.outcomes | keys - [\"ok\",\"error_event\",\"http_error\"]) | length == 0' '$j' >/dev/null"
  SUMMARIES+=("$j")
}

# Redis faults: the fault and restore commands record Redis' own total
# before the fault and as soon as it answers again, to show what persisted.
redis_fault_cmds() { # NAME MODE(restart|kill) → sets RFAULT, RRESTORE
  local c total ping
  c=$(docker inspect -f '{{.Name}}' "$(cid redis)")
  c=${c#/}
  total="docker exec $c redis-cli --raw EVAL \"\$(cat $REDIS_TOTAL_LUA)\" 0 'baton:{slo}:gp:*'"
  ping="for i in \$(seq 300); do docker exec $c redis-cli ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done"
  if [[ $2 == restart ]]; then
    RFAULT="$total >$out/$1.redis-before; docker restart -t 1 $c && $ping && $total >$out/$1.redis-after"
    RRESTORE="true"
  else
    RFAULT="$total >$out/$1.redis-before; docker kill $c"
    RRESTORE="docker start $c && $ping && $total >$out/$1.redis-after"
  fi
}
redis_checks() { # NAME
  local j="$out/$1.json"
  check "$1: no failed request" bash -c "jq -e '.failed == 0' '$j' >/dev/null"
  check "$1: Redis kept its counts (total when it answered again >= total at the fault > 0)" bash -c \
    "jq -e '.redis_at_fault > 0 and .redis_after_restart >= .redis_at_fault' '$j' >/dev/null"
  check "$1: no outcome dropped from the gateway's backlog" bash -c \
    "jq -e '(.store_after.backlog_dropped // 0) == (.store_before.backlog_dropped // 0)' '$j' >/dev/null"
}

if [[ " $PHASES " == *" faults "* ]]; then
  decodes="http://decode-1:8000=$(cid decode-1),http://decode-2:8000=$(cid decode-2)"
  prefills="http://prefill-1:8000=$(cid prefill-1),http://prefill-2:8000=$(cid prefill-2)"
  phase kill-decode "$decodes" "docker kill {container}" "docker start {container}"
  phase pause-decode "$decodes" "docker pause {container}" "docker unpause {container}"
  # Reconnect under the service's name: the alias is what the gateway resolves.
  phase disconnect-decode "$decodes" "docker network disconnect $NET {container}" \
    'docker network connect --alias "$(sed "s|http://||; s|:8000||" <<<"{worker}")" '"$NET"' {container}'
  # Redis restarted (SIGTERM, as `docker restart`), then crashed (SIGKILL)
  # and down for the rest of the load: AOF keeps the counts, the gateway's
  # backlog replay adds the outage's requests once.
  redis_fault_cmds restart-redis restart
  phase restart-redis "" "$RFAULT" "$RRESTORE" "docker restart -t 1 (Redis)"
  redis_checks restart-redis
  redis_fault_cmds kill-redis kill
  phase kill-redis "" "$RFAULT" "$RRESTORE" "docker kill (Redis), docker start after the load"
  redis_checks kill-redis
  phase kill-prefill "$prefills" "docker kill {container}" "docker start {container}"
  check "kill-prefill: no failed request (prefill failures are retried)" bash -c \
    "jq -e '.failed == 0' '$out/kill-prefill.json' >/dev/null"
fi

# ---- 5b. Redis failover under load ----------------------------------------------------
# The primary is killed (SIGKILL) mid-load; Sentinel promotes the replica
# (down after 1 s); the gateway's store re-asks the sentinels, switches,
# replays what the old primary had not replicated and flushes its backlog.
# phase() then requires /v1/slo delta = sent and /v1/slo = the new primary's
# total = the gateway's own counter (one gateway here: the sum of the
# replicas' own counters is that counter).
if [[ " $PHASES " == *" failover "* ]]; then
  sentinels_ready() { # every sentinel sees the primary ok, its replica and the two others
    local i
    for i in 1 2 3; do
      docker exec "$(cid sentinel-$i)" redis-cli -p 26379 info sentinel 2>/dev/null |
        grep -q 'name=baton,status=ok,.*slaves=1,sentinels=3' || return 1
    done
  }
  wait_for 60 "3 sentinels agreeing on the primary and its replica" sentinels_ready || FAILED+=("failover: sentinels not ready")
  c=$(docker inspect -f '{{.Name}}' "$(cid redis)")
  c=${c#/}
  phase failover "" "docker kill $c" "true" "docker kill (Redis primary); Sentinel promotes the replica"
  promoted() { [[ $(redis_primary) == redis-replica ]]; }
  check "failover: Sentinel promoted the replica" wait_for 30 "the replica promoted" promoted
  check "failover: no failed request" bash -c "jq -e '.failed == 0' '$out/failover.json' >/dev/null"
  check "failover: no outcome dropped from the gateway's backlog" bash -c \
    "jq -e '(.store_after.backlog_dropped // 0) == (.store_before.backlog_dropped // 0)' '$out/failover.json' >/dev/null"
fi

# ---- 5c. scale a pool up and down under load ------------------------------------------
# No gateway change: it re-resolves the service names every second (every
# address a worker) and drains the addresses that vanish.
if [[ " $PHASES " == *" scale "* ]]; then
  workers_of() { # ROLE → active, healthy workers of ROLE the gateway lists
    curl -fsS --max-time 5 "$GW/workers" | jq --arg r "$1" \
      '[.workers[] | select(.role == $r and .status == "active" and .is_healthy)] | length'
  }
  pools_are() { [[ $(workers_of prefill) -eq $1 && $(workers_of decode) -eq $2 ]]; }
  scale_to() { compose up -d --no-build --no-deps --scale prefill="$1" --scale decode="$2" prefill decode >&2; }
  log "scale phase: $LOAD_DESC for ${SCALE_DURATION}s; prefill + decode 1 + 1 -> 3 + 2 -> 1 + 1"
  python3 "$here/load.py" --url "$GW" --model "$MODEL_NAME" "${LOAD[@]}" --duration "$SCALE_DURATION" \
    --max-tokens "$MAX_TOKENS" --name scale --timeout "$CLIENT_TIMEOUT_S" --slow-ttft "$SLOW_TTFT_S" \
    --out "$out/scale.json" --records "$out/scale.jsonl" >&2 &
  load_pid=$!
  first_done() { [[ $(local_slo_requests) -gt 0 ]]; }
  wait_for 60 "the load's first requests" first_done || true
  scale_to 3 2
  check "scale: the gateway lists 3 prefill + 2 decode replicas, healthy (DNS)" \
    wait_for 180 "3 prefill + 2 decode workers" pools_are 3 2
  log "  scaled up, seen by the gateway after ${WAITED:-?}s"
  scale_to 1 1
  check "scale: back to 1 prefill + 1 decode (vanished addresses drained)" \
    wait_for 60 "1 prefill + 1 decode worker" pools_are 1 1
  log "  scaled down, seen by the gateway after ${WAITED:-?}s"
  wait "$load_pid" || FAILED+=("scale: load generator failed")
  log "  $(jq -c '{sent,completed,failed,outcomes}' "$out/scale.json")"
  check "scale: no request lost" bash -c "jq -e '.failed == 0 and .sent > 0' '$out/scale.json' >/dev/null"
  check "scale: gateway never restarted" bash -c \
    "[[ \$(docker inspect -f '{{.RestartCount}} {{.State.Status}}' '$(cid gateway)') == '0 running' ]]"
fi

# ---- 6. panics and the summary ------------------------------------------------------
compose logs --no-color >"$out/compose.log" 2>&1 || true
panics=$(grep -c 'panicked' "$out/compose.log" || true)
check "no container log says 'panicked' ($panics)" test "$panics" -eq 0
{
  echo "| fault | sent | completed | failed | in flight at fault (failed) | failed after fault | detect (s) | route-around (s) | healthy again (s) | KV baseline (s) | /v1/slo Δ | local Δ | store healthy (s) | /v1/slo = Redis = local after |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  for j in "${SUMMARIES[@]}"; do
    jq -r '"| \(.name) | \(.sent) | \(.completed) | \(.failed) | \(.inflight_at_fault) (\(.inflight_failed)) | \(.after_fault_failed) | \(.detect_s // "-") | \(.route_around_s // "-") | \(.healthy_again_s) | \(.kv_back_s) | \(.slo_delta) | \(.local_slo_delta) | \(.store_ok_after_s) | \(.slo_after) = \(.redis_after) = \(.local_after) |"' "$j"
  done
  for j in "${SUMMARIES[@]}"; do
    jq -r 'def d(k): (.store_after[k] // 0) - (.store_before[k] // 0);
      select(.redis_at_fault != null or d("flushed") > 0 or .store_down_s != null) |
      "\n\(.name): gateway SLO store down \(.store_down_s // "-") s after the fault, back (backlog flushed) at \(.store_back_s // "-") s; flushed +\(d("flushed")), resyncs +\(d("resyncs")), errors +\(d("errors")), timeouts +\(d("timeouts")), fallbacks +\(d("fallbacks")), backlog dropped +\(d("backlog_dropped"))"
      + (if .redis_at_fault != null then "; Redis total at the fault \(.redis_at_fault), when it answered again \(.redis_after_restart)" else "" end)' "$j"
  done
} >"$out/summary.md"
if [[ ${#SUMMARIES[@]} -gt 0 ]]; then cat "$out/summary.md" >&2; fi
if ((${#FAILED[@]})); then
  log "FAILED checks (${#FAILED[@]}):"
  printf '  - %s\n' "${FAILED[@]}" >&2
  exit 1
fi
log "all checks passed"
