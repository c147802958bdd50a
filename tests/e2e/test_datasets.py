"""Dataset browser in the browser: the demo dataset, then a folder with one of every problem."""

from __future__ import annotations

import pytest

from studio.services import Services
from tests.conftest import write_pair
from tests.e2e.conftest import serve, shot
from tests.fixtures.datasets import flawed_dataset
from trainers.paths import REPO_ROOT
from trainers.runs import RunManager


@pytest.fixture
def studio(tmp_path):
    main = write_pair(tmp_path / "profile", max_steps=10)
    manager = RunManager([tmp_path / "profile" / "out"], trainer_module="tests.fakes.trainer")
    blocks, url = serve(Services(manager=manager, demo_main=main, allowed_roots=[tmp_path]))
    yield url
    blocks.close()


def _type(page, elem_id: str, text: str) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.click()
    box.press("Control+a")
    box.press_sequentially(text)  # fill() does not fire Gradio's input event


def _text(elem_id: str) -> str:
    return f"(document.querySelector('#{elem_id}')?.innerText ?? '')"


def _wait_browsed(page, shown: str) -> None:
    """Until the summary names ``shown`` and the check is complete: the cheap report shows first, the problems
    that need the pictures measured (blur, near-duplicates) follow with the final one."""
    page.wait_for_function(f"{_text('datasets-summary')}.includes({shown!r}) && "
                           f"!{_text('datasets-summary')}.includes('measuring')")


HEADER_LINES = """(table) => [...document.querySelectorAll(table + ' thead th')].filter(th => th.innerText.trim())
    .map(th => { const walk = document.createTreeWalker(th, NodeFilter.SHOW_TEXT); const tops = new Set(); let node;
                 while ((node = walk.nextNode())) {
                   if (!node.textContent.trim()) continue;
                   const range = document.createRange(); range.selectNodeContents(node);
                   for (const box of range.getClientRects()) if (box.width > 0) tops.add(Math.round(box.top)); }
                 return [th.innerText.trim(), tops.size]; })"""


def test_browse_buckets_crops_and_health(page, studio, tmp_path):
    page.goto(studio)
    page.get_by_role("tab", name="Dataset browser").click()
    # The demo dataset, through its folder at its own 64-pixel resolution.
    _type(page, "datasets-folder", str(REPO_ROOT / "assets" / "demo" / "dataset"))
    _type(page, "datasets-resolution", "64")
    page.locator("#datasets-resolution input").press("Enter")
    page.locator("#datasets-load").click()
    _wait_browsed(page, "24 images")
    assert "zxq background" in page.locator("#datasets-table").inner_text()
    # Issue 11 item 9: every column header reads on one line (the "examples" header wrapped a letter per line).
    lines = page.evaluate(HEADER_LINES, "#datasets-table")
    assert lines and all(count == 1 for _, count in lines), lines
    # A folder with every problem, at 512 with the trigger word checked.
    folder = flawed_dataset(tmp_path / "flawed")
    _type(page, "datasets-folder", str(folder))
    _type(page, "datasets-resolution", "512")
    page.locator("#datasets-resolution input").press("Enter")
    _type(page, "datasets-trigger", "zxq")
    _type(page, "datasets-batch", "2")
    page.locator("#datasets-load").click()
    # the cheap report shows first; the problems that need the pictures measured follow with the final one
    _wait_browsed(page, "7 images")
    summary = page.locator("#datasets-summary").inner_text()
    for problem in ("no trigger", "blurry", "near-duplicate", "heavy crop", "upscaled", "no caption"):
        assert problem in summary, summary
    assert "2 steps per epoch at global batch 2" in summary
    page.get_by_role("tab", name="Buckets").click()
    page.wait_for_function(f"{_text('datasets-buckets')}.includes('720×368')")
    assert "dropped" in page.locator("#datasets-buckets").inner_text()
    page.get_by_role("tab", name="Health").click()
    page.wait_for_function(f"{_text('datasets-health')}.includes('panorama.png')")
    # Click the panorama: its crop and the training view appear with its facts.
    page.locator("#datasets-gallery button", has_text="panorama").first.click()
    page.wait_for_function(f"{_text('datasets-detail')}.includes('panorama.png')")
    assert "bucket 720×368" in page.locator("#datasets-detail").inner_text()
    page.locator("#datasets-preview img").wait_for()
    shot(page, "datasets-flawed")
    # Fix the blurred picture's caption (it lacks the trigger word): written to its .txt, the issue goes.
    page.locator("#datasets-gallery button", has_text="blurred").first.click()
    page.wait_for_function(f"{_text('datasets-detail')}.includes('blurred.png')")
    assert page.locator("#datasets-caption textarea").input_value() == "a soft picture"
    _type(page, "datasets-caption", "zxq, a soft picture")
    page.locator("#datasets-save-caption").click()
    page.wait_for_function(f"{_text('datasets-caption-message')}.includes('Saved')")
    assert (folder / "blurred.txt").read_text() == "zxq, a soft picture\n"
    assert "no trigger" not in page.locator("#datasets-summary").inner_text()


