"""The dataset check at scale: cheap scan, full check, second open and peak memory on generated JPEGs.

Method: N 1024×1024 JPEG "photos" (gradients plus blocky noise, see bench/dataset_report.py) with .txt captions
are written to a temporary folder. Each measurement runs in a fresh Python process (its peak memory: the largest
sum of its own and its descendants' resident memory, sampled every 50 ms, the measuring workers included) with
the files in the page cache (warm):

- reference: a minimal pass, Pillow's header (``Image.open(...).size``) plus the caption file, per image
  (``--rounds`` rounds alternating with the cheap scan; medians and the ratio's median and range are given);
- cheap scan: the report the browser shows first (``trainers.datasets.report.check_steps``, its first state):
  the trainer's dataset reader on headers, captions and buckets, with an empty check cache;
- full check: ``trainers.datasets.report.analyse`` (everything above plus the trainer's decode check, sharpness,
  thumbnails, near-duplicates, measured in worker processes) with an empty cache;
- second open: ``analyse`` again, the cache filled by the full check.

Goals (issue 14): cheap scan <= 1.1× the reference; full check <= 30 s and <= 500 MiB for 10,000 images on
2 cores; second open <= 2 s. The script prints each figure and whether it meets its goal.

Usage: python bench/dataset_scan.py [--images 10000] [--folder PHOTOS]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GOALS = {"cheap_ratio": 1.1, "full_s": 30.0, "full_mib": 500.0, "second_s": 2.0,  # at 10,000 images (issue 14)
         "cheap_s": 3.0, "page_s": 1.0}  # issue 11.13: cheap part <= 3 s warm, a page under 1 s once scanned


def reference(folder: Path) -> None:
    from PIL import Image

    for path in sorted(folder.glob("*.jpg")):
        with Image.open(path) as img:
            img.size  # noqa: B018 - the header read is the point
        path.with_suffix(".txt").read_text(encoding="utf-8")


def cheap(folder: Path) -> None:
    from trainers.datasets.report import check_steps

    steps = check_steps(folder, resolution=1024, trigger="zxq", global_batch=4)
    first = next(steps)  # the report the browser shows before measuring
    assert first.report.pending == len(first.report.images), "the cache was not empty"
    steps.close()


def full(folder: Path) -> None:
    from trainers.datasets.report import analyse

    analyse(folder, resolution=1024, trigger="zxq", global_batch=4)


def pages(folder: Path) -> dict:
    """Once scanned (the cache filled): the Datasets tab's page turns and filter changes, server side."""
    from studio.tabs.datasets import PAGE_SIZE, PROBLEMS, page_view
    from trainers.datasets.report import analyse

    report = analyse(folder, resolution=1024, trigger="zxq", global_batch=4)
    last = -(-len(report.images) // PAGE_SIZE)
    times = []
    for show, page in (("all", 2), ("all", last // 2), ("all", last), (PROBLEMS, 1), ("all", 1)):
        started = time.perf_counter()
        page_view(report, show, page)
        times.append(time.perf_counter() - started)
    return {"page_max_s": max(times), "page_median_s": sorted(times)[len(times) // 2]}


def measure(which: str, folder: Path) -> None:
    """Child process: time one pass, print seconds and peak RSS as JSON."""
    fn = {"reference": reference, "cheap": cheap, "full": full, "second": full, "pages": pages}[which]
    import trainers.datasets.report  # noqa: F401 - module imports are not the pass being timed
    if which == "pages":
        import studio.tabs.datasets  # noqa: F401 - Gradio's import is not the pass being timed
    peak = PeakMemory()
    started = time.perf_counter()
    extra = fn(folder) or {}
    seconds = time.perf_counter() - started
    peak.stop()
    parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"s": seconds, "mib": max(peak.mib, parent), "parent_mib": parent,
                      "workers_mib": peak.workers_mib, **extra}))


class PeakMemory:
    """The largest resident memory of this process and all its descendants together (the measuring workers are
    children of the forkserver, which getrusage's RUSAGE_CHILDREN never sees), sampled every 50 ms."""

    def __init__(self) -> None:
        import threading

        import psutil

        self.mib = self.workers_mib = 0.0
        self._me, self._done = psutil.Process(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        import psutil

        while not self._done.wait(0.05):
            own, others = self._me.memory_info().rss, 0
            for child in self._me.children(recursive=True):
                try:
                    others += child.memory_info().rss
                except psutil.Error:
                    pass
            self.mib = max(self.mib, (own + others) / 2**20)
            self.workers_mib = max(self.workers_mib, others / 2**20)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def _run(which: str, folder: Path, home: Path) -> dict:
    env = {**os.environ, "DP_STUDIO_HOME": str(home), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--measure", which, str(folder)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--folder", type=Path, help="a folder of photos this script generated before (kept between runs)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating reference / cheap-scan rounds")
    ap.add_argument("--measure", nargs=2, metavar=("PASS", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        measure(args.measure[0], Path(args.measure[1]))
        return
    from bench.dataset_report import write_photos

    with tempfile.TemporaryDirectory() as tmp:
        folder, home = args.folder or Path(tmp) / "photos", Path(tmp) / "home"
        if args.folder:  # photos written by an earlier run: reuse them (the check cache still starts empty)
            args.images = len(list(folder.glob("*.jpg")))
        else:
            folder.mkdir()
            write_photos(folder, args.images)
        _run("reference", folder, home)  # warm the page cache
        pairs = []  # reference and cheap scan alternate, so a busy moment hits both
        for r in range(args.rounds):
            order = ("reference", "cheap") if r % 2 == 0 else ("cheap", "reference")
            got = {which: _run(which, folder, home) for which in order}
            pairs.append((got["reference"]["s"], got["cheap"]["s"]))
        ratios = sorted(c / r for r, c in pairs)
        ref = {"s": statistics.median(r for r, _ in pairs)}
        low = {"s": statistics.median(c for _, c in pairs)}
        first, second = _run("full", folder, home), _run("second", folder, home)
        paged = _run("pages", folder, home)
    scale = 10_000 / args.images
    print(f"{args.images} images, {os.cpu_count()} CPUs")
    print(f"reference pass {ref['s']:.2f} s; cheap scan {low['s']:.2f} s (medians of {args.rounds} alternating "
          f"rounds); ratio cheap/reference median {statistics.median(ratios):.2f}× (range {ratios[0]:.2f}-"
          f"{ratios[-1]:.2f}; goal <= {GOALS['cheap_ratio']}×; ×{scale:g} = {low['s'] * scale:.1f} s at 10,000, goal <= "
          f"{GOALS['cheap_s']:.0f} s)")
    print(f"full check {first['s']:.2f} s (×{scale:g} = {first['s'] * scale:.0f} s at 10,000; goal <= "
          f"{GOALS['full_s']:.0f} s), peak {first['mib']:.0f} MiB (goal <= {GOALS['full_mib']:.0f} MiB at 10,000)")
    print(f"Datasets tab once scanned: a page turn or filter change takes {paged['page_median_s'] * 1000:.0f} ms "
          f"(median), {paged['page_max_s'] * 1000:.0f} ms at most (goal < {GOALS['page_s']:.0f} s)")
    print(f"second open {second['s']:.2f} s (×{scale:g} = {second['s'] * scale:.1f} s at 10,000; goal <= "
          f"{GOALS['second_s']:.0f} s), peak {second['mib']:.0f} MiB")


if __name__ == "__main__":
    main()
