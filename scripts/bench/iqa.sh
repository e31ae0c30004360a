#!/usr/bin/env bash
# IQA benchmark (CPU): images/s of each judge on 32x32 and 256x256 images, and CNNIQA's candle
# forward / forward+backward against its ONNX Runtime forward. Writes bench/iqa.json.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
export ACPO_ASSETS=${ACPO_ASSETS:-$root/.cache/assets}
export ACPO_MIRROR=${ACPO_MIRROR:-$root/../shared/data}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$ACPO_ASSETS/onnxruntime/libonnxruntime.so}
mkdir -p bench
echo "iqa bench on $(nproc) CPU threads, $(date -u +%FT%TZ)" >&2
cargo run --release -q -p acpo-iqa --example iqa_bench -- bench/iqa.json
