"""toml_io keeps every byte; set_value changes only its value; KeyLocator finds the lines of dotted keys."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from trainers.config.issues import ConfigParseError
from trainers.config.locate import KeyLocator
from trainers.config.toml_io import (
    delete_value,
    dumps,
    get_value,
    join_key,
    load,
    loads,
    save,
    set_value,
    split_key,
    walk_leaves,
)

SAMPLE = """# leading comment
epochs = 1000   # effectively forever
micro_batch_size_per_gpu = [[512, 4],
                            [1024, 1]]  # per resolution

[model]
type = 'chroma'  # the model
transformer_path = "/models/chroma.safetensors"
dtype = 'bfloat16'

[[directory]]
path = '/data/a'

[[directory]]
path = '/data/b'
num_repeats = 2
"""


def _changed_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.ndiff(before.split("\n"), after.split("\n")) if line[:1] in "+-"]


def test_round_trip_is_byte_identical_including_crlf_and_unicode() -> None:
    for text in (SAMPLE, SAMPLE.replace("\n", "\r\n"), "caption_prefix = 'por é, ✓'\n", ""):
        assert dumps(loads(text)) == text


def test_set_value_changes_only_that_value_and_keeps_comments_and_quotes() -> None:
    doc = loads(SAMPLE)
    set_value(doc, "model.type", "flux")
    set_value(doc, "epochs", 50)
    after = dumps(doc)
    assert _changed_lines(SAMPLE, after) == [
        "- epochs = 1000   # effectively forever", "+ epochs = 50   # effectively forever",
        "- type = 'chroma'  # the model", "+ type = 'flux'  # the model",
    ]


def test_set_value_in_array_of_tables_and_new_tables() -> None:
    doc = loads(SAMPLE)
    set_value(doc, "directory[1].num_repeats", 5)
    set_value(doc, "adapter.rank", 32)
    plain = doc.unwrap()
    assert plain["directory"][1]["num_repeats"] == 5 and plain["adapter"] == {"rank": 32}
    assert dumps(loads(dumps(doc))) == dumps(doc)
    assert get_value(doc, "directory[0].path") == "/data/a"
    assert get_value(doc, "directory[5].path", "none") == "none"


def test_delete_value() -> None:
    doc = loads(SAMPLE)
    assert delete_value(doc, "model.dtype")
    assert not delete_value(doc, "model.dtype")
    assert not delete_value(doc, "nothing.here")
    assert "dtype" not in doc.unwrap()["model"]


def test_split_and_join_keys() -> None:
    assert split_key("directory[0].path") == ["directory", 0, "path"]
    assert split_key("a[1][2].b") == ["a", 1, 2, "b"]
    assert join_key(["directory", 0, "path"]) == "directory[0].path"
    with pytest.raises(ValueError):
        split_key("a..b")


def test_parse_error_has_line_and_column() -> None:
    with pytest.raises(ConfigParseError) as caught:
        loads("a = 1\nb = [1, 2\n", "x.toml")
    assert caught.value.file == "x.toml" and caught.value.line >= 2 and caught.value.column >= 1
    assert caught.value.format().startswith("x.toml:")


def test_atomic_save_replaces_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "main.toml"
    target.write_text("old = 1\n")
    doc = loads(SAMPLE)
    save(target, doc)
    assert target.read_bytes() == SAMPLE.encode("utf-8")
    assert os.listdir(tmp_path) == ["main.toml"]
    assert dumps(load(target)) == SAMPLE


def test_walk_leaves_flattens_tables_and_arrays_of_tables() -> None:
    leaves = dict(walk_leaves(loads(SAMPLE).unwrap()))
    assert leaves["directory[1].num_repeats"] == 2
    assert leaves["micro_batch_size_per_gpu"] == [[512, 4], [1024, 1]]


def test_locator_finds_lines() -> None:
    text = SAMPLE + 'notes = """multi\n[not_a_table]\n"""\nlast = {a = "]", b = 2}\n'
    locator = KeyLocator(text)
    lines = text.split("\n")
    for key, expected in (("epochs", "epochs ="), ("model.transformer_path", "transformer_path"),
                          ("directory[1].num_repeats", "num_repeats"), ("micro_batch_size_per_gpu[1]", "[1024"),
                          ("directory[1].last", "last =")):
        assert expected in lines[locator.line_of(key) - 1], key
    assert locator.line_of("model.unknown") == locator.line_of("model") == 6
    assert "not_a_table" not in locator.lines and "directory[1].not_a_table" not in locator.lines
    assert locator.line_of("directory[1].path") == 15
