"""The dataset check's cache: a second open reads no picture, yet reports the same; an edited file is read again;
a damaged index or a removed thumbnail costs a measurement, never a wrong report; nothing is written into the
dataset folder."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from tests.fixtures.datasets import flawed_dataset
from trainers.datasets import check_cache, measure
from trainers.datasets.report import analyse, check_steps
from trainers.native import media


def _facts(report):
    return [(i.path.name, i.width, i.height, round(i.sharpness, 6), sorted(i.issues)) for i in report.images]


def _no_pictures(monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError(f"a picture was opened although cached: {args}")
    monkeypatch.setattr(media, "open_image", no_decoding)
    monkeypatch.setattr(Image, "open", no_decoding)
    monkeypatch.setattr(measure.imagehash, "phash", no_decoding)


def test_a_second_open_reads_no_picture_and_reports_the_same(tmp_path, monkeypatch):
    folder = flawed_dataset(tmp_path / "ds")
    before = set(folder.rglob("*"))
    first = analyse(folder, resolution=512, trigger="zxq")
    assert set(folder.rglob("*")) == before  # the cache lives under the studio home only
    assert any(check_cache.cache_root().rglob("*.jpg")) and any(check_cache.cache_root().rglob("index/*.json"))
    _no_pictures(monkeypatch)
    states = list(check_steps(folder, resolution=512, trigger="zxq"))
    assert len(states) == 1 and states[0].final  # complete from the cache, no measuring round
    second = states[0].report
    assert _facts(second) == _facts(first)
    assert second.duplicates == first.duplicates
    assert {p: t.is_file() for p, t in second.thumbs.items()} == {p: True for p in first.thumbs}


def test_the_cheap_scan_reports_first_then_the_measured_report(tmp_path):
    folder = flawed_dataset(tmp_path / "ds")
    steps = check_steps(folder, resolution=512, trigger="zxq")
    first = next(steps)  # looked at as the browser shows it, before the measuring fills the report in
    assert first.done == 0 and first.total == first.report.pending > 0 and not first.final
    assert not first.report.duplicates  # near-duplicates need every hash: none claimed early
    *_, last = [first, *steps]
    assert last.final and last.done == last.total == first.total
    assert _facts(last.report) == _facts(analyse(folder, resolution=512, trigger="zxq"))
    # the cheap scan already has every picture's size and caption (headers only)
    sized = {i.path.name: (i.width, i.height) for i in first.report.images if i.width}
    assert sized.items() <= {i.path.name: (i.width, i.height) for i in last.report.images}.items()


def test_an_edited_picture_is_measured_again(tmp_path, monkeypatch):
    folder = flawed_dataset(tmp_path / "ds")
    analyse(folder, resolution=512)
    picture = next(p for p in sorted(folder.iterdir()) if p.suffix == ".png")
    stat = picture.stat()
    os.utime(picture, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    measured = []
    real = measure.measure_image
    monkeypatch.setattr(measure, "measure_image", lambda path, key: measured.append(path.name) or real(path, key))
    analyse(folder, resolution=512)
    assert measured == [picture.name]


@pytest.mark.parametrize("damage", [b"not json", b"", b'{"format": 4, "entries": []}'])
def test_a_damaged_index_is_measured_again(tmp_path, damage):
    folder = flawed_dataset(tmp_path / "ds")
    first = analyse(folder, resolution=512)
    for index in check_cache.cache_root().rglob("index/*.json"):
        index.write_bytes(damage)
    assert _facts(analyse(folder, resolution=512)) == _facts(first)


def test_a_removed_thumbnail_is_drawn_again(tmp_path):
    folder = flawed_dataset(tmp_path / "ds")
    first = analyse(folder, resolution=512)
    for thumb in check_cache.cache_root().rglob("thumbs/*/*.jpg"):
        thumb.unlink()
    again = analyse(folder, resolution=512)
    assert _facts(again) == _facts(first) and all(t.is_file() for t in again.thumbs.values())


def test_the_worker_pool_measures_what_the_calling_process_does(tmp_path, monkeypatch):
    """Above IN_PROCESS_BELOW pictures the measuring runs in spawned workers: same facts, same cache."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(70):
        Image.new("RGB", (64 + i, 64), (i * 3, 255 - i * 3, 90)).save(folder / f"p{i:02d}.png")
        (folder / f"p{i:02d}.txt").write_text(f"picture {i}")
    pooled = analyse(folder, resolution=256)
    monkeypatch.setattr(measure, "IN_PROCESS_BELOW", 10_000)
    monkeypatch.setenv("DP_STUDIO_HOME", str(tmp_path / "other-home"))
    alone = analyse(folder, resolution=256)
    assert _facts(pooled) == _facts(alone)
    assert all(t.is_file() for t in pooled.thumbs.values()) and len(pooled.thumbs) == 70


def _thumbs():
    return set(check_cache.cache_root().rglob("thumbs/*/*.jpg"))


def test_edited_and_removed_pictures_leave_no_stale_thumbnails(tmp_path):
    folder, other = flawed_dataset(tmp_path / "ds"), flawed_dataset(tmp_path / "other")
    analyse(other, resolution=512)
    kept = _thumbs()
    analyse(folder, resolution=512)
    ours = _thumbs() - kept
    pngs = [p for p in sorted(folder.iterdir()) if p.suffix == ".png"]
    edited, removed = pngs[0], pngs[1]
    old_keys = {p: check_cache.fingerprint(p) for p in (edited, removed)}
    assert all(check_cache.thumb_path(k) in ours for k in old_keys.values())
    stat = edited.stat()
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    removed.unlink()
    analyse(folder, resolution=512)
    now = _thumbs()
    assert kept <= now  # another folder's cache is left alone
    assert check_cache.thumb_path(old_keys[edited]) not in now and check_cache.thumb_path(old_keys[removed]) not in now
    assert check_cache.thumb_path(check_cache.fingerprint(edited)) in now
    assert len(now - kept) == len(ours) - 1  # one picture fewer, the edited one's thumbnail replaced
    index = check_cache.FolderIndex(folder)
    assert removed.name not in index.entries and edited.name in index.entries
    for picture in folder.iterdir():  # a folder emptied of pictures empties its index too
        if picture.is_file():
            picture.unlink()
    analyse(folder, resolution=512)
    assert not check_cache.FolderIndex(folder).entries and _thumbs() == kept
