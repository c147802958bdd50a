"""The dataset check's cache: a second open reads no picture, yet reports the same; an edited file is read again;
nothing is written into the dataset folder."""

from __future__ import annotations

import os

import pytest

from tests.fixtures.datasets import flawed_dataset
from trainers import dataset_report
from trainers.dataset_report import analyse
from trainers.datasets import check_cache


def _facts(report):
    return [(i.path.name, i.width, i.height, round(i.sharpness, 6), sorted(i.issues)) for i in report.images]


def test_a_second_open_reads_no_picture_and_reports_the_same(tmp_path, monkeypatch):
    folder = flawed_dataset(tmp_path / "ds")
    before = set(folder.rglob("*"))
    first = analyse(folder, resolution=512, trigger="zxq")
    assert set(folder.rglob("*")) == before  # the cache lives under the studio home only
    assert any(check_cache.cache_root().rglob("*.jpg"))

    def no_decoding(path):
        raise AssertionError(f"{path.name} decoded although cached")
    monkeypatch.setattr(dataset_report.data, "open_image", no_decoding)
    monkeypatch.setattr(dataset_report.imagehash, "phash", no_decoding)  # the hash is cached too
    second = analyse(folder, resolution=512, trigger="zxq")
    assert _facts(second) == _facts(first)
    assert second.duplicates == first.duplicates


def test_an_edited_picture_is_measured_again(tmp_path, monkeypatch):
    folder = flawed_dataset(tmp_path / "ds")
    analyse(folder, resolution=512)
    picture = next(p for p in sorted(folder.iterdir()) if p.suffix == ".png")
    stat = picture.stat()
    os.utime(picture, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    opened = []
    real = dataset_report.data.open_image
    monkeypatch.setattr(dataset_report.data, "open_image", lambda path: opened.append(path.name) or real(path))
    analyse(folder, resolution=512)
    assert opened == [picture.name]


@pytest.mark.parametrize("damage", [b"not a png", b""])
def test_a_damaged_entry_is_measured_again(tmp_path, damage):
    folder = flawed_dataset(tmp_path / "ds")
    first = analyse(folder, resolution=512)
    for entry in check_cache.cache_root().rglob("*.jpg"):
        entry.write_bytes(damage)
    assert _facts(analyse(folder, resolution=512)) == _facts(first)
