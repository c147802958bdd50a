"""Dataset TOML -> training examples, with diffusion-pipe's semantics for the keys it shares.

Top-level keys are defaults that each ``[[directory]]`` may override. Captions come from ``captions.json``
(file name -> list of captions) when the folder has one, else from the same-stem ``.txt``; a file with no
caption is skipped (``skip_empty_caption = true``, the default) or trained with "". Every caption (and every
``cache_shuffle_num`` tag-shuffled variant of it) is its own example, and every entry of ``resolutions``
duplicates the dataset at that area. Images are centre-cropped to their bucket's aspect ratio and resized
(Pillow ``ImageOps.fit``, as diffusion-pipe does), sides rounded to the family's pixel multiple.

Edit datasets (``control_path``, for families that train them: Flux Kontext) pair every target with the file of
the same stem in the control folder (diffusion-pipe utils/dataset.py:634, :669-672); the control image is
cropped and resized to its target's bucket (utils/dataset.py:1082-1083).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from trainers.native.media import (
    BAD_IMAGE_ERRORS,
    CAPTIONS_JSON,
    SKIP_SUFFIXES,
    BadMedia,
    captions_of,
    media_files,
    open_image,
    probe_image,
    read_captions,
    rgb_on_white,
)

log = logging.getLogger(__name__)
SizeOf = Callable[[Path], tuple[int, int]]  # an image's (width, height), or BadMedia


@dataclass(frozen=True)
class Reader:
    """How a scan reads the disk. The trainer's: every image decoded (``probe_image``), captions and folder
    listings read as they are. The dataset browser's check passes one backed by its cache (known sizes and
    verdicts, each caption and listing read once for the scan and the report)."""

    size_of: SizeOf = probe_image
    captions_of: Callable[[Path, dict[str, list[str]] | None], list[str] | None] = captions_of
    media_files: Callable[[Path], list[Path]] = media_files


TRAINER_READER = Reader()

VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".gif", ".m4v"}
OVERRIDABLE = ("enable_ar_bucket", "resolutions", "min_ar", "max_ar", "num_ar_buckets", "ar_buckets",
               "frame_buckets", "size_buckets", "num_repeats", "caption_prefix", "shuffle_tags",
               "cache_shuffle_num", "cache_shuffle_delimiter", "skip_empty_caption", "shuffle_metadata",
               "online_captions")
SIDE_MULTIPLE = 16
ROUND_DIGITS = 3  # diffusion-pipe rounds resolutions and aspect ratios to 3 decimals before de-duplicating


@dataclass(frozen=True)
class Item:
    """One training example before caching: an image at a bucket size with one caption."""

    path: Path
    caption: str
    size: tuple[int, int]  # (width, height)
    repeats: int = 1
    mask: Path | None = None
    ar: float = 1.0  # the aspect-ratio bucket (w/h, 3 decimals): buckets are (ar, width, height)
    root: Path | None = None  # the [[directory]] folder: its cache lives in <root>/cache/
    control: Path | None = None  # edit datasets: the control image paired with this target

    @property
    def bucket_key(self) -> tuple[float, int, int]:
        """Identity of the item's bucket: two aspect ratios that round to one size stay apart."""
        return (self.ar, *self.size)


@dataclass(frozen=True)
class BucketSpec:
    """One bucket of a directory: the aspect ratio it stands for and its size in pixels."""

    ar: float
    size: tuple[int, int]


def directory_settings(dataset: dict, directory: dict) -> dict:
    """Top-level defaults overlaid with one ``[[directory]]`` table's overrides."""
    merged = {k: dataset[k] for k in OVERRIDABLE if k in dataset}
    merged.update({k: directory[k] for k in OVERRIDABLE if k in directory})
    return merged


def dedup_sorted(values) -> list[float]:
    """Resolutions or ratios rounded to 3 decimals, de-duplicated and sorted (diffusion-pipe's normalisation)."""
    return sorted(float(v) for v in {round(v, ROUND_DIGITS) for v in values})


def side_of(resolution) -> float:
    """A ``resolutions`` entry (side, or [w, h]) as the side of a square of the same area."""
    if isinstance(resolution, list | tuple):
        if len(resolution) != 2:
            raise ValueError(f"resolutions entry {resolution!r} must be a side length or a [width, height] pair")
        return math.sqrt(resolution[0] * resolution[1])
    if not isinstance(resolution, int | float) or resolution <= 0:
        raise ValueError(f"resolutions entry {resolution!r} must be a positive number or a [width, height] pair")
    return resolution


