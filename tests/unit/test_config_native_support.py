"""The native trainer's support table: every schema key of a Chroma pair is classified, the validator reports each
refused key natively (and nothing more for the diffusion-pipe backend), and the trainer's startup check agrees."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import tomlkit
from pydantic import BaseModel

from trainers.config import native_support as ns
from trainers.config import validate_texts
from trainers.config.schema_dataset import DatasetConfig
from trainers.config.schema_main import MainConfig
from trainers.config.schema_model import MODEL_TABLES

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "configs"
BASE_MAIN = (GOLDEN / "base_main.toml").read_text()
BASE_DATASET = (GOLDEN / "base_dataset.toml").read_text()
DP = "diffusion-pipe"


# ---- every key is classified ---------------------------------------------------------------------------------
def _models_in(annotation: Any, in_list: bool = False) -> list[tuple[type[BaseModel], bool]]:
    """The pydantic models an annotation holds, each with whether it sits inside a list (an array of tables)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, in_list)]
    found: list[tuple[type[BaseModel], bool]] = []
    for arg in get_args(annotation):
        found += _models_in(arg, in_list or get_origin(annotation) is list)
    return found


def schema_sections(model: type[BaseModel], prefix: str = "") -> dict[str, frozenset[str]]:
    """Section -> keys, walked from the pydantic models ([model]: the native types' tables of the type union)."""
    sections = {prefix: frozenset(model.model_fields)}
    for name, field in model.model_fields.items():
        found = _models_in(field.annotation)
        if len(found) > 1:  # the discriminated [model] union: the native trainer reads its families' tables
            native = [sub for sub, _ in found if any(sub is MODEL_TABLES[kind] for kind in ns.NATIVE_TYPES)]
            assert len(native) == len(ns.NATIVE_TYPES), name
            sections[f"{prefix}.{name}" if prefix else name] = frozenset().union(*(m.model_fields for m in native))
            continue
        for sub, many in found:
            dotted = f"{prefix}.{name}" if prefix else name
            sections.update(schema_sections(sub, dotted + ("[]" if many else "")))
    return sections


def _table_sections(support: dict[str, dict[str, ns.KeySupport]]) -> dict[str, frozenset[str]]:
    return {section: frozenset(keys) for section, keys in support.items()}


def test_schema_walk_finds_every_table() -> None:
    assert set(schema_sections(MainConfig)) == {"", "eval_datasets[]", "model", "adapter", "adapter.fuse_adapters[]",
                                               "optimizer", "monitoring", "studio"}
    assert set(schema_sections(DatasetConfig)) == {"", "directory[]"}


@pytest.mark.parametrize(("schema", "support"), [(MainConfig, ns.MAIN_SUPPORT), (DatasetConfig, ns.DATASET_SUPPORT)],
                         ids=["main", "dataset"])
def test_every_schema_key_is_classified_and_nothing_else(schema: type[BaseModel], support: dict) -> None:
    known, table = schema_sections(schema), _table_sections(support)
    assert set(table) == set(known)
    for section, keys in known.items():
        assert not keys - table[section], f"unclassified in {section or 'top level'}: {sorted(keys - table[section])}"
        assert not table[section] - keys, f"not in the schema: {sorted(table[section] - keys)}"


def test_every_entry_says_why_and_how_to_fix() -> None:
    for support in (ns.MAIN_SUPPORT, ns.DATASET_SUPPORT):
        for section, keys in support.items():
            for key, entry in keys.items():
                where = f"{section}:{key}"
                if entry.status == "honoured":
                    assert entry.refused is None and not entry.fix, where
                else:
                    assert entry.why and entry.fix, where
                    assert (entry.status == "conditional") == bool(entry.accepted and entry.refused), where


