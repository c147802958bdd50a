"""The config builder's pure logic: the field pool, form values <-> TOML documents, issues -> fields."""

from __future__ import annotations

import difflib

import pytest

from studio import builder_form as bf
from studio import builder_view as bv
from tests.conftest import REPO
from trainers.config import TYPE_NAMES, form_fields, validate_texts
from trainers.config.issues import ConfigIssue
from trainers.config.toml_io import dumps, loads

PROFILE = REPO / "profiles" / "e6ai_512"
MAIN, DATASET = (PROFILE / "e6ai_512.toml").read_text(), (PROFILE / "e6ai_512_dataset.toml").read_text()
PAIR = bv.Pair("e6ai_512.toml", "e6ai_512_dataset.toml")


def docs(main=MAIN, dataset=DATASET):
    return loads(main), loads(dataset)


def edit(changes: dict, main=MAIN, dataset=DATASET, dir_index=0):
    """Apply form changes on top of the documents' own values; returns (main text, dataset text, errors)."""
    main_doc, dataset_doc = docs(main, dataset)
    values = bf.form_values(main_doc, dataset_doc, bf.model_type_of(main_doc), dir_index)
    errors = bf.apply_form(main_doc, dataset_doc, dir_index, {**values, **changes})
    return dumps(main_doc), dumps(dataset_doc), errors


def changed_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.ndiff(before.splitlines(), after.splitlines()) if line[:1] in "+-"]


# the pool -------------------------------------------------------------------------------------------------
def test_pool_has_one_widget_per_key_of_every_type():
    ids = [field.id for field in bf.form_pool()]
    assert len(ids) == len(set(ids))
    for name in TYPE_NAMES:
        wanted = {f"{s.file}:{s.key}" for s in form_fields(name)} - {"main:model.type"}
        assert wanted <= set(ids), name
        assert set(bf.specs_for(name)) == wanted


def test_widget_kinds_follow_the_schema():
    kinds = {field.id: field.widget for field in bf.form_pool()}
    assert kinds["main:compile"] == "checkbox"
    assert kinds["dataset:directory.enable_ar_bucket"] == "tristate"  # unset means: inherit the top level
    assert kinds["main:model.dtype"] == "dropdown"
    assert kinds["main:output_dir"] == kinds["dataset:directory.path"] == "text"
    assert kinds["main:epochs"] == kinds["dataset:resolutions"] == kinds["main:optimizer.betas"] == "literal"


def test_each_type_shows_only_the_keys_it_reads():
    chroma, flux = bf.specs_for("chroma"), bf.specs_for("flux")
    assert "main:model.transformer_path" in chroma and "main:model.guidance" not in chroma
    assert "main:model.guidance" in flux
    assert "main:model.ckpt_path" in bf.specs_for("wan") and "main:model.ckpt_path" not in chroma
    unknown = bf.specs_for("not-a-type")
    assert "main:epochs" in unknown and not any(fid.startswith("main:model.") and fid != "main:model.dtype"
                                                for fid in unknown)


# document -> form -----------------------------------------------------------------------------------------
def test_form_values_show_what_the_file_says():
    main_doc, dataset_doc = docs()
    values = bf.form_values(main_doc, dataset_doc, "chroma", 0)
    assert values["main:epochs"] == "1000"
    assert values["main:optimizer.lr"] == "2.5e-4"  # as written, not 0.00025
    assert values["main:optimizer.betas"] == "[0.9, 0.99]"
    assert values["main:model.dtype"] == "bfloat16" and values["main:model.flux_shift"] is True
    assert values["main:compile"] is False  # absent checkbox: its default
    assert values["main:max_steps"] == ""  # absent: empty
    assert values["dataset:directory.caption_prefix"] == "by e6ai, "
    assert values["dataset:directory.enable_ar_bucket"] == ""  # inherits the top level


def test_inline_toml_flattens_tables_and_keeps_spelling():
    doc = loads("a = 2.5e-4\n[[eval_datasets]]\nname = 'val'\nconfig = \"e.toml\"\n")
    assert bf.inline_toml(doc["a"]) == "2.5e-4"
    assert bf.inline_toml(doc["eval_datasets"]) == "[{name = 'val', config = \"e.toml\"}]"
    assert bf.inline_toml({"a b": [1, "x"]}) == "{'a b' = [1, 'x']}"


