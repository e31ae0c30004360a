#!/usr/bin/env bash
# Engine benchmark: a generated 200-stage pipeline over ~1 GB of files, in a temporary
# directory (deleted afterwards). Measures, in the same run on the same machine:
#   - first-hash throughput of `acpo status` (cold hash cache) against `sha256sum` on the
#     same files (page cache warm for both; acpo with 1 thread and with all cores),
#   - no-op `acpo status` / `acpo repro` against `dvc status` / `dvc repro` on the
#     equivalent dvc.yaml (DVC from PyPI, installed into a throwaway venv),
# and prints the ratios.
# Usage: scripts/bench/engine.sh  (ACPO_BIN=path/to/acpo to skip the build; BENCH_MB=1024)
set -euo pipefail
cd "$(dirname "$0")/../.."
DVC_VERSION="3.67.1"
if [ -z "${ACPO_BIN:-}" ]; then
  cargo build --release -q --bin acpo
  ACPO_BIN="$PWD/${CARGO_TARGET_DIR:-target}/release/acpo"
fi
ACPO_BIN="$(realpath "$ACPO_BIN")"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q --disable-pip-version-check "dvc==$DVC_VERSION"
export DVC_NO_ANALYTICS=1
python3 scripts/bench/engine_bench.py "$ACPO_BIN" "$WORK/venv/bin/dvc" "$WORK/bench" "${BENCH_MB:-1024}"
