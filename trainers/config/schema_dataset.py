"""The dataset TOML (notes §2): top-level defaults, and ``[[directory]]`` entries that may override them."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, create_model

from trainers.config.types import (
    STRICT,
    ArBuckets,
    DirPath,
    FilePath,
    NonNegInt,
    PosFloat,
    PosInt,
    Resolution,
    Triple,
)

# Keys a [[directory]] may override: name -> (type, top-level default, tooltip).
OVERRIDABLE: dict[str, tuple[Any, Any, str]] = {
    "resolutions": (Annotated[list[Resolution], Field(min_length=1)], None,
                    "Training areas as side lengths (or [w, h]); each entry duplicates the dataset. At most 3."),
    "enable_ar_bucket": (bool, False, "Aspect-ratio bucketing (false: everything is center-cropped square)."),
    "min_ar": (PosFloat, None, "Smallest width/height ratio of the AR buckets."),
    "max_ar": (PosFloat, None, "Largest width/height ratio of the AR buckets."),
    "num_ar_buckets": (PosInt, None, "Number of AR buckets, log-spaced between min_ar and max_ar."),
    "ar_buckets": (ArBuckets, None, "Explicit AR buckets: ratios or [w, h] pairs (instead of min/max/num)."),
    "frame_buckets": (Annotated[list[PosInt], Field(min_length=1)], [1],
                      "Video lengths in frames (1 = images, always added)."),
    "size_buckets": (Annotated[list[Triple], Field(min_length=1)], None,
                     "Explicit [width, height, frames] buckets instead of resolutions/AR (required for Cosmos)."),
    "num_repeats": (PosInt, 1, "Times each example is seen per epoch."),
    "caption_prefix": (str, "", "Text prepended to every caption."),
    "shuffle_tags": (bool, False, "Legacy: same as cache_shuffle_num = 1."),
    "cache_shuffle_num": (NonNegInt, 0, "Tag-shuffled caption variants cached per image."),
    "cache_shuffle_delimiter": (str, ", ", "Tag delimiter used for shuffling."),
    "skip_empty_caption": (bool, True, "Skip files without a caption (false: train with an empty caption)."),
    "shuffle_metadata": (bool, True, "Deterministically shuffle the file list."),
    "online_captions": (bool, False, "Read captions from captions.json at load time."),
}

DIRECTORY_ONLY: dict[str, tuple[Any, Any, str]] = {
    "path": (DirPath, ..., "Folder of images/videos with same-stem .txt captions (or captions.json)."),
    "mask_path": (DirPath, None, "Folder of masks (same stem; white = train, black = ignore)."),
    "control_path": (DirPath, None, "Edit training: control images with the same stems as the targets."),
    "default_mask_file": (FilePath, None, "Mask used for files without their own (testing aid)."),
}


class _Base(BaseModel):
    model_config = STRICT


def _fields(spec: dict[str, tuple[Any, Any, str]], inherit: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, (annotation, default, description) in spec.items():
        if default is ...:
            fields[name] = (annotation, Field(description=description))
        elif inherit or default is None:
            fields[name] = (annotation | None, Field(None if inherit else default, description=description))
        else:
            fields[name] = (annotation, Field(default, description=description))
    return fields


DirectoryConfig = create_model("DirectoryConfig", __base__=_Base,
                               **_fields(DIRECTORY_ONLY, False), **_fields(OVERRIDABLE, True))

DatasetConfig = create_model(
    "DatasetConfig", __base__=_Base, **_fields(OVERRIDABLE, False),
    subsample_ratio=(Annotated[float, Field(gt=0, le=1)] | None,
                     Field(None, description="Keep only this fraction of batches (top level only).")),
    directory=(Annotated[list[DirectoryConfig], Field(min_length=1)],  # type: ignore[valid-type]
               Field(description="[[directory]] entries: the media folders.")),
)

DIRECTORY_KEYS = frozenset(DIRECTORY_ONLY) | frozenset(OVERRIDABLE)
DATASET_TOP_KEYS = frozenset(OVERRIDABLE) | {"subsample_ratio", "directory"}
