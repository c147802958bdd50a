"""Reading one media file safely: a corrupt, truncated or unsupported file becomes a BadMedia error naming the
file and saying why, so that the dataset reader can skip it with a warning (or stop, when strict)."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from trainers.native import archive as tar

CAPTIONS_JSON = "captions.json"
SKIP_SUFFIXES = {".txt", ".npz", ".json", ".parquet", ".bak", ".db"}  # never media (as in diffusion-pipe)


class BadMedia(ValueError):
    """A file that cannot be trained on; ``reason`` says why (without the path), the message names the file."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


BAD_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def _bomb_reason(exc: Exception) -> str:
    pixels = re.search(r"\((\d+) pixels\)", str(exc))
    count = f"{int(pixels.group(1)):,} pixels" if pixels else "too many pixels"
    return (f"decompression bomb guard: the image has {count}, over twice Pillow's limit of "
            f"{Image.MAX_IMAGE_PIXELS:,} (PIL.Image.MAX_IMAGE_PIXELS), so Pillow refuses to decode it as a possible "
            "decompression-bomb attack; downscale the image (no training resolution needs that many pixels)")


def link_problem(path: Path) -> str | None:
    if not path.is_symlink():
        return None
    try:
        path.resolve(strict=True)
    except (RuntimeError, OSError) as exc:
        if isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP:
            return "symlink loop: the link points back at itself through other links; fix or remove it"
        return f"broken symlink: it points at {os.readlink(path)!r}, which does not exist; fix or remove it"
    return None


def open_image(path: Path) -> Image.Image:
    """Pillow's lazy image of a file or of a ``.tar`` member (``<archive>.tar/<member>``)."""
    if tar.split(path) is None or path.exists():  # split first: no system call for a plain file
        return Image.open(path)
    return Image.open(tar.open_binary(path))


def probe_image(path: Path) -> tuple[int, int]:
    """The (width, height) of an image after decoding all of it (JPEGs at 1/8 scale, which still reads every
    byte), so a corrupt or truncated file is found while scanning, not mid-run. Raises BadMedia naming it."""
    return decode_checked(path, (1, 1))[0]


def decode_checked(path: Path, draft: tuple[int, int], mode: str = "RGB") -> tuple[tuple[int, int], Image.Image]:
    """The image's (width, height) and its pixels fully decoded (JPEGs at the smallest scale still at least
    ``draft``; a colour JPEG in ``mode``, "RGB" or "YCbCr"): the check :func:`probe_image` makes, with the decoded
    picture for whoever needs it too (the dataset check measures on it). Raises BadMedia naming the file."""
    link = link_problem(path)
    if link:
        raise BadMedia(path, link)
    if path.suffix == tar.ARCHIVE_SUFFIX and path.is_file():  # listed only when its index could not be read
        raise BadMedia(path, "not a readable tar archive; re-create it with `tar -cf` or remove it")
    try:
        with open_image(path) as img:
            frames = getattr(img, "n_frames", 1)
            if path.suffix.lower() == ".webp" and frames > 1:
                raise BadMedia(path, f"animated WebP ({frames} frames): only still images are trained; save one "
                               "frame as PNG or remove the file")
            size = img.size
            img.draft(mode, draft)
            img.load()
            return size, img
    except Image.DecompressionBombError as exc:
        raise BadMedia(path, _bomb_reason(exc)) from None
    except BadMedia:
        raise
    except BAD_IMAGE_ERRORS as exc:
        raise BadMedia(path, f"not a readable image: Pillow fails to decode it ({exc}); re-save or remove the "
                       "file") from None


def _utf8_problem(exc: UnicodeDecodeError) -> str:
    return f"byte 0x{exc.object[exc.start]:02x} at position {exc.start}"


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def rgb_on_white(img: Image.Image) -> Image.Image:
    """Transparent parts composited on white, as diffusion-pipe does; 16-bit greyscale (TIFF, PNG) scaled to
    8 bits (Pillow's own convert clips it, which turns most of the picture white)."""
    if img.mode in SIXTEEN_BIT_MODES:
        grey = np.asarray(img, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def read_captions(folder: Path) -> dict[str, list[str]] | None:
    """``captions.json`` of a folder (file name -> list of captions), or None when there is none."""
    path = folder / CAPTIONS_JSON
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not valid UTF-8 ({_utf8_problem(exc)}); re-save it as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must be a JSON object: file name -> list of captions")
    for name, caps in data.items():
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise ValueError(f"{path}: the entry {name!r} must be a list of captions (strings), e.g. [\"a cat\"]")
    return data


def captions_of(path: Path, folder_captions: dict[str, list[str]] | None) -> list[str] | None:
    """The captions of a file: its folder's ``captions.json`` entry when the folder has one, else its ``.txt``
    (for a ``.tar`` member, the same-stem ``.txt`` member); None when it has none."""
    inside = tar.split(path)
    if folder_captions is not None:  # an archive member's key is its full member name, as in diffusion-pipe
        return folder_captions.get(inside[1] if inside else path.name)
    if inside is not None:
        txt = path.with_suffix(".txt")
        if str(Path(inside[1]).with_suffix(".txt")) not in tar.index_of(inside[0]):
            return None
        try:
            raw = tar.read_bytes(txt)
        except FileNotFoundError:
            return None
    else:
        name = str(path)
        stem_end = len(name) - len(os.path.splitext(name)[1])  # Path.with_suffix's answer, without a new Path
        txt = name[:stem_end] + ".txt"
        try:
            raw = _read_small(txt)  # one open, no stat first
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
    try:
        return [raw.decode("utf-8").strip()]
    except UnicodeDecodeError as exc:
        raise BadMedia(Path(txt), f"the caption is not valid UTF-8 ({_utf8_problem(exc)}); re-save it as "
                       "UTF-8") from None


def _read_small(name: str) -> bytes:
    """A whole file read through its descriptor (a caption: one read and the one that finds its end, without the
    buffered file object ``open`` builds)."""
    fd = os.open(name, os.O_RDONLY)
    try:
        parts = [os.read(fd, 65536)]
        while parts[-1]:
            parts.append(os.read(fd, 1 << 20))
        return b"".join(parts)
    finally:
        os.close(fd)


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:  # a symlink loop: reported by link_problem
        return False


def media_files(folder: Path) -> list[Path]:
    """Candidate media files of a folder (not recursive), sorted by name; a broken or looping symlink is one
    too, so that it is reported rather than silently left out. A ``.tar`` archive stands for its members
    (``<archive>.tar/<member>``, in archive order); an unreadable one stays listed, to be reported."""
    found = []
    with os.scandir(folder) as entries:  # the directory's own file types: no stat per plain file
        listed = sorted(entries, key=lambda e: e.name)
    for entry in listed:
        suffix = os.path.splitext(entry.name)[1]  # Path.suffix's answer for every suffix that matters here
        if suffix.lower() in SKIP_SUFFIXES:
            continue
        p = folder / entry.name
        if not (_is_file(entry) or (entry.is_symlink() and link_problem(p))):
            continue
        if suffix == tar.ARCHIVE_SUFFIX and p.is_file():
            try:
                found.extend(m for m in tar.members(p) if m.suffix.lower() not in SKIP_SUFFIXES)
                continue
            except OSError:
                pass
        found.append(p)
    return found
