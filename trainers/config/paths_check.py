"""Files and folders a config names must exist, and placeholders (``'<fill in: ...>'``) must be filled in.

Relative paths: one rule for every command (``config_base``). All relative paths of a config pair resolve against
one folder, its *config base*: the main TOML's folder, unless its ``dataset`` file exists only from the current
directory (diffusion-pipe's convention: it resolves against the folder it is launched from). validate,
train, the studio's Start and the wizard pick the base this way; trainers run with it as working directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainers.config.issues import Reporter
from trainers.config.model_keys import MODEL_KEYS
from trainers.config.toml_io import walk_leaves

PLACEHOLDER = re.compile(r"^<fill in:?\s*(?P<what>.*?)\s*>$", re.IGNORECASE)
_KIND_BY_MODEL_KIND = {"file": "file", "dir": "dir", "path": "any"}


def placeholder_text(value: Any) -> str | None:
    """What to fill in, when ``value`` is a placeholder string; else None."""
    match = PLACEHOLDER.match(value) if isinstance(value, str) else None
    return match.group("what") if match else None


def check_placeholders(data: dict[str, Any], report: Reporter, *, as_error: bool) -> None:
    """Report every ``'<fill in: ...>'`` value (as an error, or a warning when path checks are skipped)."""
    for key, value in walk_leaves(data):
        values = value if isinstance(value, list) else [value]
        for index, item in enumerate(values):
            what = placeholder_text(item)
            if what is None:
                continue
            dotted = f"{key}[{index}]" if isinstance(value, list) else key
            add = report.error if as_error else report.warning
            add(dotted, f"not filled in yet: {what}", f"set {dotted} to the {what}")


def main_paths(data: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """(dotted key, value, kind) for every path in a main TOML; kind is file | dir | any | output."""
    found: list[tuple[str, Any, str]] = [("dataset", data.get("dataset"), "file"),
                                         ("output_dir", data.get("output_dir"), "output")]
    for index, entry in enumerate(_list(data.get("eval_datasets"))):
        if isinstance(entry, dict):
            found.append((f"eval_datasets[{index}].config", entry.get("config"), "file"))
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    for key, value in model.items():
        found.extend(_model_path(key, value))
    adapter = data.get("adapter") if isinstance(data.get("adapter"), dict) else {}
    found.append(("adapter.init_from_existing", adapter.get("init_from_existing"), "any"))
    for index, entry in enumerate(_list(adapter.get("fuse_adapters"))):
        if isinstance(entry, dict):
            found.append((f"adapter.fuse_adapters[{index}].path", entry.get("path"), "file"))
    return found


def _model_path(key: str, value: Any) -> list[tuple[str, Any, str]]:
    spec = MODEL_KEYS.get(key)
    if spec is None:
        return []
    if spec.kind in _KIND_BY_MODEL_KIND:
        return [(f"model.{key}", value, _KIND_BY_MODEL_KIND[spec.kind])]
    if spec.kind == "file_list":
        return [(f"model.{key}[{i}]", item, "file") for i, item in enumerate(_list(value))]
    if spec.kind == "text_encoders":
        out = []
        for i, entry in enumerate(_list(value)):
            if isinstance(entry, dict):  # models/base.py:578-585: paths wins over path; each a str or a list
                field = "paths" if "paths" in entry else "path"
                value = entry.get(field)
                if isinstance(value, list):
                    out += [(f"model.{key}[{i}].{field}[{j}]", p, "file") for j, p in enumerate(value)]
                else:
                    out.append((f"model.{key}[{i}].{field}", value, "file"))
        return out
    return []


def dataset_paths(data: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """(dotted key, value, kind) for every path in a dataset TOML."""
    found: list[tuple[str, Any, str]] = []
    for index, directory in enumerate(_list(data.get("directory"))):
        if isinstance(directory, dict):
            for key, kind in (("path", "dir"), ("mask_path", "dir"), ("control_path", "dir"),
                              ("default_mask_file", "file")):
                found.append((f"directory[{index}].{key}", directory.get(key), kind))
    return found


def config_base(main_path: Path, data: dict[str, Any], cwd: Path | None = None) -> Path:
    """The folder a main config's relative paths resolve against (module docstring): the main file's folder,
    or the current directory when the ``dataset`` file exists only from there (with an absolute or missing
    ``dataset``: when more of its relative input paths, model files, eval configs and LoRAs, exist from there)."""
    home, here = Path(main_path).resolve().parent, (cwd or Path.cwd()).resolve()
    if here == home:
        return home
    dataset = data.get("dataset")
    if isinstance(dataset, str) and dataset and not _is_absolute(dataset):
        if is_there(home / dataset, "file") or is_there(here / dataset, "file"):
            return home if is_there(home / dataset, "file") else here
    relative = [value for _, value, kind in main_paths(data) if kind != "output" and isinstance(value, str)
                and value and placeholder_text(value) is None and not _is_absolute(value)]
    found_home = sum(is_there(home / value) for value in relative)
    found_here = sum(is_there(here / value) for value in relative)
    return here if found_here > found_home else home


def check_paths(paths: list[tuple[str, Any, str]], bases: Sequence[Path], report: Reporter,
                roots: Sequence[Path] | None = None) -> None:
    """Report paths that do not exist or have the wrong kind (relative ones tried against each base). With
    ``roots``, a path outside them is not looked up at all (a remote caller must not learn what exists)."""
    for dotted, value, kind in paths:
        if isinstance(value, str) and value and placeholder_text(value) is None:
            _check_one(dotted, value, kind, bases, report, roots)


def resolve(value: str, bases: Path | Sequence[Path]) -> Path:
    """A config path as the trainer will see it: absolute as is, else under the first base where it exists
    (or the first base when it exists nowhere)."""
    path = Path(value)
    if path.is_absolute():
        return path
    bases = [bases] if isinstance(bases, Path) else list(bases)
    return next((base / path for base in bases if is_there(base / path)), bases[0] / path)


def _is_absolute(value: str) -> bool:
    """Whether a config path is absolute once ``~`` is expanded (``~nobody`` of an unknown user: as written)."""
    try:
        return Path(value).expanduser().is_absolute()
    except RuntimeError:
        return Path(value).is_absolute()


def is_there(path: Path, kind: str = "any") -> bool:
    """Whether ``path`` exists (as a file for ``kind`` "file"); False for a name no file system takes (too long,
    a NUL byte) instead of an exception."""
    try:
        return path.is_file() if kind == "file" else path.exists()
    except (OSError, ValueError):
        return False


def _check_one(dotted: str, value: str, kind: str, bases: Sequence[Path], report: Reporter,
               roots: Sequence[Path] | None = None) -> None:
    if value.startswith("~"):
        report.error(dotted, f"{value!r}: diffusion-pipe does not expand ~", "write the full path")
        return
    try:
        if roots is not None and not _inside(value, bases, roots):
            report.warning(dotted, "not checked: it lies outside the studio's folders, and paths are only looked up "
                           "there for callers on other machines", "check it on the studio's machine")
            return
        _check_exists(dotted, value, kind, bases, report)
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte, no permission
        why = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else str(exc)
        shown = value if len(value) <= 80 else f"{value[:60]}... ({len(value)} characters)"
        report.error(dotted, f"{shown!r} cannot be checked: {why}", "fix the path: no file system takes it as written")


def _inside(value: str, bases: Sequence[Path], roots: Sequence[Path]) -> bool:
    """Whether ``value`` lies inside ``roots`` against every base (nothing on disk is looked up otherwise)."""
    from trainers.safe_paths import within_any

    path = Path(value)
    candidates = [path] if path.is_absolute() else [base / path for base in bases]
    return all(within_any(candidate, roots) for candidate in candidates)


def _check_exists(dotted: str, value: str, kind: str, bases: Sequence[Path], report: Reporter) -> None:
    path = resolve(value, bases)
    hint = f"check the path (relative paths are resolved against {' or '.join(str(b) for b in bases)})"
    if kind == "output":
        if path.exists() and not path.is_dir():
            report.error(dotted, f"{path} exists and is not a folder", "choose a folder for training runs")
        return
    if not path.exists():
        report.error(dotted, f"not found: {path}", hint)
    elif kind == "file" and not path.is_file():
        report.error(dotted, f"{path} is a folder, expected a file", "point it at the file itself")
    elif kind == "dir" and not path.is_dir():
        report.error(dotted, f"{path} is a file, expected a folder", "point it at the folder")


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