def _ratio(entry, key: str) -> float:
    if isinstance(entry, list | tuple):
        if len(entry) != 2 or entry[1] == 0:
            raise ValueError(f"{key} entry {entry!r} must be a ratio or a [width, height] pair")
        return entry[0] / entry[1]
    if not isinstance(entry, int | float) or entry <= 0:
        raise ValueError(f"{key} entry {entry!r} must be a positive ratio or a [width, height] pair")
    return entry


def ar_buckets(settings: dict) -> list[float]:
    """Aspect ratios (w/h) to bucket into: [1.0] when AR bucketing is off (diffusion-pipe's default),
    else ``ar_buckets`` or ``num_ar_buckets`` ratios spaced geometrically from ``min_ar`` to ``max_ar``."""
    if not settings.get("enable_ar_bucket", False):
        return [1.0]
    if settings.get("ar_buckets"):
        return dedup_sorted(_ratio(b, "ar_buckets") for b in settings["ar_buckets"])
    missing = [k for k in ("min_ar", "max_ar", "num_ar_buckets") if k not in settings]
    if missing:
        raise ValueError(f"enable_ar_bucket = true needs ar_buckets or {', '.join(missing)} in the dataset config")
    return dedup_sorted(np.geomspace(settings["min_ar"], settings["max_ar"], num=int(settings["num_ar_buckets"])))


def round_side(x: float, multiple: int) -> int:
    """A side rounded to the nearest multiple (Python's round: halves go to the even multiple)."""
    return int(round(x / multiple) * multiple)


def bucket_size(side: float, aspect: float, multiple: int = SIDE_MULTIPLE) -> tuple[int, int]:
    """(width, height) of ``side**2`` pixels at aspect ``aspect``, each side rounded to ``multiple``."""
    area = side ** 2
    width = math.sqrt(area * aspect)
    size = (round_side(width, multiple), round_side(area / width, multiple))
    if 0 in size:
        raise ValueError(f"resolution {side} at aspect ratio {aspect} gives a {size[0]}x{size[1]} bucket; "
                         f"use a resolution of at least {multiple}")
    return size


def _size_buckets(settings: dict, multiple: int) -> list[BucketSpec]:
    """The ``[width, height, 1]`` entries: images train only in frame-1 buckets, entries of more frames are
    for videos (diffusion-pipe utils/dataset.py _find_closest_size_bucket)."""
    specs = []
    for entry in settings["size_buckets"]:
        if not isinstance(entry, list | tuple) or len(entry) != 3:
            raise ValueError(f"size_buckets entry {entry!r} must be [width, height, frames]")
        width, height, frames = entry
        if frames == 1:
            size = (round_side(width, multiple), round_side(height, multiple))
            specs.append(BucketSpec(round(width / height, ROUND_DIGITS), size))
    if not specs:
        raise ValueError(f"size_buckets = {settings['size_buckets']!r} has no [width, height, 1] entry, so no image "
                         "can train; add one per image size (entries of more frames are for videos)")
    return specs


def _check_frame_buckets(settings: dict) -> None:
    """Any list of frame counts: images always train at frame 1 (diffusion-pipe adds 1 when it is missing,
    utils/dataset.py DirectoryDataset.__init__); longer ones only serve videos, which are skipped here."""
    frames = settings.get("frame_buckets", [1])
    if not isinstance(frames, list) or not frames or not all(isinstance(f, int) and f >= 1 for f in frames):
        raise ValueError(f"frame_buckets = {frames!r} must be a list of frame counts >= 1, e.g. [1] or [1, 33]")


@functools.lru_cache(maxsize=4096)
def _closest_ratio(ratios: tuple[float, ...], width: int, height: int) -> int:
    """Index of the ratio closest to width/height in log space (once per size: datasets repeat a few sizes)."""
    return int(np.argmin(np.abs(np.log(width / height) - np.log(np.array(ratios)))))