@pytest.mark.parametrize(("support", "section", "key", "fine", "refused"), [
    (ns.MAIN_SUPPORT, "", "pipeline_stages", [1], [2, 8]),
    (ns.MAIN_SUPPORT, "", "blocks_to_swap", [0], [1, 20]),
    (ns.MAIN_SUPPORT, "", "compile", [False], [True]),
    (ns.MAIN_SUPPORT, "", "activation_checkpointing", [True, False], ["unsloth"]),
    (ns.MAIN_SUPPORT, "", "partition_method", ["parameters"], ["uniform", "manual", "type:transformer"]),
    (ns.MAIN_SUPPORT, "", "video_clip_mode", ["single_beginning"], ["single_middle"]),
    (ns.MAIN_SUPPORT, "adapter", "type", ["lora"], ["lokr"]),
    (ns.MAIN_SUPPORT, "optimizer", "type", ["adamw", "adamw_optimi", "stableadamw", "sgd", "adamw8bit", "AdamW",
                                            "Prodigy"],
     ["AdamW8bitKahan", "adamw8bitkahan", "offload", "automagic", "genericoptim"]),
    (ns.MAIN_SUPPORT, "optimizer", "gradient_release", [False], [True]),
    # images train only in [w, h, 1] entries (diffusion-pipe utils/dataset.py:862-866); longer ones are for videos
    (ns.DATASET_SUPPORT, "", "size_buckets", [[[512, 512, 1], [768, 512, 1]], [[512, 512, 1], [512, 512, 33]]],
     [[[512, 512, 33]], [[512, 512, 33], [768, 512, 9]]]),
], ids=lambda value: value if isinstance(value, str) else None)
def test_values_honoured_only_where_decided(support: dict, section: str, key: str, fine: list,
                                            refused: list) -> None:
    entry = support[section][key]
    assert entry.status == "conditional"
    assert not [value for value in fine if entry.refuses(value)]
    assert all(entry.refuses(value) for value in refused)


def test_wrong_types_are_left_to_the_schema() -> None:
    top = ns.MAIN_SUPPORT[""]
    assert not top["pipeline_stages"].refuses("2") and not top["blocks_to_swap"].refuses(True)
    assert not top["compile"].refuses("yes") and not ns.MAIN_SUPPORT["adapter"]["type"].refuses("dora")
    assert not ns.DATASET_SUPPORT[""]["frame_buckets"].refuses("33")


def test_decided_rejections_and_honoured_keys() -> None:
    top, adapter = ns.MAIN_SUPPORT[""], ns.MAIN_SUPPORT["adapter"]
    assert top["partition_split"].status == "rejected"
    assert ns.DATASET_SUPPORT["directory[]"]["control_path"].status == "conditional"
    assert ns.DATASET_KEYS_OF_TYPE["control_path"] == ("flux",)
    assert ns.MAIN_SUPPORT["optimizer"]["beta2_half_life"].status == "rejected"
    for key in ("resume_from_checkpoint", "eval_datasets", "checkpoint_every_n_minutes", "huber_delta",
                "disable_block_swap_for_eval", "reentrant_activation_checkpointing", "regenerate_cache"):
        assert top[key].status == "honoured", key
    for key in ("init_from_existing", "fuse_adapters", "rank", "dropout"):
        assert adapter[key].status == "honoured", key
    assert all(entry.status == "honoured" for entry in ns.MAIN_SUPPORT["model"].values())
    assert all(entry.status == "honoured" for entry in ns.MAIN_SUPPORT["studio"].values())
    assert all(entry.status == "honoured" for entry in ns.MAIN_SUPPORT["monitoring"].values())


# ---- the validator -------------------------------------------------------------------------------------------
def _main(edits: dict[str, Any] | None = None, *, studio: dict | None = None) -> str:
    doc = tomlkit.parse(BASE_MAIN)
    for dotted, value in (edits or {}).items():
        *parents, key = dotted.split(".")
        table = doc
        for parent in parents:
            table = table[parent]
        table[key] = value
    if studio is not None:
        doc["studio"] = studio
    return tomlkit.dumps(doc)


def _dataset(top: dict[str, Any] | None = None, directory: dict[str, Any] | None = None) -> str:
    doc = tomlkit.parse(BASE_DATASET)
    doc.update(top or {})
    doc["directory"][0].update(directory or {})
    return tomlkit.dumps(doc)


def _errors(main: str, dataset: str, backend: str | None = None, num_gpus: int | None = 1) -> dict[str, str]:
    issues = validate_texts(main, dataset, skip_path_checks=True, num_gpus=num_gpus, backend=backend)
    return {issue.key: issue.format() for issue in issues if issue.is_error}


def test_the_base_pair_and_the_shipped_profiles_run_natively() -> None:
    assert _errors(BASE_MAIN, BASE_DATASET) == {}
    for stem in ("e6ai_512/e6ai_512", "e6ai_1024/e6ai_1024", "demo/chroma_demo"):
        main = (REPO / "profiles" / f"{stem}.toml").read_text()
        dataset = (REPO / "profiles" / f"{stem}_dataset.toml").read_text()
        assert _errors(main, dataset) == {}, stem


