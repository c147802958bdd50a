"""Reading LoRA files of any common layout: what is accepted, and errors that name the file and the fix."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from trainers.native.lora_io import adapter_file, lora_pairs, read_adapter

A, B = torch.ones(2, 4), torch.ones(6, 2)


def test_prefixes_suffixes_and_alpha():
    tensors = {"diffusion_model.double_blocks.0.img_attn.proj.lora_A.weight": A,
               "diffusion_model.double_blocks.0.img_attn.proj.lora_B.weight": B,
               "lora_unet_single_blocks_0_linear2.lora_down.weight": A,
               "lora_unet_single_blocks_0_linear2.lora_up.weight": B,
               "lora_unet_single_blocks_0_linear2.alpha": torch.tensor(1.0),
               "base_model.model.proj_out.lora_A.default.weight": A,
               "base_model.model.proj_out.lora_B.default.weight": B}
    pairs = lora_pairs(tensors, {"r": 2, "lora_alpha": 4, "alpha_pattern": {"proj_out": 8}}, "x")
    assert set(pairs) == {"double_blocks.0.img_attn.proj", "single_blocks_0_linear2", "proj_out"}
    assert pairs["single_blocks_0_linear2"].scale() == 0.5  # its alpha tensor
    assert pairs["proj_out"].scale() == 4.0  # alpha_pattern
    assert pairs["double_blocks.0.img_attn.proj"].scale() == 2.0  # lora_alpha / r
    assert lora_pairs({"m.lora_A.weight": A, "m.lora_B.weight": B}, None, "x")["m"].scale() == 1.0


@pytest.mark.parametrize(("tensors", "config", "message"), [
    ({"m.lora_A.weight": A}, None, "m has only a LoRA A matrix"),
    ({"m.lora_A.weight": A, "m.lora_B.weight": A}, None, "do not multiply"),
    ({"m.weight": A}, None, "'m.weight' is not a LoRA weight"),
    ({"m.lora_A.weight": A, "m.lora_B.weight": B, "n.alpha": torch.tensor(1.0)}, None, "alpha without LoRA weights"),
    ({"m.lora_A.weight": A, "m.lora_B.weight": B}, {"use_dora": True}, "sets use_dora"),
])
def test_bad_lora_files_are_explained(tensors, config, message):
    with pytest.raises(ValueError, match=message):
        lora_pairs(tensors, config, "lora.safetensors")


def test_folders_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"\[adapter\] init_from_existing = .* does not exist"):
        adapter_file(tmp_path / "missing", "[adapter] init_from_existing")
    save_file({"m.lora_A.weight": A, "m.lora_B.weight": B}, str(tmp_path / "one.safetensors"))
    assert adapter_file(tmp_path, "x") == tmp_path / "one.safetensors"  # diffusion-pipe: the folder's only file
    save_file({"m.lora_A.weight": A}, str(tmp_path / "two.safetensors"))
    with pytest.raises(ValueError, match="exactly one .safetensors file.*one.safetensors, two.safetensors"):
        adapter_file(tmp_path, "x")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="is not a .safetensors file"):
        adapter_file(tmp_path / "notes.txt", "x")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 2}))
    tensors, config, file = read_adapter(tmp_path / "one.safetensors", "x")
    assert config == {"r": 2} and file.name == "one.safetensors" and set(tensors) == {"m.lora_A.weight",
                                                                                       "m.lora_B.weight"}
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="bad.safetensors is not a readable"):
        read_adapter(tmp_path / "bad.safetensors", "x")
