"""Flux LoRA files in the studio: the key check (``dp-studio check-lora``, the log line after each save) and the
runs library's exports, on a LoRA saved as diffusion-pipe saves Flux's (models/flux.py line 234:
``save_lora_weights``, ``transformer.`` keys in ``pytorch_lora_weights.safetensors``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")

from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from tests.fixtures import flux_tiny as ft  # noqa: E402
from trainers.lora_check import check_lora, log_line  # noqa: E402
from trainers.native import export  # noqa: E402
from trainers.native.families import flux  # noqa: E402

RANK = 2


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(saved folder, diffusers transformer folder, original-layout file) of the tiny Flux model."""
    root = tmp_path_factory.mktemp("flux_lora")
    model = ft.tiny_transformer()
    model.save_pretrained(root / "pipe" / "transformer")
    ft.write_original_file(model, root / "flux.safetensors")
    model.add_adapter(peft.LoraConfig(r=RANK, lora_alpha=RANK, target_modules=flux.lora_targets(model)))
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=gen) for k, v in peft.get_peft_model_state_dict(model).items()}
    (root / "step2").mkdir()
    save_file(flux.export_lora(state), str(root / "step2" / flux.LORA_FILE), metadata={"format": "pt"})
    return root / "step2", root / "pipe", root / "flux.safetensors"


def test_the_check_passes_against_either_layout_of_the_model(saved):
    folder, pipe, file = saved
    targets = len(flux.lora_targets(ft.tiny_transformer()))
    for model in (pipe, pipe / "transformer", file):
        report = check_lora(folder / flux.LORA_FILE, model)
        assert report.ok and report.exact, report.markdown()
        assert (report.layout, report.covered, report.targets, report.ranks) == ("diffusers", targets, targets, [RANK])


def test_the_check_finds_keys_and_shapes_that_do_not_fit(saved, tmp_path):
    folder, pipe, _ = saved
    tensors = load_file(str(folder / flux.LORA_FILE))
    tensors["transformer.transformer_blocks.0.attn.to_qq.lora_A.weight"] = tensors.pop(
        "transformer.transformer_blocks.0.attn.to_q.lora_A.weight")
    tensors["transformer.transformer_blocks.0.attn.to_qq.lora_B.weight"] = tensors.pop(
        "transformer.transformer_blocks.0.attn.to_q.lora_B.weight")
    tensors["transformer.single_transformer_blocks.0.proj_out.lora_A.weight"] = torch.zeros(RANK, 3)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad))
    report = check_lora(bad, pipe)
    assert report.unmatched == ["transformer.transformer_blocks.0.attn.to_qq"]
    assert [m.split(":")[0] for m in report.mismatched] == ["transformer.single_transformer_blocks.0.proj_out"]


def test_without_the_model_the_released_flux_is_assumed_and_said(saved):
    folder, _, _ = saved
    report = check_lora(folder / flux.LORA_FILE, None)
    assert not report.exact and "released Flux" in report.model and report.targets == 19 * 14 + 38 * 6
    level, message = log_line("step2", folder / flux.LORA_FILE, None)
    assert level == "warning" and "released Flux" in message  # the tiny LoRA does not fit the 3072-wide model


def test_exports_carry_the_saved_tensors_under_flux_metadata(saved, tmp_path):
    folder, _, _ = saved
    for layout in ("comfyui", "diffusers"):
        out = export.export(folder, layout, tmp_path / f"{layout}.safetensors", {"run_id": "r1"})
        assert (load_file(str(out)).keys() == load_file(str(folder / flux.LORA_FILE)).keys())
        assert all(torch.equal(load_file(str(out))[k], v) for k, v in load_file(str(folder / flux.LORA_FILE)).items())
        with safe_open(str(out), "pt") as fh:
            meta = fh.metadata()
        assert meta["dp_studio.base_model"] == "flux" and meta["ss_network_dim"] == str(RANK)
        assert meta["dp_studio.layout"] == layout and json.loads(json.dumps(meta))["dp_studio.run_id"] == "r1"
    with pytest.raises(export.ExportError, match="kohya layout is not available for Flux"):
        export.export(folder, "kohya", tmp_path / "kohya.safetensors")
