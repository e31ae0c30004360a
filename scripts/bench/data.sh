#!/usr/bin/env bash
# Data benchmark: decode the full CIFAR-10 train tar (50,000 JPEGs, 32x32) on both cores,
# acpo-data (Rust) against Pillow (Python, from PyPI in a throwaway venv), same tar, same
# machine, same run. Also times the whole `acpo stage data prepare cifar10` stage.
# Usage: scripts/bench/data.sh   (from the repository root; ACPO_MIRROR as usual)
set -euo pipefail
cd "$(dirname "$0")/../.."
MIRROR="${ACPO_MIRROR:-../shared/data}"
TAR="$MIRROR/cifar10/cifar10-jpeg-train.tar"
PILLOW_VERSION="13.0.0"
WORKERS="$(nproc)"
[ -f "$TAR" ] || { echo "missing $TAR (set ACPO_MIRROR)" >&2; exit 2; }

cargo build --release -q -p acpo-data --example bench_decode
BIN="${CARGO_TARGET_DIR:-target}/release/examples/bench_decode"

VENV="$(mktemp -d)"
trap 'rm -rf "$VENV"' EXIT
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "pillow==$PILLOW_VERSION"

echo "machine: $(nproc) cores; tar: $TAR"
RUST_JSON="$(RAYON_NUM_THREADS="$WORKERS" "$BIN" "$TAR" 3)"
echo "rust:   $RUST_JSON"
PY_JSON="$("$VENV/bin/python" scripts/bench/data_pillow.py "$TAR" "$WORKERS" 3)"
echo "pillow: $PY_JSON"
python3 - "$RUST_JSON" "$PY_JSON" <<'PY'
import json, sys
r, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"decode throughput: acpo-data {r['images_per_s']:,} img/s, {p['tool']} {p['images_per_s']:,} img/s, "
      f"ratio {r['images_per_s'] / p['images_per_s']:.2f}x")
PY

if [ -x "${CARGO_TARGET_DIR:-target}/release/acpo" ]; then
  OUT="$(mktemp -d)"
  START=$(date +%s.%N)
  ACPO_PROFILE=cpu "${CARGO_TARGET_DIR:-target}/release/acpo" stage data prepare cifar10 \
    --mirror "$MIRROR" --out "$OUT" >/dev/null
  END=$(date +%s.%N)
  python3 -c "import sys; s=float(sys.argv[2])-float(sys.argv[1]); print(f'whole stage (60,000 images: checksums, decode, split, write): {s:.2f} s, {60000/s:,.0f} img/s')" "$START" "$END"
  rm -rf "$OUT"
fi
