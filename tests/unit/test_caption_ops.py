"""Bulk caption/tag edits: the preview lists exactly what changes, apply writes it, undo restores the files."""

from pathlib import Path

import pytest

from trainers.datasets import caption_ops as ops


def _dataset(tmp_path: Path, captions: dict[str, str | None]) -> list[Path]:
    images = []
    for name, caption in captions.items():
        image = tmp_path / name
        image.write_bytes(b"")  # plan reads captions only
        if caption is not None:
            image.with_suffix(".txt").write_text(caption + "\n")
        images.append(image)
    return images


@pytest.mark.parametrize("edit, before, after", [
    (ops.add_prefix("ohwx, "), "a cat", "ohwx, a cat"),
    (ops.add_prefix("ohwx, "), "ohwx, a cat", "ohwx, a cat"),
    (ops.remove_prefix("ohwx, "), "ohwx, a cat", "a cat"),
    (ops.add_suffix(", photo"), "a cat", "a cat, photo"),
    (ops.remove_suffix(", photo"), "a cat, photo", "a cat"),
    (ops.replace("cat", "dog"), "cat and cat", "dog and dog"),
    (ops.replace(r"(\w+) cat", r"cat \1", regex=True), "black cat", "cat black"),
    (ops.add_tag("red"), "a, b", "a, b, red"),
    (ops.add_tag("a"), "a, b", "a, b"),
    (ops.remove_tag("b"), "a,b ,c", "a, c"),
    (ops.rename_tag("b", "bee"), "a, b", "a, bee"),
    (ops.dedupe_tags(), "a, b, a, b, c", "a, b, c"),
    (ops.set_trigger("ohwx"), "a, ohwx, b", "ohwx, a, b"),
    (ops.set_trigger("ohwx"), "", "ohwx"),
])
def test_each_edit(edit, before, after):
    assert edit(before) == after


def test_bad_input_is_refused_with_the_field_named():
    with pytest.raises(ops.CaptionOpError, match="find is not a valid regular expression"):
        ops.replace("(", "x", regex=True)
    with pytest.raises(ops.CaptionOpError, match="replacement refers to a group"):
        ops.replace("a", r"\2", regex=True)
    with pytest.raises(ops.CaptionOpError, match="tag is empty"):
        ops.add_tag("  ")


def test_plan_lists_only_changes_and_respects_the_filter(tmp_path):
    images = _dataset(tmp_path, {"a.jpg": "cat, red", "b.jpg": "dog", "c.jpg": None})
    changes = ops.plan(images, ops.add_tag("pet"), ops.has_tag("red"))
    assert [(c.caption_file.name, c.before, c.after) for c in changes] == [("a.txt", "cat, red", "cat, red, pet")]
    assert (tmp_path / "a.txt").read_text() == "cat, red\n"  # a preview writes nothing
    only_missing = ops.plan(images, ops.set_trigger("ohwx"), ops.has_no_caption)
    assert [(c.caption_file.name, c.before, c.after) for c in only_missing] == [("c.txt", None, "ohwx")]
    assert [c.caption_file.name for c in ops.plan(images, ops.add_tag("x"), ops.among(["b.jpg"]))] == ["b.txt"]
    assert ops.preview_rows(only_missing) == [["c.txt", "(no caption file)", "ohwx"]]


def test_apply_then_undo_restores_every_file(tmp_path):
    images = _dataset(tmp_path, {"a.jpg": "cat", "b.jpg": None})
    outcome = ops.apply(ops.plan(images, ops.set_trigger("ohwx")))
    assert outcome.skipped == []
    assert (tmp_path / "a.txt").read_text() == "ohwx, cat\n"
    assert (tmp_path / "b.txt").read_text() == "ohwx\n"
    undone = ops.undo(outcome)
    assert undone.skipped == []
    assert (tmp_path / "a.txt").read_text() == "cat\n"
    assert not (tmp_path / "b.txt").exists()  # the caption file the edit created is gone again


def test_a_caption_edited_on_disk_after_the_preview_is_skipped_and_named(tmp_path):
    images = _dataset(tmp_path, {"a.jpg": "cat", "b.jpg": "dog"})
    changes = ops.plan(images, ops.add_prefix("ohwx, "))
    (tmp_path / "a.txt").write_text("cat by hand\n")
    outcome = ops.apply(changes)
    assert (tmp_path / "a.txt").read_text() == "cat by hand\n"
    assert (tmp_path / "b.txt").read_text() == "ohwx, dog\n"
    assert len(outcome.skipped) == 1 and outcome.skipped[0].startswith("a.txt: changed on disk")
    (tmp_path / "b.txt").write_text("dog by hand\n")
    undone = ops.undo(outcome)  # undo leaves a file edited since the apply alone, too
    assert (tmp_path / "b.txt").read_text() == "dog by hand\n"
    assert undone.skipped[0].startswith("b.txt: changed on disk")
