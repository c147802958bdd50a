"""Find diffusion-pipe run folders and their saves; adopt runs started outside the studio.

diffusion-pipe names each run folder ``<output_dir>/<UTC %Y%m%d_%H-%M-%S>`` and writes ``epochN``/``stepN``
LoRA folders, ``global_stepN`` training-state checkpoints with a ``latest`` file, and TensorBoard event files
(notes/diffusion-pipe.md §4). Adoption writes ``run.json`` and ``events.jsonl`` into such a folder (events
synthesized from the TensorBoard scalars and the saved folders) so the runs library lists it like any other run;
nothing else in the folder is touched.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path

from trainers.config.toml_io import atomic_write_bytes
from trainers.events import (
    EVENTS_FILE,
    CheckpointEvent,
    EvalEvent,
    Event,
    FinishedEvent,
    LogEvent,
    StepEvent,
    dump_event,
    load_all,
)

RUN_NAME = re.compile(r"^\d{8}_\d{2}-\d{2}-\d{2}$")
RUN_FORMAT = "%Y%m%d_%H-%M-%S"
SAVE_NAME = re.compile(r"^(?:epoch|step)(\d+)$")
STATE_NAME = re.compile(r"^global_step(\d+)$")
RUN_FILE = "run.json"
LIVE_WINDOW_S = 600.0  # a folder written to more recently than this still has a live writer
_TRAIN_TAGS = ("train/loss", "train/epoch_loss")


# ---- folders of a live run (used by the supervisor too) ----------------------------------------
def find_new_run_dir(output_dir: Path, since: float) -> Path | None:
    """The newest ``%Y%m%d_%H-%M-%S`` folder in ``output_dir`` created at or after ``since`` (2 s slack)."""
    try:
        candidates = [p for p in output_dir.iterdir() if p.is_dir() and RUN_NAME.match(p.name)]
    except OSError:
        return None
    fresh = [p for p in candidates if p.stat().st_mtime >= since - 2.0]
    return max(fresh, key=lambda p: p.name, default=None)


def lora_ready(folder: Path) -> bool:
    """An ``epochN``/``stepN`` folder is complete once a .safetensors file is in it and the per-stage ``tmp``
    folder diffusion-pipe merges from is gone."""
    try:
        return folder.is_dir() and not (folder / "tmp").exists() and any(folder.glob("*.safetensors"))
    except OSError:
        return False


def state_ready(dp_run_dir: Path, name: str) -> bool:
    """A ``global_stepN`` checkpoint is complete once DeepSpeed's ``latest`` names it (or a newer one)."""
    try:
        latest = STATE_NAME.match((dp_run_dir / "latest").read_text(encoding="utf-8").strip())
    except OSError:
        return False
    wanted = STATE_NAME.match(name)
    return bool(latest and wanted and int(latest.group(1)) >= int(wanted.group(1)))


def saved_folders(dp_run_dir: Path) -> list[tuple[str, str]]:
    """``(folder name, 'lora' | 'state')`` for every complete save in a diffusion-pipe run folder."""
    found: list[tuple[str, str]] = []
    try:
        entries = sorted(dp_run_dir.iterdir(), key=lambda p: p.stat().st_mtime)
    except OSError:
        return found
    for entry in entries:
        if SAVE_NAME.match(entry.name) and lora_ready(entry):
            found.append((entry.name, "lora"))
        elif STATE_NAME.match(entry.name) and state_ready(dp_run_dir, entry.name):
            found.append((entry.name, "state"))
    return found


# ---- adoption ---------------------------------------------------------------------------------
def is_dp_run(folder: Path) -> bool:
    """A diffusion-pipe run folder: timestamp name, a copied .toml, and saves or TensorBoard events."""
    if not folder.is_dir() or not RUN_NAME.match(folder.name) or not any(folder.glob("*.toml")):
        return False
    return any(SAVE_NAME.match(p.name) or STATE_NAME.match(p.name) or p.name.startswith("events.out.tfevents")
               for p in folder.iterdir())


def find_dp_runs(output_dir: Path) -> list[Path]:
    """diffusion-pipe run folders directly inside ``output_dir``, oldest first."""
    try:
        return sorted(p for p in Path(output_dir).iterdir() if is_dp_run(p))
    except OSError:
        return []


