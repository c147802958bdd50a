"""Import profiles from a diffusion-pipe main TOML (its dataset TOML comes along) or a zip; export as a zip."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path, PurePosixPath

from trainers.config.paths_check import resolve
from trainers.config.toml_io import loads, read_text, to_plain
from trainers.profiles.store import ProfileError, ProfileStore, ProfileTexts, SaveReport


def import_path(store: ProfileStore, path: Path, name: str) -> SaveReport:
    """Import a main TOML or a ``.zip``; see ``import_toml`` and ``import_zip``."""
    path = Path(path)
    if path.suffix.lower() == ".zip":
        return import_zip(store, path, name)
    return import_toml(store, path, name)


def import_toml(store: ProfileStore, main_path: Path, name: str) -> SaveReport:
    """Import a main TOML and the dataset TOML its ``dataset`` key names.

    The dataset path is resolved against the main file's folder first, then the current directory
    (diffusion-pipe's own examples are relative to its checkout). Raises ConfigParseError for bad TOML.
    """
    main_text = read_text(main_path)
    data = to_plain(loads(main_text, str(main_path)))
    dataset_value = data.get("dataset")
    if not isinstance(dataset_value, str) or not dataset_value:
        raise ProfileError(f"{main_path}: no dataset = '...' key, so the dataset TOML cannot come along "
                           "(is this a main config?)")
    candidates = [resolve(dataset_value, main_path.parent), resolve(dataset_value, Path.cwd())]
    dataset_path = next((p for p in candidates if p.is_file()), None)
    if dataset_path is None:
        raise ProfileError(f"{main_path}: dataset file {dataset_value!r} not found (looked in "
                           f"{main_path.parent} and {Path.cwd()})")
    dataset_text = read_text(dataset_path)
    loads(dataset_text, str(dataset_path))  # parse check before anything is stored
    report = store.create(name, ProfileTexts(main_path.name, main_text, dataset_path.name, dataset_text),
                          message=f"imported from {main_path}")
    return _with_notes(report, data, [f"dataset TOML taken from {dataset_path}"])


def import_zip(store: ProfileStore, zip_path: Path, name: str) -> SaveReport:
    """Import a zip holding one main TOML and its dataset TOML (folders inside the zip are ignored)."""
    tomls = _zip_tomls(zip_path)
    mains = {file: text for file, text in tomls.items() if _is_main(file, text)}
    if len(mains) != 1:
        raise ProfileError(f"{zip_path}: expected exactly one main TOML (with a dataset key), found "
                           f"{len(mains)}: {', '.join(sorted(mains)) or 'none'}")
    main_name, main_text = next(iter(mains.items()))
    wanted = PurePosixPath(str(to_plain(loads(main_text, main_name)).get("dataset"))).name
    if wanted not in tomls:
        raise ProfileError(f"{zip_path}: the main TOML names dataset {wanted!r}, which is not in the zip")
    loads(tomls[wanted], wanted)  # parse check before anything is stored
    report = store.create(name, ProfileTexts(main_name, main_text, wanted, tomls[wanted]),
                          message=f"imported from {zip_path}")
    return _with_notes(report, to_plain(loads(main_text, main_name)), [])


def export_zip(store: ProfileStore, name: str, out_path: Path, version: int | None = None) -> Path:
    """Write the pair into a zip (original file names, bytes unchanged)."""
    pair = store.texts(name, version)
    staging = out_path.parent / f".{out_path.name}.tmp"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    store.export(name, staging, version)  # refuses documents that still carry a secret
    partial = out_path.with_name(f".{out_path.name}.partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for file_name in (pair.main_name, pair.dataset_name):
            archive.write(staging / file_name, file_name)
            (staging / file_name).unlink()
    staging.rmdir()
    os.replace(partial, out_path)  # a reader never sees half a zip
    return out_path


def _zip_tomls(zip_path: Path) -> dict[str, str]:
    try:
        with zipfile.ZipFile(zip_path) as archive:
            found: dict[str, str] = {}
            for member in archive.infolist():
                base = PurePosixPath(member.filename).name
                if member.is_dir() or not base.endswith(".toml") or base.startswith("."):
                    continue
                if base in found:
                    raise ProfileError(f"{zip_path}: two files named {base!r}")
                found[base] = archive.read(member).decode("utf-8")  # read in memory: nothing is extracted
            return found
    except (zipfile.BadZipFile, UnicodeDecodeError, OSError) as exc:
        raise ProfileError(f"{zip_path}: cannot read the zip: {exc}") from exc


def _is_main(file: str, text: str) -> bool:
    try:
        data = to_plain(loads(text, file))
    except ValueError:
        return False
    return isinstance(data.get("dataset"), str) and "directory" not in data


def _with_notes(report: SaveReport, data: dict, notes: list[str]) -> SaveReport:
    extra = list(notes)
    if data.get("eval_datasets"):
        extra.append("eval_datasets still point at their original files (eval configs are not imported)")
    return SaveReport(report.profile, report.version, [*report.notes, *extra], report.issues)
