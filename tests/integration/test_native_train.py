"""Real tiny training runs of the native trainer on the embedded demo model (a child process each)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomlkit
from PIL import Image
from safetensors import safe_open

from trainers.commands import send_command
from trainers.events import load_all

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "profiles" / "demo"


def make_run(tmp_path: Path, **overrides) -> Path:
    """A run folder as RunManager makes it: run.json + copies of the demo pair with absolute paths."""
    run_dir = tmp_path / "runs" / "20260101_00-00-00"
    run_dir.mkdir(parents=True)
    dataset = tomlkit.parse((DEMO / "chroma_demo_dataset.toml").read_text(encoding="utf-8"))
    for directory in dataset["directory"]:
        directory["path"] = str(REPO / directory["path"])
    main = tomlkit.parse((DEMO / "chroma_demo.toml").read_text(encoding="utf-8"))
    main["output_dir"] = str(tmp_path / "runs")
    main["dataset"] = str(run_dir / "chroma_demo_dataset.toml")
    for key in ("diffusers_path", "transformer_path"):
        main["model"][key] = str(REPO / main["model"][key])
    for key, value in overrides.items():
        table, _, name = key.rpartition(".")
        (main[table] if table else main)[name] = value
    (run_dir / "chroma_demo_dataset.toml").write_text(tomlkit.dumps(dataset), encoding="utf-8")
    (run_dir / "chroma_demo.toml").write_text(tomlkit.dumps(main), encoding="utf-8")
    run = {"run_id": run_dir.name, "backend": "native", "main_config": "chroma_demo.toml",
           "dataset_config": "chroma_demo_dataset.toml"}
    (run_dir / "run.json").write_text(json.dumps(run), encoding="utf-8")
    return run_dir


def start(run_dir: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    log = open(run_dir / "stdout.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "trainers.native", "--run-dir", str(run_dir), *extra],
                            cwd=run_dir, stdout=log, stderr=subprocess.STDOUT, env=env)


def finish(proc: subprocess.Popen, run_dir: Path, timeout: float = 150) -> list:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    events = load_all(run_dir)
    assert proc.returncode == 0, (run_dir / "stdout.log").read_text(errors="replace")[-3000:]
    return events


def lora_keys(folder: Path) -> list[str]:
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as fh:
        return list(fh.keys())


def test_short_run_writes_events_samples_and_lora(tmp_path: Path):
    run_dir = make_run(tmp_path, **{"max_steps": 6, "studio.sample_every_n_steps": 3})
    events = finish(start(run_dir), run_dir)
    kinds = [e.kind for e in events]
    assert kinds[0] == "phase" and events[0].phase == "starting"
    assert kinds[-1] == "finished" and events[-1].reason == "completed" and events[-1].step == 6
    assert "failed" not in kinds
    phases = [e.phase for e in events if e.kind == "phase"]
    for earlier, later in [("starting", "loading"), ("loading", "caching"), ("caching", "training"),
                           ("training", "finished")]:
        assert phases.index(earlier) < phases.index(later)
    steps = [e for e in events if e.kind == "step"]
    assert [e.step for e in steps] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(e.loss) and e.total_steps == 6 and e.lr > 0 for e in steps)
    # The ETA waits for a step after the first (warm-up) and ends at 0; the phases before the first loss report
    # their own progress: latents cached of the total, previews rendered of the round.
    assert steps[0].eta_s is None and all(e.eta_s > 0 for e in steps[1:-1]) and steps[-1].eta_s == 0
    cached = [e for e in events if e.kind == "phase" and e.phase == "caching" and e.done is not None]
    assert cached and cached[-1].done == cached[-1].total > 0 and cached[0].done <= cached[-1].done
    rounds = [e for e in events if e.kind == "phase" and e.phase == "sampling" and e.done is not None]
    prompts = len(tomlkit.parse((DEMO / "chroma_demo.toml").read_text(encoding="utf-8"))["studio"]["sample_prompts"])
    assert len(rounds) >= 3 and all(e.done == 0 and e.total >= prompts for e in rounds)
    samples = [e for e in events if e.kind == "sample"]
    assert sorted({e.step for e in samples}) == [0, 3, 6]
    for e in samples:
        with Image.open(run_dir / e.path) as img:
            assert img.size == (64, 64)
    assert kinds.index("sample") < kinds.index("step") < kinds.index("checkpoint") < kinds.index("finished")
    (checkpoint,) = [e for e in events if e.kind == "checkpoint" and e.what == "lora"]
    assert checkpoint.path == "step6"
    (state,) = [e for e in events if e.kind == "checkpoint" and e.what == "state"]
    assert state.path == "global_step6" and (run_dir / "global_step6" / "training_state.pt").is_file()
    keys = lora_keys(run_dir / "step6")
    assert keys and all(k.startswith("diffusion_model.") for k in keys)
    assert any(k.endswith(".lora_A.weight") for k in keys) and any(k.endswith(".lora_B.weight") for k in keys)
    assert "diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight" in keys
    config = json.loads((run_dir / "step6" / "adapter_config.json").read_text())
    rank = tomlkit.parse((DEMO / "chroma_demo.toml").read_text(encoding="utf-8"))["adapter"]["rank"]
    assert config["r"] == config["lora_alpha"] == rank
    # diffusion-pipe's LoRA: one rank-r A per fused Linear, no per-module ranks (models/base.py:277-284).
    assert config["rank_pattern"] == {} and config["alpha_pattern"] == {}
    assert (run_dir / "step6" / "chroma_demo.toml").read_bytes() == (run_dir / "chroma_demo.toml").read_bytes()
    # The save was checked against the demo's own transformer (a diffusers folder): every block Linear covered.
    (check,) = [e for e in events if e.kind == "log" and e.message.startswith("step6 key check")]
    assert check.level == "info" and "✓ every key fits the model" in check.message
    assert "covers 20 of 20 block Linears" in check.message and "released" not in check.message


def test_stop_command_saves_and_finishes_stopped(tmp_path: Path):
    run_dir = make_run(tmp_path, **{"max_steps": 5000, "studio.sample_at_start": False})
    proc = start(run_dir)
    deadline = time.time() + 120
    while time.time() < deadline and not any(e.kind == "step" and e.step >= 2 for e in load_all(run_dir)):
        assert proc.poll() is None, (run_dir / "stdout.log").read_text(errors="replace")[-3000:]
        time.sleep(0.2)
    send_command(run_dir, "stop")
    events = finish(proc, run_dir, timeout=60)
    assert events[-1].kind == "finished" and events[-1].reason == "stopped"
    assert [e.kind for e in events].count("finished") == 1
    (checkpoint,) = [e for e in events if e.kind == "checkpoint" and e.what == "lora"]
    assert checkpoint.path == f"step{events[-1].step}" and events[-1].step < 5000
    assert lora_keys(run_dir / checkpoint.path)
    (state,) = [e for e in events if e.kind == "checkpoint" and e.what == "state"]
    assert state.path == f"global_step{events[-1].step}"  # a stop can always be resumed


def test_bad_config_ends_with_one_failed_event(tmp_path: Path):
    run_dir = make_run(tmp_path, **{"optimizer.type": "Prodigee"})
    proc = start(run_dir)
    proc.wait(timeout=120)
    events = load_all(run_dir)
    assert proc.returncode == 1
    assert events[-1].kind == "failed" and "Prodigee" in events[-1].error and "Traceback" in events[-1].detail
    assert [e.kind for e in events].count("failed") == 1