# (main edits, dataset top-level, dataset directory[0], GPUs, keys the native backend refuses)
NATIVE_ONLY = [
    ({"pipeline_stages": 2}, {}, {}, 2, {"pipeline_stages"}),
    ({"pipeline_stages": 2, "partition_method": "manual", "partition_split": [10]}, {}, {}, 2,
     {"pipeline_stages", "partition_method", "partition_split"}),
    ({"partition_method": "uniform"}, {}, {}, 1, {"partition_method"}),
    ({"blocks_to_swap": 8}, {}, {}, 1, {"blocks_to_swap"}),
    ({"compile": True}, {}, {}, 1, {"compile"}),
    ({"activation_checkpointing": "unsloth"}, {}, {}, 1, {"activation_checkpointing"}),
    ({"video_clip_mode": "single_middle"}, {}, {}, 1, {"video_clip_mode"}),
    ({"adapter.type": "lokr", "adapter.decompose_factor": 4}, {}, {}, 1, {"adapter.type", "adapter.decompose_factor"}),
    ({"optimizer": {"type": "automagic", "lr": 1e-4}}, {}, {}, 1, {"optimizer.type"}),
    ({"optimizer.gradient_release": True, "gradient_clipping": 0.0}, {}, {}, 1, {"optimizer.gradient_release"}),
    ({"optimizer.beta2_half_life": 1000.0}, {}, {}, 1, {"optimizer.beta2_half_life"}),
    ({}, {"size_buckets": [[512, 512, 33]]}, {}, 1, {"size_buckets"}),
    # control_path on Chroma is an error for diffusion-pipe too (models/chroma.py:186 takes no control images):
    # test_config_fidelity.py
]


@pytest.mark.parametrize(("edits", "top", "directory", "gpus", "refused"), NATIVE_ONLY,
                         ids=lambda value: ",".join(sorted(value)) if isinstance(value, set) else None)
def test_each_refused_key_is_one_error_natively_and_none_for_diffusion_pipe(edits, top, directory, gpus,
                                                                          refused) -> None:
    main, dataset = _main(edits), _dataset(top, directory)
    assert _errors(main, dataset, backend=DP, num_gpus=gpus) == {}
    errors = _errors(main, dataset, num_gpus=gpus)
    assert set(errors) == refused
    for line in errors.values():
        assert "native trainer" in line and "or set [studio] backend = 'diffusion-pipe')" in line
    studio_dp = _main(edits, studio={"backend": DP})
    assert _errors(studio_dp, dataset, num_gpus=gpus) == {}


def test_an_error_names_the_line_the_value_and_what_works() -> None:
    main = _main({"blocks_to_swap": 8})
    issues = validate_texts(main, BASE_DATASET, main_file="main.toml", skip_path_checks=True)
    (issue,) = [i for i in issues if i.is_error]
    assert issue.line == main.split("\n").index("blocks_to_swap = 8") + 1
    assert "only blocks_to_swap = 0 works natively (got 8)" in issue.message
    assert "transformer_dtype = 'float8'" in issue.fix


def test_values_that_turn_the_feature_off_are_fine_natively() -> None:
    main = _main({"pipeline_stages": 1, "blocks_to_swap": 0, "compile": False, "activation_checkpointing": True,
                  "partition_method": "parameters", "video_clip_mode": "single_beginning",
                  "optimizer.gradient_release": False, "disable_block_swap_for_eval": True})
    dataset = _dataset({"frame_buckets": [1]}, {"frame_buckets": [1]})
    assert _errors(main, dataset) == {}


def test_backend_argument_beats_the_studio_table() -> None:
    native_studio = _main({"compile": True}, studio={"backend": "native"})
    dp_studio = _main({"compile": True}, studio={"backend": DP})
    assert set(_errors(native_studio, BASE_DATASET)) == {"compile"}
    assert _errors(native_studio, BASE_DATASET, backend=DP) == {}
    assert set(_errors(dp_studio, BASE_DATASET, backend="native")) == {"compile"}


def test_eval_dataset_files_get_the_native_dataset_checks() -> None:
    issues = validate_texts(BASE_MAIN, BASE_DATASET, skip_path_checks=True,
                            eval_texts={"eval.toml": _dataset({"size_buckets": [[512, 512, 33]]})})
    assert [(i.file, i.key) for i in issues if i.is_error] == [("eval.toml", "size_buckets")]


def test_video_frame_buckets_are_fine_natively() -> None:
    # diffusion-pipe's own examples/dataset.toml has frame_buckets = [1, 33]; it adds 1 when missing
    # (utils/dataset.py:509-511), so images always train at frame 1 and the longer buckets only serve videos
    for frames in ([1, 33], [33], [1, 17, 33]):
        assert _errors(BASE_MAIN, _dataset({"frame_buckets": frames}, {"frame_buckets": frames})) == {}
    assert ns.DATASET_SUPPORT[""]["frame_buckets"].status == "honoured"