def adopt_all(output_dir: str | os.PathLike[str], *, live_window_s: float = LIVE_WINDOW_S) -> list[Path]:
    """Adopt (or refresh) every diffusion-pipe run in ``output_dir``; returns the folders written this call.

    Idempotent: a folder already adopted is rewritten only while its run was still live and has changed.
    The ``dp/`` folder inside a studio run belongs to that run's supervisor and is left alone.
    """
    output_dir = Path(output_dir)
    if (output_dir.parent / RUN_FILE).is_file():
        return []
    return [folder for folder in find_dp_runs(output_dir) if adopt(folder, live_window_s=live_window_s)]


def adopt(folder: Path, *, live_window_s: float = LIVE_WINDOW_S) -> bool:
    """Write run.json and events.jsonl for one external run folder; False when there was nothing to do."""
    meta = _read_meta(folder)
    newest = _newest_mtime(folder)
    if meta is not None:
        if not meta.get("external") or any(ev.kind in ("finished", "failed") for ev in load_all(folder)):
            return False
        if meta.get("synced_mtime") == newest and time.time() - newest < live_window_s:
            return False  # still live and unchanged since the last sync
    configs = _configs(folder)
    live = time.time() - newest < live_window_s
    events = synthesize_events(folder, configs.get("main", {}), live=live)
    data = "".join(dump_event(ev) + "\n" for ev in events).encode("utf-8")
    atomic_write_bytes(folder / EVENTS_FILE, data)
    atomic_write_bytes(folder / RUN_FILE, json.dumps(_run_meta(folder, configs, newest, meta), indent=2,
                                                     sort_keys=True).encode("utf-8"))
    return True


def _read_meta(folder: Path) -> dict | None:
    try:
        return json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _newest_mtime(folder: Path) -> float:
    """Newest write by diffusion-pipe (our own run.json / events.jsonl do not count)."""
    ours = {RUN_FILE, EVENTS_FILE}
    times = [p.stat().st_mtime for p in folder.iterdir() if p.name not in ours and not p.name.startswith(".")]
    return max(times, default=folder.stat().st_mtime)


def _configs(folder: Path) -> dict:
    """The copied main and dataset TOMLs: ``{'main': data, 'main_name': ..., 'dataset_name': ...}``."""
    parsed: dict[str, dict] = {}
    for path in sorted(folder.glob("*.toml")):
        try:
            parsed[path.name] = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    main_name = next((n for n, d in parsed.items() if "output_dir" in d or "model" in d), None)
    main = parsed.get(main_name, {}) if main_name else {}
    wanted = Path(str(main.get("dataset", ""))).name
    dataset_name = wanted if wanted in parsed else next((n for n, d in parsed.items() if "directory" in d), None)
    return {"main": main, "main_name": main_name, "dataset_name": dataset_name}


def _run_meta(folder: Path, configs: dict, newest: float, old: dict | None) -> dict:
    try:
        created = datetime.strptime(folder.name, RUN_FORMAT).replace(tzinfo=UTC).isoformat(timespec="seconds")
    except ValueError:
        created = datetime.fromtimestamp(folder.stat().st_mtime, UTC).isoformat(timespec="seconds")
    main = configs.get("main", {})
    return {"run_id": folder.name, "backend": "diffusion-pipe", "external": True, "name": folder.name,
            "created": created, "main_config": configs.get("main_name"), "dataset_config": configs.get("dataset_name"),
            "source_main": None, "max_steps": main.get("max_steps"), "pid": None, "pid_create_time": None,
            "dp_run_dir": ".", "synced_mtime": newest,
            "adopted": (old or {}).get("adopted") or datetime.now(UTC).isoformat(timespec="seconds")}


# ---- events from TensorBoard and the saved folders ---------------------------------------------
def read_scalars(folder: Path) -> dict[str, list[tuple[float, int, float]]]:
    """Every scalar in the folder's TensorBoard event files: tag -> [(wall time, step, value)]."""
    if not any(folder.glob("events.out.tfevents*")):
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # torch-free

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.wall_time, int(e.step), float(e.value)) for e in acc.Scalars(tag)]
            for tag in acc.Tags().get("scalars", [])}


