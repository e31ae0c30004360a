"""Compares two loss curves (CSV `step,loss,lr,grad_norm`) from `just gpu-check`.

Prints per-window means and the largest difference of 20-step moving averages; exits 1 when the
curves differ by more than 10% of the CPU's value at any window after warm-up (float
reassociation on the GPU makes the curves diverge slowly, but not systematically).
"""
import csv
import sys


def load(path):
    with open(path) as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


cpu, gpu = load(sys.argv[1]), load(sys.argv[2])
n = min(len(cpu), len(gpu))
w = 20
worst = 0.0
for s in range(0, n - w + 1, w):
    c = sum(cpu[s:s + w]) / w
    g = sum(gpu[s:s + w]) / w
    rel = abs(c - g) / c
    print(f"steps {s + 1:4d}-{s + w:4d}: cpu {c:.4f} gpu {g:.4f} rel diff {rel:.3f}")
    if s >= 100:
        worst = max(worst, rel)
print(f"first-step loss cpu {cpu[0]:.5f} gpu {gpu[0]:.5f}; worst windowed rel diff after warm-up {worst:.3f}")
sys.exit(0 if worst <= 0.10 else 1)
