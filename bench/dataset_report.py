"""How long the dataset browser takes to read and check a dataset of real-sized photos.

Method: N synthetic 1024×1024 JPEG "photos" (smooth gradients plus noise, so perceptual hashes differ and the
sharpness measure has edges to find) with .txt captions are written to a temporary folder; ``analyse`` is
timed cold (first read) and warm (files in the page cache), at resolution 1024 with aspect-ratio buckets.

Usage: python bench/dataset_report.py [--images 200]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainers.datasets.report import analyse  # noqa: E402


def write_photos(folder: Path, count: int, side: int = 1024) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    for i in range(count):
        a, b, c = rng.uniform(0, 255, 3)
        base = np.stack([a * xx + (255 - a) * yy, b * yy, c * (1 - xx)], axis=-1)
        noise = rng.normal(0, 12, (side // 16, side // 16, 3)).repeat(16, 0).repeat(16, 1)
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(folder / f"photo_{i:04d}.jpg",
                                                                              quality=90)
        (folder / f"photo_{i:04d}.txt").write_text(f"zxq, photo {i}, gradient")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_photos(folder, args.images)
        for label in ("cold", "warm"):
            started = time.perf_counter()
            report = analyse(folder, resolution=1024, trigger="zxq", global_batch=4)
            seconds = time.perf_counter() - started
            print(f"{label}: {args.images} images in {seconds:.2f} s ({1000 * seconds / args.images:.1f} ms/image), "
                  f"{len(report.buckets)} buckets, problems {dict(report.problems)}")


if __name__ == "__main__":
    main()
