"""The embedded demo: materialise its shipped profile with absolute paths into the studio's data folder.

The shipped pair in ``profiles/demo/`` uses paths relative to the repository root, so it reads well and
works from a checkout. The studio launches runs from a copy whose paths are absolute, written here.
"""

from __future__ import annotations

from pathlib import Path

import tomlkit

from trainers.files import atomic_write_text
from trainers.paths import REPO_ROOT, default_runs_root, studio_home, user_path

DEMO_DIR = REPO_ROOT / "profiles" / "demo"
DEMO_MAIN = "chroma_demo.toml"
DEMO_DATASET = "chroma_demo_dataset.toml"
MODEL_PATH_KEYS = ("diffusers_path", "transformer_path")


def _absolute(value: str) -> str:
    p = user_path(value)
    return str(p if p.is_absolute() else (REPO_ROOT / p).resolve())


def demo_target_dir() -> Path:
    return studio_home() / "demo"


def prepare_demo(target: Path | None = None, output_dir: Path | None = None) -> Path:
    """Write the demo main + dataset TOML with absolute paths; returns the main TOML's path.

    Only path values change; comments and every other key stay as shipped. Runs go to ``output_dir``
    (default: the studio's runs folder).
    """
    target = target or demo_target_dir()
    out = output_dir or default_runs_root()
    dataset_doc = tomlkit.parse((DEMO_DIR / DEMO_DATASET).read_text(encoding="utf-8"))
    for directory in dataset_doc.get("directory", []):
        directory["path"] = _absolute(directory["path"])
    main_doc = tomlkit.parse((DEMO_DIR / DEMO_MAIN).read_text(encoding="utf-8"))
    main_doc["output_dir"] = str(Path(out).resolve())
    main_doc["dataset"] = str((target / DEMO_DATASET).resolve())
    for key in MODEL_PATH_KEYS:
        if key in main_doc["model"]:
            main_doc["model"][key] = _absolute(main_doc["model"][key])
    atomic_write_text(target / DEMO_DATASET, tomlkit.dumps(dataset_doc))
    atomic_write_text(target / DEMO_MAIN, tomlkit.dumps(main_doc))
    return target / DEMO_MAIN
