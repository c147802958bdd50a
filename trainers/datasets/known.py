"""What one dataset check knows of each picture: the check cache's facts, or the header's size until the
picture is measured. It is the ``Reader`` the trainer's dataset reader is given (trainers/native/data.py), so the
cheap scan reads headers only, and a picture the trainer would skip is skipped here as soon as it is measured.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import imagesize
from PIL import Image

from trainers.datasets.check_cache import Facts, FolderIndex, fingerprint
from trainers.native import data, media

# Formats whose size ``imagesize`` reads from the header (about twice as fast as Pillow's open, which parses every
# marker and builds an image object); JPEG has its own reader below; anything else, or a header neither can read,
# goes through Pillow.
FAST_HEADERS = (".png", ".webp")
JPEG_NAMES = (".jpg", ".jpeg", ".jpe", ".jfif")
# Start-of-frame markers, whose segment holds the frame's size (ITU-T T.81 table B.1: C0-CF less DHT C4, JPG C8
# and DAC CC), the ones Pillow's JpegImagePlugin reads the size from.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn and TEM: markers without a length
_CHUNK = 4096


def jpeg_size(path: str) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, or None where the file does not follow the marker syntax
    (T.81 B.1.1: 0xFF fill bytes, then a marker, then a 2-byte length counting itself) up to its first SOFn:
    Pillow's more forgiving parser then reads it (it also skips junk between segments).

    One ``pread`` of 4 KiB usually holds every segment up to the frame (another read only to jump past a large
    EXIF or ICC segment): ``imagesize`` goes segment by segment through a buffered file, 2.4x the time, which
    made the cheap scan of a folder slower than Pillow-free reading should be (docs/benchmarks.md)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return _frame_size(fd)
    except OSError:
        return None
    finally:
        os.close(fd)


def _frame_size(fd: int) -> tuple[int, int] | None:
    """The segment walk of :func:`jpeg_size` on an open file."""
    buf = os.pread(fd, _CHUNK, 0)
    if buf[:3] != b"\xff\xd8\xff":
        return None
    base, pos = 0, 2  # the file offset of buf[0]; of the next marker
    while True:
        at = pos - base
        if at + 9 > len(buf):  # the marker, its length and a frame header's first 5 bytes
            buf, base, at = os.pread(fd, _CHUNK, pos), pos, 0
            if len(buf) < 9:
                return None
        if buf[at] != 0xFF:
            return None
        marker = buf[at + 1]
        if marker == 0xFF:  # a fill byte
            pos += 1
        elif marker in _SOF:
            height, width = struct.unpack_from(">HH", buf, at + 5)
            return (width, height) if width and height else None  # height 0: set by a later DNL marker
        elif marker in _STANDALONE:
            pos += 2
        elif marker in (0xD8, 0xD9, 0xDA):  # another SOI, the end, scan data: no frame before them
            return None
        else:
            (length,) = struct.unpack_from(">H", buf, at + 2)
            if length < 2:
                return None
            pos += 2 + length


def header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the header of a JPEG, PNG or WebP file as Pillow reports it, or None: another format,
    a header these readers cannot read, or more pixels than Pillow's decompression-bomb guard lets open (Pillow's
    own open then says why)."""
    name = str(path)
    lower = name[-5:].lower()
    if lower.endswith(JPEG_NAMES):
        size = jpeg_size(name)  # the stored size, as Pillow reports it (no EXIF rotation)
    elif lower.endswith(FAST_HEADERS):
        try:
            size = imagesize.get(name, exif_rotation=False)
        except (OSError, ValueError):
            return None
    else:
        return None
    if size is None:
        return None
    width, height = size
    if width <= 0 or height <= 0 or Image.MAX_IMAGE_PIXELS and width * height > 2 * Image.MAX_IMAGE_PIXELS:
        return None
    return width, height


class Known:
    """Facts by picture for one check, backed by one check-cache index per folder."""

    def __init__(self) -> None:
        self.facts: dict[Path, Facts] = {}
        self.keys: dict[Path, str | None] = {}  # fingerprints (None: not cacheable, e.g. a tar member)
        self.headers: dict[Path, tuple[int, int]] = {}
        self._indexes: dict[str, FolderIndex] = {}
        self._captions: dict[Path, list[str] | None | media.BadMedia] = {}
        self._listings: dict[Path, list[Path]] = {}
        self.reader = data.Reader(self.size_of, self.captions_of, self.media_files)

    def media_files(self, folder: Path) -> list[Path]:
        """The folder's media files, listed once for the scan and the report."""
        if folder not in self._listings:
            self._listings[folder] = media.media_files(folder)
        return self._listings[folder]

    def captions_of(self, path: Path, folder_captions: dict[str, list[str]] | None) -> list[str] | None:
        """The picture's captions (or its BadMedia), read once for the scan and the report."""
        if path not in self._captions:
            try:
                self._captions[path] = media.captions_of(path, folder_captions)
            except media.BadMedia as exc:
                self._captions[path] = exc
        found = self._captions[path]
        if isinstance(found, media.BadMedia):
            raise found
        return found

    def _index(self, path: Path) -> FolderIndex:
        return self._folder_index(os.path.dirname(str(path)))  # a string: Path.parent parses a new path per picture

    def _folder_index(self, folder: str) -> FolderIndex:
        index = self._indexes.get(folder)
        if index is None:
            index = self._indexes[folder] = FolderIndex(Path(folder))
        return index

    def size_of(self, path: Path) -> tuple[int, int]:
        """The picture's size, or BadMedia with the trainer's own reason once it was measured."""
        facts = self.facts.get(path)
        if facts is None and path not in self.keys:
            key = self.keys[path] = fingerprint(path)
            facts = self._index(path).get(path, key) if key else None
            if facts is not None:
                self.facts[path] = facts
        if facts is not None:
            if facts.bad:
                raise media.BadMedia(path, facts.bad.split(": ", 1)[-1])
            return facts.width, facts.height
        return self._header(path)

    def _header(self, path: Path) -> tuple[int, int]:
        cacheable = bool(self.keys.get(path))  # stat'ed fine as a file of its own: not a broken link, no tar member
        link = None if cacheable else media.link_problem(path)
        if link:
            raise media.BadMedia(path, link)
        size = header_size(path) if cacheable else None
        if size is not None:
            self.headers[path] = size
            return size
        try:
            with media.open_image(path) as img:
                self.headers[path] = img.size
                return img.size
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise media.BadMedia(path, f"not a readable image: Pillow cannot open it ({exc})") from None

    def unmeasured(self) -> list[tuple[Path, str | None]]:
        """(picture, fingerprint) of every picture seen whose facts are not known yet."""
        return [(path, key) for path, key in self.keys.items() if path not in self.facts]

    def record(self, path: Path, key: str | None, facts: Facts) -> None:
        self.facts[path] = facts
        if key is not None:
            self._index(path).put(path, key, facts)

    def save(self) -> None:
        """Save what was measured, and forget the pictures gone from each folder listed whole in this check."""
        for folder, files in self._listings.items():
            # (a folder whose pictures are all gone has no index loaded yet: load it to empty it)
            self._folder_index(str(folder)).keep_only({path.name for path in files})
        for index in self._indexes.values():
            index.save()
