"""Saved LoRAs: exact reload (init_from_existing, the sampler), fusing any layout, ComfyUI/diffusers equivalence."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoTokenizer, T5EncoderModel

from tests.fixtures.chroma_tiny import (
    FLUX_TINY,
    SAME_OUTPUT,
    block_linears,
    forward_inputs,
    max_diff,
    one_thread,
    random_lora,
    tiny_transformer,
)
from trainers.native.export import export, read_saved, to_diffusers
from trainers.native.families.chroma import ChromaFamily
from trainers.native.families.chroma_keys import (
    PREFIX,
    from_original_checkpoint,
    fused_parts,
    to_original_checkpoint,
)
from trainers.native.lora_io import adapter_config, lora_state_dict, save_lora

RANK = 2


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def encoders():
    """The demo VAE, T5, tokenizer and scheduler, loaded once."""
    vae = AutoencoderKL.from_pretrained(FLUX_TINY / "vae", local_files_only=True)
    text_encoder = T5EncoderModel.from_pretrained(FLUX_TINY / "text_encoder_2", local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(FLUX_TINY / "tokenizer_2", local_files_only=True)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(FLUX_TINY / "scheduler", local_files_only=True)
    return vae, text_encoder, tokenizer, scheduler


def family_of(encoders, transformer) -> ChromaFamily:
    vae, text_encoder, tokenizer, scheduler = encoders
    transformer.requires_grad_(False)
    return ChromaFamily(vae, text_encoder, tokenizer, transformer, scheduler, torch.device("cpu"), torch.float32)


def save_trained(family: ChromaFamily, folder, rank: int = RANK):
    """What the loop writes: export_lora + save_lora into ``folder``."""
    tensors, extra = family.export_lora(lora_state_dict(family.transformer))
    folder.parent.mkdir(parents=True, exist_ok=True)
    main = folder.parent / "main.toml"
    main.write_text("[model]\ntype = 'chroma'\n")
    save_lora(folder, tensors, adapter_config(rank, 0.0, extra), main)
    return folder


@pytest.fixture()
def trained(encoders, tmp_path):
    """A family whose transformer carries a random non-zero LoRA, saved to ``tmp_path/epoch1``."""
    family = family_of(encoders, tiny_transformer())
    random_lora(family.transformer, RANK)
    return family, save_trained(family, tmp_path / "epoch1")


def outputs(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**forward_inputs()).sample


# ----- exact reload --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("what", ["folder", "file", "file without adapter_config"])
def test_saved_lora_reloads_bit_exact(encoders, trained, what):
    source, folder = trained
    path = folder if what == "folder" else folder / "adapter_model.safetensors"
    if what == "file without adapter_config":
        (folder / "adapter_config.json").unlink()
    family = family_of(encoders, tiny_transformer())
    rank, named = family.attach_saved_lora(path)
    assert rank == RANK and named and not any(p.requires_grad for _, p in named)
    expected = lora_state_dict(source.transformer)
    got = lora_state_dict(family.transformer)
    assert set(got) == set(expected) and len(got) == 2 * len(block_linears(tiny_transformer()))
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert max_diff(outputs(family.transformer), outputs(source.transformer)) <= SAME_OUTPUT


def test_attach_replaces_a_lora_and_sets_dtype_and_trainable(encoders, trained, tmp_path):
    source, folder = trained
    family = family_of(encoders, tiny_transformer())
    random_lora(family.transformer, rank=4, seed=9)
    rank, named = family.attach_saved_lora(folder, trainable=True, dtype=torch.bfloat16)
    assert rank == RANK and all(p.requires_grad and p.dtype == torch.bfloat16 for _, p in named)
    assert all(p.shape[0] == RANK or p.shape[1] == RANK for _, p in named)


def test_init_from_existing_checks_the_rank(encoders, trained):
    source, folder = trained
    family = family_of(encoders, tiny_transformer())
    with pytest.raises(ValueError, match=r"init_from_existing = .* has rank 2 but \[adapter\] rank = 8"):
        family.init_from_existing(folder, 8)
    named = family.init_from_existing(str(folder), RANK)
    assert all(p.requires_grad for _, p in named)
    assert max_diff(outputs(family.transformer), outputs(source.transformer)) <= SAME_OUTPUT


def test_a_lora_trained_on_the_fused_linears_loads_exactly(encoders, tmp_path):
    """diffusion-pipe on the original model: one A for all of qkv / linear1, rank r (not 3r or 4r)."""
    base = tiny_transformer()
    original = to_original_checkpoint(base.state_dict())
    gen = torch.Generator().manual_seed(5)
    tensors = {}
    for key, weight in original.items():
        module = key.removesuffix(".weight")
        if key.endswith(".weight") and module.split(".")[0] in ("double_blocks", "single_blocks") and weight.ndim == 2:
            tensors[f"{PREFIX}{module}.lora_A.weight"] = torch.randn(RANK, weight.shape[1], generator=gen) * 0.2
            tensors[f"{PREFIX}{module}.lora_B.weight"] = torch.randn(weight.shape[0], RANK, generator=gen) * 0.2
            original[key] = weight + tensors[f"{PREFIX}{module}.lora_B.weight"] @ tensors[
                f"{PREFIX}{module}.lora_A.weight"]
    save_file(tensors, str(tmp_path / "adapter_model.safetensors"))
    merged = tiny_transformer()
    merged.load_state_dict(from_original_checkpoint(original))
    family = family_of(encoders, base)
    assert family.attach_saved_lora(tmp_path)[0] == RANK
    assert max_diff(outputs(family.transformer), outputs(merged)) <= 1e-5


# ----- must show: ComfyUI-layout merge == diffusers/peft merge ------------------------------------------------
def test_lora_merged_in_original_layout_equals_peft_merge(trained):
    """Apply the saved file to the ORIGINAL keys (W += B @ A, fused qkv/linear1 as saved), convert back."""
    family, folder = trained
    base = tiny_transformer().state_dict()
    original = to_original_checkpoint(base)
    tensors, _ = read_saved(folder)
    modules = {k[len(PREFIX):].rsplit(".lora_", 1)[0] for k in tensors}
    assert any(fused_parts(m) for m in modules)
    for module in modules:
        a, b = tensors[f"{PREFIX}{module}.lora_A.weight"], tensors[f"{PREFIX}{module}.lora_B.weight"]
        original[f"{module}.weight"] = original[f"{module}.weight"] + b @ a
    from_comfy = from_original_checkpoint(original)
    peft_model = copy.deepcopy(family.transformer)
    peft_model.fuse_lora()
    peft_model.unload_lora()
    merged = peft_model.state_dict()
    assert set(merged) == set(from_comfy)
    assert max((merged[k] - from_comfy[k]).abs().max().item() for k in merged) <= 1e-5
    assert any(not torch.equal(merged[k], base[k]) for k in merged)


# ----- must show: diffusers' ChromaPipeline.load_lora_weights --------------------------------------------------
class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("source", ["converted dict", "diffusers export file"])
def test_diffusers_pipeline_loads_the_saved_lora(encoders, trained, tmp_path, source):
    trained_family, folder = trained
    tensors, config = read_saved(folder)
    lora = to_diffusers(tensors, config) if source == "converted dict" else str(
        export(folder, "diffusers", tmp_path / "lora.safetensors"))
    family = family_of(encoders, tiny_transformer())
    records, logger = _Records(), logging.getLogger("diffusers")
    logger.addHandler(records)
    try:
        family.pipe.load_lora_weights(lora, adapter_name="default")
    finally:
        logger.removeHandler(records)
    bad = [m for m in records.messages if "unexpected keys" in m or "missing keys" in m
           or "No LoRA keys associated to ChromaTransformer2DModel" in m]
    assert not bad, bad
    expected = lora_state_dict(trained_family.transformer)
    got = lora_state_dict(family.transformer)
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert max_diff(outputs(family.transformer), outputs(trained_family.transformer)) <= 1e-5


# ----- fuse_adapters --------------------------------------------------------------------------------------------
def _peft_layout(folder, tmp_path):
    """The same LoRA as a saved PeftModel would write it (``base_model.model.`` + diffusers names + config)."""
    tensors, config = read_saved(folder)
    peft_folder = tmp_path / "peft"
    peft_folder.mkdir()
    save_file({f"base_model.model.{k.removeprefix('transformer.')}": v for k, v in to_diffusers(tensors).items()},
              str(peft_folder / "adapter_model.safetensors"))
    (peft_folder / "adapter_config.json").write_text(json.dumps({"r": RANK, "lora_alpha": RANK}))
    return peft_folder


@pytest.mark.parametrize("layout", ["comfyui folder", "comfyui file", "diffusers", "kohya", "peft"])
def test_fuse_adapters_reads_every_layout(encoders, trained, tmp_path, layout):
    source, folder = trained
    path = {"comfyui folder": lambda: folder, "comfyui file": lambda: folder / "adapter_model.safetensors",
            "diffusers": lambda: export(folder, "diffusers", tmp_path / "d.safetensors"),
            "kohya": lambda: export(folder, "kohya", tmp_path / "k.safetensors"),
            "peft": lambda: _peft_layout(folder, tmp_path)}[layout]()
    family = family_of(encoders, tiny_transformer())
    family.fuse_adapters([{"path": str(path), "weight": 0.5}])
    reference = copy.deepcopy(source.transformer)
    reference.fuse_lora(lora_scale=0.5)
    reference.unload_lora()
    expected, got = reference.state_dict(), family.transformer.state_dict()
    assert max((expected[k] - got[k]).abs().max().item() for k in expected) <= 1e-5


def test_fuse_honours_alpha_and_checks_its_input(encoders, trained, tmp_path):
    source, folder = trained
    kohya = export(folder, "kohya", tmp_path / "k.safetensors")
    with safe_open(str(kohya), "pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    halved = {k: v / 2 if k.endswith(".alpha") else v for k, v in tensors.items()}
    save_file(halved, str(tmp_path / "half.safetensors"))
    family = family_of(encoders, tiny_transformer())
    family.fuse_adapters([{"path": str(tmp_path / "half.safetensors")}])
    reference = copy.deepcopy(source.transformer)
    reference.fuse_lora(lora_scale=0.5)
    reference.unload_lora()
    assert max((reference.state_dict()[k] - v).abs().max().item()
               for k, v in family.transformer.state_dict().items()) <= 1e-5
    with pytest.raises(ValueError, match=r"fuse_adapters\[0\] has unknown keys scale"):
        family.fuse_adapters([{"path": str(folder), "scale": 1.0}])
    with pytest.raises(FileNotFoundError, match=r"fuse_adapters\[1\] path = 'nowhere' does not exist"):
        family.fuse_adapters([{"path": str(folder)}, {"path": "nowhere"}])
    save_file({"lora_unet_up_blocks_0.lora_down.weight": torch.zeros(2, 4),
               "lora_unet_up_blocks_0.lora_up.weight": torch.zeros(4, 2)}, str(tmp_path / "sdxl.safetensors"))
    with pytest.raises(ValueError, match="match no Linear of this Chroma transformer, e.g. up_blocks_0"):
        family.fuse_adapters([{"path": str(tmp_path / "sdxl.safetensors")}])
    random_lora(family.transformer)
    with pytest.raises(RuntimeError, match="before a LoRA is attached"):
        family.fuse_adapters([{"path": str(folder)}])


def test_fuse_rejects_a_lora_for_another_size(encoders, trained, tmp_path):
    _, folder = trained
    family = family_of(encoders, tiny_transformer(num_attention_heads=3))
    with pytest.raises(ValueError, match="for a model of another size"):
        family.fuse_adapters([{"path": str(folder)}])