def test_the_wizard_opens_its_dataset_in_the_browser(page, studio):
    page.goto(studio)
    page.locator("#wiz-next-1").click()
    _type(page, "wiz-dataset", str(REPO_ROOT / "assets" / "demo" / "dataset"))
    page.locator("#wiz-browse-dataset").click()
    # The browser tab opens on that folder at the preset's resolution: the 64-pixel demo pictures are upscaled.
    _wait_browsed(page, "24 images")
    assert "24 upscaled" in page.locator("#datasets-summary").inner_text()
    assert page.locator("#datasets-folder textarea, #datasets-folder input").first.input_value().endswith("dataset")


def test_bulk_caption_edit_preview_apply_undo(page, studio, tmp_path):
    from PIL import Image

    folder = tmp_path / "bulk"
    folder.mkdir()
    for name, caption in [("one", "a cat"), ("two", "a dog"), ("three", "a bird")]:
        Image.new("RGB", (64, 64), (90, 60, 30)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(caption + "\n")
    page.goto(studio)
    page.get_by_role("tab", name="Dataset browser").click()
    _type(page, "datasets-folder", str(folder))
    _type(page, "datasets-resolution", "64")
    page.locator("#datasets-resolution input").press("Enter")
    page.locator("#datasets-load").click()
    _wait_browsed(page, "3 images")
    page.locator("#bulk-accordion").get_by_text("Bulk caption edit").click()
    _type(page, "bulk-text", "zxq, ")  # the default operation: add prefix, to every image
    page.locator("#bulk-preview").click()
    page.wait_for_function(f"{_text('bulk-message')}.includes('3 caption(s) would change')")
    assert "zxq, a bird" in page.locator("#bulk-table").inner_text()
    assert (folder / "one.txt").read_text() == "a cat\n"  # the preview wrote nothing
    (folder / "two.txt").write_text("a dog by hand\n")  # edited on disk after the preview
    page.locator("#bulk-apply").click()
    page.wait_for_function(f"{_text('bulk-message')}.includes('Applied')")
    assert "two.txt: changed on disk" in page.locator("#bulk-message").inner_text()
    assert (folder / "one.txt").read_text() == "zxq, a cat\n"
    assert (folder / "three.txt").read_text() == "zxq, a bird\n"
    assert (folder / "two.txt").read_text() == "a dog by hand\n"
    page.locator("#bulk-undo").click()
    page.wait_for_function(f"{_text('bulk-message')}.includes('Undone')")
    assert (folder / "one.txt").read_text() == "a cat\n"
    assert (folder / "three.txt").read_text() == "a bird\n"
    assert (folder / "two.txt").read_text() == "a dog by hand\n"


def test_a_large_folder_is_paged_and_filtered(page, studio, tmp_path):
    """Issue 11 item 13: the grid and the table show one page; Next shows the next images, a filter applies
    before paging; clicking a picture on page 2 opens that picture."""
    from PIL import Image

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(130):
        picture = Image.new("RGB", (96, 96), (i, 2 * i % 255, 40))
        picture.paste((255 - i, 0, 2 * i), (i % 60, i // 3, i % 60 + 30, i // 3 + 20))
        picture.save(folder / f"p{i:03d}.png")
        if i % 10:
            (folder / f"p{i:03d}.txt").write_text(f"picture {i}")
    page.goto(studio)
    page.get_by_role("tab", name="Dataset browser").click()
    _type(page, "datasets-folder", str(folder))
    _type(page, "datasets-resolution", "64")
    page.locator("#datasets-resolution input").press("Enter")
    page.locator("#datasets-load").click()
    page.wait_for_function(f"{_text('datasets-summary')}.includes('130 images') && "
                           f"!{_text('datasets-summary')}.includes('measuring')")
    page.wait_for_function(f"{_text('datasets-page-note')}.includes('page 1 of 3')")
    assert page.locator("#datasets-gallery button img").count() == 60
    table = page.locator("#datasets-table").inner_text()  # the table draws the rows in view: the first ones
    assert "p000.png" in table and "p060.png" not in table
    page.locator("#datasets-next").click()
    page.wait_for_function(f"{_text('datasets-page-note')}.includes('page 2 of 3')")
    table = page.locator("#datasets-table").inner_text()
    assert "p060.png" in table and "p000.png" not in table and "p059.png" not in table
    assert page.locator("#datasets-gallery button img").count() == 60
    page.locator("#datasets-gallery button", has_text="p061.png").first.click()
    page.wait_for_function(f"{_text('datasets-detail')}.includes('p061.png')")
    # Filter, then page: the 13 pictures without a caption fit on page 1.
    page.locator("#datasets-filter input").click()
    page.get_by_role("option", name="no caption", exact=True).click()
    page.wait_for_function(f"{_text('datasets-page-note')}.includes('13 images (no caption)')")
    assert "page 1 of 1" in page.locator("#datasets-page-note").inner_text()
    table = page.locator("#datasets-table").inner_text()
    assert "p010.png" in table and "p020.png" in table and "p011.png" not in table
    assert page.locator("#datasets-gallery button img").count() == 13
