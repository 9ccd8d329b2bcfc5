#!/usr/bin/env bash
# The local container stack in one command, with Compose v2 (`docker compose`) or v1 (`docker-compose`), with
# or without an image registry:
#
#   docker/stack.sh up       build what is missing, start gateway + 2 prefill + 2 decode engines + Redis +
#                            Prometheus, wait until they are healthy, print a curl to try
#   BATON_PROFILE=scale BATON_GATEWAY_CONFIG=gateway-dns.toml docker/stack.sh up --scale prefill=3 --scale decode=2
#                            the scalable services (one per role), found by the gateway through DNS; rescale
#                            later with `docker/stack.sh compose up -d --no-deps --scale prefill=N prefill`
#   docker/stack.sh down     stop it and delete its volumes
#   docker/stack.sh build    only build: host binaries, base images (when no registry), app images
#   docker/stack.sh ps | logs [ARGS]      the stack's containers / logs
#   docker/stack.sh compose ARGS...       any compose command on the stack's file, project and profile
#
# Images are built from the host's release binaries (`prebuilt` targets): the same build as
# `cargo run --release -p baton -- up` and tests/run-all.sh (one feature set, see tests/check-one-build.sh), so
# nothing is compiled twice. Without a registry (a pull of debian:bookworm-slim fails), the base images are
# built locally by docker/build-base.sh (root, debootstrap; ~3 min once, with progress).
#
# Knobs (environment): COMPOSE_PROJECT_NAME (default baton), BATON_PROFILE (default cpu; "cpu grafana" adds
# Grafana on :3000; gpu: the CUDA engines, see docker/README.md), BATON_ENGINE=real|mock
# (mock: baton-mock-engine images, no model), STACK_SKIP_BUILD=1, STACK_READY_SECS (default 300),
# BATON_COMPOSE_EXTRA (one more compose file, e.g. an override), STACK_REGISTRY=auto|yes|no, and every
# variable of docker/compose.yaml (docker/README.md). The model comes from the cache `baton up` and the tests
# share (tests/fetch-model.sh); the fleet key (BATON_FLEET_KEY, shared by the gateway and the engines) is
# generated once into .cache/fleet-key.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
log() { echo "[stack] $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then
  COMPOSE=(docker-compose)
else
  die "neither 'docker compose' (v2) nor 'docker-compose' (v1) is installed"
fi
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-baton}
PROFILE=${BATON_PROFILE:-cpu}
ENGINE=${BATON_ENGINE:-real}
compose() {
  local files=(-f "$root/docker/compose.yaml")
  if [[ -n ${BATON_COMPOSE_EXTRA:-} ]]; then files+=(-f "$BATON_COMPOSE_EXTRA"); fi
  local p
  for p in $PROFILE; do files+=(--profile "$p"); done
  "${COMPOSE[@]}" "${files[@]}" "$@"
}

# ---- shared settings: model cache and fleet key ---------------------------------------------------------
if [[ -z ${BATON_MODEL_DIR:-} ]]; then
  BATON_MODEL_DIR=$("$root/tests/fetch-model.sh" --print-dir)
