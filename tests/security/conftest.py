"""A world to attack: a studio with one real run, decoy run folders outside its output folder (one with a live
pid, so commands would reach it), a symbolic link from the output folder to a decoy, and a snapshot of every
file outside the output folder so a test can prove nothing there changed."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

MARKER = "DECOY-MARKER-7f3a"  # in every decoy file: must never come back from an endpoint
REAL_RUN = "20260101_00-00-00"
REAL_SAVE = "epoch1"


@dataclass
class World:
    base: Path  # the test's temp root
    runs: Path  # the studio's output folder
    near: Path  # decoy beside the output folder: ../decoy
    far: Path  # decoy three levels up: ../../../decoy

    def probes(self) -> list[str]:
        """Run ids / folder names that try to leave the output folder."""
        return ["../decoy", "../../../decoy", str(self.near), str(self.far), "..%2fdecoy", "%2e%2e/decoy",
                "%2E%2E%2F%2E%2E%2F%2E%2E%2Fdecoy", "linked", "decoy\x00", "../decoy\x00.json", "..", ".", "", "/",
                f"{REAL_RUN}/../../decoy", "..\\decoy", "~/decoy", f"{REAL_SAVE}/../../../decoy/epoch1",
                str(self.near / "epoch1"), "../../decoy/epoch1", "a" * 5000, "\ud800", "decoy\n"]

    def snapshot(self) -> dict[str, tuple]:
        """Every file and folder under the temp root, outside the output folder and the studio's home."""
        seen: dict[str, tuple] = {}
        for folder, dirs, files in os.walk(self.base):
            here = Path(folder)
            if here == self.runs or here.name in ("home", "served") or self.runs in here.parents:
                dirs[:] = []
                continue
            for name in dirs:
                seen[str((here / name).relative_to(self.base))] = ("dir",)
            for name in files:
                path = here / name
                st = path.lstat()
                digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
                seen[str(path.relative_to(self.base))] = (st.st_size, st.st_mtime_ns, digest)
        return seen


def _decoy(folder: Path) -> None:
    me = psutil.Process()
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({
        "run_id": folder.name, "name": MARKER, "backend": "native", "created": "2099-01-01T00:00:00",
        "main_config": "main.toml", "dataset_config": "ds.toml", "pid": me.pid, "pid_create_time": me.create_time(),
    }))
    (folder / "main.toml").write_text(f"# {MARKER}\noutput_dir = '.'\n[monitoring]\nwandb_api_key = '{MARKER}'\n")
    (folder / "ds.toml").write_text(f"# {MARKER}\n")
    (folder / "events.jsonl").write_text("")
    (folder / "epoch1").mkdir()
    (folder / "epoch1" / "adapter_model.safetensors").write_bytes(MARKER.encode())
    (folder / "secret.txt").write_text(MARKER)


def _real_run(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({
        "run_id": folder.name, "name": "real", "backend": "native", "created": "2026-01-01T00:00:00",
        "main_config": "main.toml", "dataset_config": "ds.toml", "pid": None, "pid_create_time": None,
    }))
    (folder / "main.toml").write_text("output_dir = '.'\nepochs = 1\n")
    (folder / "ds.toml").write_text("resolutions = [64]\n")
    (folder / "events.jsonl").write_text("")
    (folder / REAL_SAVE).mkdir()
    (folder / REAL_SAVE / "adapter_model.safetensors").write_bytes(b"not a real lora")


@pytest.fixture
def world(tmp_path: Path) -> World:
    runs = tmp_path / "a" / "b" / "runs"
    runs.mkdir(parents=True)
    w = World(tmp_path, runs, tmp_path / "a" / "b" / "decoy", tmp_path / "decoy")
    _decoy(w.near)
    _decoy(w.far)
    _real_run(runs / REAL_RUN)
    (runs / "linked").symlink_to(w.near, target_is_directory=True)
    return w


@pytest.fixture
def manager(world: World):
    from trainers.runs import RunManager

    return RunManager([world.runs], trainer_module="tests.fakes.trainer")
