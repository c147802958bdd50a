"""The dataset browser's bulk edit: preview writes nothing, apply writes the previewed captions, undo restores them;
filters choose the images by tag, bucket (an uncaptioned image has none) and problem; captions.json images are left out and said so."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

from studio.tabs import dataset_bulk
from trainers.datasets.report import analyse


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "ds"
    folder.mkdir()
    for name, size, caption in [("wide", (768, 512), "cat, red"), ("square", (512, 512), "dog"),
                                ("bare", (512, 512), None)]:
        Image.new("RGB", size, (100, 50, 20)).save(folder / f"{name}.png")
        if caption:
            (folder / f"{name}.txt").write_text(caption + "\n")
    return folder


def test_preview_apply_undo_with_the_files_checked_at_each_step(tmp_path):
    folder = _folder(tmp_path)
    report = analyse(folder, resolution=512)
    message, rows, plan = dataset_bulk.preview(report, "set trigger word", "ohwx", "", False, "every image", "")
    assert message.startswith("3 caption(s) would change")
    assert sorted(r[0] for r in rows) == ["bare.txt", "square.txt", "wide.txt"]
    assert not (folder / "bare.txt").exists()
    assert (folder / "wide.txt").read_text() == "cat, red\n"  # a preview writes nothing
    message, rows, plan_after, last = dataset_bulk.apply(plan)
    assert (folder / "wide.txt").read_text() == "ohwx, cat, red\n" and (folder / "bare.txt").read_text() == "ohwx\n"
    assert plan_after is None and "3 caption file(s) written" in message
    message, last_after = dataset_bulk.undo(last)
    assert (folder / "wide.txt").read_text() == "cat, red\n" and not (folder / "bare.txt").exists()
    assert last_after is None
    with pytest.raises(gr.Error, match="Nothing to undo"):
        dataset_bulk.undo(last_after)


@pytest.mark.parametrize("how, value, chosen", [("has tag", "red", ["wide.txt"]), ("no caption", "", ["bare.txt"]),
                                                ("problem", "no caption", ["bare.txt"]),
                                                ("bucket", "512x512", ["square.txt"])])
def test_filters_choose_the_images(tmp_path, how, value, chosen):
    report = analyse(_folder(tmp_path), resolution=512)
    _, rows, _ = dataset_bulk.preview(report, "add suffix", ", x", "", False, how, value)
    assert sorted(r[0] for r in rows) == chosen


def test_a_filter_without_its_value_and_a_bad_regex_are_refused(tmp_path):
    report = analyse(_folder(tmp_path), resolution=512)
    with pytest.raises(gr.Error, match="needs a value"):
        dataset_bulk.preview(report, "add tag", "x", "", False, "has tag", "")
    with pytest.raises(gr.Error, match="not a valid regular expression"):
        dataset_bulk.preview(report, "find / replace", "(", "", True, "every image", "")


def test_captions_json_images_are_left_out_and_counted(tmp_path):
    folder = _folder(tmp_path)
    (folder / "captions.json").write_text(json.dumps({"wide.png": ["a"], "square.png": ["b"], "bare.png": ["c"]}))
    report = analyse(folder, resolution=512)
    message, rows, _ = dataset_bulk.preview(report, "add tag", "x", "", False, "every image", "")
    assert rows == [] and "3 image(s) whose captions live in a captions.json" in message
