#!/usr/bin/env bash
# GPU check (`just gpu-check`): the `cuda` build of the diffusion core and of ACPO fine-tuning
# against the CPU build of the same code, on one NVIDIA GPU.
#
#  1. train-base: the cpu-profile CIFAR-10 UNet for STEPS steps on the GPU and on the CPU from the
#     same seed and draws; the loss curves are compared (20-step windows, within 10% after warm-up).
#  2. fine-tuning: full ACPO steps (tuned UNet, frozen anchor, CNNIQA and its gradient), steps/s on
#     the GPU and on the CPU.
#  3. the paper-profile CIFAR-10 UNet (35.7M parameters, batch 128): training images/s on the GPU,
#     the number behind the paper profile's time estimate.
#
# Usage: scripts/gpu-check.sh [STEPS]
# Environment:
#   GPU_CHECK_BIN   folder holding `loss_curve` and `acpo_steps` built with `--features cuda`
#                   (default: build them here, which needs nvcc and the CUDA libraries)
#   GPU_CHECK_DATA  prepared CIFAR-10 folder with train.safetensors (default data/prepared/cifar10)
#   GPU_CHECK_OUT   where the curves and summary.json go (default results/gpu-check)
#   ACPO_MIRROR     data mirror, for iqa/CNNIQA-LIVE.safetensors (default ../shared/data)
set -euo pipefail
steps=${1:-300}
data=${GPU_CHECK_DATA:-data/prepared/cifar10}
out=${GPU_CHECK_OUT:-results/gpu-check}
mkdir -p "$out"

if [ -z "${GPU_CHECK_BIN:-}" ]; then
    cargo build --release -q -p acpo-diffusion --example loss_curve --features acpo-diffusion/cuda
    cargo build --release -q -p acpo-finetune --example acpo_steps --features acpo-finetune/cuda
    GPU_CHECK_BIN=${CARGO_TARGET_DIR:-target}/release/examples
fi
[ -f "$data/train.safetensors" ] || {
    echo "gpu-check: $data/train.safetensors is missing; run \`just stage prepare-cifar10\` or set GPU_CHECK_DATA" >&2
    exit 2
}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
# Which CUDA libraries the programs resolve to here (the first H100 try failed inside cuBLAS with
# CUDA_ERROR_OUT_OF_MEMORY on an empty card; a cuBLAS newer than the driver is one suspect).
for b in loss_curve acpo_steps; do
    ldd "$GPU_CHECK_BIN/$b" | grep -E 'libcu|nvrtc' || true
done | sort -u | tee "$out/libs.txt"

# The cpu-profile CIFAR-10 model and train settings (params.yaml, diffusion.cifar10).
unet='{"image_size":32,"channels":32,"channel_mult":[1,2,2],"num_res_blocks":1,"attention_resolutions":[8],"norm_groups":8}'
cpu_model="{\"model\":$unet,\"train\":{\"batch_size\":16,\"lr\":5e-4,\"warmup_steps\":100,\"ema_decay\":0.995}}"
# The paper profile's CIFAR-10 model (profiles/paper.yaml), batch 128.
paper_unet='{"image_size":32,"channels":128,"channel_mult":[1,2,2,2],"num_res_blocks":2,"attention_resolutions":[16],"dropout":0.1,"norm_groups":32}'
paper_model="{\"model\":$paper_unet,\"train\":{\"batch_size\":128,\"lr\":2e-4,\"warmup_steps\":5000,\"ema_decay\":0.9999}}"

echo "== train-base, cpu-profile UNet, $steps steps, batch 16: cuda"
"$GPU_CHECK_BIN/loss_curve" cuda "$data" "$steps" "$cpu_model" "$out/run-gpu" > "$out/gpu.csv" 2> "$out/gpu.log"
cat "$out/gpu.log"
echo "== same on the cpu"
"$GPU_CHECK_BIN/loss_curve" cpu "$data" "$steps" "$cpu_model" "$out/run-cpu" > "$out/cpu.csv" 2> "$out/cpu.log"
cat "$out/cpu.log"
set +e
python3 "$(dirname "$0")/bench/diffusion_compare_curves.py" "$out/cpu.csv" "$out/gpu.csv" | tee "$out/compare.txt"
curves_rc=${PIPESTATUS[0]}
set -e

echo "== ACPO fine-tuning steps, cpu-profile UNet, batch 8"
"$GPU_CHECK_BIN/acpo_steps" "$unet" 8 50 cuda | tee "$out/acpo-gpu.json"
"$GPU_CHECK_BIN/acpo_steps" "$unet" 8 10 cpu | tee "$out/acpo-cpu.json"

echo "== train-base, paper-profile CIFAR-10 UNet, batch 128, 30 steps: cuda"
"$GPU_CHECK_BIN/loss_curve" cuda "$data" 30 "$paper_model" "$out/run-paper" > "$out/paper.csv" 2> "$out/paper.log"
cat "$out/paper.log"

python3 - "$out" "$curves_rc" <<'EOF'
import json, re, sys
out, rc = sys.argv[1], int(sys.argv[2])
def ips(name):
    m = re.search(r"([0-9.]+) images/s", open(f"{out}/{name}.log").read())
    return float(m.group(1)) if m else None
gpu, cpu = json.load(open(f"{out}/acpo-gpu.json")), json.load(open(f"{out}/acpo-cpu.json"))
s = {
    "gpu": open(f"{out}/gpu.txt").read().strip() if __import__("os").path.exists(f"{out}/gpu.txt") else None,
    "train_base_images_per_s": {"cuda": ips("gpu"), "cpu": ips("cpu")},
    "loss_curves_within_10pct": rc == 0,
    "compare": open(f"{out}/compare.txt").read().strip().splitlines()[-1],
    "acpo_steps_per_s": {"cuda": gpu["steps_per_s"], "cpu": cpu["steps_per_s"]},
    "acpo_speedup": gpu["steps_per_s"] / cpu["steps_per_s"],
    "paper_unet_train_images_per_s_cuda": ips("paper"),
}
json.dump(s, open(f"{out}/summary.json", "w"), indent=2)
print(json.dumps(s, indent=2))
EOF
exit "$curves_rc"