def synthesize_events(folder: Path, main: dict, *, live: bool) -> list[Event]:
    """Events for an external run: steps (train/loss), epoch losses, evals, saves, and ``finished`` unless live.

    diffusion-pipe does not log the learning rate (notes §4.4): steps carry the configured ``[optimizer] lr``.
    """
    scalars = read_scalars(folder)
    lr = float((main.get("optimizer") or {}).get("lr", 0.0) or 0.0)
    ends = sorted((wall, step) for wall, step, _ in scalars.get("train/epoch_loss", []))
    steps = _steps(scalars.get("train/loss", []), ends, lr, main)
    events: list[Event] = [*steps, *_epoch_logs(ends, scalars), *_evals(scalars, steps)]
    events += _checkpoints(folder, steps, "lora" if main.get("adapter") else "model")
    events.sort(key=lambda ev: ev.t)
    first_t = events[0].t if events else folder.stat().st_mtime
    events.insert(0, LogEvent(t=first_t, message=f"adopted from {folder} (started outside dp-studio); the learning "
                                                 "rate shown is the configured one: diffusion-pipe does not log it"))
    if not live:
        last = steps[-1] if steps else None
        events.append(FinishedEvent(t=max(ev.t for ev in events), step=last.step if last else 0,
                                    epoch=last.epoch if last else 1, reason="completed"))
    return events


def _epoch_at(wall: float, ends: list[tuple[float, int]]) -> int:
    """The epoch a step logged at ``wall`` belongs to: the first epoch whose epoch_loss came at or after it."""
    for end_wall, epoch in ends:
        if wall <= end_wall:
            return max(epoch, 1)
    return (ends[-1][1] + 1) if ends else 1


def _steps(points: list[tuple[float, int, float]], ends: list[tuple[float, int]], lr: float,
           main: dict) -> list[StepEvent]:
    by_examples, every = bool(main.get("x_axis_examples")), int(main.get("logging_steps", 1) or 1)
    out = []
    for index, (wall, x, loss) in enumerate(points):
        if not math.isfinite(loss):
            continue  # JSON cannot carry NaN; the chart shows a gap
        step = (index + 1) * every if by_examples else max(x, 1)  # x is examples seen with x_axis_examples
        out.append(StepEvent(t=wall, step=step, epoch=_epoch_at(wall, ends), loss=loss, lr=lr))
    return out


def _epoch_logs(ends: list[tuple[float, int]], scalars: dict) -> list[Event]:
    values = {(w, s): v for w, s, v in scalars.get("train/epoch_loss", [])}
    return [LogEvent(t=w, message=f"epoch {s} mean loss {values[(w, s)]:.6g}") for w, s in ends]


def _evals(scalars: dict, steps: list[StepEvent]) -> list[Event]:
    """``<name>/loss`` (+ ``<name>/loss_quantile_Q``) tags written by diffusion-pipe's eval."""
    out: list[Event] = []
    for tag, points in scalars.items():
        if not tag.endswith("/loss") or tag in _TRAIN_TAGS:
            continue
        name = tag.removesuffix("/loss")
        quantiles = {t.rsplit("_", 1)[-1]: {s: v for _, s, v in pts} for t, pts in scalars.items()
                     if t.startswith(f"{name}/loss_quantile_")}
        for wall, step, value in points:
            if math.isfinite(value):
                epoch = next((ev.epoch for ev in reversed(steps) if ev.step <= step), 1)
                q = {k: by_step[step] for k, by_step in quantiles.items() if step in by_step}
                out.append(EvalEvent(t=wall, step=step, epoch=epoch, name=name, loss=value, quantiles=q))
    return out


def _checkpoints(folder: Path, steps: list[StepEvent], lora_kind: str) -> list[Event]:
    out: list[Event] = []
    for name, what in saved_folders(folder):
        number = int(re.sub(r"\D", "", name))
        if name.startswith("epoch"):
            step = max((ev.step for ev in steps if ev.epoch <= number), default=0)
            epoch = number
        else:
            step = number
            epoch = next((ev.epoch for ev in reversed(steps) if ev.step <= number), 1)
        out.append(CheckpointEvent(t=(folder / name).stat().st_mtime, step=step, epoch=max(epoch, 1), path=name,
                                   what=lora_kind if what == "lora" else "state"))
    return out
