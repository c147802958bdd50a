"""Shared fixtures: every test gets its own studio home so nothing touches the user's data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(autouse=True)
def studio_home(tmp_path_factory, monkeypatch) -> Path:
    home = tmp_path_factory.mktemp("studio_home")
    monkeypatch.setenv("DP_STUDIO_HOME", str(home))
    return home


def write_pair(folder: Path, *, max_steps: int | None = None, extra_main: str = "") -> Path:
    """A minimal main + dataset TOML pair in ``folder`` (paths relative to it); returns the main path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    (folder / "ds.toml").write_text("resolutions = [64]\n\n[[directory]]\npath = 'data'\n", encoding="utf-8")
    steps = f"max_steps = {max_steps}\n" if max_steps else ""
    (folder / "main.toml").write_text(
        "# a comment that must survive the copy\noutput_dir = 'out'\ndataset = 'ds.toml'\nepochs = 1\n"
        f"save_every_n_epochs = 1\n{steps}{extra_main}\n[model]\ntype = 'chroma'\ndtype = 'float32'\n",
        encoding="utf-8")
    return folder / "main.toml"


def make_valid(main: Path) -> Path:
    """Complete a ``write_pair`` main TOML so it validates (the embedded demo model, a LoRA, an optimizer):
    what ``start_run`` requires before it starts anything."""
    main.write_text(main.read_text(encoding="utf-8") + f"diffusers_path = '{REPO}/assets/demo/flux-tiny'\n"
                    f"transformer_path = '{REPO}/assets/demo/chroma-tiny'\n\n[adapter]\ntype = 'lora'\nrank = 4\n\n"
                    "[optimizer]\ntype = 'adamw'\nlr = 1e-4\n", encoding="utf-8")
    return main
