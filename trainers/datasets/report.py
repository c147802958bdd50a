"""What a dataset really is to the trainer: per image its bucket, crop and captions, and what is wrong with it.

Torch-free (the studio runs it): the buckets, crops and captions come from the native trainer's own dataset
reader (:mod:`trainers.native.data`, diffusion-pipe's semantics), so the preview is what training uses, not a
re-derivation. Health checks on top:

- no caption (skipped, or trained with "" when ``skip_empty_caption = false``), empty caption, unreadable file;
- upscaled: the crop is smaller than its bucket (the image is below the training resolution);
- heavy crop: the centre crop to the bucket's aspect ratio cuts a large part of the picture;
- near-duplicates (perceptual hash, :mod:`imagehash`), blurry outliers (variance of the Laplacian far below the
  dataset's median: a relative test, so flat artwork is not called blurry);
- the trigger word missing from a caption; captions longer than T5 reads (estimated tokens);
- buckets with fewer examples than one global batch (diffusion-pipe drops them).
"""

from __future__ import annotations

import json
import math
import re
import statistics
import tomllib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from trainers.datasets.check_cache import thumb_path, thumbs_root
from trainers.datasets.known import Known
from trainers.datasets.measure import SHARPNESS_SIDE, THUMB, measure_all, sharpness  # noqa: F401 - re-exported
from trainers.files import atomic_write_text
from trainers.native import archive, data
from trainers.paths import user_path
from trainers.runs import resolve_config_path

DEFAULT_AR = {"enable_ar_bucket": True, "min_ar": 0.5, "max_ar": 2.0, "num_ar_buckets": 7}
DUPLICATE_DISTANCE = 4  # of 64 bits of a perceptual hash
BLUR_RATIO = 0.35  # sharpness below this share of the dataset's median is an outlier
HEAVY_CROP = 0.8  # less of the picture kept than this is worth a look
UPSCALE_WARN = 1.25  # smaller upscales are listed in the table's scale column only (×1.06 is not visible)
# The health list's groups, most harmful first (a kind not listed goes last).
SEVERITY = ("unreadable", "skipped", "video", "no caption", "empty caption", "upscaled", "blurry", "near-duplicate",
            "heavy crop", "no trigger", "long caption")
T5_TOKENS = 512  # Chroma's T5 sequence length
_PATH_KEYS = ("path", "mask_path", "default_mask_file", "control_path")


class DatasetReportError(ValueError):
    """The folder or dataset TOML cannot be read; the message says what to fix."""


@dataclass
class ImageInfo:
    path: Path
    width: int = 0
    height: int = 0
    captions: list[str] = field(default_factory=list)  # as written (captions.json / .txt), before prefix/shuffle
    examples: int = 0  # training examples it makes (captions x variants x resolutions x repeats)
    buckets: list[tuple[int, int]] = field(default_factory=list)  # one per resolution
    crop: tuple[float, float, float, float] | None = None  # (left, top, right, bottom) for the first bucket
    kept: float = 1.0  # share of the picture the crop keeps
    scale: float = 1.0  # bucket width / crop width: > 1 means upscaled
    sharpness: float = 0.0
    phash: bytes = b""  # 64-bit perceptual hash of its thumbnail, packed (8 bytes)
    issues: list[str] = field(default_factory=list)
    in_json: bool = False  # its folder has captions.json (which wins over .txt files, as in training)
    prefix: str = ""  # caption_prefix of its directory
    skip_empty: bool = True
    measured: bool = False  # its decode check, sharpness and hash are known (cached or measured)

    @property
    def trained(self) -> bool:
        return self.examples > 0


@dataclass(frozen=True)
class BucketRow:
    size: tuple[int, int]
    ar: float
    images: int
    examples: int
    steps: int  # optimizer steps per epoch from this bucket at the global batch size
    dropped: bool


