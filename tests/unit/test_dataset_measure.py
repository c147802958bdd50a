"""The per-picture measurements of the dataset check (trainers/datasets/measure.py): the histogram percentiles
behind sharpness, and a colour JPEG measured in YCbCr giving the same numbers and thumbnail colours as RGB."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from trainers.datasets import measure


@pytest.mark.parametrize("q", [0, 1, 37.5, 50, 99, 99.5, 100])
def test_percentile_of_counts_is_numpys_linear_percentile(q):
    rng = np.random.default_rng(int(q * 10))
    for size, top in ((1, 5), (2, 3), (997, 256), (40_000, 1021)):
        values = rng.integers(0, top, size)
        expected = float(np.percentile(values, q))
        assert measure.percentile_of_counts(np.bincount(values), q) == pytest.approx(expected, abs=1e-9)


def _reference_sharpness(gray: np.ndarray) -> float:
    """The measure as its docstring defines it, with numpy's sorting percentiles on the same samples."""
    g = gray.astype(np.int64)
    lap = np.abs(4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:])
    low, high = np.percentile(gray.ravel()[::7], [1, 99])
    return float(np.percentile(lap.ravel()[::6], 99.5)) / max(float(high - low), 1.0)


def test_sharpness_matches_the_sorting_definition():
    rng = np.random.default_rng(3)
    for shape in ((3, 3), (64, 80), (512, 384)):
        gray = rng.integers(0, 256, shape).astype(np.uint8)
        assert measure.sharpness(gray) == pytest.approx(_reference_sharpness(gray), rel=1e-12)
    flat = np.full((20, 20), 77, np.uint8)
    assert measure.sharpness(flat) == 0.0


def _photo(path, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:1024, 0:768]
    rgb = np.stack([x / 3, y / 4, (x + y) / 7], axis=-1) % 256
    rgb[200:600, 100:500] = [220, 40, 30]  # a red block with sharp edges
    rgb += rng.normal(0, 6, rgb.shape)
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path, quality=92)
    return path


def test_a_colour_jpeg_measured_in_ycbcr_matches_rgb(tmp_path, monkeypatch):
    monkeypatch.setenv("DP_STUDIO_HOME", str(tmp_path / "home"))
    photo = _photo(tmp_path / "photo.jpg")
    facts = measure.measure_image(photo, "key1")
    assert (facts.width, facts.height, facts.bad) == (768, 1024, "")
    with Image.open(photo) as img:  # the same decode in RGB, brightness by Pillow's own conversion
        img.draft("RGB", (measure.SHARPNESS_SIDE, measure.SHARPNESS_SIDE))
        rgb = img.convert("RGB")
    assert facts.sharpness == pytest.approx(measure.sharpness(np.asarray(rgb.convert("L"))), rel=0.03)
    from trainers.datasets.check_cache import thumb_path

    with Image.open(thumb_path("key1")) as thumb:
        assert thumb.format == "JPEG" and thumb.size == (192, 256)
        shown = np.asarray(thumb.convert("RGB"), dtype=np.float64)
    expected = np.asarray(rgb.resize(thumb.size, Image.Resampling.BOX), dtype=np.float64)
    assert np.abs(shown - expected).mean() < 4  # the colours survive (no YCbCr read as RGB)
    assert np.abs(shown[100, 80] - [220, 40, 30]).max() < 20  # inside the red block


def test_greyscale_and_png_pictures_still_measure(tmp_path):
    gray = tmp_path / "gray.jpg"
    Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (64, 1))).save(gray)
    png = tmp_path / "pic.png"
    Image.open(_photo(tmp_path / "p.jpg")).save(png)
    for path in (gray, png):
        facts = measure.measure_image(path, None)
        assert facts.bad == "" and facts.sharpness > 0 and len(facts.phash) == 16


def _variants(folder):
    """Files of the formats the fast header reader takes, in the shapes users' datasets have them."""
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the header's size is still the stored one, as Pillow reports it
    out = {}
    rgb.save(out.setdefault("baseline.jpg", folder / "baseline.jpg"), exif=exif)
    rgb.save(out.setdefault("progressive.JPEG", folder / "progressive.JPEG"), progressive=True)
    rgb.convert("L").save(out.setdefault("gray.jpg", folder / "gray.jpg"))
    rgb.convert("CMYK").save(out.setdefault("cmyk.jpeg", folder / "cmyk.jpeg"))
    rgb.save(out.setdefault("icc.jpe", folder / "icc.jpe"), icc_profile=bytes(range(256)) * 40)  # 10 KiB APP2
    rgb.save(out.setdefault("lowercase.jfif", folder / "lowercase.jfif"))
    for mode in ("RGB", "RGBA", "L", "P", "I;16"):
        img = rgb.convert(mode) if mode != "I;16" else Image.fromarray(
            rng.integers(0, 65535, (37, 53), dtype=np.uint16))
        img.save(out.setdefault(f"{mode.replace(';', '')}.png", folder / f"{mode.replace(';', '')}.png"))
    rgb.save(out.setdefault("lossy.webp", folder / "lossy.webp"), quality=80)
    rgb.save(out.setdefault("lossless.webp", folder / "lossless.webp"), lossless=True)
    rgb.convert("RGBA").save(out.setdefault("alpha.webp", folder / "alpha.webp"))
    rgb.save(out.setdefault("other.bmp", folder / "other.bmp"))
    return out


