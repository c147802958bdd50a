"""Dataset settings diffusion-pipe fails on although each key is valid on its own (cited from its source).

- ``resolutions`` and, with AR buckets, ``min_ar`` / ``max_ar`` / ``num_ar_buckets`` are read with the top-level
  value as the *eagerly evaluated* default of ``directory_config.get(key, dataset_config[key])``
  (utils/dataset.py:469 and :502-504): set only inside ``[[directory]]`` they raise KeyError.
- ``control_path`` on a type without edit training: the VAE call gets the control images as a second argument
  (utils/dataset.py:1249) that the model's one-argument function does not take (models/base.py:255-256):
  TypeError while caching.
- More than 3 resolutions: the dataset's ``validate`` quits (utils/dataset.py:525-531) unless train.py runs with
  ``--i_know_what_i_am_doing`` (train.py:433), which the diffusion-pipe backend passes when ``[studio]
  dp_extra_args`` holds it.
"""

from __future__ import annotations

from typing import Any

from trainers.config.issues import Reporter
from trainers.config.registry import MODEL_TYPES

MAX_RESOLUTIONS = 3
SKIP_FLAG = "--i_know_what_i_am_doing"
AR_KEYS = ("min_ar", "max_ar", "num_ar_buckets")


def skips_dataset_checks(main: dict[str, Any] | None) -> bool:
    """Whether the main config launches diffusion-pipe with ``--i_know_what_i_am_doing``."""
    studio = main.get("studio") if isinstance(main, dict) else None
    extra = studio.get("dp_extra_args") if isinstance(studio, dict) else None
    return isinstance(extra, list) and SKIP_FLAG in extra


def check_dataset(data: dict[str, Any], report: Reporter, model_type: str | None = None,
                  skip_checks: bool = False) -> None:
    """Run the rules above on every ``[[directory]]`` (``skip_checks``: the run passes --i_know_what_i_am_doing)."""
    directories = data.get("directory")
    if not isinstance(directories, list):
        return
    info = MODEL_TYPES.get(model_type or "")
    for index, directory in enumerate(directories):
        if not isinstance(directory, dict):
            continue
        prefix = f"directory[{index}]"
        _top_level_only(data, directory, prefix, report)
        _too_many_resolutions(data, directory, prefix, report, skip_checks)
        if "control_path" in directory and info is not None and not info.edit:
            report.error(f"{prefix}.control_path", f"{info.label} does not do edit training: diffusion-pipe "
                         "passes the control images to its VAE call and fails with a TypeError while caching",
                         "remove control_path, or use flux (Kontext) / qwen_image (edit) / flux2")


def _setting(top: dict[str, Any], directory: dict[str, Any], key: str) -> Any:
    return directory[key] if key in directory else top.get(key)


def _top_level_only(top: dict[str, Any], directory: dict[str, Any], prefix: str, report: Reporter) -> None:
    if _setting(top, directory, "size_buckets") is not None:
        return  # size buckets replace resolutions and AR buckets (utils/dataset.py:460-466)
    keys = ["resolutions"]
    if _setting(top, directory, "enable_ar_bucket") is True and not _setting(top, directory, "ar_buckets"):
        keys += AR_KEYS  # utils/dataset.py:499: a non-empty ar_buckets is used instead
    for key in keys:
        if key in directory and key not in top:
            report.error(f"{prefix}.{key}", f"{key} is set only inside [[directory]]: diffusion-pipe also reads "
                         "the top-level value (as the default) and fails with KeyError without it",
                         f"add {key} at the top of the dataset file too (the directory's value still wins)")


def _too_many_resolutions(top: dict[str, Any], directory: dict[str, Any], prefix: str, report: Reporter,
                          skip_checks: bool) -> None:
    resolutions = _setting(top, directory, "resolutions")
    if not isinstance(resolutions, list) or len(resolutions) <= MAX_RESOLUTIONS:
        return
    where = f"{prefix}.resolutions" if "resolutions" in directory else "resolutions"
    message = f"{len(resolutions)} resolutions: each one duplicates the dataset"
    if skip_checks:
        report.warning(where, f"{message} (allowed: the run passes {SKIP_FLAG})", "keep at most 3 resolutions")
    else:
        report.error(where, f"{message}; diffusion-pipe quits above 3 unless it runs with {SKIP_FLAG}",
                     f"keep at most 3 resolutions, or add dp_extra_args = ['{SKIP_FLAG}'] under [studio]")
