"""init_from_existing / fuse_adapters LoRAs are checked against the Chroma transformer before launch."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_lora_check import RANK, comfy_lora, write
from trainers.config.validate import validate_texts
from trainers.lora_check import full_size_shapes, model_shapes

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "assets" / "demo"


def _main(adapter: str) -> str:
    return (f"output_dir = 'out'\ndataset = 'ds.toml'\nepochs = 1\n\n[model]\ntype = 'chroma'\n"
            f"diffusers_path = '{DEMO / 'flux-tiny'}'\ntransformer_path = '{DEMO / 'chroma-tiny'}'\n"
            f"dtype = 'float32'\n\n[adapter]\ntype = 'lora'\n{adapter}\n\n[optimizer]\ntype = 'adamw'\nlr = 1e-4\n")


def _issues(tmp_path: Path, adapter: str) -> list:
    issues = validate_texts(_main(adapter), None, base_dir=tmp_path)
    return [i for i in issues if i.key.startswith("adapter")]


@pytest.fixture
def loras(tmp_path) -> dict[str, Path]:
    saved = tmp_path / "epoch3"
    saved.mkdir()
    write(saved / "adapter_model.safetensors", comfy_lora(model_shapes(DEMO / "chroma-tiny").linears))
    write(tmp_path / "full.safetensors", comfy_lora(full_size_shapes().linears))
    (tmp_path / "notes.safetensors").write_text("not a safetensors file at all")
    return {"saved": saved, "full": tmp_path / "full.safetensors", "notes": tmp_path / "notes.safetensors"}


def test_a_fitting_lora_of_the_same_rank_passes(tmp_path, loras):
    assert _issues(tmp_path, f"rank = {RANK}\ninit_from_existing = 'epoch3'\n"
                             "fuse_adapters = [{ path = 'epoch3/adapter_model.safetensors', weight = 0.5 }]") == []


def test_another_rank_is_an_error_at_the_rank_key(tmp_path, loras):
    (issue,) = _issues(tmp_path, "rank = 16\ninit_from_existing = 'epoch3'")
    assert issue.key == "adapter.rank" and f"rank {RANK} but rank = 16" in issue.message
    assert issue.fix == f"set rank = {RANK}, or start from a LoRA of rank 16" and issue.line > 1


def test_a_lora_for_another_model_is_an_error_at_its_key(tmp_path, loras):
    (issue,) = _issues(tmp_path, f"rank = {RANK}\ninit_from_existing = 'full.safetensors'")
    assert issue.key == "adapter.init_from_existing" and "does not fit the model" in issue.message
    assert "shape mismatches" in issue.message and "dp-studio check-lora" in issue.fix
    (issue,) = _issues(tmp_path, f"rank = {RANK}\nfuse_adapters = [{{ path = 'notes.safetensors', weight = 1.0 }}]")
    assert issue.key == "adapter.fuse_adapters[0].path" and "not a LoRA dp-studio can read" in issue.message


def test_other_model_types_are_left_alone(tmp_path, loras):
    text = _main(f"rank = {RANK}\ninit_from_existing = 'full.safetensors'").replace("type = 'chroma'",
                                                                                    "type = 'flux'")
    assert not [i for i in validate_texts(text, None, base_dir=tmp_path) if "does not fit" in i.message]