@dataclass(frozen=True)
class BucketPlan:
    """The buckets of one directory, grouped by the aspect ratio an image is matched against."""

    ratios: tuple[float, ...]
    groups: tuple[tuple[BucketSpec, ...], ...]

    @classmethod
    def from_settings(cls, settings: dict, multiple: int = SIDE_MULTIPLE) -> BucketPlan:
        """diffusion-pipe's buckets: each AR x each resolution, or the explicit ``size_buckets``."""
        _check_frame_buckets(settings)
        if settings.get("size_buckets"):
            specs = _size_buckets(settings, multiple)
            return cls(tuple(s.ar for s in specs), tuple((s,) for s in specs))
        if not settings.get("resolutions"):
            raise ValueError("the dataset config needs `resolutions` (or `size_buckets`)")
        sides = dedup_sorted(side_of(r) for r in settings["resolutions"])
        ratios = ar_buckets(settings)
        groups = tuple(tuple(BucketSpec(ar, bucket_size(side, ar, multiple)) for side in sides) for ar in ratios)
        return cls(tuple(ratios), groups)

    def for_image(self, width: int, height: int) -> tuple[BucketSpec, ...]:
        """The buckets of an image: those of the ratio closest in log space (the first one on ties)."""
        return self.groups[_closest_ratio(self.ratios, width, height)]

    def sizes(self) -> list[tuple[int, int]]:
        """Every bucket size, ratio by ratio (a size repeats when two ratios round to it)."""
        return [spec.size for group in self.groups for spec in group]


def bucket_table(settings: dict, multiple: int = SIDE_MULTIPLE) -> list[tuple[int, int]]:
    """Every bucket (width, height) that dataset settings make, in diffusion-pipe's order."""
    return BucketPlan.from_settings(settings, multiple).sizes()


def stable_seed(*parts) -> int:
    """A seed from values, the same in every process (Python's ``hash`` of a str is not)."""
    digest = hashlib.sha256(json.dumps([str(p) for p in parts]).encode("utf-8")).hexdigest()
    return int(digest[:16], 16)


def shuffled_captions(caption: str, count: int, delimiter: str, rng: random.Random | None) -> list[str]:
    """``count`` variants of ``caption`` with its ``delimiter``-separated tags shuffled; [caption] if 0 (``rng``
    may then be None)."""
    if count <= 0:
        return [caption]
    variants = []
    for _ in range(count):
        tags = caption.split(delimiter)
        rng.shuffle(tags)
        variants.append(delimiter.join(tags))
    return variants


def subsample_ratio(dataset: dict) -> float | None:
    """The top-level ``subsample_ratio`` (fraction of optimizer steps kept per epoch), checked."""
    for directory in dataset.get("directory", []):
        if "subsample_ratio" in directory:
            raise ValueError(f"subsample_ratio is a top-level dataset key; move it out of the [[directory]] "
                             f"table of {directory.get('path')!r}")
    value = dataset.get("subsample_ratio")
    if value is None:
        return None
    if not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError(f"subsample_ratio = {value!r} must be a number in (0, 1]")
    return float(value)


@dataclass(frozen=True)
class _Directory:
    """What scanning one ``[[directory]]`` needs, read and checked once."""

    folder: Path
    captions: dict[str, list[str]] | None
    masks: dict[str, Path]
    default_mask: Path | None
    plan: BucketPlan
    shuffle_num: int
    delimiter: str
    prefix: str
    repeats: int
    skip_empty: bool
    seed: int
    controls: dict[str, Path] | None = None  # edit datasets: control files by stem (None: not an edit dataset)
    control_dir: Path | None = None


def _config_path(directory: dict, key: str, folder: bool = True) -> Path | None:
    """A path key of a [[directory]] table, which must name an existing folder (or file)."""
    if key not in directory:
        return None
    path = Path(directory[key]).expanduser()
    if not (path.is_dir() if folder else path.is_file()):
        what = "directory" if folder else "file"
        raise FileNotFoundError(f"[[directory]] {key} = {directory[key]!r} is not a {what}")
    return path


def _mask_files(mask_dir: Path | None) -> dict[str, Path]:
    masks: dict[str, Path] = {}
    for path in sorted(mask_dir.iterdir()) if mask_dir else []:
        if not path.is_file():
            continue
        if path.stem in masks:
            raise ValueError(f"two mask files for the stem {path.stem!r}: {masks[path.stem]} and {path}; keep one")
        masks[path.stem] = path
    return masks


