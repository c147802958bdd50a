"""Property tests: random edits never crash the loader/validator, and every rejection names a key and a line."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainers.config import validate_texts
from trainers.config.toml_io import delete_value, dumps, loads, set_value, walk_leaves

REPO = Path(__file__).resolve().parents[2]
MAIN = (REPO / "profiles" / "e6ai_512" / "e6ai_512.toml").read_text()
DATASET = (REPO / "profiles" / "e6ai_512" / "e6ai_512_dataset.toml").read_text()
MINIMAX = (REPO / "tests" / "golden" / "configs" / "valid" / "minimax_main.toml").read_text()
DOTTED = re.compile(r"^[A-Za-z0-9_\-]+(\[\d+\])*(\.[A-Za-z0-9_\-]+(\[\d+\])*)*$|^\(syntax\)$")
TABLES = ["", "model", "adapter", "optimizer", "monitoring", "studio"]

scalars = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                    st.booleans(), st.text(max_size=12), st.sampled_from(["chroma", "float8", "lora", "uniform",
                                                                          "unsloth", "<fill in: x>", "manual"]))
values = st.one_of(scalars, st.lists(scalars, max_size=4), st.lists(st.lists(st.integers(0, 2048), max_size=3),
                                                                    max_size=3),
                   st.dictionaries(st.sampled_from(["path", "type", "name", "config", "weight"]), scalars,
                                   max_size=3))
key_names = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True)
edit = st.tuples(st.sampled_from(["set", "delete", "add"]), st.integers(0, 10**6), values, key_names,
                 st.sampled_from(TABLES))


def _apply(text: str, edits: list) -> str:
    doc = loads(text)
    for action, pick, value, name, table in edits:
        leaves = [key for key, _ in walk_leaves(doc.unwrap())]
        if not leaves:
            break
        key = leaves[pick % len(leaves)]
        try:
            if action == "set":
                set_value(doc, key, value)
            elif action == "delete":
                delete_value(doc, key)
            else:
                set_value(doc, f"{table}.{name}" if table else name, value)
        except (ValueError, TypeError, KeyError, IndexError):
            continue  # tomlkit refused the edit itself (e.g. a table over an array): not the loader's business
    return dumps(doc)


def _check(issues, main_text: str, dataset_text: str) -> None:
    for issue in issues:
        assert issue.key and DOTTED.match(issue.key), issue
        assert issue.message, issue
        text = main_text if issue.file == "main.toml" else dataset_text
        assert 1 <= issue.line <= max(1, len(text.split("\n"))), issue
        if issue.is_error:
            assert issue.fix, issue


SETTINGS = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.lists(edit, min_size=1, max_size=4), st.sampled_from([MAIN, MINIMAX]))
def test_random_edits_of_the_main_file_never_crash(edits: list, base: str) -> None:
    main_text = _apply(base, edits)
    issues = validate_texts(main_text, DATASET, skip_path_checks=True)
    _check(issues, main_text, DATASET)


@SETTINGS
@given(st.lists(edit, min_size=1, max_size=4))
def test_random_edits_of_the_dataset_file_never_crash(edits: list) -> None:
    dataset_text = _apply(DATASET, [(a, p, v, n, "") for a, p, v, n, _ in edits])
    issues = validate_texts(MAIN, dataset_text, skip_path_checks=True)
    _check(issues, MAIN, dataset_text)


@SETTINGS
@given(st.integers(0, len(MAIN)), st.integers(0, 40), st.text(max_size=8))
def test_random_text_damage_never_crashes(start: int, length: int, insert: str) -> None:
    damaged = MAIN[:start] + insert + MAIN[start + length:]
    issues = validate_texts(damaged, DATASET, skip_path_checks=False, base_dir="/nonexistent")
    _check(issues, damaged, DATASET)


@SETTINGS
@given(st.lists(edit, min_size=1, max_size=3))
def test_path_checks_never_crash_on_edited_configs(edits: list) -> None:
    main_text = _apply(MAIN, edits)
    issues = validate_texts(main_text, DATASET, base_dir="/nonexistent", num_gpus=None)
    _check(issues, main_text, DATASET)
