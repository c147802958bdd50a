"""Dataset TOML semantics of the native trainer: captions, prefixes, repeats, shuffling, buckets."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from PIL import Image

from trainers.native.data import (
    ar_buckets,
    bucket_size,
    directory_settings,
    load_pixels,
    nearest_aspect,
    scan_dataset,
    shuffled_captions,
    side_of,
)


def _image(path: Path, size=(80, 40), mode="RGB") -> Path:
    Image.new(mode, size, (10, 20, 30) if mode == "RGB" else (10, 20, 30, 0)).save(path)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    _image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("cat, red, tall\n", encoding="utf-8")
    _image(tmp_path / "b.png", (40, 40))
    (tmp_path / "b.txt").write_text("dog", encoding="utf-8")
    _image(tmp_path / "nocap.png")
    (tmp_path / "notes.json").write_text("{}", encoding="utf-8")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    return tmp_path


def test_captions_prefix_and_skipped_files(folder: Path):
    items = scan_dataset({"resolutions": [64], "directory": [{"path": str(folder), "caption_prefix": "zxq, "}]}, 0)
    assert sorted((i.path.name, i.caption) for i in items) == [("a.png", "zxq, cat, red, tall"),
                                                               ("b.png", "zxq, dog")]
    assert {i.size for i in items} == {(64, 64)}


def test_empty_captions_kept_when_asked(folder: Path):
    items = scan_dataset({"resolutions": [64], "skip_empty_caption": False, "directory": [{"path": str(folder)}]}, 0)
    assert ("nocap.png", "") in {(i.path.name, i.caption) for i in items}


def test_each_resolution_duplicates_and_repeats_are_kept(folder: Path):
    items = scan_dataset({"resolutions": [32, [64, 64]], "directory": [{"path": str(folder), "num_repeats": 3}]}, 0)
    assert len(items) == 4
    assert {i.size for i in items} == {(32, 32), (64, 64)}
    assert {i.repeats for i in items} == {3}


def test_shuffle_tags_makes_one_shuffled_variant(folder: Path):
    items = scan_dataset({"resolutions": [64], "directory": [{"path": str(folder), "shuffle_tags": True}]}, 0)
    caption = next(i.caption for i in items if i.path.name == "a.png")
    assert sorted(caption.split(", ")) == ["cat", "red", "tall"]
    variants = shuffled_captions("a, b, c, d", 3, ", ", random.Random(0))
    assert len(variants) == 3 and all(sorted(v.split(", ")) == ["a", "b", "c", "d"] for v in variants)
    assert shuffled_captions("a, b", 0, ", ", random.Random(0)) == ["a, b"]


def test_captions_json_wins_over_txt(folder: Path):
    (folder / "captions.json").write_text(json.dumps({"a.png": ["one", "two"]}), encoding="utf-8")
    items = scan_dataset({"resolutions": [64], "directory": [{"path": str(folder)}]}, 0)
    assert sorted(i.caption for i in items) == ["one", "two"]


def test_directory_overrides_top_level():
    merged = directory_settings({"resolutions": [512], "num_repeats": 2, "caption_prefix": "x"},
                                {"path": "p", "num_repeats": 5})
    assert merged == {"resolutions": [512], "num_repeats": 5, "caption_prefix": "x"}


def test_buckets():
    assert side_of([64, 16]) == 32
    assert ar_buckets({}) == [1.0]
    assert ar_buckets({"enable_ar_bucket": True, "ar_buckets": [[16, 9], 1.0]}) == [16 / 9, 1.0]
    spaced = ar_buckets({"enable_ar_bucket": True, "min_ar": 0.5, "max_ar": 2.0, "num_ar_buckets": 3})
    assert spaced == pytest.approx([0.5, 1.0, 2.0])
    assert nearest_aspect(1.9, spaced) == pytest.approx(2.0)
    assert bucket_size(64, 1.0) == (64, 64)
    w, h = bucket_size(512, 2.0)
    assert w % 16 == 0 and h % 16 == 0 and abs(w * h - 512 * 512) / (512 * 512) < 0.05


def test_errors_name_the_problem(tmp_path: Path):
    with pytest.raises(ValueError, match="directory"):
        scan_dataset({"resolutions": [64]}, 0)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        scan_dataset({"resolutions": [64], "directory": [{"path": str(tmp_path / "missing")}]}, 0)
    with pytest.raises(RuntimeError, match="empty"):
        scan_dataset({"resolutions": [64], "directory": [{"path": str(tmp_path)}]}, 0)


def test_load_pixels_crops_and_flattens_alpha(tmp_path: Path):
    from trainers.native.data import Item

    img = load_pixels(Item(_image(tmp_path / "t.png", (80, 40), "RGBA"), "", (32, 32)))
    assert img.size == (32, 32) and img.mode == "RGB"
    assert img.getpixel((16, 16)) == (255, 255, 255)
