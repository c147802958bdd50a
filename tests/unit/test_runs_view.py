from __future__ import annotations

from pathlib import Path

from PIL import Image

from studio import runs_view
from studio.view import MonitorState


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


def _png(path: Path, colour) -> str:
    Image.new("RGB", (8, 8), colour).save(path)
    return str(path)


def test_sample_grid_is_prompt_by_step(tmp_path):
    red, blue = _png(tmp_path / "r.png", "red"), _png(tmp_path / "b.png", "blue")
    samples = [(0, red, "a cat", 1), (10, blue, "a cat", 1), (10, red, "zxq dog", 2)]
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
    grid = runs_view.cross_run_grid({"run A": [(5, red, "p", 1), (5, red, "p", 2)], "run B": [(9, red, "p", 1)]},
                                    "p", 1)
    assert grid.rows == [("run A", 1), ("run B", 1)] and grid.columns == [5, 9]
    assert set(grid.cells) == {(0, 0), (1, 1)}


def test_overlay_has_one_trace_per_run():
    a, b = MonitorState(steps=[1, 2], losses=[1.0, 0.5]), MonitorState(steps=[1], losses=[2.0])
    fig = runs_view.overlay_figure({"A": a, "B": b}, smoothing=0.0)
    assert [t.name for t in fig.data] == ["A", "B"] and list(fig.data[0].y) == [1.0, 0.5]


def test_saved_folders_in_training_order(tmp_path):
    from trainers.run_library import saved_folders

    for name in ["epoch10", "epoch2", "step7", "epochX", "global_step3", "samples", "dp/20260101_00-00-00/epoch4"]:
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "adapter_model.safetensors").write_bytes(b"")
    (tmp_path / "epoch3").mkdir()  # nothing saved inside
    assert saved_folders(tmp_path) == ["epoch2", "epoch10", "step7"]
    assert saved_folders(tmp_path, {"dp_run_dir": "dp/20260101_00-00-00"}) == ["dp/20260101_00-00-00/epoch4"]
