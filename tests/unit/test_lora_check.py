"""The LoRA key check: every layout against every base layout, and each kind of problem named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from safetensors.torch import load_file
from safetensors.torch import save_file as save_torch

from trainers.chroma_names import fused_parts
from trainers.cli import main as cli
from trainers.lora_check import LoraCheckError, check_lora, full_size_shapes, model_shapes
from trainers.native.families.chroma_keys import diffusers_name, to_original_checkpoint

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "assets" / "demo" / "chroma-tiny"
RANK = 4


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """The demo transformer as a diffusers folder, an original-layout file and a ComfyUI-prefixed file."""
    folder = tmp_path_factory.mktemp("bases")
    original = to_original_checkpoint(load_file(str(DEMO / "diffusion_pytorch_model.safetensors")))
    save_torch(original, str(folder / "original.safetensors"))
    save_torch({f"model.diffusion_model.{k}": v for k, v in original.items()}, str(folder / "comfy.safetensors"))
    return {"diffusers": DEMO, "original": folder / "original.safetensors", "comfyui": folder / "comfy.safetensors"}


def _zeros(*shape: int) -> np.ndarray:
    return np.zeros(shape, dtype=np.float16)


def comfy_lora(linears: dict[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    """A LoRA on every block Linear as dp-studio saves it: fused modules stack their parts' A."""
    out = {}
    for module, (o, i) in linears.items():
        if not module.startswith(("double_blocks.", "single_blocks.")):
            continue
        rows = RANK * len(fused_parts(module) or (1,))
        out[f"diffusion_model.{module}.lora_A.weight"] = _zeros(rows, i)
        out[f"diffusion_model.{module}.lora_B.weight"] = _zeros(o, rows)
    return out


