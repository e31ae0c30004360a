#!/usr/bin/env bash
# The FID Inception-v3: candle (acpo-fid, what the pipeline runs) against the same network
# exported by acpo-bench to ONNX and run by ONNX Runtime 1.32 (issue 15's peer), in one
# process on the same pre-processed CIFAR-sized batch; also the largest feature difference.
# Writes bench/inception_ort.json. Needs the fid-weights stage's output.
# Env: BENCH_BATCH (16), BENCH_REPS (3), BENCH_THREADS (2).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
export ACPO_ASSETS=${ACPO_ASSETS:-$root/.cache/assets}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$ACPO_ASSETS/onnxruntime/libonnxruntime.so}
weights=results/fid/inception-fid.safetensors
[ -f "$weights" ] || target/release/acpo repro fid-weights
# Built together with the acpo binary, so the shared dependencies keep one feature set.
cargo build --release -q -p acpo -p acpo-bench --bins
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "inception bench on $(nproc) CPU threads, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)" >&2
res=$(target/release/inception_ort "$weights" "$out/inception-fid.onnx" "${BENCH_BATCH:-16}" "${BENCH_REPS:-3}" "${BENCH_THREADS:-2}")
echo "$res"
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
python3 - "$res" "$cpu" <<'PY' > bench/inception_ort.json
import json, sys
r = json.loads(sys.argv[1])
r = {"what": "FID Inception-v3 forward on pre-processed 299x299 input, images/s (best of reps): "
             "candle (acpo-fid) vs ONNX Runtime 1.32 on the graph acpo-bench exports", "cpu": sys.argv[2], **r}
print(json.dumps(r, indent=2))
PY
