"""A torch-free trainer double: writes the same events as the native trainer and honours commands.

Run as ``python -m tests.fakes.trainer --run-dir DIR``. Steps every 50 ms with a decaying loss; writes a
sample PNG every 5 steps and honours stop/save/sample commands, so RunManager and the UI can be tested
without torch. ``[studio] fake_caching_items = N`` adds a caching phase of N items first (with progress events,
as the native trainer reports caching). Like the native trainer it reports a gradient norm only when
``gradient_clipping`` is set, and
eval losses (mean + timestep quantiles, one set per ``eval_datasets`` name) every ``eval_every_n_steps``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import tomllib
from pathlib import Path

from trainers.commands import Command, take_commands
from trainers.events import (
    CheckpointEvent,
    EvalEvent,
    EventWriter,
    FinishedEvent,
    LogEvent,
    PhaseEvent,
    SampleEvent,
    StepEvent,
)

TOTAL = 40


def _sample(run_dir: Path, w: EventWriter, step: int) -> None:
    from PIL import Image

    rel = f"samples/step{step:06d}_p0_s42.png"
    (run_dir / "samples").mkdir(exist_ok=True)
    Image.new("RGB", (16, 16), (step * 6 % 256, 80, 160)).save(run_dir / rel)
    w.emit(SampleEvent(step=step, epoch=1, path=rel, prompt="a fake prompt", seed=42))


def _eval(w: EventWriter, config: dict, step: int) -> None:
    every = int(config.get("eval_every_n_steps", 0))
    if not every or step % every:
        return
    for i, entry in enumerate(config.get("eval_datasets", [])):
        mean = 0.5 + 0.5 * math.exp(-step / 20) + 0.1 * i
        quantiles = {f"{q / 10:.2f}": mean * (0.6 + 0.1 * q) for q in (1, 5, 9)}
        w.emit(EvalEvent(step=step, epoch=1, name=entry["name"], loss=mean, quantiles=quantiles))


def _cache(w: EventWriter, items: int) -> None:
    """A caching phase that reports its progress as the native trainer does, one item every 0.2 s."""
    if not items:
        return
    w.emit(PhaseEvent(phase="caching", message=f"{items} examples of the training set", total=items))
    for done in range(items + 1):
        w.emit(PhaseEvent(phase="caching", message=f"latents of the training set: {done}/{items}", total=items,
                          done=done))
        time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", required=True)
    run_dir = Path(ap.parse_args().run_dir)
    meta = json.loads((run_dir / "run.json").read_text())
    config = tomllib.loads((run_dir / meta["main_config"]).read_text())
    total = meta.get("max_steps") or config.get("max_steps") or TOTAL
    w = EventWriter(run_dir)
    w.emit(PhaseEvent(phase="starting"))
    _cache(w, int(config.get("studio", {}).get("fake_caching_items", 0)))
    w.emit(PhaseEvent(phase="training", total=total))
    clipping = config.get("gradient_clipping")
    for step in range(1, total + 1):
        time.sleep(0.05)
        grad_norm = 1.0 + math.sin(step) / 2 if clipping else None
        w.emit(StepEvent(step=step, epoch=1, loss=math.exp(-step / 10), lr=1e-4, total_steps=total,
                         it_per_s=20.0, samples_per_s=80.0, eta_s=(total - step) / 20, grad_norm=grad_norm))
        _eval(w, config, step)
        cmds = take_commands(run_dir)
        if Command.SAMPLE in cmds or step % 5 == 0:
            _sample(run_dir, w, step)
        if Command.SAVE in cmds:
            w.emit(CheckpointEvent(step=step, epoch=1, path=f"step{step}"))
        if Command.STOP in cmds:
            w.emit(LogEvent(message="stop requested"))
            w.emit(FinishedEvent(step=step, epoch=1, reason="stopped"))
            return
    w.emit(FinishedEvent(step=total, epoch=1))


if __name__ == "__main__":
    main()
