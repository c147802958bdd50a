"""One bad file never aborts a run: the trainer's reader and the dataset report skip it, naming it and why;
``[studio] strict_dataset = true`` stops on it instead."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fixtures import bad_media
from trainers.datasets import report as dataset_report
from trainers.events import LogEvent
from trainers.native.__main__ import EventLogHandler
from trainers.native.data import BadMedia, Item, load_pixels, scan_dataset

BAD = {
    "corrupt.jpg": (bad_media.corrupt_jpeg, "not a readable image"),
    "truncated.png": (bad_media.truncated_png, "not a readable image"),
    "animated.webp": (bad_media.animated_webp, "animated WebP (2 frames)"),
    "loop.png": (bad_media.symlink_loop, "symlink loop"),
}


def _folder(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A folder with one good captioned image and one bad file (captioned too, when it is an image)."""
    folder = tmp_path / "data"
    folder.mkdir()
    bad_media.good_png(folder / "good.png")
    if name == "caption.png":
        bad = bad_media.good_png(folder / name, caption=None)
        return folder, bad_media.latin1_caption(bad)
    maker, _ = BAD[name]
    bad = maker(folder / name)
    if name != "loop.png":
        bad.with_suffix(".txt").write_text("a bad picture", encoding="utf-8")
    return folder, bad


def _dataset(folder: Path) -> dict:
    return {"resolutions": [64], "directory": [{"path": str(folder)}]}


REASONS = {**{name: reason for name, (_, reason) in BAD.items()}, "caption.png": "not valid UTF-8 (byte 0xe9"}


@pytest.mark.parametrize("name", sorted(REASONS))
def test_reader_skips_a_bad_file_with_a_warning_naming_it(tmp_path, caplog, name):
    folder, bad = _folder(tmp_path, name)
    with caplog.at_level(logging.WARNING, logger="trainers.native"):
        items = scan_dataset(_dataset(folder), seed=0)
    assert {item.path.name for item in items} == {"good.png"}
    warnings = [r.getMessage() for r in caplog.records if str(bad) in r.getMessage()]
    assert warnings and REASONS[name] in warnings[0], caplog.text


@pytest.mark.parametrize("name", sorted(REASONS))
def test_strict_dataset_stops_on_the_bad_file(tmp_path, name):
    folder, bad = _folder(tmp_path, name)
    with pytest.raises(ValueError, match="strict_dataset") as caught:
        scan_dataset(_dataset(folder), seed=0, strict=True)
    assert str(bad) in str(caught.value) and REASONS[name] in str(caught.value)


@pytest.mark.parametrize("name", sorted(REASONS))
def test_dataset_report_lists_the_bad_file(tmp_path, name):
    folder, bad = _folder(tmp_path, name)
    report = dataset_report.analyse(folder, resolution=64)
    good = report.find("good.png")
    assert good.trained and not [i for i in good.issues if i.startswith("skipped")]
    image = folder / name
    info = report.find(image.name)
    assert info is not None and not info.trained
    assert any(issue.startswith("skipped:") and REASONS[name] in issue for issue in info.issues), info.issues
    assert "skipped" in report.health_markdown() and image.name in report.health_markdown()


def test_the_skip_warning_reaches_the_run_events(tmp_path):
    folder, bad = _folder(tmp_path, "corrupt.jpg")

    class Events:
        def __init__(self):
            self.sent = []

        def emit(self, event):
            self.sent.append(event)

    events = Events()
    handler = EventLogHandler(events)
    logger = logging.getLogger("trainers.native")
    logger.addHandler(handler)
    try:
        scan_dataset(_dataset(folder), seed=0)
    finally:
        logger.removeHandler(handler)
    logs = [e for e in events.sent if isinstance(e, LogEvent) and str(bad) in e.message]
    assert logs and logs[0].level == "warning" and "skipping" in logs[0].message


def test_a_file_damaged_after_the_scan_is_named_when_loaded(tmp_path):
    folder, _ = _folder(tmp_path, "corrupt.jpg")
    good = folder / "good.png"
    item = Item(good, "x", (64, 64))
    bad_media.truncated_png(good)
    with pytest.raises(BadMedia, match="good.png"):
        load_pixels(item)


def test_a_16_bit_tiff_trains_as_its_picture_not_near_white(tmp_path):
    path = tmp_path / "scan.tif"
    expected = bad_media.gradient_tiff16(path)
    assert Image.open(path).mode.startswith("I")
    pixels = np.asarray(load_pixels(Item(path, "x", (64, 64)))).astype(int)
    assert np.abs(pixels[..., 0] - expected).max() <= 1
    assert (pixels[..., 0] == pixels[..., 2]).all()


def test_the_decompression_bomb_message_says_what_it_is(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    folder.mkdir()
    bad_media.good_png(folder / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 2 - 1)  # Pillow refuses above twice the limit
    with pytest.raises(ValueError) as caught:
        scan_dataset(_dataset(folder), seed=0, strict=True)
    message = str(caught.value)
    assert "huge.png" in message and "decompression bomb" in message and "MAX_IMAGE_PIXELS" in message
    assert "4,096 pixels" in message and "downscale" in message
