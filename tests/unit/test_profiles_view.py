"""The profiles tab's formatting and the handlers behind it (no browser: the functions are called directly)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from studio import profiles_view as pv
from studio.tabs import builder, profiles
from tests.conftest import write_pair
from trainers.config.issues import ConfigIssue
from trainers.profiles import DiffEntry, ProfileError, ProfileStore, ProfileVersion


def test_validity_and_times():
    error = ConfigIssue("m.toml", 1, "epochs", "bad")
    warning = ConfigIssue("m.toml", 1, "x", "meh", severity="warning")
    assert pv.validity([]) == "✓"
    assert pv.validity([warning]) == "✓ (1 warning)"
    assert pv.validity([error, error, warning]) == "✗ 2 errors"
    assert pv.short_time("2026-01-02T03:04:05+00:00") == "2026-01-02 03:04 UTC"


def test_history_and_diff_rows():
    versions = [ProfileVersion(1, "2026-01-02T03:04:05+00:00", "created"), ProfileVersion(2, "2026-01-03T00:00:00"
                                                                                        "+00:00", "saved")]
    assert pv.history_rows(versions)[0] == [2, "2026-01-03 00:00 UTC", "saved"]
    assert pv.version_choices(versions)[-1] == ("1 · 2026-01-02 03:04 UTC · created", 1)
    entries = [DiffEntry("main", "epochs", "changed", 1, 2), DiffEntry("dataset", "resolutions", "added", None, [512])]
    assert pv.diff_rows(entries) == [["main", "epochs", "changed", "1", "2"],
                                     ["dataset", "resolutions", "added", "(absent)", "[512]"]]
    assert pv.diff_summary("a", "b", []) == "**a** and **b** hold the same settings."
    assert pv.diff_summary("a", "b", entries).startswith("2 keys differ")


def test_import_upload_with_a_separate_dataset_moves_the_secret(tmp_path):
    folder = tmp_path / "up"
    write_pair(folder, extra_main="[monitoring]\nwandb_api_key = 'k-1'\n")
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "my_ds.toml").write_text((folder / "ds.toml").read_text())
    report = profiles.import_upload(str(folder / "main.toml"), str(other / "my_ds.toml"), "")
    assert report.profile.name == "main" and report.profile.dataset_name == "ds.toml"
    message = pv.report_message("imported", report)
    assert "moved monitoring.wandb_api_key into the secret store" in message
    assert "stored as ds.toml" in message
    assert "k-1" not in ProfileStore().texts("main").main_text


def test_import_upload_without_the_dataset_says_what_to_upload(tmp_path):
    folder = tmp_path / "alone"
    folder.mkdir()
    (folder / "main.toml").write_text("dataset = 'missing.toml'\n")
    message, *_ = profiles.on_import(str(folder / "main.toml"), None, "x")
    assert message.startswith("⚠ Not imported") and "upload the dataset TOML" in message
    with pytest.raises(ProfileError, match="upload a main TOML"):
        profiles.import_upload(None, None, "x")


def test_save_from_the_builder_creates_then_versions(tmp_path):
    texts, pair = builder.read_pair(write_pair(tmp_path / "p"))
    _, new_pair, note = builder.save_profile("Mine", texts, pair)
    assert new_pair["profile"] == "Mine" and "Created **Mine**, version 1" in note
    changed = {**texts, "main": texts["main"].replace("\nepochs = 1", "\nepochs = 2")}
    stored, _, note = builder.save_profile("mine", changed, new_pair)
    assert "version 2" in note and "epochs = 2" in stored["main"]
    with pytest.raises(ProfileError, match="type a profile name"):
        builder.save_profile(" ", texts, pair)


def test_export_list_diff_and_rollback_handlers(tmp_path):
    texts, pair = builder.read_pair(write_pair(tmp_path / "p"))
    builder.save_profile("Mine", texts, pair)
    builder.save_profile("Mine", {**texts, "main": texts["main"].replace("\nepochs = 1", "\nepochs = 3")}, pair)
    names = [row["name"] for row in profiles.list_profiles()]
    assert "Mine" in names and "Chroma E6AI 512" in names
    note, rows = profiles.on_diff("Mine", 1, "Mine", 0)
    assert rows == [["main", "epochs", "changed", "1", "3"]] and "Mine v1" in note
    message, *_ = profiles.on_rollback("Mine", 1)
    assert "version 3" in message and "epochs = 1\n" in ProfileStore().texts("Mine").main_text
    update, message = profiles.export_profile("Mine")
    with zipfile.ZipFile(Path(update["value"])) as archive:
        assert sorted(archive.namelist()) == ["ds.toml", "main.toml"]
    assert "Exported" in message


def test_validate_config_api_returns_issue_dicts():
    found = builder.validate_config("epochs = 'x'\n[model]\ntype = 'chroma'\n")
    epochs = next(item for item in found if item["key"] == "epochs")
    assert epochs["line"] == 1 and epochs["severity"] == "error" and epochs["text"].startswith("main.toml:1: epochs")
    assert builder.validate_config("a = [")[0]["key"] == "(syntax)"


def test_uploads_are_named_as_picked_not_by_their_temporary_path():
    text = "/tmp/gradio/ab12/main.toml: dataset file 'ds.toml' not found (looked in /tmp/gradio/ab12 and /srv)"
    named = pv.name_uploads(text, ["/tmp/gradio/ab12/main.toml", None])
    assert named == "main.toml: dataset file 'ds.toml' not found (looked in the uploaded files and /srv)"
