"""Peer benchmark for scripts/bench/data.sh: decode every JPEG of a tar with Pillow.

Reads the tar into memory (not timed as decoding), then decodes every member to RGB and
copies its pixels out (Image.tobytes), with N worker processes. Prints one JSON line.
Usage: python data_pillow.py TAR [WORKERS] [REPEATS]
"""

import io
import json
import sys
import tarfile
import time
from multiprocessing import Pool

import PIL
from PIL import Image


def decode(blobs):
    n = 0
    for b in blobs:
        im = Image.open(io.BytesIO(b)).convert("RGB")
        if im.size != (32, 32):
            raise ValueError(f"image of size {im.size}")
        n += len(im.tobytes())
    return n


def main():
    path = sys.argv[1]
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    t0 = time.perf_counter()
    with tarfile.open(path) as tf:
        blobs = [tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()]
    read_s = time.perf_counter() - t0
    chunks = [blobs[i::workers] for i in range(workers)]
    best = float("inf")
    with Pool(workers) as pool:
        for _ in range(repeats):
            t = time.perf_counter()
            total = sum(pool.map(decode, chunks))
            best = min(best, time.perf_counter() - t)
            assert total == len(blobs) * 32 * 32 * 3
    print(json.dumps({
        "tool": f"Pillow {PIL.__version__} ({workers} processes)",
        "images": len(blobs),
        "tar_read_s": round(read_s, 3),
        "decode_s": round(best, 3),
        "images_per_s": round(len(blobs) / best),
    }))


if __name__ == "__main__":
    main()
