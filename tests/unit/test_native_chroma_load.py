"""Loading exactly what a Chroma config names: a diffusers folder, or one original/ComfyUI-layout file, offline."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from tests.fixtures.chroma_tiny import (
    SAME_OUTPUT,
    forward_inputs,
    max_diff,
    model_table,
    one_thread,
    same_weights,
    tiny_transformer,
    write_checkpoint,
)
from trainers.native.families.chroma import ChromaFamily, load_transformer
from trainers.native.families.chroma_keys import to_original_checkpoint


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny transformer saved as a diffusers folder, and its outputs."""
    folder = tmp_path_factory.mktemp("chroma") / "transformer"
    model = tiny_transformer()
    model.save_pretrained(folder)
    with torch.no_grad():
        out = load_transformer(folder, torch.float32)(**forward_inputs()).sample
    return model, folder, out


@pytest.mark.parametrize("prefix", ["", "diffusion_model.", "model.diffusion_model."])
def test_single_file_layouts_load_to_the_folder_model(reference, tmp_path, prefix):
    model, _, expected = reference
    path = write_checkpoint(model, tmp_path / "chroma.safetensors", prefix)
    loaded = load_transformer(path, torch.float32)
    assert loaded.config.num_layers == 2 and loaded.config.attention_head_dim == 16
    assert same_weights(loaded, model)
    with torch.no_grad():
        assert max_diff(loaded(**forward_inputs()).sample, expected) <= SAME_OUTPUT


def test_a_bf16_file_loads_in_the_requested_dtype(reference, tmp_path):
    model, _, expected = reference
    loaded = load_transformer(write_checkpoint(model, tmp_path / "c.safetensors", dtype=torch.bfloat16), torch.float32)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    with torch.no_grad():
        assert max_diff(loaded(**forward_inputs()).sample, expected) < 0.05


def test_config_json_beside_the_file_sets_the_rope_axes(tmp_path):
    model = tiny_transformer(axes_dims_rope=(4, 4, 8))  # not what the shapes would suggest
    path = write_checkpoint(model, tmp_path / "c.safetensors")
    assert load_transformer(path, torch.float32).config.axes_dims_rope == (4, 6, 6)
    model.save_config(tmp_path)
    loaded = load_transformer(path, torch.float32)
    assert same_weights(loaded, model)
    with torch.no_grad():
        assert max_diff(loaded(**forward_inputs()).sample, model(**forward_inputs()).sample) <= SAME_OUTPUT
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_layers": 3}))
    with pytest.raises(ValueError, match="num_layers = 3 but the weights have 2"):
        load_transformer(path, torch.float32)


def test_fp8_scaled_checkpoints_are_refused_with_the_reason(tmp_path):
    state = to_original_checkpoint(tiny_transformer().state_dict())
    state["double_blocks.0.img_attn.qkv.scale_weight"] = torch.tensor(0.5)
    path = tmp_path / "chroma_fp8_scaled.safetensors"
    save_file({"model.diffusion_model." + k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(ValueError, match=r"chroma_fp8_scaled.safetensors.*fp8_scaled.*qkv.scale_weight.*bf16"):
        load_transformer(path, torch.float32)


def test_other_files_are_named_with_what_they_hold(tmp_path):
    flux = tmp_path / "flux.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(6, 2), "guidance_in.in_layer.weight":
               torch.zeros(2, 2)}, str(flux))
    with pytest.raises(ValueError, match=r"flux.safetensors.*not a Chroma transformer \(found: flux transformer"):
        load_transformer(flux, torch.float32)
    diffusers_file = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_transformer().state_dict().items()}, str(diffusers_file))
    with pytest.raises(ValueError, match="diffusers' key layout"):
        load_transformer(diffusers_file, torch.float32)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors.*not a readable"):
        load_transformer(tmp_path / "junk.safetensors", torch.float32)
    with pytest.raises(FileNotFoundError, match="without config.json"):
        load_transformer(tmp_path, torch.float32)


def test_missing_and_extra_tensors_are_named(tmp_path):
    state = to_original_checkpoint(tiny_transformer().state_dict())
    del state["single_blocks.1.linear2.weight"]
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "a.safetensors"))
    with pytest.raises(ValueError, match="single_blocks.1.linear2.weight|proj_out.weight"):
        load_transformer(tmp_path / "a.safetensors", torch.float32)
    state = to_original_checkpoint(tiny_transformer().state_dict())
    state["nerf_final_layer.linear.weight"] = torch.zeros(2, 2)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "b.safetensors"))
    with pytest.raises(ValueError, match="not part of a Chroma transformer.*nerf_final_layer"):
        load_transformer(tmp_path / "b.safetensors", torch.float32)


def test_family_loads_a_comfyui_file_offline(reference, tmp_path):
    model, folder, _ = reference
    path = write_checkpoint(model, tmp_path / "chroma.safetensors", "model.diffusion_model.")
    from_file = ChromaFamily.load(model_table(path), torch.device("cpu"))
    from_folder = ChromaFamily.load(model_table(folder), torch.device("cpu"))
    text = from_file.encode_prompts(["a red circle", "zxq"])
    x = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        assert max_diff(from_file.predict(x, t, text), from_folder.predict(x, t, text)) <= SAME_OUTPUT
    assert same_weights(from_file.transformer, from_folder.transformer)
    assert from_file.pixel_multiple == 16
    assert not any(p.requires_grad for p in from_file.transformer.parameters())
