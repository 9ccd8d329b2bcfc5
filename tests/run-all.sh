#!/usr/bin/env bash
# The test suite: every crate's unit tests, the end-to-end tests against mock engines, the Redis tests against a
# real redis-server, and the native engine's tests on the real model. Provisions what they need first (the model
# and a redis-server, cached under .cache/ and ~/.cache/baton; no root needed), builds in the release profile
# with the workspace's one feature set so it reuses `cargo run --release -p baton -- up`'s build (and the
# images' binaries reuse this one), runs every target even after a failure, and ends with one line:
# `N passed, N failed, N skipped`. Exit status: non-zero if anything failed.
#
# Extra arguments go to `cargo test`, e.g. one test binary: ./tests/run-all.sh --test aggregated
# (keep --workspace's feature set: `-p CRATE` alone may resolve features differently and rebuild).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
"$root/tests/fetch-model.sh" >&2
model_dir=$("$root/tests/fetch-model.sh" --print-dir)
redis_dir=$("$root/tests/fetch-redis.sh")
export PATH="$redis_dir:$PATH"
export BATON_TEST_MODEL="${BATON_TEST_MODEL:-$model_dir/SmolLM2-135M-Instruct.Q4_1.gguf}"

out=$(mktemp)
trap 'rm -f "$out"' EXIT
set +e
cargo test --release --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
set -e

# libtest prints one "test result:" line per test binary (and doc-test run); a target that crashed or did not
# build has none but is listed by cargo's closing "N targets failed" list, so it counts as one failure.
python3 - "$out" "$rc" <<'PY'
import re, sys
text = open(sys.argv[1], errors="replace").read()
rc = int(sys.argv[2])
passed = failed = skipped = failed_bins = 0
for m in re.finditer(r"^test result: (ok|FAILED)\. (\d+) passed; (\d+) failed; (\d+) ignored", text, re.M):
    passed += int(m[2]); failed += int(m[3]); skipped += int(m[4])
    failed_bins += m[1] == "FAILED"
listed = len(re.findall(r"^\s+`-p \S+ (?:--lib|--bin|--test|--doc|--example|--bench)", text, re.M))
unreported = max(0, listed - failed_bins)
if unreported:
    print(f"{unreported} test target(s) failed without a result (crash or build error): see above", file=sys.stderr)
failed += unreported
if rc != 0 and failed == 0:
    print(f"cargo test exited with status {rc} before any test failed (a build error?): see above", file=sys.stderr)
    failed = 1
print(f"{passed} passed, {failed} failed, {skipped} skipped")
PY
exit "$rc"