def _control_files(control_dir: Path | None) -> dict[str, Path] | None:
    """The files of a control folder by stem (any image suffix, as diffusion-pipe utils/dataset.py:634 pairs
    them); two candidates for one stem are an error here, where diffusion-pipe keeps whichever it lists last."""
    if control_dir is None:
        return None
    controls: dict[str, Path] = {}
    for path in sorted(control_dir.iterdir()):
        if not path.is_file() or path.suffix.lower() in SKIP_SUFFIXES:
            continue
        if path.stem in controls:
            raise ValueError(f"two control images for the stem {path.stem!r}: {controls[path.stem]} and {path}; "
                             "keep one")
        controls[path.stem] = path
    return controls


def _read_directory(directory: dict, settings: dict, seed: int, multiple: int, model: str,
                    edit: bool = False) -> _Directory:
    if "control_path" in directory and not edit:
        raise ValueError(f"[[directory]] control_path = {directory['control_path']!r}: edit datasets are not "
                         f"supported for {model}")
    if "path" not in directory:
        raise ValueError("a [[directory]] table has no `path`")
    folder = _config_path(directory, "path")
    control_dir = _config_path(directory, "control_path")
    repeats = settings.get("num_repeats", 1)
    if not isinstance(repeats, int) or repeats <= 0:
        raise ValueError(f"num_repeats = {repeats!r} for {folder} must be an integer > 0")
    if settings.get("online_captions") and not (folder / CAPTIONS_JSON).is_file():
        raise FileNotFoundError(f"online_captions = true but {folder / CAPTIONS_JSON} does not exist")
    shuffle_num = int(settings.get("cache_shuffle_num", 0))
    if settings.get("shuffle_tags") and shuffle_num == 0:
        shuffle_num = 1  # diffusion-pipe: the legacy shuffle_tags means one shuffled variant
    return _Directory(
        folder=folder, captions=read_captions(folder), masks=_mask_files(_config_path(directory, "mask_path")),
        default_mask=_config_path(directory, "default_mask_file", folder=False),
        plan=BucketPlan.from_settings(settings, multiple), shuffle_num=shuffle_num,
        delimiter=settings.get("cache_shuffle_delimiter", ", "), prefix=settings.get("caption_prefix", ""),
        repeats=repeats, skip_empty=bool(settings.get("skip_empty_caption", True)), seed=seed,
        controls=_control_files(control_dir), control_dir=control_dir)


def _image_size(path: Path) -> tuple[int, int] | None:
    try:
        return probe_image(path)
    except BadMedia:
        return None


def _mask_for(path: Path, size: tuple[int, int], d: _Directory) -> Path | None:
    if not d.masks and d.default_mask is None:  # no mask directory: nothing to look up
        return None
    mask = d.masks.get(path.stem, d.default_mask)
    if mask is None:
        if d.masks or d.default_mask:
            log.warning("no mask file for %s: training it without a mask", path.name)
        return None
    mask_size = _image_size(mask)
    if mask_size is None:
        raise ValueError(f"mask {mask} (for image {path}) is not an image Pillow can open")
    if mask_size != size:
        raise ValueError(f"mask {mask} is {mask_size[0]}x{mask_size[1]} but image {path} is {size[0]}x{size[1]}: "
                         "a mask must have exactly its image's size")
    return mask


def _control_for(path: Path, d: _Directory) -> Path | None:
    """The control image of a target (edit datasets), or None for other datasets; a missing one is an error
    (diffusion-pipe utils/dataset.py:670-671 raises too)."""
    if d.controls is None:
        return None
    control = d.controls.get(path.stem)
    if control is None:
        raise ValueError(f"no control image for {path}: add {d.control_dir}/{path.stem}.<ext> (same stem as the "
                         f"target), or move {path.name} out of {d.folder}")
    return control


def _skip_or_raise(exc: BadMedia, strict: bool) -> list[Item]:
    if strict:
        raise ValueError(f"{exc} ([studio] strict_dataset = true stops on any bad file; set it to false to skip "
                         "bad files with a warning)") from None
    log.warning("skipping %s: %s", exc.path, exc.reason)
    return []


