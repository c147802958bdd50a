"""What the native trainer reads from a run folder: run.json, the config copies, overrides, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainers.native.settings import check_supported, load_run

MAIN = """output_dir = 'out'
dataset = 'ds.toml'
epochs = 3
max_steps = 50
micro_batch_size_per_gpu = 2
gradient_accumulation_steps = 2
save_every_n_epochs = 1
[model]
type = 'chroma'
dtype = 'float32'
[studio]
sample_prompts = ['a', 'b']
sample_every_n_steps = 5
"""


def _run(tmp_path: Path, main: str = MAIN, **run_extra) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "main.toml").write_text(main, encoding="utf-8")
    (run_dir / "ds.toml").write_text("resolutions = [[64, 256]]\n[[directory]]\npath = 'x'\n", encoding="utf-8")
    (run_dir / "run.json").write_text(json.dumps({"main_config": "main.toml", "dataset_config": "ds.toml",
                                                  **run_extra}), encoding="utf-8")
    return run_dir


def test_reads_configs_and_studio_defaults(tmp_path: Path):
    s = load_run(_run(tmp_path))
    assert (s.epochs, s.max_steps, s.global_batch, s.grad_clip, s.lr_scheduler) == (3, 50, 4, 1.0, "constant")
    assert s.dataset_path.name == "ds.toml" and s.dataset["resolutions"] == [[64, 256]]
    assert s.studio.prompts == ("a", "b") and s.studio.every_n_steps == 5
    assert (s.studio.width, s.studio.height) == (128, 128)  # the first resolution's area
    assert s.seed == 42


def test_max_steps_precedence(tmp_path: Path):
    run_dir = _run(tmp_path, max_steps=7)
    assert load_run(run_dir).max_steps == 7
    assert load_run(run_dir, max_steps_override=3).max_steps == 3


def test_dataset_resolves_against_cwd_without_a_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    run_dir = _run(tmp_path)
    (run_dir / "run.json").write_text(json.dumps({"main_config": "main.toml"}), encoding="utf-8")
    monkeypatch.chdir(run_dir)
    assert load_run(run_dir).dataset_path == run_dir / "ds.toml"


def test_a_save_rule_is_mandatory(tmp_path: Path):
    with pytest.raises(ValueError, match="save_every_n"):
        load_run(_run(tmp_path, MAIN.replace("save_every_n_epochs = 1\n", "")))


def test_the_trainer_refuses_what_the_validator_rejects():
    chroma = {"model": {"type": "chroma"}}
    with pytest.raises(ValueError, match="blocks_to_swap"):
        check_supported({**chroma, "blocks_to_swap": 4}, {})
    with pytest.raises(ValueError, match="control_path"):
        check_supported(chroma, {"directory": [{"path": "x", "control_path": "y"}]})
    with pytest.raises(ValueError, match="chroma, sdxl, flux, lumina_2, hidream, sd3 and qwen_image only"):
        check_supported({"model": {"type": "wan"}}, {})
    honoured = {**chroma, "activation_checkpointing": True, "resume_from_checkpoint": True,
                "adapter": {"type": "lora", "init_from_existing": "/x/epoch5"}, "monitoring": {"enable_wandb": True}}
    assert check_supported(honoured, {"directory": [{"path": "x", "mask_path": "m"}]}) == []
