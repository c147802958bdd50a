"""The dataset report: crops equal what the trainer loads, every health check fires on its case and only there."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.fixtures.datasets import flawed_dataset
from trainers.datasets import report as dr
from trainers.datasets.report import DatasetReportError, analyse, crop_box, crop_preview, estimate_tokens
from trainers.native import data

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("source,size", [((1600, 400), (720, 368)), ((300, 500), (384, 640)),
                                          ((512, 512), (512, 512)), ((640, 480), (448, 336))])
def test_the_crop_box_is_what_the_trainer_resizes_from(source, size):
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 255, (source[1], source[0], 3), dtype=np.uint8))
    fitted = np.asarray(ImageOps.fit(picture, size), dtype=np.int16)  # data.load_pixels does exactly this
    boxed = np.asarray(picture.resize(size, Image.Resampling.BICUBIC, box=crop_box(*source, size)), dtype=np.int16)
    assert np.abs(fitted - boxed).max() == 0


def test_every_problem_of_the_flawed_dataset_is_found(tmp_path):
    report = analyse(flawed_dataset(tmp_path / "ds"), resolution=512, trigger="zxq", global_batch=2)
    issues = {i.path.stem: [issue.split(":")[0] for issue in i.issues] for i in report.images}
    assert issues == {"blurred": ["no trigger", "blurry"], "clean_a": [], "clean_b": [],
                      "dupe_of_a": ["near-duplicate"], "panorama": ["heavy crop"], "small": ["upscaled"],
                      "uncaptioned": ["no caption"]}
    assert report.duplicates == [("clean_a.png", "dupe_of_a.png", report.duplicates[0][2])]
    by_name = {i.path.stem: i for i in report.images}
    panorama = by_name["panorama"]
    assert panorama.buckets == [(720, 368)] and panorama.kept == pytest.approx(0.5, abs=0.02)
    assert by_name["small"].scale == pytest.approx(4.0) and by_name["uncaptioned"].examples == 0
    # Buckets as the trainer makes them; at global batch 2 the two single-image buckets never train.
    items = data.scan_dataset({"resolutions": [512], "enable_ar_bucket": True, "min_ar": 0.5, "max_ar": 2.0,
                               "num_ar_buckets": 7, "directory": [{"path": str(tmp_path / "ds")}]}, 0)
    assert sorted(b.size for b in report.buckets) == sorted({i.size for i in items})
    assert {b.size: (b.examples, b.steps, b.dropped) for b in report.buckets} == {
        (512, 512): (4, 2, False), (640, 400): (1, 0, True), (720, 368): (1, 0, True)}
    assert report.tags[0] == ("zxq", 5) and ("cat", 2) in report.tags
    text = report.summary_markdown()
    assert "7 images" in text and "6 trained" in text and "2 steps per epoch at global batch 2" in text
    assert "buckets dropped" in report.health_markdown()
    preview = crop_preview(panorama)
    assert preview.width > preview.height  # the picture and the training view side by side


def test_a_dataset_toml_brings_its_own_settings(tmp_path):
    folder = flawed_dataset(tmp_path / "profile" / "images")
    (folder / "captions.json").write_text(json.dumps({"clean_a.png": ["first", "second"], "small.png": ["tiny"]}))
    toml = tmp_path / "profile" / "dataset.toml"
    toml.write_text("resolutions = [256]\nenable_ar_bucket = false\nnum_repeats = 3\ncaption_prefix = 'zxq, '\n\n"
                    "[[directory]]\npath = 'images'\n")
    report = analyse(toml, resolution=1024, trigger="zxq")  # the folder-only resolution is ignored
    by_name = {i.path.stem: i for i in report.images}
    assert by_name["clean_a"].captions == ["first", "second"] and by_name["clean_a"].examples == 2 * 3
    assert by_name["clean_a"].buckets == [(256, 256)] and by_name["small"].scale == pytest.approx(2.0)
    assert "no caption" in by_name["clean_b"].issues[0]  # captions.json wins over .txt files, as in training
    assert "dataset.toml" in report.settings
    # The trigger comes with caption_prefix, as in training: not missing.
    assert not any("no trigger" in issue for issue in by_name["clean_a"].issues + by_name["small"].issues)


def test_an_edit_dataset_reports_its_targets_and_names_a_missing_control(tmp_path):
    # Flux Kontext datasets (control_path) are browsed like any other: the targets are the images
    images, controls = tmp_path / "images", tmp_path / "controls"
    images.mkdir()
    controls.mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (64, 64), (200, 10, 10)).save(images / f"{name}.png")
        (images / f"{name}.txt").write_text("make it red")
        Image.new("RGB", (64, 64)).save(controls / f"{name}.jpg")
    toml = tmp_path / "dataset.toml"
    toml.write_text("resolutions = [64]\n\n[[directory]]\npath = 'images'\ncontrol_path = 'controls'\n")
    assert sorted(i.path.name for i in analyse(toml).images) == ["a.png", "b.png"]
    (controls / "b.jpg").unlink()
    with pytest.raises(DatasetReportError, match="no control image for .*b.png"):
        analyse(toml)


def test_the_demo_dataset_is_clean_at_its_own_resolution():
    report = analyse(REPO / "assets" / "demo" / "dataset", resolution=64, ar_buckets=False)
    assert len(report.images) == 24 and report.problems.keys() <= {"near-duplicate"}
    assert [b.size for b in report.buckets] == [(64, 64)]


def test_bad_input_says_what_to_pick(tmp_path):
    with pytest.raises(DatasetReportError, match="neither a folder nor a dataset TOML"):
        analyse(tmp_path / "nowhere")
    (tmp_path / "bad.toml").write_text("[[directory]]\npath = 'missing'\n")
    with pytest.raises(DatasetReportError, match="is not a directory"):
        analyse(tmp_path / "bad.toml")
    with pytest.raises(DatasetReportError, match="global batch 0"):
        analyse(tmp_path, global_batch=0)


def test_token_estimate_flags_captions_t5_cannot_read(tmp_path):
    assert estimate_tokens("a red cat") < 10
    folder = flawed_dataset(tmp_path / "ds")
    (folder / "clean_a.txt").write_text("zxq, " + ", ".join(f"tag{i}" for i in range(400)))
    report = analyse(folder, resolution=512)
    (clean_a,) = [i for i in report.images if i.path.stem == "clean_a"]
    assert any(issue.startswith("long caption: about") for issue in clean_a.issues)


def test_captions_are_saved_where_the_trainer_reads_them(tmp_path):
    from trainers.datasets.report import save_captions

    folder = flawed_dataset(tmp_path / "ds")
    report = analyse(folder, resolution=512, trigger="zxq")
    blurred = report.find("blurred.png")
    assert any(i.startswith("no trigger") for i in blurred.issues)
    assert save_captions(report, blurred, ["zxq, a soft picture"]) == folder / "blurred.txt"
    assert (folder / "blurred.txt").read_text() == "zxq, a soft picture\n"
    assert [i.split(":")[0] for i in blurred.issues] == ["blurry"]  # the trigger issue is gone, blur stays
    uncaptioned = report.find("uncaptioned.png")
    save_captions(report, uncaptioned, ["zxq, noise"])
    assert not uncaptioned.issues and not list(folder.glob(".*tmp*"))  # written through a temp file, renamed
    with pytest.raises(DatasetReportError, match="holds one caption"):
        save_captions(report, uncaptioned, ["one", "two"])
    with pytest.raises(DatasetReportError, match="the caption is empty"):
        save_captions(report, uncaptioned, ["  "])
    # A folder with captions.json: the entry is replaced, the other entries stay.
    (folder / "captions.json").write_text(json.dumps({"small.png": ["zxq tiny"], "clean_a.png": ["zxq a"]}))
    report = analyse(folder, resolution=512)
    save_captions(report, report.find("small.png"), ["zxq, first", "zxq, second"])
    assert json.loads((folder / "captions.json").read_text()) == {"small.png": ["zxq, first", "zxq, second"],
                                                                  "clean_a.png": ["zxq a"]}
    assert analyse(folder, resolution=512).find("small.png").captions == ["zxq, first", "zxq, second"]


def test_the_browser_names_a_bad_resolution_or_batch():
    from studio.tabs.datasets import browse

    folder = str(REPO / "assets" / "demo" / "dataset")

    def last(*args):
        return list(browse(folder, *args))[-1]
    assert last("big")[0] == "⚠ resolution 'big' is not a number: type a side in pixels such as 512 or 1024"
    assert "global batch 0 must be a whole number" in last(64, True, "", 0)[0]
    assert last("64", True, "", 2.0)[0].startswith("**24 images**")


def test_small_upscales_are_not_listed_and_the_largest_upscale_leads_the_health_list(tmp_path):
    folder = tmp_path / "ups"
    folder.mkdir()
    for name, side in [("slight", 480), ("double", 256), ("tiny", 32)]:  # ×1.07, ×2, ×16 to 512
        Image.new("RGB", (side, side), (120, 80, 40)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text("a square\n")
    Image.new("RGB", (512, 512)).save(folder / "zbare.png")  # no caption: a worse problem than upscaling
    report = analyse(folder, resolution=512)
    assert not any(i.startswith("upscaled") for i in report.find("slight.png").issues)
    assert report.table()[[r[0] for r in report.table()].index("slight.png")][4] == "×1.07"  # still shown
    health = report.health_markdown()
    assert health.index("no caption") < health.index("**upscaled** (2)")
    assert health.index("tiny.png") < health.index("double.png")


def test_the_browser_pages_and_filters_a_large_folder(tmp_path):
    """130 pictures: pages of PAGE_SIZE in the grid and the table alike, a filter applied before paging, page
    numbers clamped; only the page's thumbnails are sent, as served copies of the check cache's files."""
    from studio.tabs import datasets as tab

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(130):
        Image.new("RGB", (96, 96), (i, 2 * i % 255, 40)).save(folder / f"p{i:03d}.png")
        if i % 10:  # every tenth has no caption
            (folder / f"p{i:03d}.txt").write_text(f"picture {i}")
    *progress, final = list(tab.browse(str(folder), 64, False, "", 1))
    report = final[6]
    assert progress and "measuring" in progress[0][0] and "measuring" not in final[0]
    items, rows, number, note = tab.page_view(report, tab.ALL, 2)
    assert number == 2 and note.startswith("page 2 of 3 · 130 images")
    assert [r[0] for r in rows] == [f"p{i:03d}.png" for i in range(60, 120)]
    assert len(items) == 60 and all("/served/" in path for path, _ in items)
    assert items[0][1] == "p060.png: (no caption)" and items[1][1] == "p061.png: picture 61"
    items, rows, number, note = tab.page_view(report, "no caption", 9)  # filter first, then the (clamped) page
    assert number == 1 and [r[0] for r in rows] == [f"p{i:03d}.png" for i in range(0, 130, 10)]
    assert "13 images (no caption)" in note and len(items) == 13
    assert {r[0] for r in rows} <= {i.path.name for i in tab.shown_images(report, tab.PROBLEMS)}


def test_near_duplicates_are_every_pair_within_the_distance_in_folder_order() -> None:
    """The slice index finds exactly the pairs a comparison of every pair finds: planted near-copies (0-6 bits
    flipped, so some just past the limit), a run of identical hashes, and random ones."""
    rng = np.random.default_rng(7)
    hashes = [int(h) for h in rng.integers(0, 2**63, size=600, dtype=np.int64)]
    hashes[10:40] = [hashes[10]] * 30
    for _ in range(120):
        i, j = (int(k) for k in rng.integers(0, len(hashes), 2))
        hashes[j] = hashes[i] ^ sum(1 << int(b) for b in rng.choice(64, int(rng.integers(0, 7)), replace=False))
    infos = []
    for k, value in enumerate(hashes):
        info = dr.ImageInfo(Path(f"/data/{k:04d}.jpg"))
        info.measured, info.phash = True, value.to_bytes(8, "big")
        infos.append(info)
    expected = [(f"{i:04d}.jpg", f"{j:04d}.jpg", bin(hashes[i] ^ hashes[j]).count("1"))
                for i in range(len(hashes)) for j in range(i + 1, len(hashes))
                if bin(hashes[i] ^ hashes[j]).count("1") <= dr.DUPLICATE_DISTANCE]
    assert len(expected) > 200 and {d for *_, d in expected} == set(range(dr.DUPLICATE_DISTANCE + 1))
    assert dr._duplicates(infos) == expected


def test_a_running_check_fills_the_first_page_and_leaves_the_picture_being_edited_alone(tmp_path):
    """While the pictures are measured, the page's later updates show the first page once its thumbnails
    exist, and never clear the picture, details and caption the user may be editing."""
    import gradio as gr

    from studio.tabs import datasets as tab

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(130):
        Image.new("RGB", (96, 96), (i, 2 * i % 255, 40)).save(folder / f"p{i:03d}.png")
        (folder / f"p{i:03d}.txt").write_text(f"picture {i}")
    first, grid, final = list(tab.browse(str(folder), 64, False, "", 1))
    assert first[1] == [] and first[7:11] == (None, "", "", "")  # a new check: nothing measured, nothing picked
    assert "measuring 60 of 130" in grid[0] and len(grid[1]) == tab.PAGE_SIZE
    assert [caption for _, caption in grid[1]][:2] == ["p000.png: picture 0", "p001.png: picture 1"]
    for later in (grid, final):
        assert list(later[7:11]) == [gr.skip()] * 4
    assert grid[3] == gr.skip() and final[3] == final[6].bucket_table()