# form -> document -----------------------------------------------------------------------------------------
def test_a_form_edit_changes_only_that_value():
    main, dataset, errors = edit({"main:epochs": "20", "main:optimizer.lr": "1e-4"})
    assert not errors
    assert changed_lines(MAIN, main) == ["- epochs = 1000", "+ epochs = 20", "- lr = 2.5e-4", "+ lr = 1e-4"]
    assert dataset == DATASET


def test_unchanged_form_writes_nothing():
    main, dataset, errors = edit({})
    assert (main, dataset, errors) == (MAIN, DATASET, {})


def test_typed_values_keep_their_toml_types():
    main, _, _ = edit({"main:model.dtype": "float16", "main:compile": True, "main:optimizer.betas": "[0.9, 0.999]",
                       "main:activation_checkpointing": "'unsloth'"})
    data = loads(main).unwrap()
    assert data["model"]["dtype"] == "float16" and data["compile"] is True
    assert data["optimizer"]["betas"] == [0.9, 0.999] and data["activation_checkpointing"] == "unsloth"


def test_emptying_a_field_removes_the_key():
    main, _, _ = edit({"main:warmup_steps": "", "main:model.transformer_dtype": ""})
    data = loads(main).unwrap()
    assert "warmup_steps" not in data and "transformer_dtype" not in data["model"]


def test_unparseable_input_is_an_error_at_the_field_and_nothing_is_written():
    main, _, errors = edit({"main:epochs": "abc", "dataset:resolutions": "[512,"})
    assert main == MAIN
    assert errors["main:epochs"].startswith("⚠ 'abc' is not a number") and "whole number" in errors["main:epochs"]
    assert "not a TOML value" in errors["dataset:resolutions"]


def test_hidden_fields_are_not_written():
    main, _, _ = edit({"main:model.guidance": "3.5"})  # chroma does not read guidance
    assert main == MAIN


def test_directory_fields_edit_the_chosen_entry_and_create_it_when_missing():
    two = DATASET + "\n[[directory]]\npath = 'second'\n"
    _, dataset, _ = edit({"dataset:directory.num_repeats": "5"}, dataset=two, dir_index=1)
    data = loads(dataset).unwrap()
    assert data["directory"][0]["num_repeats"] == 1 and data["directory"][1]["num_repeats"] == 5
    _, dataset, _ = edit({"dataset:directory.path": "imgs"}, dataset="resolutions = [512]\n")
    assert loads(dataset).unwrap()["directory"] == [{"path": "imgs"}]
    assert bf.directory_choices(loads(two)) == [
        ("1: <fill in: dataset folder (images with .txt captions)>", 0), ("2: second", 1)]


def test_tristate_and_text_parsing():
    tri = next(f for f in bf.form_pool() if f.id == "dataset:directory.shuffle_tags")
    assert bf.parse_widget(tri, "true") is True and bf.parse_widget(tri, "") is bf.UNSET
    text = next(f for f in bf.form_pool() if f.id == "main:output_dir")
    assert bf.parse_widget(text, "runs/x") == "runs/x" and bf.parse_widget(text, None) is bf.UNSET
    with pytest.raises(bf.FieldInputError):
        bf.parse_literal("1\nb = 2")


# issues -> fields -----------------------------------------------------------------------------------------
def issue(key, file="e6ai_512.toml", severity="error"):
    return ConfigIssue(file, 3, key, "bad", "fix it", severity)


@pytest.mark.parametrize(("key", "file", "dir_index", "expected"), [
    ("epochs", "e6ai_512.toml", 0, "main:epochs"),
    ("model.transformer_path", "/abs/e6ai_512.toml", 0, "main:model.transformer_path"),
    ("eval_datasets[0].config", "e6ai_512.toml", 0, "main:eval_datasets"),
    ("micro_batch_size_per_gpu[1][0]", "e6ai_512.toml", 0, "main:micro_batch_size_per_gpu"),
    ("directory[1].path", "e6ai_512_dataset.toml", 1, "dataset:directory.path"),
    ("directory[1].path", "e6ai_512_dataset.toml", 0, None),  # another entry than the form shows
    ("resolutions", "e6ai_512_dataset.toml", 0, "dataset:resolutions"),
    ("epoch", "e6ai_512.toml", 0, None),  # unknown key: only in the list
    ("(syntax)", "e6ai_512.toml", 0, None),
    ("epochs", "eval.toml", 0, None),
])
def test_issue_lands_on_its_field(key, file, dir_index, expected):
    assert bv.field_for_issue(issue(key, file), PAIR, dir_index) == expected


