"""Listing a dataset folder the way diffusion-pipe does: images directly in it, with same-stem .txt captions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})


@dataclass(frozen=True)
class DatasetItem:
    path: Path
    caption: str | None  # None when there is no caption file (diffusion-pipe skips those by default)


def scan_folder(folder: Path) -> list[DatasetItem]:
    """Images directly in ``folder`` (non-recursive, as diffusion-pipe lists), sorted, with their captions."""
    items = []
    for path in sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        caption_file = path.with_suffix(".txt")
        caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else None
        items.append(DatasetItem(path, caption))
    return items