def test_the_fast_header_size_is_pillows(tmp_path):
    from trainers.datasets.known import header_size

    for name, path in _variants(tmp_path).items():
        with Image.open(path) as img:
            expected = img.size
        got = header_size(path)
        if name.endswith(".bmp"):
            assert got is None  # not a fast format: Pillow reads it
        else:
            assert got == expected, name
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0garbage")
    assert header_size(broken) is None  # Pillow's open then names what is wrong


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + (len(payload) + 2).to_bytes(2, "big") + payload


def test_the_jpeg_reader_walks_segments_as_pillow_does(tmp_path):
    """The marker syntax of ITU-T T.81 B.1.1, the cases a 4 KiB read must get right: a frame header beyond the
    first read, a thumbnail with its own frame inside an EXIF segment, fill bytes, a segment ending exactly at a
    read's edge; and the files it must leave to Pillow (junk between segments, truncation, a DNL-sized frame)."""
    import io

    from trainers.datasets import known

    def jpeg(size, **kw) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", size, (200, 30, 30)).save(buf, "JPEG", **kw)
        return buf.getvalue()

    main, thumb = jpeg((61, 45)), jpeg((9, 7))
    sof = main.index(b"\xff\xc0")
    cases = {
        # an EXIF segment of 9 KiB holding a JPEG thumbnail (its SOF must not be taken for the frame's)
        "exif-thumb": main[:2] + _segment(0xE1, b"Exif\0\0" + thumb + bytes(9000)) + main[2:],
        "fill-bytes": main[:2] + b"\xff\xff\xff" + main[2:],
        # an APP segment ending exactly where the first 4 KiB read does
        "edge": main[:2] + _segment(0xEC, bytes(known._CHUNK - 6)) + main[2:],
        # a frame marker 6 bytes before the read's end: its size lies in the next read
        "frame-at-edge": main[:2] + _segment(0xEC, bytes(known._CHUNK - 10 - sof)) + main[2:],
        "many-segments": main[:2] + b"".join(_segment(0xED, bytes(300)) for _ in range(40)) + main[2:],
        "progressive": jpeg((33, 70), progressive=True),
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(data)
        with Image.open(path) as img:
            assert known.jpeg_size(str(path)) == img.size, name
    assert known.jpeg_size(str(tmp_path / "exif-thumb.jpg")) == (61, 45)
    refused = {
        "junk": main[:2] + b"junk" + main[2:],  # Pillow skips such bytes: left to it
        "truncated": main[:2] + _segment(0xE1, bytes(5000))[:3000],
        "not-a-jpeg": b"\x89PNG\r\n\x1a\n" + bytes(100),
        "empty": b"",
        "scan-first": main[:2] + b"\xff\xda\x00\x08" + bytes(100),
        "bad-length": main[:2] + b"\xff\xe0\x00\x01" + main[2:],
    }
    # a frame whose height a DNL marker gives later
    refused["dnl-height"] = main[:sof + 5] + b"\x00\x00" + main[sof + 7:]
    for name, data in refused.items():
        path = tmp_path / f"{name}.jpg"
        path.write_bytes(data)
        assert known.jpeg_size(str(path)) is None, name
    assert known.jpeg_size(str(tmp_path / "missing.jpg")) is None


def test_a_bomb_sized_header_is_left_to_pillows_guard(tmp_path, monkeypatch):
    from trainers.datasets.known import Known, header_size
    from trainers.native import media

    path = tmp_path / "huge.png"
    Image.new("L", (300, 200)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # 60,000 pixels: over twice the limit
    assert header_size(path) is None
    known = Known()
    with pytest.raises(media.BadMedia, match="not a readable image"):
        known.size_of(path)


def test_the_token_bound_holds_for_any_caption():
    import random

    from trainers.datasets.report import estimate_tokens, most_tokens

    rng = random.Random(5)
    alphabet = "ab1 ,.!?-_é\t"
    worst = ["a " * 200, "a,a," * 100, "a" * 400, ",,,," * 100, "a." * 200, "a, " * 150]
    for caption in worst + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 600))) for _ in range(3000)]:
        assert estimate_tokens(caption) <= most_tokens(len(caption)), caption


def test_long_captions_are_still_found():
    from trainers.datasets.report import SURELY_SHORT, T5_TOKENS, ImageInfo, _caption_issues, estimate_tokens

    assert estimate_tokens("a," * (SURELY_SHORT // 2)) <= T5_TOKENS < estimate_tokens("a," * 400)
    info = ImageInfo(__import__("pathlib").Path("x.jpg"))
    _caption_issues(info, ["short", "a," * 400], True, "", "")
    assert [i for i in info.issues if i.startswith("long caption")]
    quiet = ImageInfo(__import__("pathlib").Path("y.jpg"))
    _caption_issues(quiet, ["a," * (SURELY_SHORT // 2)], True, "", "")
    assert not quiet.issues
