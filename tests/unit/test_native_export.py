"""LoRA export: the three layouts carry exactly the trained weights, and the diffusers one loads in diffusers."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import ChromaTransformer2DModel
from safetensors import safe_open
from safetensors.torch import save_file

from trainers.native.export import ExportError, export, to_diffusers
from trainers.native.families.chroma_keys import to_original_lora
from trainers.native.lora_io import attach_lora, lora_state_dict

DOUBLE = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
          "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
          "ff_context.net.2"]
SINGLE = ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out"]


def _tiny() -> ChromaTransformer2DModel:
    torch.manual_seed(0)
    return ChromaTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                    attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                    axes_dims_rope=(4, 4, 8), approximator_num_channels=8,
                                    approximator_hidden_dim=32, approximator_layers=1)


def _trained_lora(tmp_path):
    model = _tiny()
    attach_lora(model, [f"transformer_blocks.0.{t}" for t in DOUBLE] +
                [f"single_transformer_blocks.0.{t}" for t in SINGLE], 2, 0.0, torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.1)  # B starts at zero; make the LoRA do something
    peft_sd = lora_state_dict(model)
    out_features = {n.rsplit(".lora_", 1)[0]: t.shape[0] for n, t in peft_sd.items() if ".lora_B." in n}
    tensors, extra = to_original_lora(peft_sd, out_features)
    folder = tmp_path / "epoch1"
    folder.mkdir()
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 2, **extra}))
    return model, peft_sd, folder


def test_diffusers_export_is_the_exact_inverse_of_fusing(tmp_path):
    _, peft_sd, folder = _trained_lora(tmp_path)
    out = export(folder, "diffusers", tmp_path / "d.safetensors", {"run_id": "r1", "steps": 10})
    with safe_open(str(out), framework="pt") as fh:
        exported = {k: fh.get_tensor(k) for k in fh.keys()}
        meta = fh.metadata()
    assert len(peft_sd) == 2 * (len(DOUBLE) + len(SINGLE))
    assert set(exported) == {f"transformer.{k}" for k in peft_sd}
    for key, value in peft_sd.items():
        assert torch.equal(exported[f"transformer.{key}"], value), key
    assert meta["dp_studio.layout"] == "diffusers" and meta["dp_studio.run_id"] == "r1"
    assert meta["ss_network_dim"] == "2" and not any("api_key" in k for k in meta)


def test_diffusers_export_loads_into_diffusers_and_reproduces_the_output(tmp_path):
    trained, _, folder = _trained_lora(tmp_path)
    out = export(folder, "diffusers", tmp_path / "d.safetensors")
    fresh = _tiny()
    with safe_open(str(out), framework="pt") as fh:
        sd = {k: fh.get_tensor(k) for k in fh.keys()}
    fresh.load_lora_adapter(sd, prefix="transformer", adapter_name="default")
    torch.manual_seed(1)
    args = dict(hidden_states=torch.randn(1, 16, 16), encoder_hidden_states=torch.randn(1, 4, 32),
                timestep=torch.tensor([0.5]), img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(4, 3))
    with torch.no_grad():
        expected, got = trained(**args).sample, fresh(**args).sample
    assert (expected - got).abs().max().item() <= 1e-5


def test_kohya_and_comfyui_layouts(tmp_path):
    _, _, folder = _trained_lora(tmp_path)
    with safe_open(str(export(folder, "kohya", tmp_path / "k.safetensors")), framework="pt") as fh:
        keys = set(fh.keys())
        assert fh.get_tensor("lora_unet_double_blocks_0_img_attn_qkv.alpha").item() == 6.0  # fused rank 3 x 2
    assert "lora_unet_single_blocks_0_linear1.lora_down.weight" in keys
    with safe_open(str(export(folder, "comfyui", tmp_path / "c.safetensors")), framework="pt") as fh:
        assert all(k.startswith("diffusion_model.") for k in fh.keys())
    with pytest.raises(ExportError, match="layout"):
        export(folder, "ckpt", tmp_path / "x.safetensors")
    with pytest.raises(ExportError, match="no adapter_model"):
        export(tmp_path, "kohya", tmp_path / "x.safetensors")


def test_to_diffusers_rejects_foreign_keys():
    with pytest.raises(ExportError, match="unexpected key"):
        to_diffusers({"lora_unet_x.lora_down.weight": torch.zeros(1)})


def test_diffusers_export_of_a_lora_trained_on_the_fused_linears(tmp_path):
    """diffusion-pipe's own Chroma LoRAs share one A across q, k, v: each part gets it with its rows of B."""
    gen = torch.Generator().manual_seed(4)
    a, b = torch.randn(2, 32, generator=gen), torch.randn(96, 2, generator=gen)
    proj_a, proj_b = torch.randn(2, 32, generator=gen), torch.randn(32, 2, generator=gen)
    tensors = {"diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": a,
               "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight": b,
               "diffusion_model.double_blocks.0.img_attn.proj.lora_A.weight": proj_a,
               "diffusion_model.double_blocks.0.img_attn.proj.lora_B.weight": proj_b}
    out = to_diffusers(tensors)  # no adapter_config: the rank comes from the unfused module
    for i, part in enumerate(("to_q", "to_k", "to_v")):
        assert torch.equal(out[f"transformer.transformer_blocks.0.attn.{part}.lora_A.weight"], a)
        assert torch.equal(out[f"transformer.transformer_blocks.0.attn.{part}.lora_B.weight"], b[32 * i:32 * (i + 1)])
    assert torch.equal(out["transformer.transformer_blocks.0.attn.to_out.0.lora_B.weight"], proj_b)
    with pytest.raises(ExportError, match="does not split into rank-3 parts"):
        to_diffusers(tensors, {"r": 3})