fi
export BATON_MODEL_DIR
if [[ -z ${BATON_FLEET_KEY:-} ]]; then
  keyfile="$root/.cache/fleet-key"
  if [[ ! -s $keyfile ]]; then
    mkdir -p "$root/.cache"
    (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$keyfile")
    log "generated a fleet key in $keyfile"
  fi
  BATON_FLEET_KEY=$(cat "$keyfile")
fi
export BATON_FLEET_KEY

# ---- images -------------------------------------------------------------------------------------------------
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
# Base images from a registry if one answers, else built here.
choose_bases() {
  local mode=${STACK_REGISTRY:-auto}
  if [[ $mode == auto ]]; then
    if have_image debian:bookworm-slim || docker pull -q debian:bookworm-slim >/dev/null 2>&1; then
      mode=yes
    else
      mode=no
    fi
  fi
  if [[ $mode == yes ]]; then
    log "image registry reachable: official base images"
    RUNTIME_IMAGE=${RUNTIME_IMAGE:-debian:bookworm-slim}
  else
    log "no image registry: building local base images (docker/build-base.sh; ~3 min the first time)"
    "$root/docker/build-base.sh"
    RUNTIME_IMAGE=${RUNTIME_IMAGE:-baton-local/debian:bookworm}
    export REDIS_IMAGE=${REDIS_IMAGE:-baton-local/redis:latest}
    export PROMETHEUS_IMAGE=${PROMETHEUS_IMAGE:-baton-local/prometheus:latest}
  fi
}

build() {
  choose_bases
  log "host release build (cargo build --release --workspace --bins: reuses \`baton up\`'s and the tests' build)"
  cargo build --release --locked --workspace --bins >&2
  local ctx="$root/target/docker-context"
  rm -rf "$ctx" && mkdir -p "$ctx/bin"
  for b in baton-gateway baton-bench baton-engine baton-mock-engine; do
    strip --strip-debug -o "$ctx/bin/$b" "target/release/$b"
  done
  image() { # TAG DOCKERFILE
    log "docker build $1 (docker/$2, target prebuilt)"
    docker build --build-arg RUNTIME_IMAGE="$RUNTIME_IMAGE" -f "$root/docker/$2" --target prebuilt \
      -t "$1" "$ctx" | sed -u 's/^/  /' >&2
    [[ ${PIPESTATUS[0]} == 0 ]] || die "docker build $1 failed"
  }
  image "${BATON_GATEWAY_IMAGE:-baton/gateway:latest}" gateway.Dockerfile
  if [[ $ENGINE == mock ]]; then
    image "${BATON_ENGINE_IMAGE:-baton/engine:latest}" mock-engine.Dockerfile
  else
    image "${BATON_ENGINE_IMAGE:-baton/engine:latest}" engine.Dockerfile
  fi
}

# Every container of the project running, and healthy where it has a health check; sets READY and TOTAL.
all_healthy() {
  local ids id state
  READY=0 TOTAL=0
  ids=$(compose ps -q 2>/dev/null) || return 1
  for id in $ids; do
    TOTAL=$((TOTAL + 1))
    state=$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id")
    if [[ $state == "running healthy" || $state == "running none" ]]; then READY=$((READY + 1)); fi
  done
  ((TOTAL > 0 && READY == TOTAL))
}

up() { # [--scale SERVICE=N ...]: passed to `compose up` (profile scale)
  if [[ $ENGINE == real ]]; then "$root/tests/fetch-model.sh" >&2; fi
  if [[ ${STACK_SKIP_BUILD:-0} == 1 ]]; then
    have_image "${BATON_GATEWAY_IMAGE:-baton/gateway:latest}" || die "STACK_SKIP_BUILD=1 but no gateway image"
    # The local Redis/Prometheus images where the official ones are absent (no registry).
    if ! have_image "${REDIS_IMAGE:-redis:7-bookworm}" && have_image baton-local/redis:latest; then
      export REDIS_IMAGE=baton-local/redis:latest PROMETHEUS_IMAGE=baton-local/prometheus:latest
    fi
  else
    build
  fi
  log "starting (${COMPOSE[*]}, project $COMPOSE_PROJECT_NAME, profile $PROFILE, model from $BATON_MODEL_DIR)"
  compose up -d --no-build "$@" >&2
  local limit=${STACK_READY_SECS:-300} t0=$SECONDS
  until all_healthy; do
    if ((SECONDS - t0 > limit)); then
      compose ps >&2
      compose logs --tail 20 >&2
      die "not healthy after ${limit}s (the containers' state and logs are above)"
    fi
    log "waiting for the containers to be healthy: $READY of $TOTAL ($((SECONDS - t0))s)"
    sleep 5
  done
  local port=${BATON_PORT:-30000}
  log "up in $((SECONDS - t0))s: gateway http://127.0.0.1:$port, Prometheus http://127.0.0.1:${PROMETHEUS_PORT:-9090}"
  cat >&2 <<EOF

Try:
  curl -N http://127.0.0.1:$port/v1/chat/completions -H 'content-type: application/json' \\
    -d '{"model":"${BATON_MODEL_NAME:-smollm2}","messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":48,"temperature":0,"stream":true}'
Stop: docker/stack.sh down
EOF
}

cmd=${1:-}
[[ $# -gt 0 ]] && shift
case $cmd in
up) up "$@" ;;
down) compose down -v --remove-orphans ;;
build) build ;;
ps) compose ps "$@" ;;
logs) compose logs "$@" ;;
compose) compose "$@" ;;
*)
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
  ;;
esac