@dataclass
class DatasetReport:
    source: Path
    settings: str  # how buckets were made, in words
    global_batch: int
    images: list[ImageInfo]
    buckets: list[BucketRow]
    tags: list[tuple[str, int]]
    duplicates: list[tuple[str, str, int]]
    thumbs: dict[Path, Path] = field(default_factory=dict, repr=False)  # picture -> its cached thumbnail file
    trigger: str = ""
    pending: int = 0  # pictures whose decode check, sharpness and hash are still being measured

    @property
    def problems(self) -> Counter:
        return Counter(kind(issue) for info in self.images for issue in info.issues)

    def summary_markdown(self) -> str:
        trained = sum(1 for i in self.images if i.trained)
        examples = sum(i.examples for i in self.images)
        steps = sum(b.steps for b in self.buckets)
        head = (f"**{_count(len(self.images), 'image')}** in `{self.source}` · {trained} trained · "
                f"{_count(examples, 'example')} per epoch in {_count(len(self.buckets), 'bucket')} · "
                f"{_count(steps, 'step')} per epoch at global batch {self.global_batch}\n\n{self.settings}")
        problems = self.problems
        if not problems:
            return head + "\n\n✓ No problems found."
        listed = " · ".join(f"{count} {name}" for name, count in problems.most_common())
        return head + f"\n\n⚠ {listed} (see the Health list and the table)"

    def health_markdown(self) -> str:
        groups: dict[str, list[tuple[float, str]]] = {}
        for info in self.images:
            for issue in info.issues:  # within a group the largest upscale first
                order = -info.scale if kind(issue) == "upscaled" else 0.0
                groups.setdefault(kind(issue), []).append((order, f"`{info.path.name}`: {issue}"))
        dropped = [b for b in self.buckets if b.dropped]
        if not groups and not dropped:
            return "✓ Every image has a caption, fits its bucket and looks distinct."
        ranked = sorted(groups.items(), key=lambda item: SEVERITY.index(item[0]) if item[0] in SEVERITY else 99)
        parts = [f"**{name}** ({len(lines)})\n" + "\n".join(f"- {line}" for _, line in sorted(lines, key=_first)[:50])
                 for name, lines in ranked]
        if dropped:
            parts.append("**buckets dropped** (fewer examples than one global batch, as diffusion-pipe does)\n" +
                         "\n".join(f"- {b.size[0]}×{b.size[1]}: {_count(b.examples, 'example')}" for b in dropped))
        return "\n\n".join(parts)

    def table(self) -> list[list[str]]:
        return self.table_rows(self.images)

    def table_rows(self, images: list[ImageInfo]) -> list[list[str]]:
        """The table's rows of ``images`` (one page of them, in the browser)."""
        rows = []
        for info in images:
            bucket = ", ".join(f"{w}×{h}" for w, h in info.buckets) or "—"
            kept = f"{100 * info.kept:.0f}%" if info.crop else "—"
            scale = f"×{info.scale:.2f}" if info.crop else "—"
            caption = info.captions[0] if info.captions else "(none)"
            rows.append([info.path.name, f"{info.width}×{info.height}", bucket, kept, scale, str(info.examples),
                         caption, "; ".join(info.issues) or "✓"])
        return rows

    def bucket_table(self) -> list[list[str]]:
        return [[f"{b.size[0]}×{b.size[1]}", f"{b.ar:g}", str(b.images), str(b.examples), str(b.steps),
                 "dropped: fewer examples than one global batch" if b.dropped else ""] for b in self.buckets]

    def find(self, name: str) -> ImageInfo | None:
        return next((i for i in self.images if i.path.name == name or str(i.path) == name), None)


TABLE_HEADERS = ["file", "size", "bucket", "crop keeps", "scale", "examples", "caption", "issues"]
BUCKET_HEADERS = ["bucket", "aspect", "images", "examples", "steps/epoch", "note"]


def _first(entry: tuple[float, str]) -> float:
    return entry[0]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def kind(issue: str) -> str:
    """The kind of an issue (its words before the first colon), for counting."""
    return issue.split(":", 1)[0]


