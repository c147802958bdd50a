"""Dataset TOML -> training examples, with diffusion-pipe's semantics for the keys it shares.

Top-level keys are defaults that each ``[[directory]]`` may override. Captions come from ``captions.json``
(file name -> list of captions) when the folder has one, else from the same-stem ``.txt``. Every entry of
``resolutions`` duplicates the dataset at that area; images are centre-cropped to their bucket's aspect ratio
and resized (Pillow ``ImageOps.fit``), sides rounded to a multiple of 16.
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

log = logging.getLogger(__name__)

SKIP_SUFFIXES = {".txt", ".npz", ".json", ".parquet", ".bak", ".db"}
VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".gif", ".m4v"}
OVERRIDABLE = ("enable_ar_bucket", "resolutions", "min_ar", "max_ar", "num_ar_buckets", "ar_buckets",
               "num_repeats", "caption_prefix", "shuffle_tags", "cache_shuffle_num", "cache_shuffle_delimiter",
               "skip_empty_caption")
SIDE_MULTIPLE = 16


@dataclass(frozen=True)
class Item:
    """One training example before caching: an image at a bucket size with one caption."""

    path: Path
    caption: str
    size: tuple[int, int]  # (width, height)
    repeats: int = 1


def directory_settings(dataset: dict, directory: dict) -> dict:
    """Top-level defaults overlaid with one ``[[directory]]`` table's overrides."""
    merged = {k: dataset[k] for k in OVERRIDABLE if k in dataset}
    merged.update({k: directory[k] for k in OVERRIDABLE if k in directory})
    return merged


def side_of(resolution) -> float:
    """A ``resolutions`` entry (side, or [w, h]) as the side of a square of the same area."""
    if isinstance(resolution, list | tuple):
        return math.sqrt(resolution[0] * resolution[1])
    return float(resolution)


def ar_buckets(settings: dict) -> list[float]:
    """Aspect ratios (w/h) to bucket into; [1.0] when AR bucketing is off (diffusion-pipe's default)."""
    if not settings.get("enable_ar_bucket", False):
        return [1.0]
    if settings.get("ar_buckets"):
        return [b[0] / b[1] if isinstance(b, list | tuple) else float(b) for b in settings["ar_buckets"]]
    lo, hi, n = float(settings["min_ar"]), float(settings["max_ar"]), int(settings["num_ar_buckets"])
    if n == 1:
        return [math.sqrt(lo * hi)]
    # Spaced evenly in log space between min_ar and max_ar.
    return [math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * i / (n - 1)) for i in range(n)]


def bucket_size(side: float, aspect: float, multiple: int = SIDE_MULTIPLE) -> tuple[int, int]:
    """(width, height) of about ``side**2`` pixels at aspect ``aspect``, sides rounded to ``multiple``."""
    width = side * math.sqrt(aspect)
    height = side / math.sqrt(aspect)
    return (max(multiple, round(width / multiple) * multiple), max(multiple, round(height / multiple) * multiple))


def nearest_aspect(aspect: float, buckets: list[float]) -> float:
    """The bucket ratio closest to ``aspect`` in log space."""
    return min(buckets, key=lambda b: abs(math.log(b) - math.log(aspect)))


def shuffled_captions(caption: str, count: int, delimiter: str, rng: random.Random) -> list[str]:
    """``count`` variants of ``caption`` with its tags shuffled (``cache_shuffle_num``); [caption] if 0."""
    if count <= 0:
        return [caption]
    tags = [t.strip() for t in caption.split(delimiter.strip() or delimiter) if t.strip()]
    variants = []
    for _ in range(count):
        rng.shuffle(tags)
        variants.append(delimiter.join(tags))
    return variants


def read_captions(folder: Path) -> dict[str, list[str]] | None:
    """``captions.json`` of a folder (name -> list of captions), or None when there is none."""
    path = folder / "captions.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return {name: [caps] if isinstance(caps, str) else list(caps) for name, caps in data.items()}


def media_files(folder: Path) -> list[Path]:
    """Candidate media files of a folder (not recursive), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() not in SKIP_SUFFIXES)


def _captions_for(path: Path, json_caps: dict[str, list[str]] | None) -> list[str]:
    if json_caps is not None:
        return json_caps.get(path.name, [])
    txt = path.with_suffix(".txt")
    return [txt.read_text(encoding="utf-8").strip()] if txt.is_file() else []


def _image_aspect(path: Path) -> float | None:
    try:
        with Image.open(path) as img:
            return img.width / img.height
    except (OSError, ValueError):
        return None


def scan_directory(directory: dict, settings: dict, rng: random.Random) -> list[Item]:
    """The items of one ``[[directory]]``: every image x caption variant x resolution."""
    folder = Path(directory["path"]).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"[[directory]] path = {directory['path']!r} is not a directory")
    json_caps = read_captions(folder)
    shuffle_num = int(settings.get("cache_shuffle_num", 1 if settings.get("shuffle_tags") else 0))
    delimiter = settings.get("cache_shuffle_delimiter", ", ")
    prefix = settings.get("caption_prefix", "")
    repeats = int(settings.get("num_repeats", 1))
    if repeats <= 0:
        raise ValueError(f"num_repeats must be > 0 for {folder}")
    buckets = ar_buckets(settings)
    items: list[Item] = []
    for path in media_files(folder):
        items.extend(_items_for(path, json_caps, settings, rng, shuffle_num, delimiter, prefix, repeats, buckets))
    return items


def _items_for(path: Path, json_caps, settings: dict, rng: random.Random, shuffle_num: int, delimiter: str,
               prefix: str, repeats: int, buckets: list[float]) -> list[Item]:
    if path.suffix.lower() in VIDEO_SUFFIXES:
        log.warning("skipping %s: videos are not supported by the native trainer", path.name)
        return []
    aspect = _image_aspect(path)
    if aspect is None:
        log.warning("skipping %s: not an image Pillow can open", path.name)
        return []
    captions = [c for c in _captions_for(path, json_caps) if c] or []
    if not captions:
        if settings.get("skip_empty_caption", True):
            log.warning("skipping %s: no caption (skip_empty_caption = true)", path.name)
            return []
        captions = [""]
    sizes = [bucket_size(side_of(r), nearest_aspect(aspect, buckets)) for r in settings["resolutions"]]
    return [Item(path, prefix + variant, size, repeats)
            for caption in captions
            for variant in shuffled_captions(caption, shuffle_num, delimiter, rng)
            for size in sizes]


def scan_dataset(dataset: dict, seed: int) -> list[Item]:
    """All items of a dataset TOML (already parsed)."""
    directories = dataset.get("directory", [])
    if not directories:
        raise ValueError("the dataset config has no [[directory]] table")
    rng = random.Random(seed)
    items: list[Item] = []
    for directory in directories:
        settings = directory_settings(dataset, directory)
        if not settings.get("resolutions"):
            raise ValueError(f"no `resolutions` for [[directory]] {directory.get('path')!r}")
        items.extend(scan_directory(directory, settings, rng))
    if not items:
        raise RuntimeError("the dataset is empty: no image with a caption was found")
    return items


def load_pixels(item: Item) -> Image.Image:
    """The item's image, transparent parts composited on white, centre-cropped and resized to its bucket."""
    with Image.open(item.path) as img:
        img.load()
        if img.mode in ("RGBA", "LA", "P"):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, rgba)
        rgb = img.convert("RGB")
    return ImageOps.fit(rgb, item.size, Image.Resampling.LANCZOS)
