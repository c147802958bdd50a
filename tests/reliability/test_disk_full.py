"""Disk full while saving: a message that says so (need, free, what is intact), a refusal before writing when the
save cannot fit, an early warning in the monitor, and the previous state untouched."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from trainers import checkpoints
from trainers.checkpoints import LATEST_FILE, DiskFullError
from trainers.native import state as state_mod

Usage = namedtuple("Usage", "total used free")
# What torch.save raised on a full disk in the report (its zip writer never says ENOSPC).
TORCH_ENOSPC = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1600 vs 1536")


def _state(run_dir: Path, step: int, numel: int = 1 << 16) -> Path:
    param = torch.nn.Parameter(torch.ones(numel))
    opt = torch.optim.AdamW([param], lr=1e-3)
    param.grad = torch.ones_like(param)
    opt.step()
    return state_mod.save_state(run_dir, state_mod.Position(step, 1, step, step), {"w": param}, opt,
                                {"seed": torch.tensor([step])})


def _intact(run_dir: Path, name: str = "global_step1") -> None:
    assert (run_dir / LATEST_FILE).read_text().strip() == name
    assert state_mod.load_state(run_dir / name).position.step == 1
    assert sorted(p.name for p in run_dir.iterdir()) == [name, LATEST_FILE]  # no temp folder left behind


@pytest.mark.parametrize("failure", [TORCH_ENOSPC, OSError(errno.ENOSPC, "No space left on device")],
                         ids=["torch-zip-writer", "oserror-enospc"])
def test_a_write_that_runs_out_of_room_says_so_and_keeps_the_previous_state(tmp_path, monkeypatch, failure):
    _state(tmp_path, 1)

    def full(obj, path, *a, **k):
        Path(path).write_bytes(b"x" * 100)  # a partly written file, as a full disk leaves
        raise failure

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskFullError) as caught:
        _state(tmp_path, 2)
    message = str(caught.value)
    assert message.startswith("no space left on device while saving global_step2 (need ≈ ")
    assert " MB free); the previous state (global_step1) is intact" in message
    assert "inline_container" not in message and caught.value.errno == errno.ENOSPC
    _intact(tmp_path)


def test_a_save_that_cannot_fit_is_refused_before_it_writes(tmp_path, monkeypatch):
    _state(tmp_path, 1)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10 * 2**20, 10 * 2**20 - 300_000, 300_000))
    with pytest.raises(DiskFullError, match=r"global_step2 \(need ≈ 1\.0 MB, 0\.3 MB free\); the previous state"):
        _state(tmp_path, 2)
    _intact(tmp_path)
    warning = checkpoints.space_warning(tmp_path, 200_000)  # room for one such save, not two: warn
    assert warning and "0.3 MB free" in warning and "0.2 MB" in warning
    assert checkpoints.space_warning(tmp_path, 100_000) is None


def test_other_write_errors_are_not_called_disk_full(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "denied")))
    with pytest.raises(PermissionError):
        _state(tmp_path, 1)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 2 MiB filesystem, when this process may mount one (root, outside most containers' limits)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"tmpfs mount not permitted here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_real_full_filesystem(tiny_tmpfs, monkeypatch):
    _state(tiny_tmpfs, 1, numel=1 << 14)  # ~0.2 MB
    with pytest.raises(DiskFullError, match="global_step2 .* MB free\\); the previous state"):
        _state(tiny_tmpfs, 2, numel=1 << 20)  # ~12 MB: refused before writing
    _intact(tiny_tmpfs)
    monkeypatch.setattr(checkpoints, "SPACE_MARGIN", 0.0)  # let it try: the filesystem itself runs out
    with pytest.raises(DiskFullError, match="no space left on device while saving global_step2"):
        _state(tiny_tmpfs, 2, numel=1 << 20)
    _intact(tiny_tmpfs)


@pytest.mark.integration
def test_the_trainer_warns_early_in_the_monitor_then_stops_with_the_message(tmp_path, monkeypatch):
    from tests.integration.test_native_resume import FAST, train
    from tests.integration.test_native_train import make_run
    from trainers.events import load_all

    run = make_run(tmp_path, **FAST)
    free = {"bytes": 3 * 2**20}  # room for one LoRA + training state (~2 MB), not two: warned, saves still fit
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(2**30, 2**30 - free["bytes"], free["bytes"]))
    train(run, max_steps=2)
    warnings = [e.message for e in load_all(run) if e.kind == "log" and e.level == "warning" and "disk" in e.message]
    assert warnings and warnings[0].startswith("disk nearly full: 3.0 MB free")
    assert (run / "global_step2").is_dir()
    free["bytes"] = 2**20  # now the state (~1.5 MB) no longer fits
    with pytest.raises(DiskFullError, match=r"global_step4 \(need ≈ 1\.\d MB, 1\.0 MB free\); the previous state "
                                            r"\(global_step2\) is intact"):
        train(run, max_steps=4, resume="global_step2")
    assert (run / LATEST_FILE).read_text().strip() == "global_step2"
