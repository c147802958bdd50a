"""What the UI's handlers call: one object built by app.py and shared by every session."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trainers.runs import RunManager


@dataclass
class Services:
    manager: RunManager
    demo_main: Path
    allowed_roots: list[Path] = field(default_factory=list)

    @property
    def demo_dataset_dir(self) -> Path:
        """The demo dataset folder named by the demo profile's dataset TOML."""
        import tomllib

        main = tomllib.loads(self.demo_main.read_text(encoding="utf-8"))
        dataset = tomllib.loads(Path(main["dataset"]).read_text(encoding="utf-8"))
        return Path(dataset["directory"][0]["path"])