def _items_for(path: Path, d: _Directory, strict: bool = False, reader: Reader = TRAINER_READER) -> list[Item]:
    if os.path.splitext(str(path))[1].lower() in VIDEO_SUFFIXES:  # Path.suffix, without parsing a name
        log.warning("skipping %s: videos are not supported by the native trainer", path.name)
        return []
    try:
        size = reader.size_of(path)
        captions = reader.captions_of(path, d.captions)
    except BadMedia as exc:
        return _skip_or_raise(exc, strict)
    if captions is None:
        if d.skip_empty:
            log.warning("skipping %s: no caption (skip_empty_caption = true)", path.name)
            return []
        log.warning("%s has no caption: training it with an empty caption", path.name)
        captions = [""]
    mask = _mask_for(path, size, d)
    control = _control_for(path, d)
    specs = d.plan.for_image(*size)
    items = []
    for index, caption in enumerate(captions):
        # seeded per image and caption, so the variants do not depend on the listing (only when there are any)
        rng = random.Random(stable_seed(d.seed, path.name, index, caption)) if d.shuffle_num > 0 else None
        for variant in shuffled_captions(caption, d.shuffle_num, d.delimiter, rng):
            items.extend(Item(path, d.prefix + variant, spec.size, d.repeats, mask, spec.ar, d.folder, control)
                         for spec in specs)
    return items


def scan_directory(directory: dict, settings: dict, seed: int, multiple: int = SIDE_MULTIPLE,
                   model: str = "chroma", strict: bool = False, reader: Reader = TRAINER_READER,
                   edit: bool = False) -> list[Item]:
    """The items of one ``[[directory]]``: every image x caption (variant) x bucket of its aspect ratio. A bad
    file (corrupt, truncated, animated WebP, undecodable caption, symlink loop) is skipped with a warning naming
    it, or stops the scan when ``strict``. ``reader.size_of`` gives an image's size or raises BadMedia: the trainer
    decodes every image (``probe_image``); the dataset browser passes what its check cache already knows.
    ``edit``: the family trains edit datasets, so ``control_path`` pairs a control image with every target."""
    d = _read_directory(directory, settings, seed, multiple, model, edit)
    return [item for path in reader.media_files(d.folder) for item in _items_for(path, d, strict, reader)]


def scan_dataset(dataset: dict, seed: int, multiple: int = SIDE_MULTIPLE, model: str = "chroma",
                 strict: bool = False, reader: Reader = TRAINER_READER, edit: bool = False) -> list[Item]:
    """All items of a dataset TOML (already parsed); ``multiple`` is the family's pixel multiple; ``strict``
    (``[studio] strict_dataset``) turns a skipped bad file into an error; ``edit``: ``control_path`` is read."""
    directories = dataset.get("directory", [])
    if not directories:
        raise ValueError("the dataset config has no [[directory]] table")
    subsample_ratio(dataset)
    items: list[Item] = []
    for directory in directories:
        items.extend(scan_directory(directory, directory_settings(dataset, directory), seed, multiple, model,
                                    strict, reader, edit))
    if not items:
        raise RuntimeError("the dataset is empty: no image with a caption was found")
    return items


def first_control(dataset: dict, seed: int, multiple: int = SIDE_MULTIPLE) -> Path | None:
    """The control image of the first training example of an edit dataset (the previews' reference), None when
    no ``[[directory]]`` has a ``control_path``."""
    if not any("control_path" in directory for directory in dataset.get("directory", [])):
        return None
    return scan_dataset(dataset, seed, multiple, edit=True)[0].control


def load_pixels(item: Item) -> Image.Image:
    """The item's image, transparent parts on white, centre-cropped and resized to its bucket."""
    try:
        with open_image(item.path) as img:
            img.load()
            rgb = rgb_on_white(img)
    except BAD_IMAGE_ERRORS as exc:  # changed or damaged since the scan: still name the file
        raise BadMedia(item.path, f"not a readable image: Pillow fails to decode it ({exc})") from None
    return ImageOps.fit(rgb, item.size)


def load_control(item: Item) -> Image.Image:
    """The item's control image, prepared like its target: on white, centre-cropped and resized to the target's
    bucket (diffusion-pipe utils/dataset.py:1082-1083 preprocesses it with the target's size bucket)."""
    if item.control is None:
        raise ValueError(f"{item.path} has no control image")
    return load_pixels(dataclasses.replace(item, path=item.control))


def load_mask(item: Item) -> np.ndarray | None:
    """The item's mask as uint8 (H, W) at its bucket size (R channel: 255 = train, 0 = ignore), or None."""
    if item.mask is None:
        return None
    with Image.open(item.mask) as img:
        rgb = img.convert("RGB")
    return np.asarray(ImageOps.fit(rgb, item.size))[..., 0].copy()
