"""``.tar`` archives in a dataset folder, read as diffusion-pipe reads them (utils/dataset.py
_get_ungrouped_metadata, lines 636-640 and 682-690)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainers.datasets import report as dataset_report
from trainers.native.data import load_pixels, scan_dataset
from trainers.native.disk_cache import _file_id


def _png(color: str, size=(64, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def _tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        dir_info = tarfile.TarInfo("sub")
        dir_info.type = tarfile.DIRTYPE
        tar.addfile(dir_info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _dataset(folder: Path) -> dict:
    return {"resolutions": [32], "enable_ar_bucket": True, "ar_buckets": [1.0, 2.0],
            "directory": [{"path": str(folder)}]}


def test_members_with_txt_members_train_and_load_from_the_archive(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    _tar(folder / "shard.tar", {"sub/red.png": _png("red"), "sub/red.txt": b"a red box",
                                "blue.png": _png("blue"), "blue.txt": b"a blue box",
                                "nocap.png": _png("green")})
    items = scan_dataset(_dataset(folder), seed=0)
    by_name = {item.path.name: item for item in items}
    assert set(by_name) == {"red.png", "blue.png"}  # nocap.png: no caption, skipped (skip_empty_caption)
    assert by_name["red.png"].path == folder / "shard.tar" / "sub" / "red.png"
    assert by_name["red.png"].caption == "a red box" and by_name["red.png"].size == (48, 16)
    pixels = np.asarray(load_pixels(by_name["blue.png"]))
    assert pixels.shape == (16, 48, 3) and (pixels[..., 2] > 200).all() and (pixels[..., 0] < 50).all()
    ids = {_file_id(item.path)[0] for item in items}
    assert len(ids) == 2 and all(i.startswith(str((folder / "shard.tar").resolve())) for i in ids)


def test_captions_json_keys_members_by_their_full_name(tmp_path):
    # diffusion-pipe utils/dataset.py:686-688: image_file.split('/')[-1] only when tar_file is None
    folder = tmp_path / "data"
    folder.mkdir()
    _tar(folder / "shard.tar", {"sub/red.png": _png("red"), "blue.png": _png("blue")})
    (folder / "captions.json").write_text(json.dumps({"sub/red.png": ["red one", "red two"], "red.png": ["no"]}))
    items = scan_dataset(_dataset(folder), seed=0)
    assert sorted(item.caption for item in items) == ["red one", "red two"]


def test_a_damaged_archive_is_skipped_with_its_name(tmp_path, caplog):
    folder = tmp_path / "data"
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(folder / "ok.png")
    (folder / "ok.txt").write_text("ok")
    (folder / "broken.tar").write_bytes(b"\x00garbage" * 10)
    items = scan_dataset(_dataset(folder), seed=0)
    assert [item.path.name for item in items] == ["ok.png"]
    assert "broken.tar" in caplog.text and "tar archive" in caplog.text
    with pytest.raises(ValueError, match="broken.tar"):
        scan_dataset(_dataset(folder), seed=0, strict=True)


def test_the_dataset_report_lists_archive_members(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    _tar(folder / "shard.tar", {"red.png": _png("red"), "red.txt": b"a red box", "nocap.png": _png("green")})
    report = dataset_report.analyse(folder, resolution=32)
    red, nocap = report.find("red.png"), report.find("nocap.png")
    assert red.trained and red.captions == ["a red box"] and (red.width, red.height) == (64, 32)
    assert not nocap.trained and any(issue.startswith("no caption") for issue in nocap.issues)


def test_a_member_caption_is_not_written_into_a_fake_folder(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    _tar(folder / "shard.tar", {"red.png": _png("red"), "red.txt": b"a red box"})
    report = dataset_report.analyse(folder, resolution=32)
    with pytest.raises(dataset_report.DatasetReportError, match="inside shard.tar.*'red.png'"):
        dataset_report.save_captions(report, report.find("red.png"), ["new"])
    assert not [p.name for p in folder.iterdir() if p.suffix in (".txt", ".json")]