def _dataset_for(source: Path, resolution: int, ar_buckets: bool) -> tuple[dict, str]:
    if source.is_file():
        try:
            dataset = tomllib.loads(source.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DatasetReportError(f"{source} cannot be read as a dataset TOML: {exc}") from None
        dataset["directory"] = [{k: str(resolve_config_path(source.parent, str(v))) if k in _PATH_KEYS else v
                                 for k, v in d.items()} for d in dataset.get("directory", [])]
        return dataset, f"Buckets from `{source.name}` (its resolutions and aspect-ratio settings)."
    if not source.is_dir():
        raise DatasetReportError(f"{source} is neither a folder nor a dataset TOML: type the folder that holds your "
                                 "images, or the dataset .toml of a profile")
    settings = {"resolutions": [resolution], **(DEFAULT_AR if ar_buckets else {"enable_ar_bucket": False})}
    words = (f"aspect-ratio buckets {DEFAULT_AR['min_ar']}–{DEFAULT_AR['max_ar']} ({DEFAULT_AR['num_ar_buckets']})"
             if ar_buckets else "one square bucket")
    return ({**settings, "directory": [{"path": str(source.resolve())}]},
            f"Buckets for resolution {resolution} with {words}; open the dataset TOML instead to use its settings.")


def crop_box(width: int, height: int, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The part of a ``width`` × ``height`` picture that a centre crop to ``size``'s aspect ratio keeps (what
    Pillow's ``ImageOps.fit`` resizes from, and so what the trainer sees)."""
    out_ratio, ratio = size[0] / size[1], width / height
    if ratio == out_ratio:
        w, h = float(width), float(height)
    elif ratio > out_ratio:
        w, h = out_ratio * height, float(height)
    else:
        w, h = float(width), width / out_ratio
    left, top = (width - w) / 2, (height - h) / 2
    return left, top, left + w, top + h


_WORD = re.compile(r"\w+")
_PUNCTUATION = re.compile(r"[^\w\s]")


def estimate_tokens(caption: str) -> int:
    """T5 (sentencepiece) tokens of a caption, estimated: about 1.3 per word plus punctuation."""
    return math.ceil(1.3 * len(_WORD.findall(caption))) + len(_PUNCTUATION.findall(caption)) + 1


def most_tokens(length: int) -> float:
    """An upper bound of :func:`estimate_tokens` for any caption of ``length`` characters: w words (at most
    (length + 1) / 2 of them, each a character or more, apart) and p punctuation marks (at most length - w) give
    1.3 w + 1 + p + 1 <= length + 0.3 w + 2."""
    return length + 0.3 * (length + 1) / 2 + 2


# the longest caption whose estimate cannot pass T5's limit, whatever its characters
SURELY_SHORT = max(n for n in range(T5_TOKENS + 1) if most_tokens(n) <= T5_TOKENS)


@dataclass(frozen=True)
class CheckState:
    """Where a dataset check is: the report so far, and how many pictures of ``total`` are measured."""

    report: DatasetReport
    done: int
    total: int

    @property
    def final(self) -> bool:
        return self.report.pending == 0


def analyse(source: Path | str, *, resolution: int = 1024, ar_buckets: bool = True, trigger: str = "",
            global_batch: int = 1, seed: int = 0) -> DatasetReport:
    """Read a dataset folder (buckets for ``resolution``) or a dataset TOML (its own settings) and check it."""
    *_, last = check_steps(source, resolution=resolution, ar_buckets=ar_buckets, trigger=trigger,
                           global_batch=global_batch, seed=seed)
    return last.report


def check_steps(source: Path | str, *, resolution: int = 1024, ar_buckets: bool = True, trigger: str = "",
                global_batch: int = 1, seed: int = 0, progress_every: int = 200, first_after: int = 60,
                workers: int | None = None) -> Iterator[CheckState]:
    """The check step by step: the report of the cheap scan first (headers, captions, buckets, and whatever the
    check cache knows: a second open is complete here), then progress every ``progress_every`` pictures while
    the rest are measured (decode check, sharpness, hash, thumbnail) in worker processes, in folder order, with
    one more after the first ``first_after`` (a grid's first page of thumbnails), then the complete report
    (blur outliers and near-duplicates need every picture). Thumbnails join the report as they are made."""
    source = user_path(str(source))
    if global_batch < 1:
        raise DatasetReportError(f"global batch {global_batch} must be at least 1 (micro batch × accumulation)")
    dataset, settings_text = _dataset_for(source, resolution, ar_buckets)
    known = Known()
    report = _report(source, dataset, settings_text, known, trigger.strip(), global_batch, seed)
    todo = known.unmeasured()
    yield CheckState(report, 0, len(todo))
    if not todo:
        known.save()  # forgets pictures gone from the folder
        return
    try:
        for done, (index, facts) in enumerate(measure_all(todo, workers), start=1):
            path, key = todo[index]
            known.record(path, key, facts)
            if key and not facts.bad:
                report.thumbs[path] = thumb_path(key)
            if (done % progress_every == 0 or done == first_after) and done < len(todo):
                yield CheckState(report, done, len(todo))
    finally:
        known.save()
    if any(known.facts[path].bad for path, _ in todo):  # a picture the trainer skips: its buckets change
        report = _report(source, dataset, settings_text, known, trigger.strip(), global_batch, seed)
    else:  # the scan stands as it was (headers gave the same sizes): add the measurements
        _complete(report, known)
    yield CheckState(report, len(todo), len(todo))


def _complete(report: DatasetReport, known: Known) -> None:
    """Fill the measured facts into ``report`` and run the checks that need every picture."""
    root = thumbs_root()
    for info in report.images:
        facts = known.facts.get(info.path)
        if facts is not None and not info.measured and not facts.bad:
            info.sharpness, info.phash, info.measured = facts.sharpness, bytes.fromhex(facts.phash), True
            if known.keys.get(info.path):
                report.thumbs[info.path] = thumb_path(known.keys[info.path], root)
    report.pending = 0
    report.duplicates = _duplicates(report.images)
    _blur_outliers(report.images)


def _scan(dataset: dict, seed: int, known: Known) -> list[data.Item]:
    quiet, data.log.disabled = data.log.disabled, True  # its skip warnings become the report's issues
    try:
        return data.scan_dataset(dataset, seed, reader=known.reader, edit=True)  # edit datasets: their targets
    except RuntimeError:
        return []  # no captioned image: still show the folder and say why
    except (ValueError, FileNotFoundError) as exc:
        raise DatasetReportError(str(exc)) from None
    finally:
        data.log.disabled = quiet


def _report(source: Path, dataset: dict, settings_text: str, known: Known, trigger: str, global_batch: int,
            seed: int) -> DatasetReport:
    items = _scan(dataset, seed, known)
    by_path: dict[Path, list[data.Item]] = {}
    for item in items:
        by_path.setdefault(item.path, []).append(item)
    infos, thumbs, root = [], {}, thumbs_root()
    for directory in dataset.get("directory", []):
        folder = Path(directory["path"])
        settings = data.directory_settings(dataset, directory)
        skip_empty = bool(settings.get("skip_empty_caption", True))
        prefix = str(settings.get("caption_prefix", ""))
        captions_json = data.read_captions(folder)
        for path in known.media_files(folder):
            info = ImageInfo(path)
            infos.append(info)
            if not _picture_facts(info, known):
                continue
            if info.measured and known.keys.get(path):
                thumbs[path] = thumb_path(known.keys[path], root)
            try:
                raw = known.captions_of(path, captions_json)
            except data.BadMedia as exc:  # a caption file the trainer skips its image for
                info.issues.append(f"skipped: {exc.path.name}: {exc.reason}")
                continue
            info.captions = raw or []
            info.in_json, info.prefix, info.skip_empty = captions_json is not None, prefix, skip_empty
            own = by_path.get(path, [])
            info.examples = sum(i.repeats for i in own)
            info.buckets = list(dict.fromkeys(i.size for i in own))
            _caption_issues(info, raw, skip_empty, trigger, prefix)
            _crop_issues(info)
    pending = len(known.unmeasured())
    duplicates = [] if pending else _duplicates(infos)
    if not pending:
        _blur_outliers(infos)
    return DatasetReport(source, settings_text, global_batch, infos, _buckets(items, global_batch),
                         _tags(infos, dataset), duplicates, thumbs, trigger, pending)


def _picture_facts(info: ImageInfo, known: Known) -> bool:
    """Fill in what is known of the picture (size; sharpness and hash once measured); False when it is not
    trained at all (a video, or a file the trainer skips), with the issue noted."""
    if info.path.suffix.lower() in data.VIDEO_SUFFIXES:
        info.issues.append("video: the native trainer trains Chroma on images only")
        return False
    facts = known.facts.get(info.path)
    if facts is not None and facts.bad:
        info.issues.append(facts.bad)
        return False
    if facts is not None:
        info.width, info.height, info.sharpness = facts.width, facts.height, facts.sharpness
        info.phash, info.measured = bytes.fromhex(facts.phash), True
        return True
    header = known.headers.get(info.path)
    if header is None:  # the header could not be read: the measurement says why
        return True
    info.width, info.height = header
    return True


def _caption_issues(info: ImageInfo, raw: list[str] | None, skip_empty: bool, trigger: str, prefix: str) -> None:
    if raw is None:
        info.issues.append("no caption: skipped (skip_empty_caption = true)" if skip_empty else
                           "no caption: trained with an empty caption")
        return
    if not any(c.strip() for c in raw):
        info.issues.append("empty caption: the caption is empty")
    if trigger and not any(trigger.lower() in (prefix + c).lower() for c in raw):  # as trained: with the prefix
        info.issues.append(f"no trigger: '{trigger}' is in none of its captions")
    longest = 0
    for caption in raw:  # only captions long enough to reach the limit are counted (most are far below it)
        if len(prefix) + len(caption) > SURELY_SHORT:
            longest = max(longest, estimate_tokens(prefix + caption))
    if longest > T5_TOKENS:
        info.issues.append(f"long caption: about {longest} T5 tokens, T5 reads the first {T5_TOKENS}")


def _crop_issues(info: ImageInfo) -> None:
    if not info.buckets:
        return
    w, h = info.buckets[0]
    info.crop = crop_box(info.width, info.height, (w, h))
    left, top, right, bottom = info.crop
    info.kept = (right - left) * (bottom - top) / (info.width * info.height)
    info.scale = w / (right - left)
    if info.scale >= UPSCALE_WARN:
        info.issues.append(f"upscaled: ×{info.scale:.1f} to its {w}×{h} bucket (the picture is below the training "
                           "resolution; it will look soft)")
    if info.kept < HEAVY_CROP:
        info.issues.append(f"heavy crop: the centre crop to {w}×{h} cuts {100 * (1 - info.kept):.0f}% of the "
                           "picture (crop it yourself, or widen the aspect-ratio range)")


CAPTION_KINDS = ("no caption", "empty caption", "no trigger", "long caption")


def save_captions(report: DatasetReport, info: ImageInfo, captions: list[str]) -> Path:
    """Write an image's captions where the trainer reads them (its ``.txt``, or its entry in the folder's
    ``captions.json``), atomically, and update the report's view of it; returns the file written."""
    captions = [c.strip() for c in captions if c.strip()]
    if not captions:
        raise DatasetReportError("the caption is empty: type one (an image without a caption is skipped)")
    if inside := archive.split(info.path):
        raise DatasetReportError(f"{info.path.name} is inside {inside[0].name}, which is not edited here: change "
                                 f"the archive, or give it a captions.json entry {inside[1]!r} beside the archive")
    if info.in_json:
        target = info.path.parent / data.CAPTIONS_JSON
        entries = data.read_captions(info.path.parent) or {}
        entries[info.path.name] = captions
        atomic_write_text(target, json.dumps(entries, indent=2, ensure_ascii=False) + "\n")
    else:
        if len(captions) > 1:
            raise DatasetReportError(f"{info.path.stem}.txt holds one caption: join the lines, or use a "
                                     "captions.json for several captions per image")
        target = info.path.with_suffix(".txt")
        atomic_write_text(target, captions[0] + "\n")
    info.captions = captions
    info.issues = [i for i in info.issues if kind(i) not in CAPTION_KINDS]
    _caption_issues(info, captions, info.skip_empty, report.trigger, info.prefix)
    return target


def _blur_outliers(infos: list[ImageInfo]) -> None:
    values = [i.sharpness for i in infos if i.measured]
    if len(values) < 4:
        return
    median = statistics.median(values)
    if median <= 0:
        return
    for info in infos:
        if info.measured and info.sharpness < BLUR_RATIO * median:
            info.issues.append(f"blurry: {100 * info.sharpness / median:.0f}% of the dataset's median sharpness")


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _duplicates(infos: list[ImageInfo]) -> list[tuple[str, str, int]]:
    """Pairs whose 64-bit perceptual hashes differ in at most DUPLICATE_DISTANCE bits, in folder order. Two such
    hashes agree exactly on at least one of DUPLICATE_DISTANCE + 1 slices of the 64 bits (pigeonhole), so only
    pairs sharing a slice are compared: 10,000 images take milliseconds where comparing every pair took seconds."""
    measured = [info for info in infos if info.measured and info.phash]
    paths = [info.path for info in measured]
    if len(paths) < 2:
        return []
    hashes = np.array([int.from_bytes(info.phash, "big") for info in measured], dtype=np.uint64)
    slices = DUPLICATE_DISTANCE + 1
    edges = [round(64 * k / slices) for k in range(slices + 1)]
    firsts, seconds = [], []
    for low, high in zip(edges, edges[1:], strict=False):
        keys = (hashes >> np.uint64(low)) & np.uint64((1 << (high - low)) - 1)
        order = np.argsort(keys, kind="stable")  # equal keys side by side, each run in folder order
        sorted_keys = keys[order]
        offset = 1
        while offset < len(order):  # every pair of a run: the members `offset` apart, for each offset
            same = np.flatnonzero(sorted_keys[offset:] == sorted_keys[:-offset])
            if not len(same):
                break
            firsts.append(order[same])
            seconds.append(order[same + offset])
            offset += 1
    if not firsts:
        return []
    candidates = np.unique(np.stack([np.concatenate(firsts), np.concatenate(seconds)], axis=1), axis=0)
    xor = (hashes[candidates[:, 0]] ^ hashes[candidates[:, 1]]).view(np.uint8).reshape(-1, 8)
    distances = _POPCOUNT[xor].sum(axis=1)
    pairs = [(paths[i].name, paths[j].name, int(d))
             for (i, j), d in zip(candidates.tolist(), distances.tolist(), strict=True) if d <= DUPLICATE_DISTANCE]
    by_name = {info.path.name: info for info in infos}
    for a, b, distance in pairs:
        by_name[b].issues.append(f"near-duplicate: of {a} (hash distance {distance})")
    return pairs


def _buckets(items: list[data.Item], global_batch: int) -> list[BucketRow]:
    groups: dict[tuple[float, int, int], list[data.Item]] = {}
    for item in items:
        groups.setdefault(item.bucket_key, []).append(item)
    rows = []
    for (ar, w, h), members in sorted(groups.items(), key=lambda kv: (kv[0][1] * kv[0][2], kv[0][0])):
        examples = sum(i.repeats for i in members)
        rows.append(BucketRow((w, h), ar, len({i.path for i in members}), examples, examples // global_batch,
                              examples < global_batch))
    return rows


def _tags(infos: list[ImageInfo], dataset: dict) -> list[tuple[str, int]]:
    """Tag counts when captions are tag lists (they hold the shuffle delimiter), most common first."""
    delimiter = str(dataset.get("cache_shuffle_delimiter", ", ")).strip() or ","
    counts: Counter = Counter()
    for info in infos:
        for caption in info.captions:
            if delimiter in caption:
                counts.update({t.strip() for t in caption.split(delimiter) if t.strip()})
    return counts.most_common()


def crop_preview(info: ImageInfo, size: int = 384) -> Image.Image:
    """The picture with what the crop cuts away dimmed and the kept part outlined, beside the training view
    (centre-cropped and resized to its bucket, exactly as the trainer loads it)."""
    with data.open_image(info.path) as img:
        img.load()
        rgb = data.rgb_on_white(img)
    shown = rgb.copy()
    shown.thumbnail((size, size))
    if info.crop is None or not info.buckets:
        return shown
    factor = shown.width / rgb.width
    left, top, right, bottom = (v * factor for v in info.crop)
    dim = Image.new("RGB", shown.size, (0, 0, 0))
    mask = Image.new("L", shown.size, 150)
    ImageDraw.Draw(mask).rectangle((left, top, right, bottom), fill=0)
    shown = Image.composite(dim, shown, mask)
    ImageDraw.Draw(shown).rectangle((left, top, right - 1, bottom - 1), outline=(255, 140, 0), width=2)
    trained = ImageOps.fit(rgb, info.buckets[0])
    trained.thumbnail((size, size))
    gap = 12
    canvas = Image.new("RGB", (shown.width + gap + trained.width, max(shown.height, trained.height)),
                       (255, 255, 255))
    canvas.paste(shown, (0, 0))
    canvas.paste(trained, (shown.width + gap, 0))
    return canvas
