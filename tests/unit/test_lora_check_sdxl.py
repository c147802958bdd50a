"""The LoRA key check for SDXL's kohya files (trainers/lora_check_sdxl.py), against an original-layout checkpoint.

What a correct file is comes from diffusion-pipe models/sdxl.py: configure_adapter (:430-463) targets every
nn.Linear inside the UNet's down_blocks, mid_block and up_blocks and every nn.Linear of both text encoders, with the
``unet.`` / ``text_encoder.`` / ``text_encoder_2.`` prefixes (:414-421); save_adapter (:465-472) writes
``diffusers.utils.state_dict_utils.convert_state_dict_to_kohya`` of that peft state dict. The tests build such a
file with diffusers' own converter from the models' real Linears, and the checkpoint with the tiny SDXL fixture
(whose layout diffusers' ``from_single_file`` reads back: tests/integration/test_native_sdxl_train.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.fixtures import sdxl_tiny as st
from trainers.cli import main as cli
from trainers.lora_check import check_lora, log_line
from trainers.lora_check_sdxl import is_sdxl_lora, model_linears, released_linears

RANK = 2
ROOTS = {"unet": ("down_blocks.", "mid_block.", "up_blocks."), "te1": ("",), "te2": ("",)}
PEFT_PREFIX = {"unet": "unet.", "te1": "text_encoder.", "te2": "text_encoder_2."}


def linears(pipe) -> dict[str, dict[str, tuple[int, int]]]:
    """component -> diffusers name -> (out, in) of the Linears diffusion-pipe targets, read off the models (the
    first encoder under ``text_model.`` as transformers 4, which diffusion-pipe runs on, names it)."""
    out = {}
    for part, module in (("unet", pipe.unet), ("te1", pipe.text_encoder), ("te2", pipe.text_encoder_2)):
        found = {n: (m.out_features, m.in_features) for n, m in module.named_modules()
                 if isinstance(m, torch.nn.Linear) and n.startswith(ROOTS[part])}
        if part == "te1":
            found = {n if n.startswith("text_model.") else f"text_model.{n}": s for n, s in found.items()}
        out[part] = found
    return out


def kohya_lora(shapes: dict[str, dict[str, tuple[int, int]]], rank: int = RANK) -> dict[str, torch.Tensor]:
    """A LoRA on every targeted Linear, as diffusion-pipe saves it: the peft state dict through diffusers'
    convert_state_dict_to_kohya."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

    peft = {}
    for part, names in shapes.items():
        for name, (o, i) in names.items():
            peft[f"{PEFT_PREFIX[part]}{name}.lora_A.weight"] = torch.zeros(rank, i)
            peft[f"{PEFT_PREFIX[part]}{name}.lora_B.weight"] = torch.zeros(o, rank)
    return convert_state_dict_to_kohya(peft)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(the tiny original-layout checkpoint, the pipeline it holds)."""
    pipe = st.tiny_pipeline()
    return st.write_checkpoint(pipe, tmp_path_factory.mktemp("sdxl") / st.CHECKPOINT_FILE), pipe


def test_the_checkpoints_linears_are_the_models_in_diffusers_names(tiny):
    checkpoint, pipe = tiny
    assert model_linears(checkpoint) == linears(pipe)


def test_the_released_shapes_are_diffusers_sdxl_base():
    # The fallback table must be the real model: SDXL base's UNet and CLIP configs built on the meta device.
    import accelerate
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with accelerate.init_empty_weights():
        unet = UNet2DConditionModel(
            sample_size=128, layers_per_block=2, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816)
        te1 = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                           num_attention_heads=12, hidden_act="quick_gelu"))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=1280, intermediate_size=5120,
                                                         num_hidden_layers=32, num_attention_heads=20,
                                                         projection_dim=1280, hidden_act="gelu"))

    class Pipe:
        pass

    pipe = Pipe()
    pipe.unet, pipe.text_encoder, pipe.text_encoder_2 = unet, te1, te2
    assert released_linears() == linears(pipe)


def test_a_diffusion_pipe_lora_fits_its_checkpoint(tiny, tmp_path: Path):
    checkpoint, pipe = tiny
    shapes = linears(pipe)
    lora = tmp_path / "lora.safetensors"
    save_file(kohya_lora(shapes), str(lora), metadata={"format": "pt"})
    report = check_lora(lora, checkpoint)
    total = sum(len(names) for names in shapes.values())
    assert report.ok, report.problems
    assert (report.layout, report.exact, report.modules, report.covered, report.targets, report.ranks) == (
        "kohya", True, total, total, total, [RANK])
    assert report.model == checkpoint.name
    level, message = log_line("epoch1", lora, checkpoint)
    assert level == "info" and message.startswith("epoch1 key check: ✓ every key fits the model (kohya layout")


def test_each_kind_of_problem_is_named(tiny, tmp_path: Path):
    checkpoint, pipe = tiny
    tensors = kohya_lora(linears(pipe))
    q = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    tensors[q + ".lora_down.weight"] = torch.zeros(RANK, 7)  # attn2.to_k takes the 40-wide text states
    tensors["lora_te2_text_model_encoder_layers_9_mlp_fc1.lora_down.weight"] = torch.zeros(RANK, st.TE2_WIDTH)
    tensors["lora_te2_text_model_encoder_layers_9_mlp_fc1.lora_up.weight"] = torch.zeros(32, RANK)  # no layer 9
    del tensors["lora_te1_text_model_encoder_layers_0_mlp_fc2.lora_up.weight"]
    tensors["lora_unet_conv_in.weight"] = torch.zeros(3)
    lora = tmp_path / "bad.safetensors"
    save_file(tensors, str(lora))
    report = check_lora(lora, checkpoint)
    assert report.unmatched == ["lora_te2_text_model_encoder_layers_9_mlp_fc1"]
    assert report.mismatched == [f"{q}: A [{RANK}, 7], B [32, {RANK}]; down_blocks.1.attentions.0."
                                 f"transformer_blocks.0.attn2.to_k is {st.TE1_WIDTH + st.TE2_WIDTH} → 32"]
    assert report.half_pairs == ["lora_te1_text_model_encoder_layers_0_mlp_fc2 (no B)"]
    assert report.not_lora == ["lora_unet_conv_in.weight"]
    assert not report.ok and "1 unmatched keys, 1 shape mismatches, 1 half pairs, 1 non-LoRA tensors" in \
        report.summary()


def test_without_the_checkpoint_the_released_sdxl_is_assumed(tiny, tmp_path: Path, capsys):
    # A LoRA at SDXL base's real shapes fits them; the tiny one does not, and the report says what it assumed.
    released = tmp_path / "released.safetensors"
    save_file(kohya_lora(released_linears(), rank=1), str(released))
    report = check_lora(released, None)
    assert report.ok and not report.exact and report.covered == report.targets
    assert "the released SDXL's shapes" in report.model and "released SDXL's block shapes" in report.markdown()
    assert cli(["check-lora", str(released), "--model", str(tmp_path / "moved.safetensors")]) == 0
    tiny_lora = tmp_path / "tiny.safetensors"
    save_file(kohya_lora(linears(tiny[1])), str(tiny_lora))
    assert not check_lora(tiny_lora, None).ok
    assert cli(["check-lora", str(tiny_lora), "--model", str(tiny[0])]) == 0
    assert "✓ every key fits the model" in capsys.readouterr().out


def test_sdxl_keys_are_told_from_a_chroma_kohya_export():
    assert is_sdxl_lora(["lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight"])
    assert is_sdxl_lora(["lora_te2_text_projection.alpha"])
    assert not is_sdxl_lora(["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"])
