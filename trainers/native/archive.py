"""``.tar`` archives in a dataset folder, read as diffusion-pipe reads them: every regular member is a media
file (utils/dataset.py _get_ungrouped_metadata: ``tar_f.getnames()``), in archive order, and a ``captions.json``
beside the archive keys its captions by the member's full name. A member is addressed by a path below the
archive, ``<folder>/<name>.tar/<member>``, so the rest of the reader treats it as a file."""

from __future__ import annotations

import functools
import io
import tarfile
from pathlib import Path, PurePosixPath

ARCHIVE_SUFFIX = ".tar"  # diffusion-pipe compares the suffix exactly (file.suffix != '.tar')


@functools.lru_cache(maxsize=64)
def _index(archive: str, mtime_ns: int, size: int) -> dict[str, tuple[int, int]]:
    """Member name -> (data offset, size) of the regular files of an archive; cached per archive version."""
    with tarfile.open(archive, "r:") as tar:
        return {m.name: (m.offset_data, m.size) for m in tar.getmembers() if m.isfile()}


def index_of(archive: Path) -> dict[str, tuple[int, int]]:
    """The regular members of ``archive``; raises OSError (tarfile.TarError included) when it cannot be read."""
    stat = archive.stat()
    try:
        return _index(str(archive), stat.st_mtime_ns, stat.st_size)
    except tarfile.TarError as exc:
        raise OSError(f"{archive} is not a readable tar archive ({exc})") from None


def members(archive: Path) -> list[Path]:
    """The member paths (``archive / name``) of an archive, in archive order."""
    return [archive / name for name in index_of(archive)]


def split(path: Path) -> tuple[Path, str] | None:
    """(archive, member name) when ``path`` lies inside a ``.tar`` archive, else None."""
    if f"{ARCHIVE_SUFFIX}/" not in str(path):  # the common case, without walking the parents
        return None
    for parent in path.parents:
        if parent.suffix == ARCHIVE_SUFFIX and parent.is_file():
            return parent, PurePosixPath(*path.relative_to(parent).parts).as_posix()
    return None


def read_bytes(path: Path) -> bytes:
    """The bytes of a file, or of an archive member addressed as ``<archive>.tar/<member>``."""
    inside = split(path)  # None for a plain file (a file cannot lie below another file)
    if inside is None:
        return path.read_bytes()
    archive, name = inside
    entry = index_of(archive).get(name)
    if entry is None:
        raise FileNotFoundError(f"{archive} has no member {name!r}")
    offset, size = entry
    with open(archive, "rb") as f:
        f.seek(offset)
        return f.read(size)


def open_binary(path: Path):
    """A binary file object for a file or an archive member (for Pillow)."""
    return open(path, "rb") if split(path) is None else io.BytesIO(read_bytes(path))
