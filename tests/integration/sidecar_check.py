"""One check every native family's integration tests share: a sidecar preview of a saved LoRA
(trainers/native/sidecar.py through the runs library's ``render_samples``) is the picture the trainer rendered
live at that step, for a native run and for a diffusion-pipe run of the same files (diffusion-pipe renders
nothing while training, so the studio draws its previews from the saved epochs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from trainers.events import load_all


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def assert_sidecar_matches_live(trained: Path, tmp_path: Path, backend: str, step: int = 2,
                                tolerance: float = 0.5) -> None:
    """Copy the trained run, mark it as ``backend``'s, render the saved ``global_step{step}`` LoRA's previews
    and compare them with the live preview of that step (mean absolute difference in levels of 255)."""
    from trainers.run_library import render_samples
    from trainers.runs import RunManager

    run_dir = tmp_path / "runs" / trained.name
    shutil.copytree(trained, run_dir)
    if backend == "diffusion-pipe":  # what the supervisor writes for a diffusion-pipe run of this config
        meta = json.loads((run_dir / "run.json").read_text())
        (run_dir / "run.json").write_text(json.dumps({**meta, "backend": "diffusion-pipe"}))
    info = RunManager([tmp_path / "runs"]).info(trained.name)
    assert info.meta["backend"] == backend
    progress = list(render_samples(info, f"step{step}"))
    assert progress[-1].startswith("1/1 "), progress
    (sidecar,) = [e for e in load_all(run_dir) if e.kind == "sample" and e.source == "sidecar"]
    (live,) = [e for e in load_all(run_dir) if e.kind == "sample" and e.source == "live" and e.step == step]
    assert (sidecar.step, sidecar.seed, sidecar.prompt) == (step, live.seed, live.prompt)
    drawn, trainer = _rgb(run_dir / sidecar.path), _rgb(run_dir / live.path)
    assert drawn.shape == trainer.shape
    assert abs(drawn - trainer).mean() < tolerance