def test_field_errors_from_the_validator():
    main = MAIN.replace("epochs = 1000", "epochs = -3")
    issues = validate_texts(main, DATASET, main_file=PAIR.main_name, dataset_file=PAIR.dataset_name,
                            skip_path_checks=True)
    errors = bv.field_errors(issues, PAIR, 0, "chroma")
    assert errors["main:epochs"].startswith("⚠ must be >= 1") and "use a value >= 1" in errors["main:epochs"]
    assert errors["main:output_dir"].startswith("△ warning: not filled in")
    assert "main:model.guidance" not in bv.field_errors([issue("model.guidance")], PAIR, 0, "chroma")


def test_issue_lines_and_markdown():
    error, warning = issue("epochs"), issue("x.y", severity="warning")
    assert bv.format_issue(error) == "e6ai_512.toml:3: epochs: bad — fix it"
    assert bv.format_issue(warning) == "e6ai_512.toml:3: x.y: warning: bad — fix it"
    md = bv.issues_markdown([warning, error], paths_checked=False)
    assert md.startswith("**✗ 1 error, 1 warning** (paths not checked")
    assert md.index("epochs") < md.index("x.y")  # errors first
    # An error's line carries the verdict's ✗, not ⚠ (issue 11 item 10); a warning's carries △.
    assert r"- ✗ e6ai\_512.toml:3: epochs" in md and r"- △ e6ai\_512.toml:3: x.y" in md and "⚠" not in md
    assert "x.y" in md and r"e6ai\_512.toml" in md  # markdown characters escaped
    assert bv.issues_markdown([], paths_checked=True) == "**✓ valid** (full check, paths included)"


def test_field_props_label_info_and_visibility():
    epochs = next(f for f in bf.form_pool() if f.id == "main:epochs")
    props = bv.field_props(epochs, "chroma", "1", None)
    assert props["label"] == "epochs *" and props["visible"] and props["value"] == "1"
    assert props["elem_classes"] == ["dp-field"] and props["info"]
    bad = bv.field_props(epochs, "chroma", "1", "⚠ must be >= 1")
    assert bad["label"] == "⚠ epochs *" and bad["info"] == "⚠ must be >= 1" and "dp-invalid" in bad["elem_classes"]
    guidance = next(f for f in bf.form_pool() if f.id == "main:model.guidance")
    assert bv.field_props(guidance, "chroma", "", None)["visible"] is False
    steps = next(f for f in bf.form_pool() if f.id == "main:pipeline_stages")
    assert bv.field_props(steps, "chroma", "", None)["placeholder"] == "default: 1"
    repeats = next(f for f in bf.form_pool() if f.id == "dataset:directory.num_repeats")
    assert bv.field_props(repeats, "chroma", "", None)["placeholder"] == "(inherits the dataset's top level)"
    dtype = next(f for f in bf.form_pool() if f.id == "main:lr_scheduler")
    assert bv.field_props(dtype, "chroma", "", None)["choices"][0] == ("(default: constant)", "")


def test_error_changes_and_whitespace():
    assert bv.error_changes({"a": "x", "b": "y"}, {"b": "y", "c": "z"}) == {"a", "c"}
    assert bv.keep_whitespace("\n# c\nx = 1\n\n", "# c\nx = 2") == "\n# c\nx = 2\n\n"
    assert bv.keep_whitespace("", "x = 1") == "x = 1\n"
    assert len(bv.type_choices()) == 24


def test_an_emptied_field_keeps_its_key_mid_edit_and_removes_it_when_left():
    main_doc, dataset_doc = docs()
    values = bf.form_values(main_doc, dataset_doc, bf.model_type_of(main_doc), 0)
    assert bf.apply_form(main_doc, dataset_doc, 0, {**values, "main:dataset": ""}, remove_empty=False) == {}
    assert dumps(main_doc) == MAIN  # still typing: "select all, Backspace, type" keeps the key in place
    bf.apply_form(main_doc, dataset_doc, 0, {**values, "main:dataset": ""})
    assert "dataset =" not in dumps(main_doc)
    issues = validate_texts(dumps(main_doc), DATASET, skip_path_checks=True)
    assert any(i.key == "dataset" and i.is_error for i in issues)  # required: the form shows it missing
