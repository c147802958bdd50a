"""What the dataset check learned about each picture, kept by file fingerprint, so a second open reads no image.

A picture's fingerprint is its resolved path, size and ``mtime_ns``: a file edited, replaced or touched is read
again. Per dataset folder one index (JSON, ``<studio home>/dataset-cache/index/<hash of the folder>.json``) holds
each picture's size, sharpness, perceptual hash and the trainer's verdict on it (decodes, or why it is
skipped); its 256 px thumbnail is a JPEG of its own under ``dataset-cache/thumbs/``, read only when a page shows
it. Nothing is written into the dataset folder. Pictures inside tar archives are not cached. Files are written
atomically; a cache that cannot be written only costs the next open its speed. An edited picture's old thumbnail,
and the entries and thumbnails of pictures no longer in their folder, are removed when the folder is checked.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from trainers.files import atomic_write_text
from trainers.paths import studio_home

log = logging.getLogger(__name__)
FORMAT = 5  # bump when what is measured changes, so old entries are not reused


@dataclass(frozen=True)
class Facts:
    width: int
    height: int
    sharpness: float
    phash: str  # the 64-bit perceptual hash of the thumbnail, hex
    bad: str = ""  # why the trainer skips it ("skipped: ..." / "unreadable: ..."); "" when it decodes


def cache_root() -> Path:
    return studio_home() / "dataset-cache"


def fingerprint(path: Path) -> str | None:
    """``format|path|size|mtime_ns``, or None for a file that cannot be stat'ed (e.g. a member of an archive)."""
    name = str(path)
    try:
        stat = os.stat(name)
    except OSError:
        return None
    folder, base = os.path.split(name)  # string work: Path.parent parses a new path per picture
    return f"{FORMAT}|{_resolved(folder or '.')}/{base}|{stat.st_size}|{stat.st_mtime_ns}"


@functools.lru_cache(maxsize=256)
def _resolved(folder: str) -> str:
    """A folder's real path, once per folder (resolving walks every component: costly per picture)."""
    return str(Path(folder).resolve())


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def thumbs_root() -> str:
    return str(cache_root() / "thumbs")


def thumb_path(key: str, root: str | None = None) -> Path:
    """Where the thumbnail of the picture with fingerprint ``key`` lives (``root``: ``thumbs_root()``, passed by
    callers that ask for thousands)."""
    digest = _digest(key)
    return Path(f"{root or thumbs_root()}/{digest[:2]}/{digest}.jpg")


class FolderIndex:
    """The cached facts of one folder's pictures: read once, looked up by fingerprint, saved atomically."""

    def __init__(self, folder: Path):
        self.file = cache_root() / "index" / f"{_digest(str(Path(folder).resolve()))}.json"
        self.entries: dict[str, dict] = {}
        self.thumbs = thumbs_root()
        self.dirty = False
        try:
            raw = json.loads(self.file.read_text(encoding="utf-8"))
            if raw.get("format") == FORMAT and isinstance(raw.get("entries"), dict):
                self.entries = raw["entries"]
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError) as exc:
            log.info("dataset cache index %s unreadable (%s): measuring again", self.file, exc)

    def get(self, path: Path, key: str | None = None) -> Facts | None:
        """The facts of ``path`` as it is now on disk (``key``: its fingerprint, when known), or None."""
        key = key or fingerprint(path)
        entry = self.entries.get(path.name) if key else None
        if not entry or entry.get("key") != key:
            return None
        try:
            facts = Facts(int(entry["width"]), int(entry["height"]), float(entry["sharpness"]), str(entry["phash"]),
                          str(entry.get("bad", "")))
        except (KeyError, TypeError, ValueError):
            return None
        if not facts.bad and not os.path.isfile(thumb_path(key, self.thumbs)):
            return None  # the thumbnail was removed: measure (and draw) it again
        return facts

    def put(self, path: Path, key: str, facts: Facts) -> None:
        old = self.entries.get(path.name)
        if old and old.get("key") != key:
            self._drop_thumb(old)  # the picture was edited: its old thumbnail would never be read again
        self.entries[path.name] = {"key": key, **asdict(facts)}
        self.dirty = True

    def keep_only(self, names: set[str]) -> None:
        """Forget the pictures no longer in the folder (``names``: its files now), their thumbnails with them."""
        for name in [n for n in self.entries if n not in names]:
            self._drop_thumb(self.entries.pop(name))
            self.dirty = True

    def _drop_thumb(self, entry: dict) -> None:
        key = entry.get("key")
        if isinstance(key, str) and key:
            try:
                os.unlink(thumb_path(key, self.thumbs))
            except OSError:
                pass  # never written (a bad picture), or already gone

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            atomic_write_text(self.file, json.dumps({"format": FORMAT, "entries": self.entries}))
            self.dirty = False
        except OSError as exc:
            log.warning("dataset cache %s not writable (%s): the next open measures again", cache_root(), exc)
