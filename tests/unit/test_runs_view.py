from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from studio import runs_view
from studio.view import EvalPoint, MonitorState, Sample


def test_flatten_and_diff_name_every_changed_key():
    a = {"epochs": 10, "model": {"type": "chroma", "dtype": "bfloat16"},
         "dataset_config": {"directory": [{"path": "/a", "num_repeats": 1}]}}
    b = {"epochs": 20, "model": {"type": "chroma"}, "optimizer": {"lr": 1e-4},
         "dataset_config": {"directory": [{"path": "/b", "num_repeats": 1}]}}
    assert runs_view.flatten(a)["dataset_config.directory[0].path"] == "/a"
    assert runs_view.config_diff(a, b) == [
        ("dataset_config.directory[0].path", "/a", "/b"), ("epochs", "10", "20"),
        ("model.dtype", "bfloat16", "—"), ("optimizer.lr", "—", "0.0001")]
    assert runs_view.config_diff(a, a) == []


def test_the_diff_note_says_when_two_configs_are_identical():
    """Issue 11 item 10: two identical configs showed an empty table and nothing else."""
    assert "identical" in runs_view.diff_note("r1", "r2", [])
    assert "itself" in runs_view.diff_note("r1", "r1", [])
    rows = runs_view.config_diff({"epochs": 1, "lr": 1}, {"epochs": 2, "lr": 2})
    assert runs_view.diff_note("r1", "r2", rows) == "2 keys differ between **r1** (A) and **r2** (B)."


def _png(path: Path, colour) -> str:
    Image.new("RGB", (8, 8), colour).save(path)
    return str(path)


def test_sample_grid_is_prompt_by_step(tmp_path):
    red, blue = _png(tmp_path / "r.png", "red"), _png(tmp_path / "b.png", "blue")
    samples = [Sample(0, red, "a cat", 1), Sample(10, blue, "a cat", 1), Sample(10, red, "zxq dog", 2)]
    grid = runs_view.sample_grid(samples)
    assert grid.rows == [("a cat", 1), ("zxq dog", 2)] and grid.columns == [0, 10]
    assert grid.cells == {(0, 0): red, (0, 1): blue, (1, 1): red}
    only = runs_view.sample_grid(samples, prompt="zxq dog")
    assert only.rows == [("zxq dog", 2)] and only.columns == [10]
    image = runs_view.compose_grid(grid, cell=20)
    assert image.size == (runs_view.LABEL_W + 40, runs_view.HEADER_H + 40)
    assert image.getpixel((runs_view.LABEL_W + 25, runs_view.HEADER_H + 5)) == (0, 0, 255)
    assert image.getpixel((runs_view.LABEL_W + 5, runs_view.HEADER_H + 25)) == (255, 255, 255)  # no sample


def test_cross_run_grid_matches_prompt_and_seed(tmp_path):
    red = _png(tmp_path / "r.png", "red")
    grid = runs_view.cross_run_grid({"run A": [Sample(5, red, "p", 1), Sample(5, red, "p", 2)],
                                     "run B": [Sample(9, red, "p", 1)]}, "p", 1)
    assert grid.rows == [("run A", 1), ("run B", 1)] and grid.columns == [5, 9]
    assert set(grid.cells) == {(0, 0), (1, 1)}


def test_overlay_has_one_trace_per_run():
    a, b = MonitorState(steps=[1, 2], losses=[1.0, 0.5]), MonitorState(steps=[1], losses=[2.0])
    fig = runs_view.overlay_figure({"A": a, "B": b}, smoothing=0.0)
    assert [t.name for t in fig.data] == ["A", "B"] and list(fig.data[0].y) == [1.0, 0.5]


def test_overlay_adds_each_runs_eval_curves_in_its_colour():
    a = MonitorState(steps=[1, 2], losses=[1.0, 0.5],
                     evals={"val": [EvalPoint(0, 0.9, {}), EvalPoint(2, 0.6, {"0.5": 0.6})]})
    b = MonitorState(steps=[1], losses=[2.0], evals={"val": [EvalPoint(1, 1.1, {})]})
    fig = runs_view.overlay_figure({"A": a, "B": b}, smoothing=0.0)
    assert [t.name for t in fig.data] == ["A", "A · eval val", "B", "B · eval val"]
    assert list(fig.data[1].x) == [0, 2] and list(fig.data[1].y) == [0.9, 0.6]
    assert fig.data[1].line.color == fig.data[0].line.color != fig.data[2].line.color
    assert fig.data[1].line.dash == "dash"


def test_shared_pairs_put_pairs_of_more_runs_first_and_round_trip():
    per_run = {"A": [Sample(1, "x", "zxq cat", 7), Sample(2, "y", "zxq cat", 7), Sample(1, "z", "dog", 7)],
               "B": [Sample(3, "w", "zxq cat", 7), Sample(3, "v", "cat | hat", 42)]}
    pairs = runs_view.shared_pairs(per_run)
    assert pairs[0] == ("zxq cat · seed 7 · in 2 of 2 runs", runs_view.pair_key("zxq cat", 7))
    assert [runs_view.parse_pair_key(key) for _, key in pairs] == [("zxq cat", 7), ("cat | hat", 42), ("dog", 7)]
    with pytest.raises(ValueError, match="pick one from the list"):
        runs_view.parse_pair_key("no seed here")


def test_sidecar_inputs_are_read_or_rejected_by_name():
    assert runs_view.parse_prompts("  a zxq cat \n\n a dog\n") == ["a zxq cat", "a dog"]
    assert runs_view.parse_prompts(None) == [] and runs_view.parse_seeds("") == []
    assert runs_view.parse_seeds("7, 42 -1") == [7, 42, -1]
    with pytest.raises(ValueError, match="seeds: 'x1' is not a whole number"):
        runs_view.parse_seeds("7, x1")


def test_resume_choices_spell_out_the_kind():
    from trainers.checkpoints import ResumePoint

    state = ResumePoint("global_step12", "state", 12, 2, 0.0, "step 12, epoch 2: full training state")
    lora = ResumePoint("epoch2", "lora", 12, 2, 0.0, "epoch2: LoRA weights only")
    assert runs_view.resume_choice(state) == ("[full state] step 12, epoch 2: full training state", "global_step12")
    assert runs_view.resume_choice(lora)[0].startswith("[LoRA only] ")


def test_saved_folders_in_training_order(tmp_path):
    from trainers.run_library import saved_folders

    for name in ["epoch10", "epoch2", "step7", "epochX", "global_step3", "samples", "dp/20260101_00-00-00/epoch4"]:
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "adapter_model.safetensors").write_bytes(b"")
    (tmp_path / "epoch3").mkdir()  # nothing saved inside
    assert saved_folders(tmp_path) == ["epoch2", "epoch10", "step7"]
    assert saved_folders(tmp_path, {"dp_run_dir": "dp/20260101_00-00-00"}) == ["dp/20260101_00-00-00/epoch4"]
