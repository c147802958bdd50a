"""``dp-studio validate`` and ``dp-studio profile``: exit codes 0/1/2 and output lines."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trainers.cli import main

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "configs"
PROFILE_512 = REPO / "profiles" / "e6ai_512" / "e6ai_512.toml"
LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<key>[^:]+): (?P<message>.+) \(fix: .+\)$")


@pytest.fixture(autouse=True)
def studio_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("DP_STUDIO_HOME", str(home))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return home


def test_validate_valid_file_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(GOLDEN / "base_main.toml")]) == 0
    assert capsys.readouterr().out.strip().endswith("valid")


def test_validate_profile_with_skip_path_checks_exits_0_and_lists_fill_ins(capsys) -> None:
    assert main(["validate", str(PROFILE_512), "--skip-path-checks"]) == 0
    out = capsys.readouterr().out
    assert "model.diffusers_path: warning: not filled in yet" in out


def test_validate_invalid_file_exits_1_with_one_line_per_problem(tmp_path: Path, capsys) -> None:
    main_text = (GOLDEN / "base_main.toml").read_text().replace("epochs = 10", "epochs = '10'")
    main_text = main_text.replace("rank = 16", "rank = 16\nalpha = 16")
    (tmp_path / "base_dataset.toml").write_text("resolutions = [512]\n[[directory]]\npath = 'imgs'\n")
    (tmp_path / "imgs").mkdir()
    (tmp_path / "main.toml").write_text(main_text.replace("tree/", str(GOLDEN / "tree") + "/"))
    assert main(["validate", str(tmp_path / "main.toml")]) == 1
    lines = capsys.readouterr().out.strip().split("\n")
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [(m["key"], m["line"]) for m in parsed] == [("adapter.alpha", "24"), ("epochs", "5")]
    assert all(m["file"] == str(tmp_path / "main.toml") for m in parsed)


def test_validate_reports_problems_in_the_dataset_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "main.toml").write_text((GOLDEN / "base_main.toml").read_text())
    (tmp_path / "base_dataset.toml").write_text("resolutions = [1, 2, 3, 4]\n[[directory]]\npath = 'x'\n")
    assert main(["validate", str(tmp_path / "main.toml"), "--skip-path-checks"]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path / 'base_dataset.toml'}:1: resolutions: 4 resolutions" in out


def test_validate_unparseable_file_exits_2_with_line_and_column(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = 10\nmodel = [\n")
    assert main(["validate", str(bad)]) == 2
    assert re.match(rf"^{re.escape(str(bad))}:\d+:\d+: parse error: ", capsys.readouterr().err)
    (tmp_path / "main.toml").write_text((GOLDEN / "base_main.toml").read_text())
    (tmp_path / "base_dataset.toml").write_text("[[directory]\n")
    assert main(["validate", str(tmp_path / "main.toml")]) == 2
    assert "base_dataset.toml:1:" in capsys.readouterr().err


def test_validate_missing_file_exits_2(tmp_path: Path, capsys) -> None:
    assert main(["validate", str(tmp_path / "nope.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_validate_missing_dataset_file_exits_1(tmp_path: Path, capsys) -> None:
    (tmp_path / "main.toml").write_text((GOLDEN / "base_main.toml").read_text())
    assert main(["validate", str(tmp_path / "main.toml"), "--skip-path-checks"]) == 1
    assert ":4: dataset: dataset file not found" in capsys.readouterr().out


def test_validate_num_gpus_flag(tmp_path: Path, capsys) -> None:
    text = (GOLDEN / "base_main.toml").read_text().replace("pipeline_stages = 1", "pipeline_stages = 2")
    (tmp_path / "main.toml").write_text(text)
    (tmp_path / "base_dataset.toml").write_text((GOLDEN / "base_dataset.toml").read_text())
    assert main(["validate", str(tmp_path / "main.toml"), "--skip-path-checks", "--backend", "diffusion-pipe"]) == 1
    assert main(["validate", str(tmp_path / "main.toml"), "--skip-path-checks", "--num-gpus", "2",
                 "--backend", "diffusion-pipe"]) == 0
    capsys.readouterr()
    # the native trainer (the default backend) runs on one GPU whatever --num-gpus says
    assert main(["validate", str(tmp_path / "main.toml"), "--skip-path-checks", "--num-gpus", "2"]) == 1
    assert ":7: pipeline_stages: native trainer: " in capsys.readouterr().out


def test_validate_backend_flag(tmp_path: Path, capsys) -> None:
    (tmp_path / "wan.toml").write_text((GOLDEN / "valid" / "wan_14b_low_vram.toml").read_text())
    (tmp_path / "dataset_reference.toml").write_text((GOLDEN / "valid" / "dataset_reference.toml").read_text())
    # no [studio] backend: auto checks a Wan config for diffusion-pipe
    assert main(["validate", str(tmp_path / "wan.toml"), "--skip-path-checks"]) == 0
    capsys.readouterr()
    assert main(["validate", str(tmp_path / "wan.toml"), "--skip-path-checks", "--backend", "native"]) == 1
    lines = capsys.readouterr().out.strip().split("\n")
    errors = [line for line in lines if ": warning: " not in line]
    assert len(errors) == 1 and LINE.match(errors[0])["key"] == "model.type"
    assert "the native trainer trains chroma, sdxl, flux, lumina_2, hidream, sd3 and qwen_image only, not 'wan'" in errors[0]
    assert main(["validate", str(tmp_path / "wan.toml"), "--skip-path-checks", "--backend", "diffusion-pipe"]) == 0
    assert capsys.readouterr().out.strip().endswith("warning(s))")


def test_profile_commands(tmp_path: Path, capsys, studio_home: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    text = (GOLDEN / "valid" / "minimax_main.toml").read_text()
    (src / "mm.toml").write_text(text)
    (src / "minimax_dataset.toml").write_text((GOLDEN / "valid" / "minimax_dataset.toml").read_text())
    assert main(["profile", "import", str(src / "mm.toml"), "--name", "Mini"]) == 0
    assert "imported 'Mini' (version 1)" in capsys.readouterr().out
    assert main(["profile", "list"]) == 0
    listing = capsys.readouterr().out.split("\n")
    assert listing[0].startswith("Chroma E6AI 512\tv1") and "(default, shipped)" in listing[0]
    assert any(line.startswith("Mini\tv1") for line in listing)
    assert main(["profile", "export", "Mini", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "mm.toml").read_bytes() == (src / "mm.toml").read_bytes()
    assert main(["profile", "export", "Mini", "--out", str(tmp_path / "zips"), "--zip"]) == 0
    assert (tmp_path / "zips" / "mini.zip").is_file()
    capsys.readouterr()
    assert main(["profile", "diff", "Chroma E6AI 512", "Chroma E6AI 1024"]) == 0
    assert "main: micro_batch_size_per_gpu: 4 -> 1" in capsys.readouterr().out
    assert main(["profile", "history", "Mini"]) == 0
    assert capsys.readouterr().out.startswith("1\t")
    assert main(["profile", "rollback", "Mini", "1"]) == 0
    assert main(["profile", "rollback", "Mini", "7"]) == 1
    assert "has no version 7" in capsys.readouterr().err
    assert main(["profile", "import", str(src / "mm.toml"), "--name", "Mini"]) == 1
    assert main(["profile", "export", "Nobody", "--out", str(tmp_path)]) == 1


def test_profile_import_reports_missing_save_every(tmp_path: Path, capsys) -> None:
    text = (GOLDEN / "base_main.toml").read_text().replace("save_every_n_epochs = 1\n", "")
    (tmp_path / "user.toml").write_text(text)
    (tmp_path / "base_dataset.toml").write_text((GOLDEN / "base_dataset.toml").read_text())
    assert main(["profile", "import", str(tmp_path / "user.toml"), "--name", "User"]) == 0
    assert "user.toml:1: save_every_n_epochs: none of save_every_n_epochs" in capsys.readouterr().out


def test_console_entry_point_runs_as_a_module(studio_home: Path) -> None:
    env = {**os.environ, "DP_STUDIO_HOME": str(studio_home)}
    result = subprocess.run([sys.executable, "-m", "trainers.cli", "validate", str(PROFILE_512)], cwd=REPO,
                            capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert "e6ai_512.toml:22: model.diffusers_path: not filled in yet" in result.stdout
