"""Our bucket table against an independent reading of diffusion-pipe's bucketing, for generated datasets.

The reference below is written from diffusion-pipe's source, not from trainers/native/data.py:
- utils/dataset.py:74-78 ``dedup_and_sort``: round to 3 decimals, de-duplicate, sort;
- utils/dataset.py:496-506: ratios from ``size_buckets`` (w / h), else [1.0] without AR bucketing, else
  ``ar_buckets`` ([w, h] pairs as w / h, :873-880), else ``geomspace(min_ar, max_ar, num_ar_buckets)``;
- utils/dataset.py:468-471 and :882-889: resolutions ([w, h] pairs as sqrt(w * h)), de-duplicated and sorted;
- utils/dataset.py:838-852: an image takes the ratio nearest in log space (``np.argmin``: the first on ties);
- utils/dataset.py:419-425 with utils/common.py:106-107: w = sqrt(res² · ar), h = res² / w, each
  ``int(round(x / multiple) * multiple)``;
- utils/dataset.py:464 and :854-870: size buckets sorted by frames (longest first), candidates ordered by their
  log-ratio distance (stable argsort), an image takes the first with frames <= 1.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import tomlkit
from hypothesis import given, settings
from hypothesis import strategies as st

from trainers.config import validate_texts
from trainers.native.data import BucketPlan, bucket_table

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "configs"


def _dp_dedup_and_sort(values):
    return np.array(sorted({round(x, 3) for x in values}))


def _dp_round(x, multiple):
    return int(round(x / multiple) * multiple)


def _dp_ars(config):
    if not config.get("enable_ar_bucket", False):
        return _dp_dedup_and_sort([1.0])
    if config.get("ar_buckets"):
        return _dp_dedup_and_sort([a[0] / a[1] if isinstance(a, list) else a for a in config["ar_buckets"]])
    return _dp_dedup_and_sort(np.geomspace(config["min_ar"], config["max_ar"], num=config["num_ar_buckets"]))


def _dp_sizes_for(config, width, height, multiple):
    log_ar = np.log(width / height)
    if config.get("size_buckets"):
        buckets = sorted(config["size_buckets"], key=lambda t: t[-1], reverse=True)
        ars = _dp_dedup_and_sort([w / h for w, h, _ in buckets])
        order = np.argsort(np.abs(log_ar - np.log(ars)), kind="stable")
        for w, h, frames in np.array(buckets)[order]:
            if 1 >= frames:
                return [(int(w), int(h))]
        return []
    ars = _dp_ars(config)
    ar = ars[np.argmin(np.abs(log_ar - np.log(ars)))]
    resolutions = _dp_dedup_and_sort([math.sqrt(r[0] * r[1]) if isinstance(r, list) else r
                                      for r in config["resolutions"]])
    sizes = []
    for res in resolutions:
        area = res ** 2
        w = math.sqrt(area * ar)
        sizes.append((_dp_round(w, multiple), _dp_round(area / w, multiple)))
    return sizes


ratio = st.floats(0.2, 5.0, allow_nan=False)
resolution = st.one_of(st.integers(128, 2048), st.lists(st.integers(128, 2048), min_size=2, max_size=2))
images = st.lists(st.tuples(st.integers(13, 8000), st.integers(13, 8000)), min_size=1, max_size=20)


@st.composite
def ar_configs(draw):
    config = {"resolutions": draw(st.lists(resolution, min_size=1, max_size=3))}
    mode = draw(st.sampled_from(["off", "geomspace", "list"]))
    if mode != "off":
        config["enable_ar_bucket"] = True
    if mode == "geomspace":  # min_ar > max_ar included: diffusion-pipe sorts the ratios
        config.update(min_ar=draw(ratio), max_ar=draw(ratio), num_ar_buckets=draw(st.integers(1, 9)))
    elif mode == "list":
        pair = st.lists(st.integers(1, 40), min_size=2, max_size=2).filter(lambda p: 0.2 <= p[0] / p[1] <= 5)
        config["ar_buckets"] = draw(st.lists(st.one_of(ratio, pair), min_size=1, max_size=8))
    return config


@st.composite
def size_configs(draw):
    """Valid size_buckets (multiples of 64, ratios rising strictly, as the validation requires), maybe with
    longer-frame entries that images never take."""
    count = draw(st.integers(1, 6))
    ratios = sorted(set(round(r, 3) for r in draw(st.lists(ratio, min_size=count, max_size=count))))
    entries, seen = [], set()
    for r in ratios:
        side = draw(st.integers(4, 24)) * 64
        w, h = max(64, _dp_round(side * math.sqrt(r), 64)), max(64, _dp_round(side / math.sqrt(r), 64))
        if round(w / h, 3) in seen or (entries and w / h <= entries[-1][0] / entries[-1][1]):
            continue
        seen.add(round(w / h, 3))
        entries.append([w, h, 1])
    return {"size_buckets": entries}


@settings(max_examples=300, deadline=None)
@given(config=st.one_of(ar_configs(), size_configs()), pictures=images, multiple=st.sampled_from([8, 16, 32, 64]))
def test_bucket_sizes_equal_diffusion_pipes(config, pictures, multiple):
    plan = BucketPlan.from_settings(config, multiple)
    for width, height in pictures:
        assert [spec.size for spec in plan.for_image(width, height)] == _dp_sizes_for(config, width, height,
                                                                                     multiple)


def _errors(dataset: dict) -> dict[str, str]:
    main = (GOLDEN / "base_main.toml").read_text()
    doc = tomlkit.parse((GOLDEN / "base_dataset.toml").read_text())
    for key in ("resolutions", "enable_ar_bucket", "min_ar", "max_ar", "num_ar_buckets"):
        doc.pop(key, None)
    doc.update(dataset)
    issues = validate_texts(main, tomlkit.dumps(doc), skip_path_checks=True, num_gpus=1)
    return {issue.key: issue.format() for issue in issues if issue.is_error}


def test_min_ar_above_max_ar_is_accepted_with_diffusion_pipes_buckets():
    # diffusion-pipe sorts geomspace(2.0, 0.5, 7) (utils/dataset.py:505-506): the same buckets as (0.5, 2.0)
    swapped = {"resolutions": [512], "enable_ar_bucket": True, "min_ar": 2.0, "max_ar": 0.5, "num_ar_buckets": 7}
    assert _errors(swapped) == {}
    assert bucket_table(swapped) == bucket_table({**swapped, "min_ar": 0.5, "max_ar": 2.0})
    assert bucket_table(swapped) == [_dp_sizes_for(swapped, round(a * 1000), 1000, 16)[0] for a in _dp_ars(swapped)]


def test_unsorted_or_duplicate_ratio_size_buckets_are_refused_with_the_fix():
    # utils/dataset.py:496, :506 and :857: entries are indexed by the sorted, de-duplicated ratios
    assert _errors({"size_buckets": [[512, 768, 1], [512, 512, 1], [768, 512, 1]]}) == {}
    unsorted = _errors({"size_buckets": [[768, 512, 1], [512, 512, 1]]})
    assert set(unsorted) == {"size_buckets"} and "not sorted by aspect ratio" in unsorted["size_buckets"]
    assert "[512, 512, 1], [768, 512, 1]" in unsorted["size_buckets"]
    duplicate = _errors({"size_buckets": [[512, 512, 1], [768, 768, 1]]})
    assert set(duplicate) == {"size_buckets"} and "same aspect ratio" in duplicate["size_buckets"]
    directory = _errors({"directory": [{"path": "tree/images", "size_buckets": [[768, 512, 1], [512, 768, 1]]}]})
    assert set(directory) == {"directory[0].size_buckets"}
    # longer-frame entries come first in diffusion-pipe's order (utils/dataset.py:464): ratios 1.0, 0.667, 1.5
    mixed = _errors({"size_buckets": [[512, 768, 1], [768, 512, 1], [512, 512, 33]]})
    assert "[512, 512, 33], [512, 768, 1], [768, 512, 1]" in mixed["size_buckets"]
    assert _errors({"size_buckets": [[512, 768, 33], [512, 512, 1], [768, 512, 1]]}) == {}
