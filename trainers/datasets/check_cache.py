"""What the dataset check learned about each picture (size, sharpness, perceptual hash, thumbnail), kept by file fingerprint.

A picture's fingerprint is its resolved path, size and ``mtime_ns``: a file edited, replaced or touched is read
again. Each entry is one JPEG thumbnail (quality 90, for the gallery; the hash is stored, not re-taken from it)
with the facts as JSON in its comment, under ``<studio home>/dataset-cache/`` (``$DP_STUDIO_HOME``): nothing is written into the
dataset folder. Pictures inside tar archives are not cached. Entries are written atomically; a cache that cannot
be written only costs the next open its speed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from trainers.files import atomic_write_bytes
from trainers.paths import studio_home

log = logging.getLogger(__name__)
FORMAT = 3  # bump when what is measured changes, so old entries are not reused


@dataclass(frozen=True)
class Facts:
    width: int
    height: int
    sharpness: float
    phash: bytes  # the 64-bit perceptual hash of the thumbnail, packed
    thumb: Image.Image


def cache_root() -> Path:
    return studio_home() / "dataset-cache"


def fingerprint(path: Path) -> str | None:
    """``path|size|mtime_ns``, or None for a file that cannot be stat'ed (e.g. a member of an archive)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return f"{FORMAT}|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _entry(key: str) -> Path:
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
    return cache_root() / digest[:2] / f"{digest}.jpg"


def load(path: Path) -> Facts | None:
    """The cached facts of ``path`` as it is now on disk, or None."""
    key = fingerprint(path)
    entry = _entry(key) if key else None
    if entry is None or not entry.is_file():
        return None
    try:
        with Image.open(entry) as img:
            img.load()
            facts = json.loads(img.info["comment"])
            if facts.get("key") != key:
                return None
            return Facts(int(facts["width"]), int(facts["height"]), float(facts["sharpness"]),
                         bytes.fromhex(facts["phash"]), img.copy())
    except (OSError, ValueError, KeyError, SyntaxError) as exc:
        log.info("dataset cache entry %s unreadable (%s): measuring %s again", entry, exc, path.name)
        return None


def store(path: Path, facts: Facts) -> None:
    key = fingerprint(path)
    if key is None:
        return
    comment = json.dumps({"key": key, "width": facts.width, "height": facts.height,
                          "sharpness": facts.sharpness, "phash": facts.phash.hex()})
    buffer = io.BytesIO()
    facts.thumb.save(buffer, format="JPEG", quality=90, comment=comment.encode("utf-8"))
    try:
        atomic_write_bytes(_entry(key), buffer.getvalue())
    except OSError as exc:
        log.warning("dataset cache %s not writable (%s): the next open measures %s again", cache_root(), exc,
                    path.name)
