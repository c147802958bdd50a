"""The ``dp-studio`` command line: every job of the page has a sub-command with --help and the documented exit
codes (runs, export, samples, dataset, doctor, demo)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import write_pair
from tests.fixtures.datasets import flawed_dataset
from trainers import cli, cli_doctor, run_library
from trainers.runs import RunManager

COMMANDS = ("serve", "validate", "train", "runs", "export", "samples", "dataset", "doctor", "profile", "demo")


def test_help_lists_every_command_and_the_exit_codes():
    text = cli.build_parser().format_help()
    for name in COMMANDS:
        assert f"    {name} " in text or f"    {name}\n" in text, name
    assert "exit codes:" in text and "  2  usage error" in text


@pytest.mark.parametrize("argv", [[c, "--help"] for c in COMMANDS] + [["runs", "show", "--help"]])
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(argv)
    assert done.value.code == 0
    assert "usage: dp-studio" in capsys.readouterr().out


def _finished_run(tmp_path: Path) -> tuple[RunManager, str]:
    manager = RunManager([tmp_path / "runs"], trainer_module="tests.fakes.trainer")
    run_id = manager.start(write_pair(tmp_path / "p", max_steps=3), name="cli run")
    list(manager.events(run_id))
    for _ in range(200):
        if not manager.info(run_id).live:
            break
        time.sleep(0.05)
    saved = manager.run_dir(run_id) / "epoch1"
    saved.mkdir(exist_ok=True)
    (saved / "adapter_model.safetensors").write_bytes(b"")
    return manager, run_id


def test_runs_list_show_and_delete(tmp_path, capsys):
    manager, run_id = _finished_run(tmp_path)
    run_dir = manager.run_dir(run_id)
    root = str(run_dir.parent)
    assert cli.main(["runs", "list", "--root", root]) == 0
    assert f"{run_id}\tcompleted\tnative\tcli run" in capsys.readouterr().out
    assert cli.main(["runs", "show", run_id, "--root", root]) == 0
    shown = capsys.readouterr().out
    assert "progress: step 3, epoch 1" in shown and "saved:    epoch1" in shown and "ended:    completed" in shown
    assert cli.main(["runs", "delete", run_id, "--confirm", "yes", "--root", root]) == 1
    assert "type the run id" in capsys.readouterr().err
    assert cli.main(["runs", "delete", run_id, "--confirm", run_id, "--root", root]) == 0
    assert not run_dir.exists()
    assert cli.main(["runs", "show", "../etc", "--root", root]) == 1  # refused by safe_paths, not a traceback
    assert cli.main(["runs", "list", "--root", "/"]) == 1  # not an output folder: said, not a traceback
    assert "error: " in capsys.readouterr().err


def test_export_copies_the_file_and_writes_the_comfyui_workflow(tmp_path, capsys, monkeypatch):
    manager, run_id = _finished_run(tmp_path)
    made = manager.run_dir(run_id) / "exports" / f"{run_id}_epoch1_comfyui.safetensors"

    def fake_export(info, folder, layout, python=None):  # the conversion itself is tested in test_native_export
        made.parent.mkdir(exist_ok=True)
        made.write_bytes(b"lora")
        return made

    monkeypatch.setattr(run_library, "export_lora", fake_export)
    (manager.run_dir(run_id) / manager.info(run_id).meta["main_config"]).write_text(
        "[model]\ntype = 'chroma'\ntransformer_path = '/models/chroma-v50.safetensors'\n"
        "[studio]\nsample_prompts = ['a zxq fox']\nsample_seeds = [7]\n", encoding="utf-8")
    out = tmp_path / "comfy" / "loras"
    out.mkdir(parents=True)
    code = cli.main(["export", run_id, "epoch1", "--format", "comfyui", "--out", str(out), "--vae-name", "flux.sft",
                     "--root", str(manager.run_dir(run_id).parent)])
    printed = capsys.readouterr().out.splitlines()
    assert code == 0
    assert (out / made.name).read_bytes() == b"lora" and printed[-2] == str(out / made.name)
    workflow = json.loads(Path(printed[-1]).read_text(encoding="utf-8"))
    by_class = {node["class_type"]: node["inputs"] for node in workflow.values()}
    assert by_class["LoraLoaderModelOnly"]["lora_name"] == made.name
    assert by_class["UNETLoader"]["unet_name"] == "chroma-v50.safetensors"
    assert by_class["VAELoader"]["vae_name"] == "flux.sft" and by_class["KSampler"]["seed"] == 7


def test_export_of_a_folder_that_is_not_saved_fails_with_the_reason(tmp_path, capsys):
    manager, run_id = _finished_run(tmp_path)
    assert cli.main(["export", run_id, "samples", "--root", str(manager.run_dir(run_id).parent)]) == 1
    assert "not a saved epoch/step folder" in capsys.readouterr().err


def test_dataset_scan_as_json_and_its_exit_code(tmp_path, capsys):
    folder = flawed_dataset(tmp_path / "data")
    toml = tmp_path / "ds.toml"
    toml.write_text(f"resolutions = [64]\n\n[[directory]]\npath = '{folder}'\n", encoding="utf-8")
    code = cli.main(["dataset", str(toml), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["images"] and report["buckets"] and report["problems"]
    assert code == 1  # the flawed dataset has problems
    assert cli.main(["dataset", str(tmp_path / "missing")]) == 2


def test_doctor_names_a_broken_checkout_with_its_fix(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli_doctor, "gpu_findings", lambda: [cli_doctor.Finding("ok", "GPU 0: test")])
    monkeypatch.setenv("DP_STUDIO_DIFFUSION_PIPE", str(tmp_path / "dp"))
    (tmp_path / "dp").mkdir()
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "has no train.py" in out and "fix: " in out and "problem(s)" in out
    monkeypatch.delenv("DP_STUDIO_DIFFUSION_PIPE")
    found = cli_doctor.checkout_findings(None)
    assert [f.level for f in found] == ["warning"] and "git clone" in found[0].fix


def test_demo_prepare_only_writes_the_profile(capsys):
    assert cli.main(["demo", "--prepare-only"]) == 0
    path = Path(capsys.readouterr().out.split("demo profile ready: ")[1].strip())
    assert path.is_file() and path.suffix == ".toml"


def test_samples_shows_progress_and_reports_the_renderers_reason(tmp_path, capsys, monkeypatch):
    manager, run_id = _finished_run(tmp_path)
    root = str(manager.run_dir(run_id).parent)
    seen = {}

    def fake_render(info, folder, prompts=(), seeds=(), python=None):  # the sidecar is tested in test_run_library
        seen.update(folder=folder, prompts=list(prompts), seeds=list(seeds))
        yield "rendering 1/2"
        yield "rendering 2/2"

    monkeypatch.setattr(run_library, "render_samples", fake_render)
    code = cli.main(["samples", run_id, "epoch1", "--prompt", "a zxq cat", "--seed", "7", "--root", root])
    out = capsys.readouterr()
    assert code == 0 and seen == {"folder": "epoch1", "prompts": ["a zxq cat"], "seeds": [7]}
    assert "samples of epoch1: 2line" in out.out  # the bar counted both lines
    assert f"samples written to {manager.run_dir(run_id) / 'samples'}" in out.out

    def failing(*args, **kwargs):
        raise run_library.RunError("no GPU memory left: close other programs")
        yield  # a generator, like the real one

    monkeypatch.setattr(run_library, "render_samples", failing)
    assert cli.main(["samples", run_id, "epoch1", "--root", root]) == 1
    assert "no GPU memory left" in capsys.readouterr().err


def test_demo_trains_the_prepared_profile(capsys, monkeypatch):
    from trainers import train_cli

    started = {}
    monkeypatch.setattr(train_cli, "train", lambda args: started.update(vars(args)) or 0)
    assert cli.main(["demo", "--max-steps", "5"]) == 0
    assert started["max_steps"] == 5 and started["name"] == "demo" and Path(started["main"]).is_file()
