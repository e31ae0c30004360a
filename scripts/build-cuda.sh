#!/usr/bin/env bash
# Builds the GPU check's programs (`loss_curve`, `acpo_steps`) with the `cuda` feature on a machine
# WITHOUT a CUDA toolkit or GPU, for running on another machine that has the GPU and driver (and
# the CUDA 13 libraries cuBLAS, cuRAND and NVRTC) but no Rust. This is how the GPU check of this
# project was run: built here, copied to the GPU machine, run with scripts/gpu-check.sh.
#
#  * nvcc, the CUDA headers and NVRTC come from NVIDIA's PyPI wheels (pinned below, CUDA 13.0, the
#    version the GPU machine's driver 580 supports: PTX from a newer nvcc is refused by an older
#    driver), installed into .cache/cuda13.
#  * cudarc links libcuda, cuBLAS, cuBLASLt, cuRAND and NVRTC dynamically. libcuda belongs to the
#    driver, so it is replaced at link time by a stub exporting the driver API's names (generated
#    from cudarc's own bindings, soname libcuda.so.1); at run time the real driver library is used.
#    cuBLAS comes from the nvidia-cublas wheel.
#
# Usage: scripts/build-cuda.sh [OUT_DIR]   (default .cache/cuda-bin); needs python3 with pip, gcc.
# Env: CUDA_COMPUTE_CAP (default 90, Hopper), CARGO_TARGET_DIR (default target/cuda).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${1:-.cache/cuda-bin}
cuda=$root/.cache/cuda13
home=$cuda/nvidia/cu13
if [ ! -x "$home/bin/nvcc" ]; then
    python3 -m pip install -q --disable-pip-version-check --no-deps --target "$cuda" \
        nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
        nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
        nvidia-curand==10.4.0.35 nvidia-cublas==13.0.2.14
fi
lib=$home/lib
ln -sfn lib "$home/lib64"
for l in cudart nvrtc cublas cublasLt; do
    [ -e "$lib/lib$l.so" ] || ln -sf "$(basename "$(ls "$lib"/lib$l.so.1[0-9]* | head -1)")" "$lib/lib$l.so"
done
[ -e "$lib/libcurand.so" ] || ln -sf libcurand.so.10 "$lib/libcurand.so"

# The link-time stand-in for the driver's libcuda.so.1.
if [ ! -f "$lib/libcuda.so" ]; then
    src=$(cargo metadata --format-version 1 | python3 -c \
        'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc"))')
    sys_rs=$(dirname "$src")/src/driver/sys/mod.rs
    grep -oE "fn (cu[A-Za-z0-9_]+)\(" "$sys_rs" | sed -E 's/fn (.*)\(/void \1(void){}/' | sort -u > "$cuda/cuda_stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$lib/libcuda.so" "$cuda/cuda_stub.c"
fi

export CUDA_HOME=$home CUDA_PATH=$home CUDA_ROOT=$home PATH=$home/bin:$PATH LIBRARY_PATH=$lib
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} CUDARC_CUDA_VERSION=13000
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/cuda}
cargo build --release -p acpo-diffusion --example loss_curve --features acpo-diffusion/cuda
cargo build --release -p acpo-finetune --example acpo_steps --features acpo-finetune/cuda
mkdir -p "$out"
for b in loss_curve acpo_steps; do
    objcopy --strip-debug "$CARGO_TARGET_DIR/release/examples/$b" "$out/$b"
done
ls -la "$out"
