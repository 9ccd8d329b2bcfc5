#!/usr/bin/env bash
# One build for everything a user runs: `cargo run --release -p baton` (README), the tests
# (`tests/run-all.sh`: `cargo test --release --workspace`) and the images' binaries (`docker/stack.sh`:
# `cargo build --release --workspace --bins`) must resolve every crate they share to the same features, or
# the second command recompiles that crate and everything above it. Fails naming each crate that differs;
# the fix is to declare the union of features in the workspace Cargo.toml (see tokio and num-traits there).
set -euo pipefail
cd "$(dirname "$0")/.."
features() { # cargo tree args... → "name vX [features]" lines
  cargo tree --locked "$@" -f '{p} [{f}]' --prefix none |
    sed -E 's/ \((\*|proc-macro)\)//g; s/ \(\/[^)]*\)//' | sort -u
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
features -p baton -e normal,build >"$tmp/up"
features --workspace -e normal,build,dev >"$tmp/tests"
python3 - "$tmp/up" "$tmp/tests" <<'PY'
import sys
def load(path):
    out = {}
    for line in open(path):
        line = line.strip()
        if not line:
            continue
        crate, _, feats = line.partition(" [")
        out.setdefault(crate, set()).add(feats.rstrip("]"))
    return out
up, tests = load(sys.argv[1]), load(sys.argv[2])
bad = [c for c in sorted(up.keys() & tests.keys()) if up[c] != tests[c]]
for c in bad:
    print(f"  {c}: `up` builds [{' | '.join(sorted(up[c]))}], the tests [{' | '.join(sorted(tests[c]))}]")
if bad:
    sys.exit(f"one build: {len(bad)} crate(s) resolve to different features for `up` and the tests (above)")
print(f"one build: the {len(up)} crates of `baton up` resolve alike in the test build")
PY
