"""Adding a native family touches its file, its registry entry and its tests, nothing else
(docs/adding-a-family.md). Each test here fails when a family registered as native is missing a piece the rest
of the studio reads, or disagrees with its registry entry."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from trainers.config import native_support
from trainers.config.registry import MODEL_TYPES, NATIVE_FAMILIES

ROOT = Path(__file__).resolve().parents[2]
NATIVE = sorted(NATIVE_FAMILIES)


def _family_class(kind: str):
    module, cls = NATIVE_FAMILIES[kind].split(":")
    return getattr(importlib.import_module(module), cls)


def test_chroma_and_flux_are_native_and_the_loop_reads_the_registry():
    from trainers.native.loop import FAMILIES

    assert {"chroma", "flux"} <= set(NATIVE_FAMILIES)
    assert FAMILIES == NATIVE_FAMILIES
    assert native_support.NATIVE_TYPES == tuple(NATIVE_FAMILIES)
    assert native_support.NATIVE_TYPES[0] == "chroma"


@pytest.mark.parametrize("kind", NATIVE)
def test_the_family_lives_in_one_file_of_the_families_package(kind):
    module = NATIVE_FAMILIES[kind].split(":")[0]
    assert module.startswith("trainers.native.families."), module
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file()


@pytest.mark.parametrize("kind", NATIVE)
def test_the_family_saves_the_file_its_registry_entry_names(kind):
    family = _family_class(kind)
    assert family.lora_file == MODEL_TYPES[kind].lora_file
    for method in ("load", "encode_prompts", "predict", "attach_new_lora", "export_lora", "sample"):
        assert callable(getattr(family, method, None)), f"{kind}: {method} missing"


@pytest.mark.parametrize("kind", NATIVE)
def test_the_vram_estimate_knows_the_family(kind):
    from trainers import vram

    info = MODEL_TYPES[kind]
    assert info.native_params > 1e8, f"{kind}: set native_params in trainers/config/registry.py"
    assert vram.MODEL_PARAMS[kind] == info.native_params
    assert vram.lora_params(16, kind) > vram.lora_params(8, kind) > 0
    est = vram.estimate(vram.VramSettings(model=kind))
    assert est.parts["base weights"] == pytest.approx(info.native_params * 2 / vram.GB)


@pytest.mark.parametrize("kind", NATIVE)
def test_saved_folders_of_the_family_are_found(kind, tmp_path):
    from trainers.checkpoints import saved_lora_file

    (tmp_path / MODEL_TYPES[kind].lora_file).write_bytes(b"x")
    assert saved_lora_file(tmp_path).name == MODEL_TYPES[kind].lora_file


@pytest.mark.parametrize("kind", NATIVE)
def test_the_family_has_its_tests_and_its_row_in_the_docs(kind):
    stem = NATIVE_FAMILIES[kind].split(":")[0].rsplit(".", 1)[1]
    assert list((ROOT / "tests/integration").glob(f"test_native_{stem}*.py")), \
        f"{kind}: add tests/integration/test_native_{stem}_train.py (2-step run, format, equivalence, resume)"
    rows = [line for line in (ROOT / "docs/native-trainer.md").read_text().splitlines()
            if line.startswith(f"| {kind} |")]
    assert rows, f"{kind}: add its row to the table in docs/native-trainer.md"


def test_every_native_type_runs_natively_on_auto():
    for kind in NATIVE:
        assert native_support.backend_of({"model": {"type": kind}}) == native_support.NATIVE_BACKEND
    others = [name for name in MODEL_TYPES if name not in NATIVE_FAMILIES]
    assert native_support.backend_of({"model": {"type": others[0]}}) == native_support.OTHER_BACKEND
