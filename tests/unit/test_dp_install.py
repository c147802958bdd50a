"""Locating a diffusion-pipe checkout and its launcher, and health messages that name the fix."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from trainers.diffusion_pipe import install
from trainers.diffusion_pipe.install import (
    CHECKOUT_ENV,
    LAUNCHER_ENV,
    check_checkout,
    checkout_health,
    find_launcher,
    is_deepspeed_launcher,
    launcher_python,
    locate_checkout,
)

FAKE = Path(__file__).resolve().parent.parent / "fakes" / "diffusion_pipe"


def checkout(tmp_path: Path, *, train: bool = True, comfy: bool = True) -> Path:
    root = tmp_path / "diffusion-pipe"
    (root / "submodules" / "ComfyUI").mkdir(parents=True)
    if train:
        (root / "train.py").write_text("# stand-in\n")
    if comfy:
        (root / "submodules" / "ComfyUI" / "main.py").write_text("")
    return root


def test_setting_wins_over_environment_and_is_relative_to_the_profile(tmp_path):
    env = {CHECKOUT_ENV: "/from/env"}
    assert locate_checkout({"diffusion_pipe_path": "../dp"}, base=tmp_path / "p", env=env) == tmp_path / "dp"
    assert locate_checkout({}, env=env) == Path("/from/env")
    assert locate_checkout(None, env={}) is None


def test_not_configured_names_both_ways_to_configure():
    (issue,) = check_checkout(None, ["deepspeed"])
    assert issue.level == "error"
    assert "diffusion_pipe_path" in issue.fix and CHECKOUT_ENV in issue.fix and "git clone" in issue.fix


def test_missing_folder_and_missing_train_py(tmp_path):
    (issue,) = check_checkout(tmp_path / "nope", ["deepspeed"])
    assert "does not exist" in issue.message
    issues = check_checkout(checkout(tmp_path, train=False), ["deepspeed"])
    assert [i.level for i in issues] == ["error"] and "train.py" in issues[0].message


def test_empty_comfyui_submodule_says_how_to_initialise_it(tmp_path):
    root = checkout(tmp_path, comfy=False)
    (issue,) = check_checkout(root, ["deepspeed"])
    assert "ComfyUI" in issue.message and "git submodule update --init --recursive" in issue.fix


def test_missing_launcher_and_old_python(tmp_path):
    root = checkout(tmp_path)
    (issue,) = check_checkout(root, None)
    assert issue.level == "error" and "pip install -r requirements.txt" in issue.fix and LAUNCHER_ENV in issue.fix
    (note,) = check_checkout(root, ["deepspeed"], version=(3, 11))
    assert note.level == "warning" and "3.12" in note.message and "autocommit" in note.message
    assert check_checkout(root, ["deepspeed"], version=(3, 12)) == []


def test_launcher_search_order(tmp_path, monkeypatch):
    root = checkout(tmp_path)
    assert find_launcher({}, root, env={LAUNCHER_ENV: "python3 -X dev"}) == ["python3", "-X", "dev"]
    assert find_launcher({"deepspeed_command": "/x/deepspeed"}, root, env={}) == ["/x/deepspeed"]
    venv_ds = root / "venv" / "bin" / "deepspeed"
    venv_ds.parent.mkdir(parents=True)
    venv_ds.write_text("#!/bin/sh\n")
    venv_ds.chmod(0o755)
    assert find_launcher({}, root, env={"PATH": ""}) == [str(venv_ds)]
    venv_ds.unlink()
    monkeypatch.setattr(install.importlib.util, "find_spec", lambda name: None)
    assert find_launcher({}, root, env={"PATH": str(tmp_path / "empty")}) is None
    monkeypatch.setattr(install.importlib.util, "find_spec", lambda name: object())
    assert find_launcher({}, root, env={"PATH": ""}) == [sys.executable, "-m", "deepspeed.launcher.runner"]


def test_launcher_kind_and_its_python(tmp_path):
    assert is_deepspeed_launcher(["/env/bin/deepspeed"]) and is_deepspeed_launcher(["py", "-m", "deepspeed.launcher.runner"])
    assert not is_deepspeed_launcher(["/usr/bin/python3"])
    script = tmp_path / "deepspeed"
    script.write_text("#!/usr/bin/env python3.12\nprint()\n")
    assert launcher_python([str(script)]) == "python3.12"
    script.write_text("#!/opt/conda/envs/dp/bin/python\n")
    assert launcher_python([str(script)]) == "/opt/conda/envs/dp/bin/python"
    assert launcher_python(["/usr/bin/python3", "-m", "deepspeed.launcher.runner"]) == "/usr/bin/python3"


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="the note is about Pythons older than 3.12")
def test_the_fake_checkout_is_healthy_apart_from_the_python_note():
    health = checkout_health({"diffusion_pipe_path": str(FAKE)}, env={LAUNCHER_ENV: sys.executable})
    assert health.ok and health.root == FAKE and health.launcher == [sys.executable]
    assert health.python_version == sys.version_info[:2]
    assert [w.level for w in health.warnings()] == ["warning"]
