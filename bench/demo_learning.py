"""Does the demo LoRA learn visibly, and how fast? Runs the shipped demo profile and scores its previews.

Method: copy ``profiles/demo`` with absolute paths into a temporary run folder, run
``python -m trainers.native`` as the studio would, then score every preview:

- ``concept``: fraction of pixels within RGB distance 80 of either checkerboard colour of the zxq concept
  (magenta or yellow); the dataset's zxq images score about 0.8;
- ``magenta``: fraction within distance 80 of the magenta alone (the base model never saw magenta);
- ``checker``: mean absolute difference between horizontally adjacent 8 px cells, a measure of the
  checkerboard's alternation (0 for flat colour).

Usage: ``.venv/bin/python bench/demo_learning.py [--max-steps N] [--keep DIR]``; prints a table and JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tomlkit
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainers.events import load_all  # noqa: E402
from trainers.native.demo_images import concept_scores as scores  # noqa: E402

DEMO = REPO / "profiles" / "demo"


def make_run(root: Path, max_steps: int | None) -> Path:
    """A run folder with run.json and absolute-path copies of the demo pair."""
    run_dir = root / "runs" / time.strftime("%Y%m%d_%H-%M-%S", time.gmtime())
    run_dir.mkdir(parents=True)
    dataset = tomlkit.parse((DEMO / "chroma_demo_dataset.toml").read_text(encoding="utf-8"))
    for directory in dataset["directory"]:
        directory["path"] = str(REPO / directory["path"])
    main = tomlkit.parse((DEMO / "chroma_demo.toml").read_text(encoding="utf-8"))
    main["output_dir"], main["dataset"] = str(root / "runs"), str(run_dir / "chroma_demo_dataset.toml")
    for key in ("diffusers_path", "transformer_path"):
        main["model"][key] = str(REPO / main["model"][key])
    (run_dir / "chroma_demo_dataset.toml").write_text(tomlkit.dumps(dataset), encoding="utf-8")
    (run_dir / "chroma_demo.toml").write_text(tomlkit.dumps(main), encoding="utf-8")
    run = {"run_id": run_dir.name, "backend": "native", "main_config": "chroma_demo.toml",
           "dataset_config": "chroma_demo_dataset.toml", "max_steps": max_steps}
    (run_dir / "run.json").write_text(json.dumps(run), encoding="utf-8")
    return run_dir


def dataset_scores() -> dict[str, float]:
    """Mean scores of the demo dataset's concept images (the target)."""
    folder = REPO / "assets" / "demo" / "dataset"
    rows = [scores(Image.open(p)) for p in sorted(folder.glob("zxq_*.png"))]
    return {k: round(float(np.mean([r[k] for r in rows])), 3) for k in rows[0]}


def summarise(run_dir: Path, wall: float) -> dict:
    """Timings from the events and the scores of every preview."""
    events = load_all(run_dir)
    steps = [e for e in events if e.kind == "step"]
    first_step = next(e.t for e in events if e.kind == "phase" and e.phase == "training")
    previews = [{"step": e.step, "prompt": e.index, "seconds": round(e.t - events[0].t, 1),
                 **scores(Image.open(run_dir / e.path))} for e in events if e.kind == "sample"]
    return {
        "wall_s": round(wall, 1),
        "startup_s": round(first_step - events[0].t, 1),
        "steps": len(steps),
        "median_step_s": round(float(np.median([1 / e.it_per_s for e in steps])), 4) if steps else None,
        "final": events[-1].kind, "dataset": dataset_scores(), "previews": previews,
    }


def main() -> int:
    """Run the demo once and print the learning curve of the trigger-word preview."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="copy the run folder here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = make_run(Path(tmp), args.max_steps)
        started = time.time()
        with open(run_dir / "stdout.log", "wb") as log:
            subprocess.run([sys.executable, "-m", "trainers.native", "--run-dir", str(run_dir)], cwd=run_dir,
                           stdout=log, stderr=subprocess.STDOUT, check=False)
        result = summarise(run_dir, time.time() - started)
        if args.keep:
            shutil.copytree(run_dir, args.keep, dirs_exist_ok=True)
    print(f"{'step':>5} {'prompt':>6} {'t(s)':>6} {'concept':>8} {'magenta':>8} {'checker':>8}")
    for p in result["previews"]:
        print(f"{p['step']:>5} {p['prompt']:>6} {p['seconds']:>6} {p['concept']:>8} {p['magenta']:>8} "
              f"{p['checker']:>8}")
    print(json.dumps({k: v for k, v in result.items() if k != "previews"}))
    return 0 if result["final"] == "finished" else 1


if __name__ == "__main__":
    sys.exit(main())
