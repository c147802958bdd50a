"""Real diffusion-pipe-backend runs through RunManager against the fake checkout (tests/fakes/diffusion_pipe):
the supervisor launches ``python train.py --deepspeed --config X`` and turns its output into events."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO
from trainers.events import load_all
from trainers.runs import RunManager

FAKE = Path(__file__).resolve().parent.parent / "fakes" / "diffusion_pipe"
KEY = "wandb-sekrit-0123456789"


@pytest.fixture(autouse=True)
def fake_launcher(monkeypatch):
    monkeypatch.setenv("DP_STUDIO_DEEPSPEED_CMD", sys.executable)  # python train.py instead of deepspeed
    monkeypatch.setenv("FAKE_DP_STEP_S", "0.03")
    monkeypatch.delenv("FAKE_DP_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


@pytest.fixture
def manager(tmp_path):
    return RunManager([tmp_path / "runs"])


def profile(folder: Path, *, epochs: int = 2, extra: str = "", checkout: Path = FAKE) -> Path:
    """Main + dataset TOML with paths relative to the profile folder (3 images = 3 steps per epoch)."""
    (folder / "images").mkdir(parents=True)
    for i in range(3):
        (folder / "images" / f"img{i}.png").write_bytes(b"png")
        (folder / "images" / f"img{i}.txt").write_text("a photo")
    (folder / "ds.toml").write_text("resolutions = [64]\n\n[[directory]]\npath = 'images'\n")
    (folder / "main.toml").write_text(
        f"# comment kept\noutput_dir = 'out'\ndataset = 'ds.toml'\nepochs = {epochs}\nsave_every_n_epochs = 1\n"
        f"warmup_steps = 3\n{extra}\n[model]\ntype = 'chroma'\ndtype = 'bfloat16'\n"
        "diffusers_path = 'models/flux'\n\n[adapter]\ntype = 'lora'\nrank = 4\n\n"
        "[optimizer]\ntype = 'adamw_optimi'\nlr = 2e-4\n\n"
        f"[studio]\nbackend = 'diffusion-pipe'\ndiffusion_pipe_path = '{checkout}'\n")
    return folder / "main.toml"


def wait_for(check, timeout_s: float = 10.0) -> None:
    deadline = time.time() + timeout_s
    while not check():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_a_run_goes_to_completion_with_lr_epochs_and_checkpoints(manager, tmp_path):
    run_id = manager.start(profile(tmp_path / "p"), backend="diffusion-pipe")
    events = list(manager.events(run_id))
    run_dir = manager.run_dir(run_id)
    steps = [ev for ev in events if ev.kind == "step"]
    assert [(s.step, s.epoch) for s in steps] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]
    # warmup_steps = 3 (diffusion-pipe train.py:858-861): torch LinearLR from lr/3 to lr over 3 steps.
    assert [s.lr for s in steps] == pytest.approx([2e-4 / 3, 2e-4 * 5 / 9, 2e-4 * 7 / 9, 2e-4, 2e-4, 2e-4], rel=1e-5)
    assert steps[-1].total_steps == 6 and steps[0].it_per_s == pytest.approx(1 / 0.03)
    meta = json.loads((run_dir / "run.json").read_text())
    dp_run = meta["dp_run_dir"]
    assert dp_run.startswith("dp/") and (run_dir / dp_run / "epoch2" / "adapter_model.safetensors").is_file()
    saves = [(c.path, c.what) for c in events if c.kind == "checkpoint"]
    assert saves == [(f"{dp_run}/epoch1", "lora"), (f"{dp_run}/epoch2", "lora"), (f"{dp_run}/global_step6", "state")]
    assert [ev.kind for ev in events].count("finished") == 1 and events[-1].kind == "finished"
    assert (events[-1].reason, events[-1].step, events[-1].epoch) == ("completed", 6, 2)
    # Each saved LoRA's keys were checked (no transformer_path here: against the released model's shapes).
    checks = [ev for ev in events if ev.kind == "log" and "key check" in ev.message]
    assert [(ev.level, ev.message.split(" key check: ")[0]) for ev in checks] == [("info", "epoch1"),
                                                                                ("info", "epoch2")]
    assert "✓ every key fits the model" in checks[0].message and "released Chroma" in checks[0].message
    assert any(ev.kind == "phase" and ev.phase == "caching" for ev in events)
    log = (run_dir / "stdout.log").read_bytes()
    assert b"steps: 1 loss:" in log and b"TRAINING COMPLETE!" in log and b"\r" in log  # raw, tqdm's \r kept
    launch = tomllib.loads((run_dir / ".launch" / "main.toml").read_text())
    assert launch["output_dir"] == str(run_dir / "dp") and Path(launch["model"]["diffusers_path"]).is_absolute()
    wait_for(lambda: manager.info(run_id).status == "completed")


def test_eval_losses_are_read_from_tensorboard_while_the_run_goes_on(manager, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_DP_STEP_S", "0.25")
    folder = tmp_path / "p"
    main = profile(folder, extra="eval_every_n_epochs = 1\neval_datasets = [{name = 'held', config = 'eval.toml'}]")
    (folder / "held").mkdir()
    (folder / "held" / "h.png").write_bytes(b"png")
    (folder / "held" / "h.txt").write_text("a held-out photo")
    (folder / "eval.toml").write_text("resolutions = [64]\n\n[[directory]]\npath = 'held'\n")
    run_id = manager.start(main, backend="diffusion-pipe")
    events = list(manager.events(run_id))
    evals = [ev for ev in events if ev.kind == "eval"]
    # Before the first step, then after each epoch (3 steps each), at the epoch that ended (train.py:908, :947).
    assert [(e.name, e.step, e.epoch) for e in evals] == [("held", 0, 1), ("held", 3, 1), ("held", 6, 2)]
    assert len(evals[0].quantiles) == 9 and evals[0].loss == pytest.approx(0.35)  # the fake's mean at x = 0
    order = [(ev.kind, getattr(ev, "step", None)) for ev in events]
    assert order.index(("eval", 0)) < order.index(("step", 4))  # live, not only once the run ended
    assert events[-1].kind == "finished"


def test_regenerate_cache_in_the_config_reaches_diffusion_pipe_as_its_flag(manager, tmp_path):
    main = profile(tmp_path / "p", epochs=1)

    def stdout_of_a_run() -> str:
        run_id = manager.start(main, backend="diffusion-pipe")
        assert list(manager.events(run_id))[-1].kind == "finished"
        return (manager.run_dir(run_id) / "stdout.log").read_text()

    assert "[CACHE] Storing new fingerprint" in stdout_of_a_run()  # first run: nothing cached yet
    assert "[CACHE] Storing new fingerprint" not in stdout_of_a_run()  # second: all from the cache
    main.write_text(main.read_text().replace("\nepochs = 1\n", "\nepochs = 1\nregenerate_cache = true\n"))
    assert "[CACHE] Storing new fingerprint" in stdout_of_a_run()  # cleared, as --regenerate_cache does


def test_more_than_three_resolutions_need_the_studio_key(manager, tmp_path):
    main = profile(tmp_path / "p", epochs=1)
    (tmp_path / "p" / "ds.toml").write_text("resolutions = [64, 128, 192, 256]\n\n[[directory]]\npath = 'images'\n")
    refused = list(manager.events(manager.start(main, backend="diffusion-pipe")))
    assert refused[-1].kind == "failed" and "[studio] i_know_what_i_am_doing = true" in refused[-1].error
    with main.open("a") as f:
        f.write("i_know_what_i_am_doing = true\n")  # the [studio] table is last
    done = list(manager.events(manager.start(main, backend="diffusion-pipe")))
    assert done[-1].kind == "finished" and max(ev.step for ev in done if ev.kind == "step") == 12  # 4 x 3 images


def test_a_saved_lora_whose_keys_do_not_fit_is_a_warning_in_the_log(manager, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_DP_MODE", "bad_lora")
    run_id = manager.start(profile(tmp_path / "p", epochs=1), backend="diffusion-pipe")
    events = list(manager.events(run_id))
    checks = [ev for ev in events if ev.kind == "log" and "key check" in ev.message]
    assert len(checks) == 1 and checks[0].level == "warning"
    assert "1 unmatched keys" in checks[0].message and "double_blocks.0.img_attn.qkvv" in checks[0].message
    assert "dp-studio check-lora" in checks[0].message
    assert events[-1].kind == "finished" and events[-1].reason == "completed"  # a warning, not a failure


def test_stop_touches_save_quit_and_ends_as_stopped(manager, tmp_path):
    run_id = manager.start(profile(tmp_path / "p", epochs=500), backend="diffusion-pipe")
    sent = set()
    events = []
    for ev in manager.events(run_id):
        events.append(ev)
        if ev.kind == "step" and ev.step >= 2 and "save" not in sent:
            manager.send(run_id, "save")
            manager.send(run_id, "sample")
            sent.add("save")
        if ev.kind == "checkpoint" and ev.what == "state" and "stop" not in sent:  # the save was honoured
            manager.send(run_id, "stop")
            sent.add("stop")
    last = events[-1]
    assert last.kind == "finished" and last.reason == "stopped" and last.step < 100
    logs = [ev.message for ev in events if ev.kind == "log"]
    assert any("save_quit" in m and "NOT write a LoRA" in m for m in logs)
    assert any(m.startswith("save requested") and "not a LoRA" in m for m in logs)
    assert any("cannot render samples" in m for m in logs)
    assert "Manually quitting" in logs
    states = [ev for ev in events if ev.kind == "checkpoint" and ev.what == "state"]
    assert len(states) == 2 and states[-1].step == last.step  # the save, then the save_quit checkpoint
    run_dir = manager.run_dir(run_id)
    assert not (run_dir / json.loads((run_dir / "run.json").read_text())["dp_run_dir"] / "save_quit").exists()
    wait_for(lambda: manager.info(run_id).status == "stopped")


def test_a_crash_ends_as_failed_with_the_exception(manager, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_DP_MODE", "traceback")
    run_id = manager.start(profile(tmp_path / "p"), backend="diffusion-pipe")
    events = list(manager.events(run_id))
    assert events[-1].kind == "failed" and sum(ev.kind in ("failed", "finished") for ev in events) == 1
    assert events[-1].error == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (fake)"
    assert "Traceback (most recent call last):" in events[-1].detail
    wait_for(lambda: manager.info(run_id).status == "failed")


def test_a_broken_checkout_fails_before_launch_with_the_fix(manager, tmp_path):
    empty = tmp_path / "not-a-checkout"
    empty.mkdir()
    run_id = manager.start(profile(tmp_path / "p", checkout=empty), backend="diffusion-pipe")
    events = list(manager.events(run_id))
    assert events[-1].kind == "failed"
    assert "train.py" in events[-1].error and "git submodule update --init --recursive" in events[-1].error


def test_a_trainer_ignoring_save_quit_is_terminated_after_the_grace_period(manager, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_DP_MODE", "hang")
    monkeypatch.setenv("DP_STUDIO_STOP_GRACE_S", "0.5")
    run_id = manager.start(profile(tmp_path / "p", epochs=5000), backend="diffusion-pipe")
    for ev in manager.events(run_id):
        if ev.kind == "step" and ev.step == 3:
            manager.send(run_id, "stop")
        last = ev
    assert last.kind == "finished" and last.reason == "stopped"
    run_dir = manager.run_dir(run_id)
    logs = [ev.message for ev in manager.events(run_id, follow=False) if ev.kind == "log"]
    assert any("did not quit within 0.5 s" in m for m in logs)
    wait_for(lambda: manager.info(run_id).status == "stopped")
    assert not manager.info(run_id).live and (run_dir / "stdout.log").is_file()


def test_the_wandb_key_reaches_the_trainer_but_no_file(manager, tmp_path, monkeypatch):
    from trainers.config.secrets import SecretStore

    SecretStore().set("wandb_api_key", KEY)
    monkeypatch.setenv("FAKE_DP_MODE", "leak")
    extra = "\n[monitoring]\nenable_wandb = true\nwandb_tracker_name = 't'\nwandb_run_name = 'r'\n"
    main = profile(tmp_path / "p", epochs=1, extra="")
    main.write_text(main.read_text().replace("[studio]", extra.lstrip() + "\n[studio]"))
    run_id = manager.start(main, backend="diffusion-pipe")
    events = list(manager.events(run_id))
    assert events[-1].kind == "finished"
    run_dir = manager.run_dir(run_id)
    assert "wandb: using key ***" in (run_dir / "stdout.log").read_text()  # the child had it; the log masks it
    assert tomllib.loads((run_dir / ".launch" / "main.toml").read_text())["monitoring"]["wandb_api_key"] == ""
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_a_stopped_run_resumes_in_its_diffusion_pipe_folder(manager, tmp_path, monkeypatch):
    main = profile(tmp_path / "p", epochs=4)
    monkeypatch.setenv("FAKE_DP_STEP_S", "0.15")  # slow enough for the stop to land before the end
    first = manager.start(main, backend="diffusion-pipe")
    for ev in manager.events(first):
        if ev.kind == "step" and ev.step == 2:
            manager.send(first, "stop")
    wait_for(lambda: manager.info(first).status == "stopped")
    old = manager.run_dir(first)
    dp_run = old / json.loads((old / "run.json").read_text())["dp_run_dir"]
    stopped_at = int((dp_run / "latest").read_text().removeprefix("global_step"))
    second = old.parent / "20990101_00-00-00"  # what a "resume" button would prepare
    second.mkdir()
    for name in ("main.toml", "ds.toml"):
        shutil.copy(old / name, second / name)
    meta = {**json.loads((old / "run.json").read_text()), "run_id": second.name, "resume": first}
    (second / "run.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "dp_run_dir"}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "FAKE_DP_STEP_S": "0.03"}
    done = subprocess.run([sys.executable, "-m", "trainers.diffusion_pipe", "--run-dir", str(second)],
                          cwd=main.parent, env=env, timeout=60, capture_output=True)
    assert done.returncode == 0, done.stderr
    events = load_all(second)
    steps = [ev for ev in events if ev.kind == "step"]
    assert steps[0].step == stopped_at + 1 and steps[-1].step == 12
    assert any(ev.kind == "log" and ev.message.startswith("Resuming training from checkpoint") for ev in events)
    saves = [ev.path for ev in events if ev.kind == "checkpoint" and ev.what == "lora"]
    assert saves == [f"../{first}/dp/{dp_run.name}/epoch{n}" for n in (2, 3, 4)]  # epoch1 was the first run's
    assert events[-1].kind == "finished" and events[-1].reason == "completed"


def test_killing_the_supervisor_ends_diffusion_pipe_too(manager, tmp_path):
    import psutil

    run_id = manager.start(profile(tmp_path / "p", epochs=5000), backend="diffusion-pipe")
    for ev in manager.events(run_id):
        if ev.kind == "step":
            break
    launch_config = str(manager.run_dir(run_id) / ".launch" / "main.toml")

    def trainers_alive() -> list:
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            if launch_config in (proc.info["cmdline"] or []) and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc)
        return found

    assert trainers_alive()
    manager.kill(run_id)
    wait_for(lambda: not trainers_alive())
    events = list(manager.events(run_id, follow=False))
    assert events[-1].kind == "failed" and sum(ev.kind in ("failed", "finished") for ev in events) == 1
