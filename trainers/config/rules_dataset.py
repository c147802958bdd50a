"""Cross-key checks of a dataset TOML, per ``[[directory]]`` with its inherited top-level settings (notes §2)."""

from __future__ import annotations

from typing import Any

from trainers.config.issues import Reporter
from trainers.config.registry import MODEL_TYPES
from trainers.config.schema_dataset import OVERRIDABLE

AR_KEYS = ("min_ar", "max_ar", "num_ar_buckets")


def check_dataset(data: dict[str, Any], report: Reporter, model_type: str | None = None,
                  model: dict[str, Any] | None = None) -> None:
    """Run every dataset rule; ``model_type`` enables the checks that depend on the model family."""
    directories = data.get("directory")
    if not isinstance(directories, list) or not directories:
        return  # the schema reports the missing [[directory]]
    for index, directory in enumerate(directories):
        if isinstance(directory, dict):
            _check_directory(data, directory, f"directory[{index}]", report)
            _check_for_model(data, directory, f"directory[{index}]", report, model_type)
    _check_wan_i2v(data, report, model_type, model or {})


def _where(top: dict[str, Any], directory: dict[str, Any], prefix: str, key: str) -> str:
    """The dotted key where an effective setting comes from (the directory override, else the top level)."""
    return f"{prefix}.{key}" if key in directory else key


def _effective(top: dict[str, Any], directory: dict[str, Any], key: str) -> Any:
    if key in directory:
        return directory[key]
    return top.get(key, OVERRIDABLE[key][1])


def _check_directory(top: dict[str, Any], directory: dict[str, Any], prefix: str, report: Reporter) -> None:
    resolutions = _effective(top, directory, "resolutions")
    sizes = _effective(top, directory, "size_buckets")
    if resolutions is None and sizes is None:
        report.error(_where(top, directory, prefix, "resolutions"), "no resolutions and no size_buckets "
                     f"for {prefix}", "add resolutions = [512] at the top of the dataset file")
    if resolutions is not None and sizes is not None:
        report.warning(_where(top, directory, prefix, "size_buckets"), "size_buckets replace resolutions and AR "
                       "buckets; both are set", "remove one of them")
    if _effective(top, directory, "enable_ar_bucket") is True and sizes is None:
        _check_ar(top, directory, prefix, report)
    if isinstance(sizes, list):
        _check_size_order(sizes, _where(top, directory, prefix, "size_buckets"), report)


def _check_size_order(sizes: list, where: str, report: Reporter) -> None:
    """diffusion-pipe sorts size_buckets by frames (longest first, utils/dataset.py:464), takes their ratios
    de-duplicated and sorted (:496, :506) and indexes the entries by that sorted list (:857): unless the ratios
    already rise strictly in that order, images land in the wrong bucket and some buckets stay empty."""
    entries = [e for e in sizes if isinstance(e, list) and len(e) == 3 and all(
        isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in e)]
    if len(entries) != len(sizes):
        return  # the schema reports malformed entries
    ordered = sorted(entries, key=lambda e: e[2], reverse=True)
    ratios = [round(w / h, 3) for w, h, _ in ordered]
    if len(set(ratios)) < len(ratios):
        report.error(where, "two entries have the same aspect ratio (w/h to 3 decimals): diffusion-pipe keeps one "
                     "ratio for them, so images go to the wrong bucket and a bucket stays empty",
                     "keep one [width, height, frames] entry per aspect ratio")
    elif ratios != sorted(ratios):
        fix = ", ".join(str(e) for e in sorted(ordered, key=lambda e: (-e[2], e[0] / e[1])))
        report.error(where, "entries are not sorted by aspect ratio (w/h, rising; longest frames first): "
                     "diffusion-pipe matches images against the sorted ratios, so they land in the wrong bucket",
                     f"order them as [{fix}]")


def _check_ar(top: dict[str, Any], directory: dict[str, Any], prefix: str, report: Reporter) -> None:
    if _effective(top, directory, "ar_buckets") is not None:
        return
    enabled_here = "enable_ar_bucket" in directory
    for key in AR_KEYS:
        if _effective(top, directory, key) is None:
            where = f"{prefix}.{key}" if enabled_here else key
            report.error(where, "required when enable_ar_bucket = true and no ar_buckets are given",
                         "add min_ar = 0.5, max_ar = 2.0, num_ar_buckets = 7 (or ar_buckets = [...])")
    # min_ar > max_ar is accepted: diffusion-pipe sorts the geomspace ratios (utils/dataset.py:505-506), same buckets


def _check_for_model(top: dict[str, Any], directory: dict[str, Any], prefix: str, report: Reporter,
                     model_type: str | None) -> None:
    info = MODEL_TYPES.get(model_type or "")
    if info is None:
        return
    if info.type == "cosmos" and _effective(top, directory, "size_buckets") is None:
        report.error(_where(top, directory, prefix, "size_buckets"), "Cosmos only trains on its fixed sizes; "
                     "diffusion-pipe quits without size_buckets", "add size_buckets = [[960, 960, 1], ...] (see the "
                     "Cosmos example)")
    frames = _effective(top, directory, "frame_buckets")
    if not info.video and isinstance(frames, list) and any(isinstance(f, int) and f > 1 for f in frames):
        report.warning(_where(top, directory, prefix, "frame_buckets"), f"{info.label} is an image model; video "
                       "frame buckets are useless", "use frame_buckets = [1]")


def _check_wan_i2v(top: dict[str, Any], report: Reporter, model_type: str | None, model: dict[str, Any]) -> None:
    """Wan i2v/flf2v assert on any image during caching; a checkpoint named *i2v* with only image buckets fails."""
    if model_type != "wan":
        return
    name = f"{model.get('ckpt_path', '')} {model.get('transformer_path', '')}".lower()
    frames = top.get("frame_buckets", [1])
    if ("i2v" in name or "flf2v" in name) and isinstance(frames, list) and all(f == 1 for f in frames):
        report.error("frame_buckets", "Wan i2v/flf2v train on video only (an image makes caching assert), but "
                     "only the image frame bucket is configured", "add video frame buckets, e.g. [1, 33] and use "
                     "video-only directories")

