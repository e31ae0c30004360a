#!/usr/bin/env bash
# Roofline of the cpu-profile UNet (issue 15): this machine's fp32 GEMM peak, measured through
# candle's CPU matmul (the `gemm` crate) and, as a peer in the same run, through numpy's
# OpenBLAS; the analytic FLOPs of one training step and one sampling step
# (acpo_diffusion::flops) divided by their measured times; so the achieved GFLOP/s and the
# fraction of the GEMM peak. Writes bench/roofline.json with the CPU model and its vector flags
# (machines differ between sessions: compare ratios, not absolute numbers).
# The whole measurement (candle's peak and the UNet, then numpy's peak) runs BENCH_RUNS times,
# and the JSON reports the run with the median training fraction, with every run's fractions
# beside it: on this shared machine one run's fraction moved from 0.41 to 0.59 within minutes.
# Env: BENCH_STEPS (default 5 timed repetitions, best kept), BENCH_RUNS (3), BENCH_TRAIN_BATCH
# (16, the cpu profile's), BENCH_SAMPLE_BATCH (32, the evaluation's).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
steps=${BENCH_STEPS:-5}
runs=${BENCH_RUNS:-3}
train_batch=${BENCH_TRAIN_BATCH:-16}
sample_batch=${BENCH_SAMPLE_BATCH:-32}
# The cpu-profile model (params.yaml, diffusion.anime32.model = diffusion.cifar10.model).
model='{"image_size":32,"channels":32,"channel_mult":[1,2,2],"num_res_blocks":1,"attention_resolutions":[8],"num_heads":1,"norm_groups":8}'
mkdir -p bench
echo "roofline bench on $(nproc) CPU threads, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)" >&2

cargo build --release -q -p acpo-diffusion --example roofline
bin=${CARGO_TARGET_DIR:-$root/target}/release/examples/roofline

venv=$(mktemp -d)
pairs=""
trap 'rm -rf "$venv" "$pairs"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "numpy==2.3.5"

numpy_peak() {
OPENBLAS_NUM_THREADS=$(nproc) "$venv/bin/python" - <<'PY'
import json, time
import numpy as np
rng = np.random.default_rng(0)
out = []
for n in (256, 512, 1024, 2048):
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    best = min((lambda t0: (a @ b, time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(3))
    out.append({"n": n, "gflops": round(2 * n**3 / best / 1e9, 2)})
cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
print(json.dumps({"impl": f"numpy {np.__version__} ({cfg.get('name')} {cfg.get('version')})", "gemm": out}))
PY
}
# One JSON line per run: {"ours": ..., "peer": ...}
pairs=$(mktemp)
for _ in $(seq "$runs"); do
  ours=$("$bin" "$model" "$train_batch" "$sample_batch" "$steps")
  peer=$(numpy_peak)
  echo "$ours"; echo "$peer"
  echo "{\"ours\": $ours, \"peer\": $peer}" >> "$pairs"
done
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
flags=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512f|avx512_bf16|amx_tile|amx_bf16|amx_int8)$' | sort | tr '\n' ' ')
python3 - "$pairs" "$cpu" "$flags" "$(nproc)" <<'PY' > bench/roofline.json.tmp
import json, statistics, sys
pairs = [json.loads(l) for l in open(sys.argv[1])]
# The machine's peak: the best of the two libraries in a run. Each is measured once, minutes
# apart, on a shared machine whose speed drifts (one run gave candle 149.5 and numpy 194.0, the
# one before 186.0 and 103.5), so the larger is the honest denominator.
def fractions(p):
    machine = max(p["ours"]["gemm_peak_gflops"], max(g["gflops"] for g in p["peer"]["gemm"]))
    return {"machine_peak_gflops": machine,
            "train": round(p["ours"]["train"]["step_gflops"] / machine, 3),
            "sample": round(p["ours"]["sample"]["gflops"] / machine, 3)}
runs = [fractions(p) for p in pairs]
order = sorted(range(len(pairs)), key=lambda i: runs[i]["train"])
median = order[len(order) // 2]
ours, peer = pairs[median]["ours"], pairs[median]["peer"]
peer_peak = max(g["gflops"] for g in peer["gemm"])
machine = runs[median]["machine_peak_gflops"]
print(json.dumps({
    "runs": runs,
    "reported_run": median,
    "train_fraction_range": [min(r["train"] for r in runs), max(r["train"] for r in runs)],
    "sample_fraction_range": [min(r["sample"] for r in runs), max(r["sample"] for r in runs)],
    "sample_fraction_median": statistics.median(r["sample"] for r in runs),
    "what": "fp32 GEMM peak (candle matmul = gemm crate; numpy/OpenBLAS peer, same run) and the "
            "cpu-profile UNet's achieved GFLOP/s (analytic FLOPs / best measured time); the run "
            "with the median training fraction of `runs`",
    "cpu": sys.argv[2], "flags": sys.argv[3].split(), "threads": int(sys.argv[4]),
    "candle_gemm_peak_gflops": ours["gemm_peak_gflops"],
    "numpy_gemm_peak_gflops": peer_peak,
    "candle_gemm_over_numpy": round(ours["gemm_peak_gflops"] / peer_peak, 3),
    "train_step_fraction_of_candle_peak": ours["train"]["fraction_of_peak"],
    "sample_step_fraction_of_candle_peak": ours["sample"]["fraction_of_peak"],
    "train_step_fraction_of_numpy_peak": round(ours["train"]["step_gflops"] / peer_peak, 3),
    "sample_step_fraction_of_numpy_peak": round(ours["sample"]["gflops"] / peer_peak, 3),
    "machine_peak_gflops": machine,
    "train_step_fraction_of_machine_peak": round(ours["train"]["step_gflops"] / machine, 3),
    "sample_step_fraction_of_machine_peak": round(ours["sample"]["gflops"] / machine, 3),
    "ours": ours, "peer": peer,
}, indent=2))
PY
mv bench/roofline.json.tmp bench/roofline.json
python3 -c "
import json; d = json.load(open('bench/roofline.json'))
print('roofline (median of %d runs): GEMM peak candle %.1f / numpy %.1f GFLOP/s; train step %.1f GFLOP/s (%.0f%% of the better peak), sampling %.1f GFLOP/s (%.0f%%); fractions over the runs: train %s, sampling %s' % (
  len(d['runs']), d['candle_gemm_peak_gflops'], d['numpy_gemm_peak_gflops'], d['ours']['train']['step_gflops'],
  100 * d['train_step_fraction_of_machine_peak'], d['ours']['sample']['gflops'], 100 * d['sample_step_fraction_of_machine_peak'],
  [r['train'] for r in d['runs']], [r['sample'] for r in d['runs']]))"
