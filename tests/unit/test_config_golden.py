"""Golden configs: valid ones (the keys of diffusion-pipe's examples, the shipped profiles) validate and round-trip
byte-identical; each invalid one is rejected naming exactly the key its header expects."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import tomlkit

from trainers.config import validate_files, validate_texts
from trainers.config.toml_io import dumps, loads, read_text, set_value

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "configs"
VALID = GOLDEN / "valid"
INVALID = sorted((GOLDEN / "invalid").glob("*.toml"))
PROFILES = sorted((REPO / "profiles").glob("e6ai_*/e6ai_*[0-9].toml"))

# (main, dataset) pairs covering the keys of diffusion-pipe's examples/*.toml
PAIRS = [
    ("main_reference.toml", "dataset_reference.toml"),  # main_example + dataset
    ("cosmos_main.toml", "cosmos_dataset.toml"),  # cosmos_dataset
    ("flux_kontext_main.toml", "edit_dataset.toml"),  # flux_kontext_dataset
    ("minimax_main.toml", "minimax_dataset.toml"),  # minimax_h3_example + minimax_h3_dataset
    ("qwen_image_24gb.toml", "edit_dataset.toml"),  # qwen_image_24gb_vram (+ Qwen-Image-Edit dataset)
    ("lumina_main.toml", "lumina_dataset.toml"),  # recommended_lumina_dataset_config
    ("wan_14b_low_vram.toml", "dataset_reference.toml"),  # wan_14b_min_vram
]


def _load_generator():
    spec = importlib.util.spec_from_file_location("generate_invalid", GOLDEN / "generate_invalid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("main", "dataset"), PAIRS)
def test_example_pairs_validate(main: str, dataset: str) -> None:
    issues = validate_texts((VALID / main).read_text(), (VALID / dataset).read_text(), main_file=main,
                            dataset_file=dataset, skip_path_checks=True, backend="diffusion-pipe")
    assert [i.format() for i in issues if i.is_error] == []


def test_a_flux_pair_using_diffusion_pipe_only_keys_names_the_backend_switch_on_auto() -> None:
    # Flux trains natively on auto (as Chroma does), Kontext's control_path included: the keys the native trainer
    # refuses (diffusion-pipe's own optimizer) are errors whose fix names the diffusion-pipe backend.
    texts = (VALID / "flux_kontext_main.toml").read_text(), (VALID / "edit_dataset.toml").read_text()
    errors = [i for i in validate_texts(*texts, skip_path_checks=True) if i.is_error]
    keys = {i.key for i in errors}
    assert "optimizer.type" in keys and "directory[0].control_path" not in keys, [i.format() for i in errors]
    assert all("backend = 'diffusion-pipe'" in i.fix for i in errors)


def test_a_qwen_image_edit_pair_names_the_backend_switch_on_auto() -> None:
    # Qwen-Image trains natively on auto; its edit datasets (control_path) and diffusion-pipe's block swap and
    # optimizers are errors whose fix names the diffusion-pipe backend.
    texts = (VALID / "qwen_image_24gb.toml").read_text(), (VALID / "edit_dataset.toml").read_text()
    errors = [i for i in validate_texts(*texts, skip_path_checks=True) if i.is_error]
    assert "directory[0].control_path" in {i.key for i in errors}, [i.format() for i in errors]
    assert all("backend = 'diffusion-pipe'" in i.fix for i in errors)


def test_a_lumina_full_fine_tune_pair_names_the_backend_switch_on_auto() -> None:
    # Lumina 2 trains LoRAs natively on auto: diffusion-pipe's example is a full fine-tune (no [adapter]) with
    # diffusion-pipe's own optimizer; each refused key's fix names the diffusion-pipe backend.
    texts = (VALID / "lumina_main.toml").read_text(), (VALID / "lumina_dataset.toml").read_text()
    errors = [i for i in validate_texts(*texts, skip_path_checks=True) if i.is_error]
    assert "optimizer.type" in {i.key for i in errors}, [i.format() for i in errors]
    assert all("backend = 'diffusion-pipe'" in i.fix for i in errors), [i.format() for i in errors]


@pytest.mark.parametrize(("main", "dataset"), [p for p in PAIRS if not p[0].startswith(("flux", "qwen_image",
                                                                                         "lumina"))])
def test_example_pairs_of_other_types_pass_on_auto_and_are_one_error_for_the_native_backend(main: str,
                                                                                          dataset: str) -> None:
    texts = (VALID / main).read_text(), (VALID / dataset).read_text()
    # no [studio] backend: auto picks diffusion-pipe for every type the native trainer does not train
    issues = validate_texts(*texts, main_file=main, dataset_file=dataset, skip_path_checks=True)
    assert [i.format() for i in issues if i.is_error] == []
    issues = validate_texts(*texts, main_file=main, dataset_file=dataset, skip_path_checks=True, backend="native")
    errors = [i for i in issues if i.is_error]
    assert [i.key for i in errors] == ["model.type"]
    assert "trains chroma, sdxl, flux, lumina_2, hidream, sd3 and qwen_image only" in errors[0].message and "backend = 'diffusion-pipe'" in errors[0].fix


@pytest.mark.parametrize("path", sorted(VALID.glob("*.toml")) + PROFILES, ids=lambda p: p.name)
def test_valid_files_round_trip_byte_identical(path: Path) -> None:
    raw = path.read_bytes()
    assert dumps(loads(read_text(path))).encode("utf-8") == raw


@pytest.mark.parametrize("main", PROFILES, ids=lambda p: p.name)
def test_shipped_profiles_validate(main: Path) -> None:
    issues = validate_files(main, skip_path_checks=True)
    assert [i.format() for i in issues if i.is_error] == []
    # the paths the user must fill in are reported (as warnings while path checks are skipped)
    assert {i.key for i in issues} == {"output_dir", "model.diffusers_path", "model.transformer_path",
                                       "directory[0].path"}
    strict = validate_files(main)
    assert {i.key for i in strict if i.is_error} == {i.key for i in issues}


def test_shipped_profile_values() -> None:
    texts = {p.parent.name: tomlkit.parse(p.read_text()).unwrap() for p in PROFILES}
    low, high = texts["e6ai_512"], texts["e6ai_1024"]
    assert low["micro_batch_size_per_gpu"] == 4 and high["micro_batch_size_per_gpu"] == 1
    assert low["optimizer"] == {"type": "adamw_optimi", "lr": 2.5e-4, "betas": [0.9, 0.99], "weight_decay": 0.01,
                                "eps": 1e-8}
    assert low["model"]["transformer_dtype"] == "float8" and low["model"]["flux_shift"] is True
    assert "wandb_api_key" not in low["monitoring"] and "wandb_api_key" not in high["monitoring"]
    assert high["monitoring"]["wandb_run_name"] == "e6ai-1024-7-quad-lr"
    assert "v50" in high["model"]["transformer_path"] and "v47" in low["model"]["transformer_path"]


def _header(path: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in path.read_text().split("\n"):
        match = re.match(r"^# ([a-z_-]+): (.*)$", line)
        if match:
            found.setdefault(match.group(1), []).append(match.group(2))
    return found


def _main_for_dataset(header: dict[str, list[str]]) -> str:
    doc = loads((GOLDEN / "base_main.toml").read_text())
    if "main-model" in header:
        _load_generator().apply(doc, [("model", header["main-model"][0])])
    for edit in header.get("main-set", []):
        key, _, value = edit.partition(" = ")
        set_value(doc, key, tomlkit.parse(f"v = {value}")["v"].unwrap())
    return dumps(doc)


def test_invalid_corpus_is_large_enough() -> None:
    assert len(INVALID) >= 40


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_config_is_rejected_naming_its_key(path: Path) -> None:
    header = _header(path)  # the diffusion-pipe contract: checked with backend = 'diffusion-pipe'
    expected = header["expect"][0]
    num_gpus = int(header.get("num_gpus", ["1"])[0])
    if header["kind"][0] == "main":
        main_text, dataset_text = path.read_text(), (GOLDEN / "base_dataset.toml").read_text()
    else:
        main_text, dataset_text = _main_for_dataset(header), path.read_text()
    issues = validate_texts(main_text, dataset_text, main_file="main.toml", dataset_file="dataset.toml",
                            base_dir=GOLDEN, num_gpus=num_gpus, backend="diffusion-pipe")
    errors = [issue for issue in issues if issue.is_error]
    assert {issue.key for issue in errors} == {expected}, [issue.format() for issue in errors]
    assert all(issue.message and issue.fix and issue.line >= 1 for issue in errors)
    # The native backend reports the same problem (and, maybe, what it cannot train on top of it).
    native = validate_texts(main_text, dataset_text, main_file="main.toml", dataset_file="dataset.toml",
                            base_dir=GOLDEN, num_gpus=num_gpus)
    assert expected in {issue.key for issue in native if issue.is_error}


def test_invalid_corpus_is_up_to_date(tmp_path: Path) -> None:
    generator = _load_generator()
    cases = len(generator.MAIN_CASES) + len(generator.DATASET_CASES)
    assert cases == len(INVALID)


def test_base_configs_are_valid() -> None:
    issues = validate_files(GOLDEN / "base_main.toml")
    assert issues == []
