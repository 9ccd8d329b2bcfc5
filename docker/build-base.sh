#!/usr/bin/env bash
# Builds Baton's local base images without any container registry:
#
#   baton-local/debian:bookworm      Debian bookworm (debootstrap minbase + ca-certificates, curl)
#   baton-local/prometheus:latest    Prometheus from Debian's `prometheus` package on that base
#   baton-local/redis:latest         Redis from Debian's `redis-server` package on that base
#
# Each image is skipped when it already exists (FORCE=1 rebuilds). Needs root
# (debootstrap), a Debian mirror (MIRROR, default deb.debian.org) and Docker.
#
# Use them with the Dockerfiles' build args, e.g.
#   docker build --build-arg RUNTIME_IMAGE=baton-local/debian:bookworm \
#     --target prebuilt -f docker/gateway.Dockerfile docker/context
set -euo pipefail
cd "$(dirname "$0")"

SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
BASE_IMAGE=${BASE_IMAGE:-baton-local/debian:$SUITE}
PROM_IMAGE=${PROM_IMAGE:-baton-local/prometheus:latest}
REDIS_IMAGE=${REDIS_IMAGE:-baton-local/redis:latest}
FORCE=${FORCE:-0}

have_image() { [[ $FORCE != 1 ]] && docker image inspect "$1" >/dev/null 2>&1; }
log() { echo "[build-base] $*" >&2; }

if have_image "$BASE_IMAGE"; then
  log "$BASE_IMAGE exists (FORCE=1 to rebuild)"
else
  command -v debootstrap >/dev/null || {
    log "installing debootstrap"
    apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null
  }
  root=$(mktemp -d /tmp/baton-rootfs.XXXXXX)
  # debootstrap mounts /proc and /sys inside the root: unmount before removing.
  cleanup_root() {
    grep -o " $root/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf --one-file-system "$root" "$root.log"
  }
  trap cleanup_root EXIT
  log "debootstrap $SUITE (minbase) from $MIRROR into $root (~2-3 min)"
  t0=$(date +%s)
  # Progress: debootstrap's stage lines, and a count every 25 packages of its per-package steps.
  set +e
  debootstrap --variant=minbase --include=ca-certificates,curl "$SUITE" "$root" "$MIRROR" 2>&1 |
    tee "$root.log" | awk '
      /^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) [a-z0-9]/ && $3 !~ /^(Release|Packages|the)/ {
        if (++n[$2] % 25 == 0) { printf "[build-base]   %s: %d packages\n", $2, n[$2]; fflush() }
        next }
      /^[IEW]: / { print "[build-base]   " $0; fflush() }' >&2
  rc=${PIPESTATUS[0]}
  set -e
  if [[ $rc != 0 ]]; then
    tail -n 30 "$root.log" >&2
    exit 1
  fi
  rm -f "$root.log"
  # Same sources the official image ships (security updates included), then
  # drop what a container does not need.
  cat >"$root/etc/apt/sources.list" <<SRC
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
SRC
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
  log "docker import → $BASE_IMAGE"
  tar -C "$root" --numeric-owner --one-file-system -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' \
    -c 'CMD ["bash"]' \
    -m "debootstrap --variant=minbase $SUITE + ca-certificates curl" \
    - "$BASE_IMAGE" >/dev/null
  cleanup_root
  trap - EXIT
  log "$BASE_IMAGE built in $(( $(date +%s) - t0 ))s"
fi

# Debian-package images on that base. --network host: apt inside the build
# reaches the mirror the way the host does.
pkg_image() { # IMAGE DIR
  if have_image "$1"; then
    log "$1 exists (FORCE=1 to rebuild)"
  else
    log "building $1 from docker/$2/Dockerfile (apt-get inside; ~1 min)"
    docker build --network host --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$1" "$2" 2>&1 |
      grep --line-buffered -E '^(Step [0-9]+/|Successfully|Setting up |Get:[0-9]*0 |E: |error)' |
      sed -u 's/^/[build-base]   /' >&2 || true
    docker image inspect "$1" >/dev/null 2>&1 || { log "docker build $1 failed"; exit 1; }
    log "$1 built"
  fi
}
pkg_image "$PROM_IMAGE" prometheus
pkg_image "$REDIS_IMAGE" redis
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep '^baton-local/' >&2