def diffusers_lora(linears: dict[str, tuple[int, int]], prefix: str = "transformer.") -> dict[str, np.ndarray]:
    out = {}
    for module, (o, i) in linears.items():
        if not module.startswith(("double_blocks.", "single_blocks.")):
            continue
        parts = fused_parts(module)
        if parts:
            suffix = module.split(".", 2)[2]
            widths = [i] * (len(parts) - 1) + [o - i * (len(parts) - 1)] if suffix == "linear1" else \
                [o // len(parts)] * len(parts)
            pieces = list(zip(parts, widths, strict=True))
        else:
            pieces = [(diffusers_name(module), o)]
        for name, width in pieces:
            out[f"{prefix}{name}.lora_A.weight"] = _zeros(RANK, i)
            out[f"{prefix}{name}.lora_B.weight"] = _zeros(width, RANK)
    return out


def kohya_lora(linears: dict[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in comfy_lora(linears).items():
        module, which = key.removeprefix("diffusion_model.").rsplit(".lora_", 1)
        name = "lora_unet_" + module.replace(".", "_")
        out[f"{name}.lora_{'down' if which.startswith('A') else 'up'}.weight"] = value
        out[f"{name}.alpha"] = np.array(float(RANK), dtype=np.float32)
    return out


def write(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    save_file(tensors, str(path))
    return path


def test_the_base_model_reads_the_same_in_every_layout(bases):
    shapes = {name: model_shapes(path).linears for name, path in bases.items()}
    assert shapes["diffusers"] == shapes["original"] == shapes["comfyui"]
    blocks = model_shapes(bases["original"]).block_linears
    assert len(blocks) == 8 * 2 + 2 * 2  # the demo transformer: 2 double and 2 single blocks
    assert len(full_size_shapes().block_linears) == 8 * 19 + 2 * 38


@pytest.mark.parametrize("layout", ["comfyui", "diffusers", "kohya", "peft"])
@pytest.mark.parametrize("base", ["diffusers", "original", "comfyui"])
def test_a_lora_that_fits_passes_in_every_layout(bases, tmp_path, layout, base):
    linears = model_shapes(bases["original"]).linears
    tensors = {"comfyui": comfy_lora, "diffusers": diffusers_lora, "kohya": kohya_lora,
               "peft": lambda lin: diffusers_lora(lin, "base_model.model.")}[layout](linears)
    report = check_lora(write(tmp_path / "lora.safetensors", tensors), bases[base])
    assert report.ok, report.markdown()
    assert report.layout == layout and report.exact
    assert report.covered == report.targets == 20 and report.ranks == [RANK]
    assert "✓ every key fits the model" in report.markdown()


def test_every_problem_is_named(bases, tmp_path):
    linears = model_shapes(bases["original"]).linears
    tensors = comfy_lora(linears)
    tensors["diffusion_model.double_blocks.0.img_attn.qkvv.lora_A.weight"] = _zeros(RANK, 128)  # typo
    tensors["diffusion_model.double_blocks.0.img_attn.qkvv.lora_B.weight"] = _zeros(384, RANK)
    tensors["diffusion_model.double_blocks.7.img_attn.proj.lora_A.weight"] = _zeros(RANK, 128)  # no block 7
    tensors["diffusion_model.double_blocks.7.img_attn.proj.lora_B.weight"] = _zeros(128, RANK)
    out, inp = linears["single_blocks.1.linear2"]
    tensors["diffusion_model.single_blocks.1.linear2.lora_A.weight"] = _zeros(RANK, inp + 1)  # wrong width
    del tensors["diffusion_model.double_blocks.1.txt_mlp.2.lora_B.weight"]  # half a pair
    tensors["diffusion_model.img_in.weight"] = _zeros(2, 2)  # a full weight, not a LoRA
    report = check_lora(write(tmp_path / "bad.safetensors", tensors), bases["original"])
    assert not report.ok
    assert report.unmatched == ["diffusion_model.double_blocks.0.img_attn.qkvv",
                                "diffusion_model.double_blocks.7.img_attn.proj"]
    assert len(report.mismatched) == 1 and report.mismatched[0].startswith(
        f"diffusion_model.single_blocks.1.linear2: A [{RANK}, {inp + 1}]")
    assert report.half_pairs == ["diffusion_model.double_blocks.1.txt_mlp.2 (no B)"]
    assert report.not_lora == ["diffusion_model.img_in.weight"]
    assert report.covered == 18  # linear2 of single block 1 and txt_mlp.2 of double block 1 are not
    text = report.markdown()
    assert "lora key not loaded" in text and "2 unmatched keys" in text and "1 shape mismatches" in text


def test_a_fused_part_of_the_wrong_width_is_caught(bases, tmp_path):
    linears = model_shapes(bases["original"]).linears
    tensors = diffusers_lora(linears)
    key = "transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight"  # linear1's MLP part
    tensors[key] = _zeros(tensors[key].shape[0] - 1, RANK)
    report = check_lora(write(tmp_path / "part.safetensors", tensors), bases["diffusers"])
    assert [m.split(":")[0] for m in report.mismatched] == ["transformer.single_transformer_blocks.0.proj_mlp"]
    assert "single_blocks.0.linear1 part 3" in report.mismatched[0]


def test_without_the_base_model_the_released_shapes_are_assumed(tmp_path):
    full = full_size_shapes()
    lora = write(tmp_path / "full.safetensors", comfy_lora(full.linears))
    report = check_lora(lora, tmp_path / "moved-away.safetensors")
    assert report.ok and not report.exact and report.covered == report.targets == 228
    assert "base model was not found" in report.markdown()
    extra = comfy_lora(full.linears)
    extra["diffusion_model.img_in.lora_A.weight"] = _zeros(RANK, 64)
    extra["diffusion_model.img_in.lora_B.weight"] = _zeros(3072, RANK)
    report = check_lora(write(tmp_path / "extra.safetensors", extra))
    assert report.ok and report.unchecked == ["diffusion_model.img_in"]  # outside the blocks: not judged
    tiny = check_lora(write(tmp_path / "tiny.safetensors", comfy_lora({"double_blocks.0.img_attn.proj": (8, 8)})))
    assert tiny.mismatched and "3072" in tiny.mismatched[0]


def test_what_is_not_a_lora_is_refused(tmp_path):
    (tmp_path / "notes.safetensors").write_text("these are my notes, not weights")
    with pytest.raises(LoraCheckError, match="not a .safetensors file"):
        check_lora(tmp_path / "notes.safetensors")
    with pytest.raises(LoraCheckError, match="no LoRA keys in a known layout"):
        check_lora(write(tmp_path / "weights.safetensors", {"img_in.weight": _zeros(2, 2)}))


def test_cli_exit_codes(bases, tmp_path, capsys):
    linears = model_shapes(bases["original"]).linears
    good = write(tmp_path / "good.safetensors", comfy_lora(linears))
    assert cli(["check-lora", str(good), "--model", str(bases["diffusers"])]) == 0
    assert "every key fits" in capsys.readouterr().out
    bad = comfy_lora(linears)
    del bad["diffusion_model.single_blocks.0.linear1.lora_A.weight"]
    assert cli(["check-lora", str(write(tmp_path / "bad.safetensors", bad)), "--model", str(DEMO)]) == 1
    assert cli(["check-lora", str(tmp_path / "missing.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err



def test_the_released_shapes_are_diffusers_default_chroma():
    # The fallback table must be the real model: build diffusers' default ChromaTransformer2DModel on the meta
    # device (no memory) and read its block Linears back in original names.
    import accelerate
    from diffusers import ChromaTransformer2DModel

    from trainers.lora_check import _from_diffusers

    with accelerate.init_empty_weights():
        model = ChromaTransformer2DModel()
    shapes = {name.removesuffix(".weight"): list(p.shape) for name, p in model.named_parameters()
              if name.endswith(".weight") and p.dim() == 2}
    real = {m: s for m, s in _from_diffusers(shapes).items() if m.startswith(("double_blocks.", "single_blocks."))}
    assert real == full_size_shapes().linears