def test_diffusers_export_file_of_a_lora_trained_on_the_fused_linears(tmp_path):
    """The parts of a fused Linear share its A; the written file still holds one A per part (safetensors
    refuses tensors that share memory, so the export copies the shared A)."""
    gen = torch.Generator().manual_seed(5)
    a, b = torch.randn(2, 32, generator=gen), torch.randn(96, 2, generator=gen)
    folder = tmp_path / "epoch1"
    folder.mkdir()
    save_file({"diffusion_model.double_blocks.0.txt_attn.qkv.lora_A.weight": a,
               "diffusion_model.double_blocks.0.txt_attn.qkv.lora_B.weight": b}, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 2}))
    out = export(folder, "diffusers", tmp_path / "out.safetensors")
    with safe_open(str(out), framework="pt") as fh:
        for i, part in enumerate(("add_q_proj", "add_k_proj", "add_v_proj")):
            key = f"transformer.transformer_blocks.0.attn.{part}.lora_"
            assert torch.equal(fh.get_tensor(key + "A.weight"), a)
            assert torch.equal(fh.get_tensor(key + "B.weight"), b[32 * i:32 * (i + 1)])


def test_export_module_does_not_import_peft():
    """The studio runs each export in a child process; importing peft there cost seconds (bench/lora_export.py)."""
    import subprocess
    import sys

    code = "import sys, trainers.native.export; print('peft' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_comfyui_export_is_the_saved_file_with_training_metadata(tmp_path):
    """The ComfyUI layout is the saved file itself: every tensor unchanged, the header carries the metadata."""
    _, _, folder = _trained_lora(tmp_path)
    out = export(folder, "comfyui", tmp_path / "c.safetensors", {"run_id": "r1", "steps": 3})
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as src, \
            safe_open(str(out), framework="pt") as fh:
        assert set(fh.keys()) == set(src.keys())
        for key in src.keys():
            assert torch.equal(fh.get_tensor(key), src.get_tensor(key))
        meta = fh.metadata()
    assert meta["dp_studio.layout"] == "comfyui" and meta["dp_studio.run_id"] == "r1"
    assert meta["dp_studio.steps"] == "3" and meta["ss_network_dim"] == "2"


def test_comfyui_export_refuses_foreign_keys(tmp_path):
    folder = tmp_path / "epoch1"
    folder.mkdir()
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2)}, str(folder / "adapter_model.safetensors"))
    with pytest.raises(ExportError, match="not a diffusion-pipe Chroma LoRA"):
        export(folder, "comfyui", tmp_path / "c.safetensors")
    assert not (tmp_path / "c.safetensors").exists()


def test_comfyui_export_needs_no_torch(tmp_path):
    """The ComfyUI export copies bytes: a child process doing it never imports torch (bench/lora_export.py)."""
    import subprocess
    import sys

    _, _, folder = _trained_lora(tmp_path)
    code = ("import sys; from trainers.native.export import export; "
            f"export({str(folder)!r}, 'comfyui', {str(tmp_path / 'c.safetensors')!r}); print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_kohya_export_holds_the_saved_tensors_renamed_with_alpha_equal_to_rank(tmp_path):
    _, _, folder = _trained_lora(tmp_path)
    out = export(folder, "kohya", tmp_path / "k.safetensors")
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as src, \
            safe_open(str(out), framework="pt") as fh:
        assert len(fh.keys()) == len(src.keys()) * 3 // 2
        for key in src.keys():
            module, which = key[len("diffusion_model."):].rsplit(".lora_", 1)
            name = "lora_unet_" + module.replace(".", "_")
            saved = src.get_tensor(key)
            assert torch.equal(fh.get_tensor(f"{name}.lora_{'down' if which[0] == 'A' else 'up'}.weight"), saved)
            if which[0] == "A":
                alpha = fh.get_tensor(f"{name}.alpha")
                assert alpha.dtype == torch.float32 and alpha.shape == () and alpha.item() == saved.shape[0]
        assert fh.metadata()["dp_studio.layout"] == "kohya"
