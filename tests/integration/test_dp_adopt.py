"""Adopting diffusion-pipe runs started outside the studio: run.json + events.jsonl synthesized from TensorBoard
event files (written here with tensorboard's own torch-free writer) and the saved folders; idempotent."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from trainers.diffusion_pipe.discover import adopt_all, find_dp_runs
from trainers.events import load_all
from trainers.runs import RunManager

T0 = 1_767_261_600.0  # 2026-01-01 10:00:00 UTC


def write_tb(folder: Path, points: list[tuple[str, int, float, float]]) -> None:
    """(tag, step, value, wall time) scalars, as torch's SummaryWriter.add_scalar writes them (simple_value)."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(folder))
    for tag, step, value, wall in points:
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)])
        writer.add_event(event_pb2.Event(wall_time=wall, step=step, summary=summary))
    writer.close()


def dp_run(output: Path, name: str = "20260101_10-00-00", *, old: bool = True) -> Path:
    """A diffusion-pipe run folder: 2 epochs of 4 steps, eval at steps 0/4/8, saves and a checkpoint."""
    folder = output / name
    folder.mkdir(parents=True)
    (folder / "cats.toml").write_text("output_dir = '/x'\ndataset = 'cats_ds.toml'\nepochs = 2\n\n[model]\n"
                                      "type = 'chroma'\n\n[adapter]\ntype = 'lora'\nrank = 8\n\n[optimizer]\nlr = 3e-5\n")
    (folder / "cats_ds.toml").write_text("resolutions = [512]\n\n[[directory]]\npath = '/data'\n")
    points = [("train/loss", s, 0.5 - s / 100, T0 + 10 * s) for s in range(1, 9)]
    points += [("train/epoch_loss", 1, 0.47, T0 + 41), ("train/epoch_loss", 2, 0.43, T0 + 81)]
    for s in (0, 4, 8):
        points += [("cats_eval/loss", s, 0.3 - s / 100, T0 + 10 * s + 5)]
        points += [(f"cats_eval/loss_quantile_{q}", s, 0.1, T0 + 10 * s + 5) for q in ("0.10", "0.90")]
    write_tb(folder, points)
    for save in ("epoch1", "epoch2"):
        (folder / save).mkdir()
        (folder / save / "adapter_model.safetensors").write_bytes(b"x")
    (folder / "global_step8").mkdir()
    (folder / "latest").write_text("global_step8")
    if old:
        age(folder, T0 + 100)
    return folder


def age(folder: Path, when: float) -> None:
    for path in [*folder.rglob("*"), folder]:
        os.utime(path, (when, when))
    for n, save in enumerate(("epoch1", "epoch2", "global_step8")):
        if (folder / save).exists():
            os.utime(folder / save, (when - 60 + 40 * n + 1, when - 60 + 40 * n + 1))


def test_an_external_run_is_adopted_with_steps_evals_saves_and_finish(tmp_path):
    folder = dp_run(tmp_path / "output")
    assert adopt_all(tmp_path / "output") == [folder]
    meta = json.loads((folder / "run.json").read_text())
    assert meta["backend"] == "diffusion-pipe" and meta["external"] is True and meta["name"] == folder.name
    assert (meta["main_config"], meta["dataset_config"]) == ("cats.toml", "cats_ds.toml")
    assert meta["created"] == "2026-01-01T10:00:00+00:00"
    events = load_all(folder)
    steps = [ev for ev in events if ev.kind == "step"]
    assert [(s.step, s.epoch) for s in steps] == [(i, 1 if i <= 4 else 2) for i in range(1, 9)]
    assert steps[0].loss == pytest.approx(0.49) and steps[0].lr == 3e-5 and steps[0].t == pytest.approx(T0 + 10)
    evals = [ev for ev in events if ev.kind == "eval"]
    assert [(e.name, e.step) for e in evals] == [("cats_eval", 0), ("cats_eval", 4), ("cats_eval", 8)]
    assert evals[1].quantiles == {"0.10": pytest.approx(0.1), "0.90": pytest.approx(0.1)}
    saves = [(c.path, c.what, c.step, c.epoch) for c in events if c.kind == "checkpoint"]
    assert saves == [("epoch1", "lora", 4, 1), ("epoch2", "lora", 8, 2), ("global_step8", "state", 8, 2)]
    assert any(ev.kind == "log" and ev.message == "epoch 1 mean loss 0.47" for ev in events)
    assert events[-1].kind == "finished" and (events[-1].reason, events[-1].step, events[-1].epoch) == (
        "completed", 8, 2)
    assert [ev.t for ev in events] == sorted(ev.t for ev in events)


def test_adoption_is_idempotent_and_the_runs_library_lists_it(tmp_path):
    output = tmp_path / "output"
    folder = dp_run(output)
    adopt_all(output)
    snapshot = {p.name: p.read_bytes() for p in (folder / "run.json", folder / "events.jsonl")}
    assert adopt_all(output) == []
    assert snapshot == {p.name: p.read_bytes() for p in (folder / "run.json", folder / "events.jsonl")}
    manager = RunManager([output])
    (info,) = manager.runs()
    assert (info.run_id, info.status, info.backend) == (folder.name, "completed", "diffusion-pipe")
    assert list(manager.events(folder.name, follow=False))[-1].kind == "finished"


def test_a_live_external_run_gets_no_finish_until_its_writer_stops(tmp_path):
    output = tmp_path / "output"
    folder = dp_run(output, old=False)
    assert adopt_all(output) == [folder]
    assert not any(ev.kind == "finished" for ev in load_all(folder))
    assert adopt_all(output) == []  # unchanged and still live: nothing rewritten
    age(folder, time.time() - 3600)
    assert adopt_all(output) == [folder]
    assert load_all(folder)[-1].kind == "finished"


def test_only_diffusion_pipe_run_folders_are_touched(tmp_path):
    output = tmp_path / "output"
    output.mkdir()
    (output / "notes").mkdir()
    (output / "20260101_09-00-00").mkdir()  # a timestamp folder without a config: not a run (yet)
    (output / "20260101_09-00-00" / "epoch1").mkdir()
    native = output / "20260101_08-00-00"  # a studio run: already has run.json
    native.mkdir()
    (native / "run.json").write_text('{"backend": "native"}')
    (native / "main.toml").write_text("epochs = 1\n")
    (native / "epoch1").mkdir()
    assert find_dp_runs(output) == [native]
    assert adopt_all(output) == []
    assert (native / "run.json").read_text() == '{"backend": "native"}'
    assert not (native / "events.jsonl").exists()
    studio_run = tmp_path / "runs" / "20260101_07-00-00"
    dp_run(studio_run / "dp")
    (studio_run / "run.json").write_text("{}")
    assert adopt_all(studio_run / "dp") == []  # the supervisor's own diffusion-pipe folder
