"""What the UI's handlers call: one object built by app.py and shared by every session."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from trainers.runs import RunManager, resolve_config_path


@dataclass
class Services:
    manager: RunManager
    demo_main: Path
    allowed_roots: list[Path] = field(default_factory=list)

    @property
    def demo_dataset_dir(self) -> Path:
        """The first dataset folder named by the demo profile's dataset TOML."""
        main = tomllib.loads(self.demo_main.read_text(encoding="utf-8"))
        dataset_toml = resolve_config_path(self.demo_main.parent, main["dataset"])
        dataset = tomllib.loads(dataset_toml.read_text(encoding="utf-8"))
        return resolve_config_path(self.demo_main.parent, dataset["directory"][0]["path"])
