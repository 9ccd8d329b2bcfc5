#!/usr/bin/env bash
# The test suite: every crate's unit tests, the end-to-end tests against
# mock engines, and the native engine's tests on the real model.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
"$root/tests/fetch-model.sh"
export BATON_TEST_MODEL="${BATON_TEST_MODEL:-$root/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
cargo test --workspace --locked "$@"
