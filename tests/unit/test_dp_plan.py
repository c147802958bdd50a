"""Before launch: the supervisor's plan (checkout, launch copy, command, schedule, warnings), resume targets, and
the import boundary (the diffusion-pipe backend never imports torch)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from trainers.diffusion_pipe.launch import LaunchError
from trainers.diffusion_pipe.supervise import prepare, resume_folder

FAKE = REPO / "tests" / "fakes" / "diffusion_pipe"


def run_folder(tmp_path: Path, extra: str = "", meta: dict | None = None) -> tuple[Path, dict]:
    source = tmp_path / "profile"
    source.mkdir()
    (source / "main.toml").write_text(
        f"output_dir = 'out'\ndataset = 'ds.toml'\nepochs = 7\nsave_every_n_epochs = 1\n{extra}\n"
        "[model]\ntype = 'chroma'\ndtype = 'bfloat16'\n\n[optimizer]\ntype = 'adamw_optimi'\nlr = 4e-5\n\n"
        f"[studio]\nbackend = 'diffusion-pipe'\ndiffusion_pipe_path = '{FAKE}'\ndp_num_gpus = 2\n")
    (source / "ds.toml").write_text("resolutions = [64]\n\n[[directory]]\npath = 'images'\n")
    run_dir = source / "out" / "20260101_00-00-00"
    run_dir.mkdir(parents=True)
    for name in ("main.toml", "ds.toml"):
        (run_dir / name).write_bytes((source / name).read_bytes())
    data = {"run_id": run_dir.name, "backend": "diffusion-pipe", "main_config": "main.toml",
            "dataset_config": "ds.toml", "source_main": str(source / "main.toml"), "max_steps": None, **(meta or {})}
    (run_dir / "run.json").write_text(json.dumps(data))
    return run_dir, data


def test_plan_uses_the_launch_copy_the_checkout_and_the_config_schedule(tmp_path, monkeypatch):
    monkeypatch.setenv("DP_STUDIO_DEEPSPEED_CMD", "/opt/dp/bin/deepspeed")
    run_dir, meta = run_folder(tmp_path)
    plan = prepare(run_dir, meta)
    assert plan.spec.argv == ["/opt/dp/bin/deepspeed", "--num_gpus=2", "train.py", "--deepspeed", "--config",
                              str(run_dir / ".launch" / "main.toml")]
    assert plan.spec.cwd == FAKE and plan.copy.output_dir == run_dir / "dp"
    assert (plan.schedule.epochs, plan.schedule.max_steps, plan.schedule.initial_lr) == (7, None, 4e-5)
    assert plan.schedule.save_kind == "model"  # no [adapter]: a full fine-tune
    assert plan.dp_run_dir is None and plan.secrets == []


def test_regenerate_cache_and_the_studio_key_become_train_py_flags(tmp_path, monkeypatch):
    # train.py:305-308 ignores the config key (argparse's store_true flag is never None), so the launch passes it.
    monkeypatch.setenv("DP_STUDIO_DEEPSPEED_CMD", "/opt/dp/bin/deepspeed")
    run_dir, meta = run_folder(tmp_path, extra="regenerate_cache = true")
    with (run_dir / "main.toml").open("a") as f:
        f.write("i_know_what_i_am_doing = true\n")  # the [studio] table is last
    argv = prepare(run_dir, meta).spec.argv
    assert argv[-2:] == ["--regenerate_cache", "--i_know_what_i_am_doing"]
    (tmp_path / "plain").mkdir()
    plain, meta = run_folder(tmp_path / "plain", extra="regenerate_cache = false")
    assert not {"--regenerate_cache", "--i_know_what_i_am_doing"} & set(prepare(plain, meta).spec.argv)


def test_wandb_without_a_stored_key_is_a_warning_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("DP_STUDIO_DEEPSPEED_CMD", "/opt/dp/bin/deepspeed")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run_dir, meta = run_folder(tmp_path, extra="\n[monitoring]\nenable_wandb = true\n")
    plan = prepare(run_dir, meta)
    assert any("no API key is stored" in w and "WANDB_API_KEY" in w for w in plan.warnings)


def test_a_missing_checkout_is_refused_with_the_fix(tmp_path, monkeypatch):
    run_dir, meta = run_folder(tmp_path)
    (run_dir / "main.toml").write_text((run_dir / "main.toml").read_text().replace(str(FAKE), str(tmp_path / "x")))
    with pytest.raises(LaunchError, match="does not exist"):
        prepare(run_dir, meta)


def test_resume_targets(tmp_path):
    runs = tmp_path / "out"
    old = runs / "20250101_00-00-00"
    dp = old / "dp" / "20250101_00-00-01"
    dp.mkdir(parents=True)
    (old / "run.json").write_text(json.dumps({"dp_run_dir": "dp/20250101_00-00-01"}))
    me = runs / "20260101_00-00-00"
    assert resume_folder(None, me) is None
    with pytest.raises(LaunchError, match="no DeepSpeed checkpoint"):
        resume_folder(old.name, me)
    (dp / "latest").write_text("global_step10")
    assert resume_folder(old.name, me) == dp.resolve()  # a studio run folder: its diffusion-pipe folder
    assert resume_folder(str(dp), me) == dp.resolve()  # or the diffusion-pipe folder itself
    with pytest.raises(LaunchError, match="which run"):
        resume_folder(True, me)


def test_resuming_points_output_dir_at_the_old_folder_and_names_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DP_STUDIO_DEEPSPEED_CMD", sys.executable)
    old = tmp_path / "old" / "dp" / "20250101_00-00-01"
    old.mkdir(parents=True)
    (old / "latest").write_text("global_step4")
    run_dir, meta = run_folder(tmp_path, meta={"resume": str(old)})
    plan = prepare(run_dir, meta)
    assert plan.spec.argv[-2:] == ["--resume_from_checkpoint", old.name]
    assert plan.copy.output_dir == old.parent and plan.dp_run_dir == old


def test_the_backend_never_imports_torch():
    modules = ("trainers.diffusion_pipe.__main__", "trainers.diffusion_pipe.discover",
               "tensorboard.backend.event_processing.event_accumulator")
    code = (f"import sys, {', '.join(modules)}; "
            "bad = [m for m in ('torch', 'diffusers', 'peft') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
