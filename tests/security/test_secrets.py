"""Issue 10, item 6 and the fidelity round trip: a W&B key written in a config reaches the secret store and no
copy the studio writes, exports, diffs or shows. An empty key is no secret and survives byte for byte."""

from __future__ import annotations

import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from studio.api import RunsApi, _guard
from studio.runs_view import config_diff, run_config
from tests.conftest import make_valid, write_pair
from tests.security.conftest import REAL_RUN
from trainers.config.secrets import REDACTED, SecretStore
from trainers.events import load_all
from trainers.profiles import ProfileStore, ProfileTexts, diff_texts, import_path
from trainers.profiles.transfer import export_zip

CANARY = "canary-wandb-key-5b1e0c9d2f"
SHAPE = Path(__file__).resolve().parent.parent / "fixtures" / "dp_shape"
MIRROR = Path("/work/.mirror/tdrussell+diffusion-pipe/repo")


@pytest.fixture(autouse=True)
def no_env_key(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def _keyed(main: Path) -> Path:
    main.write_text(main.read_text() + f"\n[monitoring]\nenable_wandb = false\nwandb_api_key = '{CANARY}'  # mine\n"
                    "wandb_tracker_name = 'p'\nwandb_run_name = 'r'\n")
    return main


def _files_holding(folder: Path, text: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def _wait_finished(run_dir: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(ev.kind in ("finished", "failed") for ev in load_all(run_dir)):
            return
        time.sleep(0.1)
    raise AssertionError(f"{run_dir} did not finish")


def test_start_run_moves_the_key_to_the_store_and_out_of_every_run_file(world, manager, tmp_path):
    main = _keyed(make_valid(write_pair(tmp_path / "p", max_steps=6)))
    main.write_text(main.read_text().replace("output_dir = 'out'", f"output_dir = '{world.runs}'"))
    info = _guard(RunsApi(manager).start_run)(str(main), "canary", 0)
    assert any("secret store" in note for note in info["notes"]) and CANARY not in str(info)
    run_dir = Path(info["run_dir"])
    _wait_finished(run_dir)
    assert SecretStore().get("wandb_api_key") == CANARY
    assert _files_holding(run_dir, CANARY) == []
    assert "wandb_api_key = ''  # mine" in (run_dir / main.name).read_text()  # the line stays, emptied
    warnings = [ev.message for ev in load_all(run_dir) if ev.kind == "log" and ev.level == "warning"]
    assert any("secret store" in message for message in warnings)


def test_start_run_refuses_a_config_with_errors_and_writes_nothing(world, manager, tmp_path):
    import gradio as gr

    main = _keyed(write_pair(tmp_path / "p"))  # no model paths, no optimizer: what `dp-studio validate` refuses
    with pytest.raises(gr.Error, match="not started(.|\n)*model.diffusers_path"):
        _guard(RunsApi(manager).start_run)(str(main), "bad", 0)
    assert not (tmp_path / "p" / "out").exists()


def test_diff_of_a_run_folder_that_still_holds_a_key_shows_stars(world, manager):
    legacy = world.runs / REAL_RUN / "main.toml"  # a run written before keys were moved out
    legacy.write_text(legacy.read_text() + f"[monitoring]\nwandb_api_key = '{CANARY}'\n")
    info = manager.info(REAL_RUN)
    assert run_config(info.run_dir, info.meta)["monitoring"]["wandb_api_key"] == REDACTED
    rows = _guard(RunsApi(manager).diff_runs)(REAL_RUN, REAL_RUN)
    assert CANARY not in str(rows)
    assert CANARY not in str(config_diff(run_config(info.run_dir, info.meta), {}))


def test_profile_import_export_and_diff_never_carry_the_key(tmp_path):
    store = ProfileStore()
    source = tmp_path / "src"
    shutil.copytree(SHAPE, source)
    keyed = source / "main.toml"
    original = keyed.read_text()
    keyed.write_text(original.replace("wandb_api_key = ''", f"wandb_api_key = '{CANARY}'"))
    report = import_path(store, keyed, "Keyed")
    assert any("secret store" in note for note in report.notes)
    assert SecretStore().get("wandb_api_key") == CANARY
    # The line stays with the value emptied: what comes back is the file as it was before the key was typed in.
    out = tmp_path / "out"
    written = store.export("Keyed", out)
    assert written[0].read_bytes() == original.encode()
    archive = export_zip(store, "Keyed", tmp_path / "keyed.zip")
    with zipfile.ZipFile(archive) as z:
        assert all(CANARY.encode() not in z.read(name) for name in z.namelist())
    pair = store.texts("Keyed")
    leaked = ProfileTexts(pair.main_name, keyed.read_text(), pair.dataset_name, pair.dataset_text)
    assert CANARY not in str([entry.format() for entry in diff_texts(pair, leaked)])


def test_empty_key_round_trips_byte_identical(tmp_path):
    store = ProfileStore()
    import_path(store, SHAPE / "main.toml", "Shape")
    written = store.export("Shape", tmp_path / "out")
    assert written[0].read_bytes() == (SHAPE / "main.toml").read_bytes()
    assert written[1].read_bytes() == (SHAPE / "examples" / "dataset.toml").read_bytes()
    assert SecretStore().get("wandb_api_key") is None  # an empty key is no secret


def _mirror_file(path: str) -> bytes:
    return subprocess.run(["git", "-C", str(MIRROR), "show", f"HEAD:{path}"], capture_output=True,
                          check=True).stdout


@pytest.mark.skipif(not MIRROR.is_dir(), reason="no diffusion-pipe checkout on this machine")
def test_diffusion_pipe_main_example_round_trips_byte_identical(tmp_path):
    # diffusion-pipe examples/main_example.toml:187 carries wandb_api_key = '' in its [monitoring] table.
    folder = tmp_path / "checkout"
    (folder / "examples").mkdir(parents=True)
    main = folder / "examples" / "main_example.toml"
    main.write_bytes(_mirror_file("examples/main_example.toml"))
    (folder / "examples" / "examples").mkdir()
    (folder / "examples" / "examples" / "dataset.toml").write_bytes(_mirror_file("examples/dataset.toml"))
    store = ProfileStore()
    import_path(store, main, "Upstream example")
    assert store.export("Upstream example", tmp_path / "out")[0].read_bytes() == main.read_bytes()

