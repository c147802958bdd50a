"""The config builder in a real browser: model type, form -> TOML, TOML -> form, errors at the field."""

from __future__ import annotations

import pytest

from studio.services import Services
from tests.conftest import write_pair
from tests.e2e.conftest import serve, shot
from trainers.runs import RunManager

pytestmark = pytest.mark.e2e

MAIN = "#builder-main .cm-content"


@pytest.fixture(scope="module")
def builder_app(tmp_path_factory):
    folder = tmp_path_factory.mktemp("builder")
    main = write_pair(folder / "profile")
    services = Services(manager=RunManager([folder / "profile" / "out"]), demo_main=main, allowed_roots=[folder])
    blocks, url = serve(services)
    yield url, main
    blocks.close()


def open_builder(page, builder_app):
    page.goto(builder_app[0])
    page.get_by_role("tab", name="Config builder").click()
    page.locator(MAIN).wait_for()


def field(page, elem_id):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def editor_has(page, text, timeout=15_000):
    page.wait_for_function("t => (document.querySelector('#builder-main .cm-content')?.innerText ?? '').includes(t)",
                           arg=text, timeout=timeout)


def test_pick_type_fill_field_and_see_the_toml_change(page, builder_app):
    open_builder(page, builder_app)
    assert not page.locator("#field-main-model-guidance").is_visible()  # chroma does not read it
    page.locator("#builder-type input").fill("flux")
    page.get_by_role("option", name="Flux (flux)", exact=True).click()
    editor_has(page, "type = 'flux'")
    # The backend follows the type (auto): no [studio] backend is written, the message says which trainer runs it
    # (Flux and Chroma: the native trainer).
    page.wait_for_function("(document.querySelector('#builder-message')?.innerText ?? '').includes("
                           "'native trainer (backend auto)')", timeout=15_000)
    assert "backend" not in page.locator(MAIN).inner_text()
    page.locator("#field-main-model-guidance").wait_for(state="visible")  # a key only flux reads
    epochs = field(page, "field-main-epochs")
    epochs.fill("")
    epochs.press_sequentially("7")
    editor_has(page, "epochs = 7")
    text = page.locator(MAIN).inner_text()
    assert "# a comment that must survive the copy" in text and "\nepochs = 1\n" not in text
    assert "dataset = 'ds.toml'" in text  # the rest of the file is as it was
    shot(page, "builder-form-to-toml")
    page.locator("#builder-type input").fill("chroma")  # back to Chroma: nothing left behind to undo
    page.get_by_role("option", name="Chroma (chroma)", exact=True).click()
    editor_has(page, "type = 'chroma'")
    page.wait_for_function("(document.querySelector('#builder-message')?.innerText ?? '').includes("
                           "'native trainer (backend auto)')", timeout=15_000)
    assert "backend" not in page.locator(MAIN).inner_text()


def test_edit_toml_updates_the_form(page, builder_app):
    open_builder(page, builder_app)
    main = builder_app[1]
    text = main.read_text().replace("\nepochs = 1", "\nepochs = 42").replace("'float32'", "'bfloat16'")
    page.locator(MAIN).fill(text)
    page.wait_for_function("document.querySelector('#field-main-epochs textarea')?.value === '42'")
    page.wait_for_function("document.querySelector('#field-main-model-dtype input')?.value === 'bfloat16'")
    page.get_by_role("tab", name="Dataset TOML").click()
    dataset = page.locator("#builder-dataset .cm-content")
    dataset.wait_for()
    dataset.fill((main.parent / "ds.toml").read_text().replace("[64]", "[512, 768]"))
    page.locator("#builder-form").get_by_text("Dataset (top level of the dataset TOML)").click()
    page.wait_for_function(
        "document.querySelector('#field-dataset-resolutions textarea')?.value === '[512, 768]'")
    shot(page, "builder-toml-to-form")


def test_invalid_value_shows_an_error_at_the_field_and_the_line(page, builder_app):
    open_builder(page, builder_app)
    epochs = field(page, "field-main-epochs")
    epochs.fill("")
    epochs.press_sequentially("abc")  # not a TOML value: stays in the form, the file is not touched
    page.wait_for_function("(document.querySelector('#field-main-epochs')?.innerText ?? '').includes('⚠')")
    assert "not a number" in page.locator("#field-main-epochs").inner_text()
    epochs.fill("")
    epochs.press_sequentially("-3")  # valid TOML, invalid value: the validator's error lands at the field
    editor_has(page, "epochs = -3")
    page.wait_for_function("(document.querySelector('#field-main-epochs')?.innerText ?? '').includes('>= 1')")
    issues = page.locator("#builder-issues")
    page.wait_for_function("(document.querySelector('#builder-issues')?.innerText ?? '').includes('main.toml:4: epochs')")
    assert "use a value >= 1" in issues.inner_text()
    assert "dp-invalid" in (page.locator("#field-main-epochs").get_attribute("class") or "")
    shot(page, "builder-field-error")
    page.locator("#builder-validate").click()  # the full check: paths too
    page.wait_for_function("(document.querySelector('#builder-issues')?.innerText ?? '').includes('paths included')")


def test_emptying_a_field_removes_its_key(page, builder_app):
    """Deleting a field's text removes the key from the TOML (the form and the file never disagree)."""
    open_builder(page, builder_app)
    dataset = field(page, "field-main-dataset")
    dataset.wait_for()
    dataset.click()
    dataset.press("Control+a")
    dataset.press("Backspace")
    dataset.press("Tab")  # leaving the emptied field removes the key (mid-edit it stays where it is)
    page.wait_for_function(
        "!(document.querySelector('#builder-main .cm-content')?.innerText ?? '').includes(\"dataset = 'ds.toml'\")",
        timeout=15_000)
    page.wait_for_function("(document.querySelector('#field-main-dataset')?.innerText ?? '').includes('required')",
                           timeout=15_000)
    assert "# a comment that must survive the copy" in page.locator(MAIN).inner_text()
