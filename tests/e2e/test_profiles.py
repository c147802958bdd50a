"""The profiles tab in a real browser: import a pair, list, diff, save a new version, roll back, export a zip."""

from __future__ import annotations

import re
import zipfile

import pytest

from studio.services import Services
from tests.conftest import write_pair
from tests.e2e.conftest import serve, shot
from trainers.profiles import ProfileStore
from trainers.runs import RunManager

pytestmark = pytest.mark.e2e

NAME = "My import"


@pytest.fixture
def studio_url(tmp_path):
    main = write_pair(tmp_path / "demo")
    services = Services(manager=RunManager([tmp_path / "demo" / "out"]), demo_main=main, allowed_roots=[tmp_path])
    blocks, url = serve(services)
    yield url
    blocks.close()


def pick(page, elem_id, option):
    page.locator(f"#{elem_id} input").click()
    page.locator(f"#{elem_id}").get_by_role("option", name=option, exact=True).click()
    page.wait_for_function("([id, v]) => document.querySelector('#' + id + ' input')?.value === v",
                           arg=[elem_id, option])


def wait_text(page, elem_id, text, timeout=15_000):
    page.wait_for_function("([id, t]) => (document.querySelector('#' + id)?.innerText || '').includes(t)",
                           arg=[elem_id, text], timeout=timeout)


def upload_pair(page, tmp_path):
    pair = tmp_path / "upload"
    write_pair(pair, extra_main="[monitoring]\nenable_wandb = true\nwandb_api_key = 'k-123'\n")
    page.locator("#profiles-import-main input[type=file]").set_input_files(str(pair / "main.toml"))
    page.locator("#profiles-import-dataset input[type=file]").set_input_files(str(pair / "ds.toml"))
    page.locator("#profiles-import-name textarea, #profiles-import-name input").first.fill(NAME)
    for elem_id, name in (("profiles-import-main", "main.toml"), ("profiles-import-dataset", "ds.toml")):
        page.wait_for_function(  # the upload lists the file as its stem and extension, in two elements
            "([id, n]) => (document.querySelector('#' + id)?.innerText ?? '').replace(/\\s/g, '').includes(n)",
            arg=[elem_id, name])
    page.locator("#profiles-import").click()
    wait_text(page, "profiles-message", "Imported")


def test_import_list_diff_save_rollback_export(page, studio_url, tmp_path, studio_home):
    page.goto(studio_url)
    page.get_by_role("tab", name="Profiles").click()
    wait_text(page, "profiles-table", "Chroma E6AI 512")
    upload_pair(page, tmp_path)
    message = page.locator("#profiles-message").inner_text()
    assert "moved monitoring.wandb_api_key into the secret store" in message, message
    wait_text(page, "profiles-table", NAME)
    assert "k-123" not in ProfileStore().texts(NAME).main_text

    pick(page, "profiles-diff-a", NAME)
    pick(page, "profiles-diff-b", "Chroma E6AI 512")
    page.locator("#profiles-diff-run").click()
    wait_text(page, "profiles-diff-note", "differ between")
    assert "model.transformer_path" in page.locator("#profiles-diff").inner_text()
    shot(page, "profiles-diff")

    # Save a new version from the builder.
    pick(page, "profiles-selected", NAME)
    page.locator("#profiles-open").click()
    page.wait_for_function("(document.querySelector('#builder-save-name textarea')?.value || '') === 'My import'")
    epochs = page.locator("#field-main-epochs textarea")
    epochs.fill("")
    epochs.press_sequentially("5")
    page.wait_for_function("(document.querySelector('#builder-main .cm-content')?.innerText ?? '').includes('epochs = 5')")
    page.locator("#builder-save").click()
    wait_text(page, "builder-message", "version 2")

    page.get_by_role("tab", name="Profiles").click()
    pick(page, "profiles-selected", NAME)
    wait_text(page, "profiles-history", "saved from the config builder")
    page.locator("#profiles-version input").click()
    page.locator("#profiles-version").get_by_role("option").filter(has_text="imported from the uploaded").click()
    page.locator("#profiles-rollback").click()
    wait_text(page, "profiles-message", "version 3")
    wait_text(page, "profiles-history", "rollback to version 1")
    assert "epochs = 1\n" in ProfileStore().texts(NAME).main_text
    shot(page, "profiles-rollback")

    page.locator("#profiles-export").click()
    page.locator("#profiles-download").wait_for(state="visible")
    with page.expect_download() as download:
        page.locator("#profiles-download").click()
    saved = tmp_path / "export.zip"
    download.value.save_as(saved)
    with zipfile.ZipFile(saved) as archive:
        assert sorted(archive.namelist()) == ["ds.toml", "main.toml"]
        assert "k-123" not in archive.read("main.toml").decode()


def test_a_refused_upload_is_named_as_picked_not_by_its_temp_path(page, studio_url, tmp_path, studio_home):
    """Issue 11 item 10: a main TOML uploaded without its dataset TOML was refused with Gradio's temporary path
    (/tmp/gradio/<hash>/main.toml) in the message."""
    pair = tmp_path / "lonely"
    write_pair(pair)
    (pair / "ds.toml").unlink()
    page.goto(studio_url)
    page.get_by_role("tab", name="Profiles").click()
    page.locator("#profiles-import-main input[type=file]").set_input_files(str(pair / "main.toml"))
    page.wait_for_function("(document.querySelector('#profiles-import-main')?.innerText ?? '')"
                           ".replace(/\\s/g, '').includes('main.toml')")
    page.locator("#profiles-import").click()
    wait_text(page, "profiles-message", "Not imported")
    message = page.locator("#profiles-message").inner_text()
    assert "main.toml" in message and "not found" in message
    # No temporary path: Gradio's upload cache (<tmp>/gradio/<hash>/...) nor a tempfile folder (<tmp>/tmpXXXX).
    # (The studio's own working directory may be named: relative dataset paths resolve against it too.)
    assert "gradio" not in message and not re.search(r"/tmp[a-z0-9_]{8}\b", message), message