def test_wrong_values_are_reported_once_by_the_schema() -> None:
    errors = _errors(_main({"pipeline_stages": "2", "adapter.type": "dora"}), BASE_DATASET)
    assert set(errors) == {"pipeline_stages", "adapter.type"}
    assert "native trainer" not in errors["pipeline_stages"] and "native trainer" not in errors["adapter.type"]


def test_an_unknown_model_type_is_the_schema_error_only() -> None:
    issues = validate_texts(_main({"model.type": "chromaa"}), BASE_DATASET, skip_path_checks=True)
    assert [i.message for i in issues if i.key == "model.type" and "native" in i.message] == []


# ---- the trainer's startup check -----------------------------------------------------------------------------
def _dicts(main: str, dataset: str) -> tuple[dict, dict]:
    return tomllib.loads(main), tomllib.loads(dataset)


@pytest.mark.parametrize(("edits", "top", "directory", "gpus", "refused"), NATIVE_ONLY,
                         ids=lambda value: ",".join(sorted(value)) if isinstance(value, set) else None)
def test_the_trainer_refuses_what_the_validator_refuses(edits, top, directory, gpus, refused) -> None:
    main, dataset = _dicts(_main(edits), _dataset(top, directory))
    messages = ns.native_rejections(main, dataset)
    assert {line.split(": ", 2)[1] for line in messages} == refused
    assert all(line.startswith(("main config: ", "dataset config: ")) and "(fix: " in line for line in messages)


def test_the_trainer_accepts_the_shipped_pairs() -> None:
    for stem in ("e6ai_512/e6ai_512", "e6ai_1024/e6ai_1024", "demo/chroma_demo"):
        main = (REPO / "profiles" / f"{stem}.toml").read_text()
        dataset = (REPO / "profiles" / f"{stem}_dataset.toml").read_text()
        assert ns.native_rejections(*_dicts(main, dataset)) == [], stem
        assert ns.native_warnings(*_dicts(main, dataset)) == [], stem


def test_another_model_type_is_one_refusal_for_the_whole_pair() -> None:
    main = tomllib.loads((GOLDEN / "valid" / "wan_14b_low_vram.toml").read_text())
    dataset = tomllib.loads((GOLDEN / "valid" / "dataset_reference.toml").read_text())
    (message,) = ns.native_rejections(main, dataset)
    assert message.startswith("main config: model.type: the native trainer trains chroma, sdxl, flux, lumina_2, hidream, sd3 and qwen_image only, not 'wan'")
    assert "backend = 'diffusion-pipe'" in message


def test_keys_nobody_reads_are_warnings_for_the_trainer_and_optimizer_keywords_pass() -> None:
    main, dataset = _dicts(BASE_MAIN, BASE_DATASET)
    main["seeed"] = 3
    main["model"]["guidance"] = 3.5  # flux's key
    main["optimizer"]["amsgrad"] = True  # a constructor keyword
    dataset["directory"][0]["captions"] = "x"
    assert ns.native_rejections(main, dataset) == []
    warned = {line.split(": ", 2)[1] for line in ns.native_warnings(main, dataset)}
    assert warned == {"seeed", "model.guidance", "directory[0].captions"}


def test_optimizer_packages_missing_here_are_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ns, "module_available", lambda name: False)
    main, _ = _dicts(BASE_MAIN, BASE_DATASET)
    for kind, package in (("adamw8bit", "bitsandbytes"), ("Prodigy", "pytorch_optimizer")):
        main["optimizer"] = {"type": kind, "lr": 1e-4}
        (warning,) = ns.native_warnings(main)
        assert package in warning and ns.native_rejections(main) == []
        issues = validate_texts(tomlkit.dumps(main), BASE_DATASET, skip_path_checks=True)
        assert any(i.key == "optimizer.type" and package in i.message and not i.is_error for i in issues)
    monkeypatch.setattr(ns, "module_available", lambda name: True)
    main["optimizer"] = {"type": "adamw8bit", "lr": 1e-4}
    assert ns.native_warnings(main) == []


def test_the_table_imports_without_pydantic_or_torch() -> None:
    code = ("import sys; from trainers.config.native_support import native_rejections; "
            "bad = [m for m in ('pydantic', 'torch', 'tomlkit') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_the_docs_show_the_table() -> None:
    doc = (REPO / "docs" / "config-validation.md").read_text()
    begin = doc.index("<!-- native-support:begin")
    section = doc[doc.index("\n", begin) + 1:doc.index("<!-- native-support:end -->")]
    assert section == ns.support_markdown(), ("regenerate the docs section with "
                                              "trainers.config.native_support.support_markdown()")
