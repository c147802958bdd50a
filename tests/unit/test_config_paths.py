"""One rule for relative config paths (paths_check.config_base), used by validate, train and the studio's Start.

diffusion-pipe resolves every relative path against the folder it is launched from (train.py opens
``args.config`` and ``config['dataset']`` as given, utils/dataset.py:477 ``Path(directory_config['path'])``);
dp-studio's own profiles are written relative to their main file's folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import write_pair
from trainers.config import validate_files
from trainers.config.paths_check import config_base
from trainers.runs import RunManager

REPO = Path(__file__).resolve().parents[2]


def _launch_dir_layout(root: Path) -> Path:
    """A diffusion-pipe style checkout: the config names its files relative to ``root`` (the launch folder)."""
    (root / "configs").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "configs" / "ds.toml").write_text("resolutions = [64]\n\n[[directory]]\npath = 'data'\n")
    main = root / "configs" / "main.toml"
    main.write_text("output_dir = 'out'\ndataset = 'configs/ds.toml'\nepochs = 1\nsave_every_n_epochs = 1\n"
                    "checkpoint_every_n_minutes = 60\n\n[model]\ntype = 'chroma'\ndtype = 'float32'\n")
    return main


def test_config_base_is_the_main_folder_unless_the_paths_exist_only_from_the_cwd(tmp_path: Path) -> None:
    main = _launch_dir_layout(tmp_path / "checkout")
    data = {"dataset": "configs/ds.toml", "output_dir": "out"}
    assert config_base(main, data, cwd=tmp_path / "checkout") == tmp_path / "checkout"
    assert config_base(main, data, cwd=tmp_path) == main.parent  # found nowhere: the main file's folder
    profile = write_pair(tmp_path / "profile")
    assert config_base(profile, {"dataset": "ds.toml"}, cwd=tmp_path / "checkout") == profile.parent
    assert config_base(main, {"dataset": "/abs/ds.toml"}, cwd=tmp_path / "checkout") == main.parent


def test_validate_resolves_against_the_launch_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    main = _launch_dir_layout(tmp_path / "checkout")
    path_keys = {"dataset", "directory[0].path"}
    monkeypatch.chdir(tmp_path / "checkout")
    assert [i.format() for i in validate_files(main) if i.key in path_keys] == []
    monkeypatch.chdir(tmp_path)
    errors = [i for i in validate_files(main) if i.key in path_keys]
    assert [i.key for i in errors] == ["dataset"] and errors[0].is_error and str(main.parent) in errors[0].fix


@pytest.fixture
def manager(tmp_path):
    return RunManager([tmp_path / "runs"], trainer_module="tests.fakes.trainer")


def test_start_resolves_against_the_launch_folder_and_runs_there(manager, tmp_path, monkeypatch) -> None:
    main = _launch_dir_layout(tmp_path / "checkout")
    monkeypatch.chdir(tmp_path / "checkout")
    run_id = manager.start(Path("configs/main.toml"), max_steps=2)
    run_dir = manager.run_dir(run_id)
    assert run_dir.parent == tmp_path / "checkout" / "out"  # output_dir from the launch folder, like dataset
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["config_base"] == str(tmp_path / "checkout") and meta["source_main"] == str(main)
    assert (run_dir / "ds.toml").read_text() == (tmp_path / "checkout" / "configs" / "ds.toml").read_text()


def test_start_of_a_profile_still_resolves_against_its_folder(manager, tmp_path, monkeypatch) -> None:
    main = write_pair(tmp_path / "profile", max_steps=2)
    monkeypatch.chdir(tmp_path)
    run_dir = manager.run_dir(manager.start(main, max_steps=2))
    assert run_dir.parent == tmp_path / "profile" / "out"
    assert json.loads((run_dir / "run.json").read_text())["config_base"] == str(tmp_path / "profile")


def test_the_shipped_demo_validates_from_the_repository_root(monkeypatch) -> None:
    # profiles/demo/chroma_demo.toml names 'profiles/demo/chroma_demo_dataset.toml' and 'assets/demo/...'
    if not (REPO / "assets" / "demo" / "chroma-tiny").is_dir():
        pytest.skip("the demo model is not built here")
    monkeypatch.chdir(REPO)
    main = Path("profiles/demo/chroma_demo.toml")
    assert config_base(main, {"dataset": "profiles/demo/chroma_demo_dataset.toml"}) == REPO
    assert [i.format() for i in validate_files(main) if i.is_error] == []


def test_the_config_editor_opens_the_dataset_by_the_same_rule(tmp_path: Path, monkeypatch) -> None:
    from studio.tabs.builder import read_pair

    main = _launch_dir_layout(tmp_path / "checkout")
    monkeypatch.chdir(tmp_path / "checkout")
    texts, pair = read_pair(main)
    assert texts["dataset"].startswith("resolutions = [64]") and pair["bases"] == [str(tmp_path / "checkout")]
