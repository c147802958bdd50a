"""The files the pages show (sample previews, exports), and nothing else, are what the server hands out.

Output folders are never served as folders: a file the UI shows is first checked to lie inside a known output
folder (``trainers.safe_paths``, symbolic links resolved), then published under ``<studio home>/served/<id>/``,
a hard link (a copy across file systems) named by a hash of its path, size and modification time. That one
folder is the only place Gradio serves files from besides its own upload cache, so ``/gradio_api/file=`` reaches
only what a page has shown. ``prune`` drops published links whose original is gone (a deleted run).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from trainers.paths import studio_home
from trainers.safe_paths import PathRefused, within_any

COPY_MARK = ".copy"  # published as a copy (another file system): pruned by age, not by link count


def served_dir() -> Path:
    """The folder the server hands files out of (created on first use)."""
    return studio_home() / "served"


def publish(path: str | os.PathLike[str], roots: Iterable[Path]) -> Path:
    """The served name of ``path``, a file inside one of ``roots``; PathRefused for anything else."""
    source = Path(path)
    if not within_any(source, list(roots)):
        raise PathRefused(f"file {str(path)!r} refused: it is not inside an output folder of the studio")
    resolved = source.resolve()
    if not resolved.is_file():
        raise PathRefused(f"file {str(path)!r} refused: it is not a file")
    stat = resolved.stat()
    key = hashlib.sha256(f"{resolved}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:24]
    folder = served_dir() / key
    target = folder / resolved.name
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".publish-", dir=folder)
    os.close(fd)
    os.unlink(tmp)
    try:
        try:
            os.link(resolved, tmp)
        except OSError:  # another file system (or no hard links): a copy, marked so prune can age it out
            shutil.copy2(resolved, tmp)
            (folder / COPY_MARK).touch()
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def publish_items(items: Sequence[tuple[str, str]], roots: Iterable[Path]) -> list[tuple[str, str]]:
    """Gallery items (path, caption) with served paths; an item outside the roots (or gone) is left out."""
    roots = list(roots)
    out = []
    for path, caption in items:
        try:
            out.append((str(publish(path, roots)), caption))
        except (PathRefused, OSError):
            continue
    return out


def prune(max_copy_age_s: float = 7 * 24 * 3600) -> int:
    """Remove published files whose original was deleted (a link only the served folder still holds), and
    copies older than ``max_copy_age_s``; returns how many went."""
    import time

    root, gone = served_dir(), 0
    if not root.is_dir():
        return 0
    for folder in root.iterdir():
        files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")] if folder.is_dir() else []
        copied = (folder / COPY_MARK).exists()
        stale = [p for p in files if (copied and time.time() - p.stat().st_mtime > max_copy_age_s)
                 or (not copied and p.stat().st_nlink <= 1)]
        if files and len(stale) == len(files):
            shutil.rmtree(folder, ignore_errors=True)
            gone += len(stale)
    return gone
