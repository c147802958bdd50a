"""Dataset TOML semantics of the native trainer: buckets, captions, prefixes, repeats, shuffling, masks."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainers.native.data import (
    BucketPlan,
    Item,
    ar_buckets,
    bucket_table,
    directory_settings,
    load_mask,
    load_pixels,
    scan_dataset,
    shuffled_captions,
    side_of,
    subsample_ratio,
)

# Expected sizes are worked out by hand: w = sqrt(res^2 * ar), h = res^2 / w, each side -> round(x / 16) * 16
# with halves going to the even multiple. Resolutions and ratios are first rounded to 3 decimals.
BUCKET_CASES = [
    # default: AR bucketing off, one square bucket
    ({"resolutions": [512]}, 16, [(512, 512)]),
    # AR settings are ignored while enable_ar_bucket is false (diffusion-pipe's default)
    ({"resolutions": [256], "min_ar": 0.5, "max_ar": 2.0, "num_ar_buckets": 3}, 16, [(256, 256)]),
    # geomspace(0.5, 2, 3) = 0.5, 1, 2. ar 0.5: w = sqrt(131072) = 362.04 -> 22.63 -> 368,
    # h = 262144 / 362.04 = 724.08 -> 45.25 -> 720; ar 2 mirrors it
    ({"resolutions": [512], "enable_ar_bucket": True, "min_ar": 0.5, "max_ar": 2.0, "num_ar_buckets": 3}, 16,
     [(368, 720), (512, 512), (720, 368)]),
    # geomspace(0.6, 1.6, 4) = 0.6, 0.83203, 1.15380, 1.6 -> 0.6, 0.832, 1.154, 1.6
    # 0.6: w = 396.59 -> 24.79 -> 400, h = 660.99 -> 41.31 -> 656; 0.832: 467.02 -> 29.19 -> 464,
    # 561.32 -> 35.08 -> 560; 1.154: 550.01 -> 34.38 -> 544, 476.61 -> 29.79 -> 480;
    # 1.6: 647.63 -> 40.48 -> 640, 404.77 -> 25.30 -> 400
    ({"resolutions": [512], "enable_ar_bucket": True, "min_ar": 0.6, "max_ar": 1.6, "num_ar_buckets": 4}, 16,
     [(400, 656), (464, 560), (544, 480), (640, 400)]),
    # explicit ratios (sorted): 1.5 at 1024: w = sqrt(1572864) = 1254.14 -> 78.38 -> 1248,
    # h = 1048576 / 1254.14 = 836.09 -> 52.26 -> 832
    ({"resolutions": [1024], "enable_ar_bucket": True, "ar_buckets": [1.5, 1.0]}, 16, [(1024, 1024), (1248, 832)]),
    # [w, h] ratios: 9/16 = 0.5625 is a half-way case at 3 decimals -> 0.562 (even); 16/9 -> 1.778
    # 0.562: w = sqrt(147324.9) = 383.83 -> 23.99 -> 384, h = 682.97 -> 42.69 -> 688
    # 1.778: w = 682.71 -> 42.67 -> 688, h = 383.98 -> 24.00 -> 384
    ({"resolutions": [512], "enable_ar_bucket": True, "ar_buckets": [[16, 9], [9, 16]]}, 16,
     [(384, 688), (688, 384)]),
    # [w, h] resolution: sqrt(512 * 768) = 627.0694 -> 627.069; 627.069 / 16 = 39.19 -> 39 -> 624
    ({"resolutions": [[512, 768]]}, 16, [(624, 624)]),
    # several resolutions, per AR then per (sorted) resolution: ar 0.75 at 512: w = 443.41 -> 27.71 -> 448,
    # h = 591.21 -> 36.95 -> 592; at 768: w = 665.11 -> 41.57 -> 672, h = 886.81 -> 55.43 -> 880
    ({"resolutions": [768, 512], "enable_ar_bucket": True, "ar_buckets": [1.0, 0.75]}, 16,
     [(448, 592), (672, 880), (512, 512), (768, 768)]),
    # half-way sides: 40 / 16 = 2.5 -> 2 -> 32; 56 / 16 = 3.5 -> 4 -> 64 (round half to even)
    ({"resolutions": [56, 40]}, 16, [(32, 32), (64, 64)]),
    # ar 4 at 48: w = sqrt(9216) = 96 -> 6 -> 96, h = 2304 / 96 = 24 -> 1.5 -> 2 -> 32; ar 0.25 mirrors it
    ({"resolutions": [48], "enable_ar_bucket": True, "ar_buckets": [4.0, 0.25]}, 16, [(32, 96), (96, 32)]),
    # duplicates collapse: 512.0001 and [512, 512] round to 512; 1.0004 and [2, 2] round to 1.0
    ({"resolutions": [512, 512.0001, [512, 512]], "enable_ar_bucket": True, "ar_buckets": [1.0, 1.0004, [2, 2]]},
     16, [(512, 512)]),
    # geomspace(1, 1, 3) = 1, 1, 1 -> one ratio
    ({"resolutions": [64], "enable_ar_bucket": True, "min_ar": 1, "max_ar": 1, "num_ar_buckets": 3}, 16,
     [(64, 64)]),
    # explicit size buckets keep their order; 1000 / 16 = 62.5 -> 62 -> 992, 600 / 16 = 37.5 -> 38 -> 608
    ({"size_buckets": [[960, 960, 1], [960, 704, 1], [704, 960, 1], [1000, 600, 1]]}, 16,
     [(960, 960), (960, 704), (704, 960), (992, 608)]),
    # another pixel multiple: ar 1.5 at 512: w = 627.07 / 32 = 19.60 -> 640, h = 418.05 / 32 = 13.06 -> 416
    ({"resolutions": [512], "enable_ar_bucket": True, "ar_buckets": [1.5]}, 32, [(640, 416)]),
]


@pytest.mark.parametrize(("settings", "multiple", "expected"), BUCKET_CASES)
def test_bucket_table_matches_hand_computed_sizes(settings: dict, multiple: int, expected: list):
    assert bucket_table(settings, multiple) == expected


def test_images_go_to_the_nearest_ratio_in_log_space_first_on_ties():
    plan = BucketPlan.from_settings({"resolutions": [512, 256], "enable_ar_bucket": True,
                                     "ar_buckets": [0.5, 2.0]})
    # |log 1 - log 0.5| == |log 1 - log 2|: the first ratio wins, as numpy's argmin does.
    assert [s.size for s in plan.for_image(100, 100)] == [(176, 368), (368, 720)]
    assert [s.ar for s in plan.for_image(300, 100)] == [2.0, 2.0]
    sizes = BucketPlan.from_settings({"size_buckets": [[64, 64, 1], [96, 48, 1], [48, 96, 1]]})
    assert [s.size for s in sizes.for_image(40, 80)] == [(48, 96)]
    assert [s.size for s in sizes.for_image(90, 40)] == [(96, 48)]


def test_bucket_settings_errors_name_the_key():
    with pytest.raises(ValueError, match="frame_buckets"):
        bucket_table({"resolutions": [64], "frame_buckets": [0]})
    with pytest.raises(ValueError, match=r"no \[width, height, 1\] entry"):
        bucket_table({"size_buckets": [[64, 64, 33]]})


def test_video_frame_buckets_leave_images_at_frame_one():
    # diffusion-pipe utils/dataset.py:509-511 adds frame 1 when missing; images (frames = 1) take the frame-1
    # bucket (:838-852) and, with size_buckets, only a [w, h, 1] entry (:862-866)
    settings = {"resolutions": [64], "enable_ar_bucket": True, "min_ar": 0.5, "max_ar": 2.0, "num_ar_buckets": 3}
    for frames in ([1, 33], [33], [1, 17, 33]):
        assert bucket_table({**settings, "frame_buckets": frames}) == bucket_table(settings)
    mixed = {"size_buckets": [[64, 64, 33], [64, 64, 1], [96, 48, 1], [96, 48, 17]]}
    assert bucket_table(mixed) == [(64, 64), (96, 48)]
    with pytest.raises(ValueError, match="min_ar, max_ar, num_ar_buckets"):
        bucket_table({"resolutions": [64], "enable_ar_bucket": True})
    with pytest.raises(ValueError, match="resolutions"):
        bucket_table({})
    with pytest.raises(ValueError, match="at least 16"):
        bucket_table({"resolutions": [4]})


def _image(path: Path, size=(80, 40), mode="RGB", colour=(10, 20, 30)) -> Path:
    Image.new(mode, size, colour if mode == "RGB" else (*colour, 0)).save(path)
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


def _scan(folder: Path, top: dict | None = None, **directory) -> list[Item]:
    return scan_dataset({"resolutions": [64], **(top or {}), "directory": [{"path": str(folder), **directory}]}, 0)


def test_captions_prefix_and_skipped_files(folder: Path, caplog):
    with caplog.at_level(logging.WARNING):
        items = _scan(folder, caption_prefix="zxq, ")
    assert sorted((i.path.name, i.caption) for i in items) == [("a.png", "zxq, cat, red, tall"), ("b.png", "zxq, dog")]
    assert {i.size for i in items} == {(64, 64)}
    assert {i.root for i in items} == {folder}
    assert "nocap.png" in caplog.text and "broken.png" in caplog.text


def test_missing_captions_train_empty_when_asked_and_empty_txt_is_a_caption(folder: Path):
    items = _scan(folder, {"skip_empty_caption": False})
    assert ("nocap.png", "") in {(i.path.name, i.caption) for i in items}
    (folder / "nocap.txt").write_text("  \n", encoding="utf-8")  # diffusion-pipe: an empty .txt is a caption
    assert ("nocap.png", "") in {(i.path.name, i.caption) for i in _scan(folder)}


def test_caption_files_read_whole_and_odd_ones_are_no_caption(folder: Path):
    """The caption read by descriptor (trainers/native/media.py captions_of): a caption longer than one read is
    whole, a folder named like a caption is no caption, dots in the stem stay (only the suffix is replaced)."""
    from trainers.native.media import BadMedia, captions_of

    long = ", ".join(f"tag{i}" for i in range(20000))  # ~170 KB: three reads
    _image(folder / "my.pic.v2.png")
    (folder / "my.pic.v2.txt").write_text(f"  {long}\n", encoding="utf-8")
    assert captions_of(folder / "my.pic.v2.png", None) == [long]
    _image(folder / "dir.png")
    (folder / "dir.txt").mkdir()
    assert captions_of(folder / "dir.png", None) is None
    assert captions_of(folder / "gone.png", None) is None
    (folder / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(BadMedia, match="not valid UTF-8") as caught:
        captions_of(folder / "latin.png", None)
    assert caught.value.path == folder / "latin.txt"


def test_each_resolution_duplicates_and_repeats_are_kept(folder: Path):
    items = scan_dataset({"resolutions": [32, [64, 64]], "directory": [{"path": str(folder), "num_repeats": 3}]}, 0)
    assert len(items) == 4
    assert {i.size for i in items} == {(32, 32), (64, 64)}
    assert {i.repeats for i in items} == {3}
    with pytest.raises(ValueError, match="num_repeats"):
        _scan(folder, num_repeats=0)


def test_tag_shuffling_variants_are_seeded_per_file(folder: Path):
    items = _scan(folder, shuffle_tags=True)
    caption = next(i.caption for i in items if i.path.name == "a.png")
    assert sorted(caption.split(", ")) == ["cat", "red", "tall"]
    many = [i.caption for i in _scan(folder, cache_shuffle_num=4) if i.path.name == "a.png"]
    assert len(many) == 4 and all(sorted(c.split(", ")) == ["cat", "red", "tall"] for c in many)
    assert len(set(many)) > 1
    _image(folder / "c.png")  # another file does not change a.png's variants (their text embeddings stay cached)
    (folder / "c.txt").write_text("x, y", encoding="utf-8")
    assert [i.caption for i in _scan(folder, cache_shuffle_num=4) if i.path.name == "a.png"] == many
    variants = shuffled_captions("a|b|c|d", 3, "|", random.Random(0))
    assert len(variants) == 3 and all(sorted(v.split("|")) == ["a", "b", "c", "d"] for v in variants)
    assert shuffled_captions("a, b", 0, ", ", random.Random(0)) == ["a, b"]


def test_captions_json_wins_over_txt_and_every_caption_is_an_example(folder: Path, caplog):
    (folder / "captions.json").write_text(json.dumps({"a.png": ["one", "two"], "b.png": []}), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        items = _scan(folder, caption_prefix="p ", online_captions=True)
    assert sorted(i.caption for i in items) == ["p one", "p two"]
    assert "nocap.png" in caplog.text  # no entry = no caption


def test_bad_captions_json_names_the_file_and_entry(folder: Path):
    (folder / "captions.json").write_text(json.dumps({"a.png": "not a list"}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"captions\.json.*'a\.png'"):
        _scan(folder)


def test_online_captions_needs_captions_json(folder: Path):
    with pytest.raises(FileNotFoundError, match="captions.json"):
        _scan(folder, online_captions=True)


def test_directory_overrides_top_level():
    merged = directory_settings({"resolutions": [512], "num_repeats": 2, "caption_prefix": "x"},
                                {"path": "p", "num_repeats": 5})
    assert merged == {"resolutions": [512], "num_repeats": 5, "caption_prefix": "x"}


def test_ratio_helpers():
    assert side_of([64, 16]) == 32
    assert ar_buckets({}) == [1.0]
    assert ar_buckets({"enable_ar_bucket": True, "ar_buckets": [[16, 9], 1.0]}) == [1.0, 1.778]


def test_dataset_errors_name_the_problem(tmp_path: Path, folder: Path):
    with pytest.raises(ValueError, match="directory"):
        scan_dataset({"resolutions": [64]}, 0)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        scan_dataset({"resolutions": [64], "directory": [{"path": str(tmp_path / "missing")}]}, 0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RuntimeError, match="empty"):
        scan_dataset({"resolutions": [64], "directory": [{"path": str(empty)}]}, 0)
    with pytest.raises(ValueError, match="edit datasets are not supported for chroma"):
        _scan(folder, control_path=str(folder))


def test_subsample_ratio_is_top_level_and_checked(folder: Path):
    assert subsample_ratio({"subsample_ratio": 0.5}) == 0.5
    assert subsample_ratio({}) is None
    with pytest.raises(ValueError, match="subsample_ratio"):
        subsample_ratio({"subsample_ratio": 1.5})
    with pytest.raises(ValueError, match="top-level"):
        _scan(folder, subsample_ratio=0.5)


def test_masks_match_by_stem_and_missing_ones_warn(folder: Path, tmp_path_factory, caplog):
    masks = tmp_path_factory.mktemp("masks")
    _image(masks / "a.jpg", (80, 40), colour=(200, 0, 0))
    with caplog.at_level(logging.WARNING):
        items = _scan(folder, mask_path=str(masks))
    by_name = {i.path.name: i for i in items}
    assert by_name["a.png"].mask == masks / "a.jpg" and by_name["b.png"].mask is None
    assert "no mask file for b.png" in caplog.text
    mask = load_mask(by_name["a.png"])
    assert mask.shape == (64, 64) and mask.dtype == np.uint8 and int(mask.max()) == int(mask.min()) == 200
    assert load_mask(by_name["b.png"]) is None
    default = _image(tmp_path_factory.mktemp("default") / "m.png", (40, 40), colour=(255, 255, 255))
    items = _scan(folder, mask_path=str(masks), default_mask_file=str(default))
    assert {i.path.name: i.mask for i in items}["b.png"] == default


def test_mask_of_another_size_is_an_error_naming_both_files(folder: Path, tmp_path_factory):
    masks = tmp_path_factory.mktemp("masks")
    _image(masks / "a.png", (81, 40))
    with pytest.raises(ValueError, match=r"mask .*a\.png is 81x40 but image .*a\.png is 80x40"):
        _scan(folder, mask_path=str(masks))


def test_mask_is_cropped_like_its_image(tmp_path: Path):
    img = Image.new("RGB", (80, 40), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 40, 40))  # left half white
    img.save(tmp_path / "m.png")
    mask = load_mask(Item(tmp_path / "x.png", "", (32, 32), mask=tmp_path / "m.png"))
    # centre crop of 80x40 to a square keeps columns 20..60: the left half of the crop is white.
    assert mask[:, :14].min() == 255 and mask[:, 18:].max() == 0


def test_load_pixels_crops_and_flattens_alpha(tmp_path: Path):
    img = load_pixels(Item(_image(tmp_path / "t.png", (80, 40), "RGBA"), "", (32, 32)))
    assert img.size == (32, 32) and img.mode == "RGB"
    assert img.getpixel((16, 16)) == (255, 255, 255)
