"""The expensive part of the dataset check, per picture: the trainer's own decode check, sharpness, perceptual
hash and a 256 px thumbnail (written to the check cache). Pictures are measured in a pool of worker processes,
a chunk at a time, so the browser shows progress and a 10,000-image folder takes seconds, not minutes
(docs/benchmarks.md, Dataset check at scale). Torch-free.
"""

from __future__ import annotations

import ctypes
import io
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from trainers.datasets.check_cache import Facts, thumb_path
from trainers.native import media

THUMB = 256
SHARPNESS_SIDE = 512  # sharpness is measured near this size (JPEGs decode at it directly)
CHUNK = 48  # pictures per task: small enough for steady progress, large enough to amortise the hand-off
IN_PROCESS_BELOW = 64  # fewer pictures than this are measured in the calling process (no pool start-up)


def percentile_of_counts(counts: np.ndarray, q: float) -> float:
    """numpy's default ("linear") ``q``-th percentile of the values whose histogram is ``counts`` (value ``i``
    occurring ``counts[i]`` times): the same number as np.percentile of the values, without sorting them."""
    cumulative = np.cumsum(counts)
    n = int(cumulative[-1])
    position = q / 100 * (n - 1)
    below = int(position)
    low = int(np.searchsorted(cumulative, below + 1))  # the sorted values' ``below``-th (0-based)
    high = int(np.searchsorted(cumulative, min(below + 2, n)))
    return low + (high - low) * (position - below)


def sharpness(gray: np.ndarray) -> float:
    """How crisp the strongest edges are: the 99.5th percentile of the Laplacian's magnitude over the picture's
    contrast (1st to 99th percentile of brightness). Flat artwork with clean edges scores as high as a detailed
    photo; a blurred picture of either scores a fraction of it. ``gray``: 8-bit brightness."""
    if gray.shape[0] < 3 or gray.shape[1] < 3:
        return 0.0
    g = gray.astype(np.int16)  # exact for 8-bit pixels (|Laplacian| <= 1020), half the memory traffic of float
    lap = g[1:-1, 1:-1] * np.int16(4)
    for neighbour in (g[:-2, 1:-1], g[2:, 1:-1], g[1:-1, :-2], g[1:-1, 2:]):
        lap -= neighbour  # in place: no temporary per term
    np.abs(lap, out=lap)
    # percentiles of a sample of the pixels (~40k at 512 px), from histograms of their integer values
    brightness = np.bincount(gray.ravel()[::7], minlength=256)
    low, high = percentile_of_counts(brightness, 1), percentile_of_counts(brightness, 99)
    edges = percentile_of_counts(np.bincount(lap.ravel()[::6]), 99.5)
    return edges / max(high - low, 1.0)


_MADE: set[Path] = set()  # thumbnail folders this process has made (one mkdir each, not one per picture)


def _write_thumb(view: Image.Image, key: str) -> None:
    """The thumbnail, written to a temporary name and renamed (no fsync: the cache is rebuilt if lost)."""
    target = thumb_path(key)
    if target.parent not in _MADE:
        target.parent.mkdir(parents=True, exist_ok=True)
        _MADE.add(target.parent)
    buffer = io.BytesIO()
    view.save(buffer, format="JPEG", quality=88)
    temporary = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        temporary.write_bytes(buffer.getvalue())
    except FileNotFoundError:  # the cache was cleared meanwhile
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_bytes(buffer.getvalue())
    os.replace(temporary, target)


def measure_image(path: Path, key: str | None) -> Facts:
    """Measure one picture; its thumbnail goes to the cache when ``key`` (its fingerprint) is given. A file the
    trainer skips gets its reason in ``bad``, as the trainer words it."""
    try:
        # the trainer's own check (every byte decoded), at the scale sharpness is measured: one decode for both.
        # A colour JPEG stays in YCbCr: its Y is the brightness sharpness needs, and the thumbnail is saved as
        # YCbCr (what a JPEG holds), so no colour conversion runs at all.
        (width, height), img = media.decode_checked(path, (SHARPNESS_SIDE, SHARPNESS_SIDE), mode="YCbCr")
        view = img if img.mode == "YCbCr" else media.rgb_on_white(img)
    except media.BadMedia as exc:
        return Facts(0, 0, 0.0, "", f"skipped: {exc.reason}")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return Facts(0, 0, 0.0, "", f"unreadable: Pillow cannot open it ({exc})")
    factor = min(view.width, view.height) // SHARPNESS_SIDE
    if factor > 1:
        view = view.reduce(factor)  # a box filter by a whole factor: fast, and it keeps edges honest
    gray = view.getchannel(0) if view.mode == "YCbCr" else view.convert("L")
    sharp = sharpness(np.asarray(gray))
    shrink = max(view.width, view.height) // THUMB
    if shrink > 1:
        view = view.reduce(shrink)  # whole-factor box filter first; the thumbnail then resizes the rest
    view.thumbnail((THUMB, THUMB), Image.Resampling.BILINEAR)
    small = view.reduce(max(1, min(view.width, view.height) // 64))  # phash shrinks it to 32 px anyway
    phash = np.packbits(imagehash.phash(small).hash.ravel()).tobytes().hex()
    if key is not None:
        _write_thumb(view, key)
    return Facts(width, height, sharp, phash)


def _keep_heap() -> None:
    """Worker start-up: have glibc's malloc keep freed memory instead of handing it back to the kernel after each
    picture (its trim and dynamic mmap threshold otherwise make every decode buffer fresh pages, page-faulted and
    zeroed again: up to a third of a worker's time, depending on what the process allocated before). The heap
    this keeps is a few decode buffers' worth. No-op off glibc."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD: buffers up to 64 MiB come from the reusable heap
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: keep up to 256 MiB of free heap before trimming
    except (OSError, AttributeError, TypeError):  # no C library by that name, or no mallopt in it
        pass


def _measure_chunk(chunk: list[tuple[str, str | None]], home: str | None) -> list[Facts]:
    if home:  # the worker writes thumbnails where the parent's cache is
        os.environ["DP_STUDIO_HOME"] = home
    return [measure_image(Path(path), key) for path, key in chunk]


def _context():
    """forkserver: workers fork from a clean server process that has this module (numpy, Pillow, imagehash)
    imported, so they start in milliseconds; a fork of the web server itself could inherit a lock held by one
    of its threads."""
    context = get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def measure_all(todo: list[tuple[Path, str | None]], workers: int | None = None) -> Iterator[tuple[int, Facts]]:
    """``(index into todo, facts)`` for every picture of ``todo`` (path, fingerprint), as chunks finish."""
    if len(todo) < IN_PROCESS_BELOW:
        for index, (path, key) in enumerate(todo):
            yield index, measure_image(path, key)
        return
    workers = workers or max(1, min(len(os.sched_getaffinity(0)), 4))
    chunks = [todo[start:start + CHUNK] for start in range(0, len(todo), CHUNK)]
    home = os.environ.get("DP_STUDIO_HOME")
    with ProcessPoolExecutor(workers, mp_context=_context(), initializer=_keep_heap) as pool:
        futures = [(start, pool.submit(_measure_chunk, [(str(p), k) for p, k in chunk], home))
                   for start, chunk in zip(range(0, len(todo), CHUNK), chunks, strict=True)]
        try:
            for start, future in futures:
                for offset, facts in enumerate(future.result()):
                    yield start + offset, facts
        finally:
            for _, future in futures:
                future.cancel()
