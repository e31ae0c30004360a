"""Driver of scripts/bench/engine.sh: generates the pipeline, times acpo, sha256sum and DVC."""
import json
import os
import shutil
import subprocess
import sys
import time

ACPO, DVC, ROOT, MB = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
STAGES, SHARDS, FILES_PER_SHARD = 200, 100, 4


def run(cmd, cwd, env=None, check=True):
    e = dict(os.environ, **(env or {}))
    r = subprocess.run(cmd, cwd=cwd, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r


def timed(cmd, cwd, env=None, repeat=1):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        run(cmd, cwd, env)
        best = min(best, time.perf_counter() - t)
    return best


def generate(root):
    os.makedirs(root)
    per_file = MB * 1024 * 1024 // (SHARDS * FILES_PER_SHARD)
    block = os.urandom(per_file)
    files = []
    for s in range(SHARDS):
        d = os.path.join(root, "data", f"shard_{s:03d}")
        os.makedirs(d)
        for f in range(FILES_PER_SHARD):
            p = os.path.join(d, f"part_{f}.bin")
            with open(p, "wb") as fh:
                fh.write(f"{s}-{f}-".encode().ljust(64, b"."))  # every file distinct
                fh.write(block[64:])
            files.append(p)
    stages, params = {}, {}
    for i in range(STAGES):
        name = f"s{i:03d}"
        deps = [f"data/shard_{i % SHARDS:03d}"]
        cmd = f"echo {i} > out/{name}.txt"
        if i % 10:
            prev = f"out/s{i - 1:03d}.txt"
            deps.append(prev)
            cmd += f" && cat {prev} >> out/{name}.txt"
        params[name] = i
        stages[name] = {"cmd": cmd, "deps": deps, "params": [f"stage.{name}"], "outs": [f"out/{name}.txt"]}
    os.makedirs(os.path.join(root, "out"))
    body = json.dumps({"stages": stages}, indent=1)  # JSON is YAML
    with open(os.path.join(root, "pipeline.yaml"), "w") as fh:
        fh.write(body)
    with open(os.path.join(root, "dvc.yaml"), "w") as fh:
        fh.write(body)
    with open(os.path.join(root, "params.yaml"), "w") as fh:
        json.dump({"stage": params}, fh)
    return files


def main():
    acpo_dir, dvc_dir = os.path.join(ROOT, "acpo"), os.path.join(ROOT, "dvc")
    files = generate(acpo_dir)
    total = sum(os.path.getsize(f) for f in files)
    shutil.copytree(acpo_dir, dvc_dir)
    os.remove(os.path.join(acpo_dir, "dvc.yaml"))
    os.remove(os.path.join(dvc_dir, "pipeline.yaml"))
    print(f"generated {STAGES} stages over {len(files)} files, {total / 2**20:.0f} MiB; {os.cpu_count()} cores")

    rel = sorted(os.path.relpath(f, acpo_dir) for f in files)
    sha = ["sha256sum", *rel]
    timed(sha, acpo_dir)  # warm the page cache
    t_sha = timed(sha, acpo_dir, repeat=2)
    mib = total / 2**20
    print(f"first hash, {mib:.0f} MiB, warm page cache:", flush=True)
    print(f"  sha256sum (1 process)      {t_sha:7.2f} s  {mib / t_sha:7.0f} MiB/s", flush=True)

    def first_hash(threads):
        best = float("inf")
        for _ in range(2):
            shutil.rmtree(os.path.join(acpo_dir, ".acpo"), ignore_errors=True)
            env = {"ACPO_HASH_THREADS": str(threads)} if threads else {}
            best = min(best, timed([ACPO, "status"], acpo_dir, env))
        return best

    t_hash1 = first_hash(1)
    print(f"  acpo status, 1 thread      {t_hash1:7.2f} s  {mib / t_hash1:7.0f} MiB/s  ({t_hash1 / t_sha:.2f}x sha256sum's time)", flush=True)
    t_hash = first_hash(0)
    print(f"  acpo status, all cores     {t_hash:7.2f} s  {mib / t_hash:7.0f} MiB/s  ({t_hash / t_sha:.2f}x sha256sum's time)", flush=True)
    t_repro_first = timed([ACPO, "repro"], acpo_dir)
    out = run([ACPO, "repro"], acpo_dir).stderr
    assert "0 ran, 0 restored" in out, out
    t_status = timed([ACPO, "status"], acpo_dir, repeat=5)
    t_repro = timed([ACPO, "repro"], acpo_dir, repeat=5)
    print(f"acpo: first full run of {STAGES} stages {t_repro_first:.2f} s; no-op status {t_status * 1000:.1f} ms, no-op repro {t_repro * 1000:.1f} ms", flush=True)

    run([DVC, "init", "--no-scm", "-q"], dvc_dir)
    run([DVC, "config", "core.analytics", "false"], dvc_dir)
    dvc_version = run([DVC, "--version"], dvc_dir).stdout.strip()
    t_dvc_first = timed([DVC, "repro", "-q"], dvc_dir)
    print(f"dvc {dvc_version}: first full run {t_dvc_first:.2f} s", flush=True)
    t_dvc_status = timed([DVC, "status", "-q"], dvc_dir, repeat=2)
    print(f"dvc: no-op status {t_dvc_status * 1000:.1f} ms", flush=True)
    t_dvc_repro = timed([DVC, "repro", "-q"], dvc_dir, repeat=2)

    print("no-op (everything up to date), best of runs:")
    print(f"  acpo status {t_status * 1000:8.1f} ms   dvc status {t_dvc_status * 1000:8.1f} ms   ratio {t_dvc_status / t_status:6.1f}x")
    print(f"  acpo repro  {t_repro * 1000:8.1f} ms   dvc repro  {t_dvc_repro * 1000:8.1f} ms   ratio {t_dvc_repro / t_repro:6.1f}x")
    print(f"first full run of {STAGES} stages: acpo repro {t_repro_first:.2f} s, dvc repro {t_dvc_first:.2f} s")
    print(f"hashing: acpo (1 thread) takes {t_hash1 / t_sha:.2f}x sha256sum's time, all cores {t_hash / t_sha:.2f}x")
    print("ratios are dvc time / acpo time (goal: no-op repro >= 20x; hashing within 1.5x of sha256sum)")


main()
