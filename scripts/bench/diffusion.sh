#!/usr/bin/env bash
# Diffusion training throughput (CPU): images/s of one UNet training step (forward, backward,
# AdamW with clipping), batch 32, the cpu-profile CIFAR-10 UNet on 32x32, candle (this crate)
# against the same architecture in JAX (PyPI `jax[cpu]`, installed into a temporary venv here),
# measured in the same run on the same machine. Writes bench/diffusion.json.
#
# Why JAX and not PyTorch: PyPI has no CPU-only torch wheel for Linux (its wheels carry CUDA and
# pull in gigabytes of nvidia-* packages; the CPU builds live on another index, which this
# project does not use). The issue allows either.
# Env: BENCH_STEPS (default 5 timed steps after a warm-up/compile step), BENCH_BATCH (32).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
steps=${BENCH_STEPS:-5}
batch=${BENCH_BATCH:-32}
# The cpu-profile CIFAR-10 model (params.yaml, diffusion.cifar10.model).
model='{"image_size":32,"channels":32,"channel_mult":[1,2,2],"num_res_blocks":1,"attention_resolutions":[8],"num_heads":1,"norm_groups":8}'
mkdir -p bench
echo "diffusion bench on $(nproc) CPU threads, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)" >&2

cargo build --release -q -p acpo-diffusion --example throughput
bin=${CARGO_TARGET_DIR:-$root/target}/release/examples/throughput

venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "jax[cpu]==0.10.2"

# Alternate the two so that a change in machine load hits both alike.
candle1=$("$bin" "$model" "$batch" "$steps")
jax1=$("$venv/bin/python" scripts/bench/diffusion_peer.py "$model" "$batch" "$steps")
candle2=$("$bin" "$model" "$batch" "$steps")
jax2=$("$venv/bin/python" scripts/bench/diffusion_peer.py "$model" "$batch" "$steps")
echo "$candle1"; echo "$jax1"; echo "$candle2"; echo "$jax2"

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
flags=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512f|avx512_bf16|amx_tile|amx_bf16|amx_int8)$' | sort | tr '\n' ' ')
python3 - "$candle1" "$candle2" "$jax1" "$jax2" "$cpu" "$flags" "$(nproc)" <<'PY' > bench/diffusion.json
import json, sys
c = [json.loads(a) for a in sys.argv[1:3]]
j = [json.loads(a) for a in sys.argv[3:5]]
assert c[0]["params"] == j[0]["params"], f"architectures differ: {c[0]['params']} vs {j[0]['params']} params"
ci = max(x["images_per_s"] for x in c)
ji = max(x["images_per_s"] for x in j)
print(json.dumps({
    "what": "UNet training step images/s, batch %d, 32x32, %d params (best of 2 runs each)" % (c[0]["batch"], c[0]["params"]),
    "candle_images_per_s": ci, "jax_images_per_s": ji,
    "candle_over_jax": round(ci / ji, 3),
    "cpu": sys.argv[5], "flags": sys.argv[6].split(), "threads": int(sys.argv[7]),
    "cores_busy": {"candle": max(x["cores_busy"] for x in c), "jax": max(x["cores_busy"] for x in j)},
    "runs": {"candle": c, "jax": j},
}, indent=2))
PY
python3 -c "import json; d=json.load(open('bench/diffusion.json')); print('diffusion: candle %.2f img/s, jax %.2f img/s, ratio candle/jax = %.2f' % (d['candle_images_per_s'], d['jax_images_per_s'], d['candle_over_jax']))"
