"""The one helper every entry point (page, API, CLI) uses for a run id, folder, file name or path it was given.

A name or relative path is resolved under its root, symbolic links included, and refused when it could reach
anything else: ``..`` parts, absolute paths, NUL and other control characters, backslashes, percent-encoded
characters (``%2e%2e%2f``) and over-long names never get near the file system. The error names what was refused
and why. Folders that would expose the whole machine (``/``, the home folder, system folders, the studio's own
data folder) are refused as output or served roots.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from trainers.paths import studio_home

MAX_NAME = 255  # bytes in one path part on Linux file systems
MAX_PATH = 4096
_ENCODED = re.compile(r"%[0-9a-fA-F]{2}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Folders never used as a root: the whole system lives under them.
SYSTEM_FOLDERS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/root", "/run",
                  "/sbin", "/sys", "/usr", "/var/lib", "/var/log", "/var/run", "/var/spool", "/var/mail")
# Folders that may hold roots deeper down, but are never a root themselves.
SHARED_FOLDERS = ("/", "/home", "/var", "/tmp", "/opt", "/srv", "/mnt", "/media", "/var/tmp")


class PathRefused(ValueError):
    """A run id, folder, file name or path was refused; the message says which and why."""


def _refuse(what: str, value: object, why: str) -> PathRefused:
    return PathRefused(f"{what} {value!r} refused: {why}")


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _refuse(what, value, "expected text")
    if not value.strip():
        raise _refuse(what, value, "it is empty; pick one from the list")
    if "\x00" in value:
        raise _refuse(what, value, "it holds a NUL character")
    if _CONTROL.search(value):
        raise _refuse(what, value, "it holds a control character")
    if _ENCODED.search(value):
        raise _refuse(what, value, "it holds percent-encoded characters; send the plain name")
    if "\\" in value:
        raise _refuse(what, value, "it holds a backslash; use / between folders")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_PATH:
        raise _refuse(what, value[:40] + "...", f"it is longer than {MAX_PATH} bytes")
    return value


def check_name(value: object, what: str = "name") -> str:
    """``value`` when it is one plain path part (a run id, a saved folder's name), else PathRefused."""
    text = _check_text(value, what)
    if "/" in text:
        raise _refuse(what, text, "it must be a single name, without /")
    if text in (".", ".."):
        raise _refuse(what, text, "'.' and '..' are not names")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_NAME:
        raise _refuse(what, text[:40] + "...", f"it is longer than {MAX_NAME} bytes")
    return text


def resolve_under(root: Path, value: object, what: str = "path") -> Path:
    """``root / value`` for a relative ``value`` (``epoch3``, ``dp/<stamp>/epoch3``) that stays inside ``root``
    once symbolic links are resolved; the path is returned unresolved (as the caller named it)."""
    text = _check_text(value, what)
    parts = PurePosixPath(text).parts
    if text.startswith("/") or text.startswith("~"):
        raise _refuse(what, text, f"it must be relative to {root}")
    if ".." in parts:
        raise _refuse(what, text, "it climbs out with '..'")
    for part in parts:
        check_name(part, what)
    candidate = Path(root) / text
    if not is_within(candidate, root):
        raise _refuse(what, text, f"it leads outside {root} through a symbolic link")
    return candidate


def is_within(path: Path, root: Path) -> bool:
    """Whether ``path`` is ``root`` or inside it once both have their symbolic links resolved."""
    try:
        return Path(path).resolve().is_relative_to(Path(root).resolve())
    except (OSError, RuntimeError, ValueError):  # a link loop, an over-long path: not provably inside
        return False


def within_any(path: Path, roots: Iterable[Path]) -> bool:
    return any(is_within(path, root) for root in roots)


def check_root(path: Path, what: str = "output folder") -> Path:
    """``path`` (resolved) when it may hold runs and be read by the studio's pages; refuses ``/``, the home
    folder and the folders above it, system folders, and the studio's own data folder (it holds the secrets)."""
    resolved = Path(os.path.abspath(Path(path).expanduser()))
    try:
        resolved = resolved.resolve()
    except (OSError, RuntimeError) as exc:
        raise _refuse(what, str(path), f"it cannot be resolved ({exc})") from None
    home = Path.home().resolve()
    data = studio_home().expanduser().resolve()
    if str(resolved) in SHARED_FOLDERS or resolved == home or home.is_relative_to(resolved):
        raise _refuse(what, str(path), "it is a top folder of this machine or the home folder; pick a folder "
                                       "made for training runs, e.g. ~/training/runs")
    for system in SYSTEM_FOLDERS:
        if resolved.is_relative_to(system) and not resolved.is_relative_to(home):
            raise _refuse(what, str(path), f"it is inside the system folder {system}; pick a folder of your own")
    if resolved == data or data.is_relative_to(resolved):
        raise _refuse(what, str(path), f"it holds the studio's own data folder {data} (secrets included); "
                                       "pick a folder beside it, or its runs/ sub-folder")
    return resolved
