"""Profile store: import (secrets stripped into a 0600 store), export byte-identical, diff, history, rollback."""

from __future__ import annotations

import stat
import tomllib
import zipfile
from pathlib import Path

import pytest

from trainers.config.secrets import SecretStore
from trainers.config.toml_io import dumps, loads, set_value
from trainers.paths import profiles_dir, secrets_file, studio_home
from trainers.profiles import (
    ProfileError,
    ProfileStore,
    diff_profiles,
    export_zip,
    import_path,
)

REPO = Path(__file__).resolve().parents[2]
VALID = REPO / "tests" / "golden" / "configs" / "valid"
SECRET = "wandb-secret-0123456789abcdef"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DP_STUDIO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path / "home"


@pytest.fixture
def store(home: Path) -> ProfileStore:
    return ProfileStore()


def _pair(folder: Path, main_text: str, main_name: str = "run.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / main_name).write_text(main_text)
    (folder / "minimax_dataset.toml").write_text((VALID / "minimax_dataset.toml").read_text())
    return folder / main_name


def _with_key(text: str) -> str:
    return text + f"\n[monitoring]\nenable_wandb = true\nwandb_api_key = '{SECRET}'  # mine\n" \
                  "wandb_tracker_name = 'proj'\nwandb_run_name = 'run'\n"


def test_studio_home_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DP_STUDIO_HOME", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert studio_home() == tmp_path / "a" and profiles_dir() == tmp_path / "a" / "profiles"
    monkeypatch.delenv("DP_STUDIO_HOME")
    assert studio_home() == tmp_path / "xdg" / "dp-studio" and secrets_file().name == "secrets.toml"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert studio_home() == tmp_path / "user" / ".local" / "share" / "dp-studio"


def test_shipped_profiles_are_installed_with_the_512_default(store: ProfileStore) -> None:
    names = [info.name for info in store.list()]
    assert names[:2] == ["Chroma E6AI 512", "Chroma E6AI 1024"]
    default = store.default()
    assert default is not None and default.name == "Chroma E6AI 512" and default.shipped
    assert default.main_path.read_bytes() == (REPO / "profiles" / "e6ai_512" / "e6ai_512.toml").read_bytes()


def test_import_moves_the_api_key_into_a_0600_secret_store(store: ProfileStore, home: Path, tmp_path: Path) -> None:
    main = _pair(tmp_path / "src", _with_key((VALID / "minimax_main.toml").read_text()))
    report = import_path(store, main, "Keyed")
    assert any("secret store" in note for note in report.notes)
    stored = store.texts("Keyed").main_text
    # The line stays with its value emptied (comment and position kept): diffusion-pipe needs the key.
    assert SECRET not in stored and "wandb_api_key = ''  # mine\n" in stored
    assert "wandb_tracker_name = 'proj'" in stored  # the rest of the table is untouched
    secrets = home / "secrets.toml"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600
    assert SecretStore(secrets).get("wandb_api_key") == SECRET
    for path in store.export("Keyed", tmp_path / "out"):
        assert SECRET not in path.read_text()
    assert SECRET not in str(report) and all(SECRET not in issue.format() for issue in report.issues)


def test_environment_key_wins_and_redaction(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = SecretStore(home / "secrets.toml")
    secrets.set("wandb_api_key", SECRET)
    assert secrets.source("wandb_api_key") == "file"
    monkeypatch.setenv("WANDB_API_KEY", "from-env-key")
    assert secrets.get("wandb_api_key") == "from-env-key" and secrets.source("wandb_api_key") == "environment"
    assert secrets.redact(f"login {SECRET} and from-env-key") == "login *** and ***"
    assert secrets.delete("wandb_api_key") and not secrets.delete("wandb_api_key")


def test_saving_a_key_through_the_ui_path_strips_it_too(store: ProfileStore, home: Path) -> None:
    current = store.texts("Chroma E6AI 512")
    doc = loads(current.main_text)
    set_value(doc, "monitoring.wandb_api_key", SECRET)
    report = store.save("Chroma E6AI 512", dumps(doc), current.dataset_text)
    assert report.version.number == 2 and any("secret store" in note for note in report.notes)
    saved = store.texts("Chroma E6AI 512").main_text
    assert SECRET not in saved  # the key stays, its value emptied
    assert tomllib.loads(saved)["monitoring"]["wandb_api_key"] == ""
    assert SecretStore(home / "secrets.toml").get("wandb_api_key") == SECRET


def test_export_is_byte_identical(store: ProfileStore, tmp_path: Path) -> None:
    main = _pair(tmp_path / "src", (VALID / "minimax_main.toml").read_text().replace("\n", "\r\n"))
    import_path(store, main, "Crlf")
    written = store.export("Crlf", tmp_path / "out")
    assert [p.name for p in written] == ["run.toml", "minimax_dataset.toml"]
    assert written[0].read_bytes() == main.read_bytes()
    assert written[1].read_bytes() == (tmp_path / "src" / "minimax_dataset.toml").read_bytes()


def test_import_flags_missing_save_every_and_keeps_the_file(store: ProfileStore, tmp_path: Path) -> None:
    text = (VALID / "minimax_main.toml").read_text().replace("save_every_n_epochs = 1", "")
    report = import_path(store, _pair(tmp_path / "src", text), "NoSave")
    assert "save_every_n_epochs" in {issue.key for issue in report.issues if issue.is_error}
    assert store.texts("NoSave").main_text == text


def test_history_save_and_rollback(store: ProfileStore) -> None:
    name = "Chroma E6AI 1024"
    first = store.texts(name)
    doc = loads(first.main_text)
    set_value(doc, "optimizer.lr", 1e-4)
    second = store.save(name, dumps(doc), first.dataset_text, message="lower lr")
    assert second.version.number == 2 and store.get(name).version == 2
    assert store.save(name, dumps(doc), first.dataset_text).version.number == 2  # unchanged: no new version
    back = store.rollback(name, 1)
    assert back.version.number == 3 and store.texts(name).main_text == first.main_text
    assert [(v.number, v.message) for v in store.history(name)] == [
        (1, "shipped with dp-studio"), (2, "lower lr"), (3, "rollback to version 1")]
    assert store.texts(name, 2).main_text == dumps(doc)
    with pytest.raises(ProfileError, match="no version 9"):
        store.rollback(name, 9)


def test_diff_key_by_key(store: ProfileStore) -> None:
    entries = {(e.file, e.key): e for e in diff_profiles(store, "Chroma E6AI 512", "chroma-e6ai-1024")}
    assert entries[("main", "micro_batch_size_per_gpu")].left == 4
    assert entries[("main", "micro_batch_size_per_gpu")].right == 1
    assert entries[("dataset", "resolutions")].format() == "dataset: resolutions: [512] -> [1024]"
    assert ("main", "optimizer.lr") not in entries
    assert diff_profiles(store, "Chroma E6AI 512", "Chroma E6AI 512") == []


def test_diff_reports_added_and_removed_keys(store: ProfileStore) -> None:
    name = "Chroma E6AI 512"
    pair = store.texts(name)
    doc = loads(pair.main_text)
    doc["max_steps"] = 100
    del doc["warmup_steps"]
    store.save(name, dumps(doc), pair.dataset_text)
    statuses = {e.key: e.status for e in diff_profiles(store, name, name, version_a=1)}
    assert statuses == {"warmup_steps": "removed", "max_steps": "added"}


def test_zip_round_trip(store: ProfileStore, tmp_path: Path) -> None:
    out = export_zip(store, "Chroma E6AI 512", tmp_path / "p.zip")
    with zipfile.ZipFile(out) as archive:
        assert sorted(archive.namelist()) == ["e6ai_512.toml", "e6ai_512_dataset.toml"]
    report = import_path(store, out, "From Zip")
    assert store.texts("From Zip") == store.texts("Chroma E6AI 512")
    assert report.profile.main_name == "e6ai_512.toml"


def test_bad_imports_are_refused(store: ProfileStore, tmp_path: Path) -> None:
    main = _pair(tmp_path / "src", (VALID / "minimax_main.toml").read_text())
    import_path(store, main, "Taken")
    with pytest.raises(ProfileError, match="already exists"):
        import_path(store, main, "taken")
    with pytest.raises(ProfileError, match="letters or digits"):
        import_path(store, main, "!!!")
    (tmp_path / "src" / "minimax_dataset.toml").unlink()
    with pytest.raises(ProfileError, match="not found"):
        import_path(store, main, "Other")
    with pytest.raises(ProfileError, match="no profile named"):
        store.get("missing")
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(ProfileError, match="cannot read the zip"):
        import_path(store, tmp_path / "junk.zip", "Zip")


def test_copy_makes_a_custom_profile(store: ProfileStore) -> None:
    report = store.copy("Chroma E6AI 512", "My Chroma")
    assert report.profile.slug == "my-chroma" and not report.profile.shipped and not report.profile.default
    assert store.texts("my chroma") == store.texts("Chroma E6AI 512")
    assert store.history("My Chroma")[0].message == "copied from Chroma E6AI 512"
    store.delete("My Chroma")
    assert "My Chroma" not in [info.name for info in store.list()]
