"""Qwen-Image loading and encoding, following diffusion-pipe's models/qwen_image.py (commit 8f83dbf):
each [model] path as it loads it (:198-269), the transformer_dtype storage rule (:23, :262), the prompt encoding
(:182-183, :332-384), the VAE latents (:296-302) and prepare_inputs' text trim and mask (:394-481)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.fixtures import qwen_image_tiny as qt
from trainers.native.families import qwen_image as qi
from trainers.native.families.base import TextBatch

CPU = torch.device("cpu")
CAPTIONS = ["a red cat", "a blue dog photo of a cat and a dog by the background"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return qt.build(tmp_path_factory.mktemp("qwen"))


@pytest.fixture(scope="module")
def family(tiny):
    return qi.QwenImageFamily.load(qt.model_table(tiny[0]), CPU)


@pytest.fixture(scope="module")
def family_files(tiny):
    return qi.QwenImageFamily.load(qt.model_table(None, tiny[1]), CPU)


def _equal_states(a: torch.nn.Module, b: torch.nn.Module, skip: str = "\0") -> None:
    sa = {k: v for k, v in a.state_dict().items() if skip not in k}
    sb = {k: v for k, v in b.state_dict().items() if skip not in k}
    assert sorted(sa) == sorted(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_tiny_tokenizer_puts_the_template_prefix_in_34_tokens():
    # models/qwen_image.py:182-183: the prefix up to the caption is 34 tokens with Qwen's tokenizer; the fixture's
    # tokenizer is made so, or dropping 34 tokens would test nothing.
    tokenizer = qt.tokenizer()
    prefix = qi.PROMPT_TEMPLATE.split("{}")[0]
    assert len(tokenizer(prefix).input_ids) == qi.TEMPLATE_PREFIX_TOKENS == 34


def test_the_diffusers_folder_and_the_single_files_load_the_same_models(family, family_files):
    _equal_states(family.transformer, family_files.transformer)
    _equal_states(family.pipe.vae, family_files.pipe.vae)
    # the single file's vision tower is never built (text-to-image never runs it); the language model is the same
    _equal_states(family.pipe.text_encoder, family_files.pipe.text_encoder, skip="visual")
    assert family_files.transformer.config.axes_dims_rope == (16, 56, 56)


def test_a_comfyui_prefixed_transformer_file_loads_the_same(tiny, family, tmp_path):
    state = load_file(str(tiny[1]["transformer_path"]))
    save_file({"model.diffusion_model." + k: v for k, v in state.items()}, str(tmp_path / "t.safetensors"))
    model = qi.load_transformer(tmp_path / "t.safetensors", torch.float32, "transformer_path")
    _equal_states(model, family.transformer)


def test_each_single_file_wins_over_the_diffusers_subfolder(tiny, tmp_path):
    # docs/supported_models.md: "it will prefer to read the sub-model from the individual path"
    other = qt.transformer(seed=1)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "t.safetensors"))
    fam = qi.QwenImageFamily.load(qt.model_table(tiny[0], transformer_path=str(tmp_path / "t.safetensors")), CPU)
    _equal_states(fam.transformer, other)


def test_prompts_are_encoded_as_diffusion_pipe_and_diffusers_encode_them(family, family_files):
    text = family.encode_prompts(CAPTIONS)
    # diffusers' QwenImagePipeline.encode_prompt runs the same template, drop index, max length and mask
    # (diffusion-pipe's _get_qwen_prompt_embeds, models/qwen_image.py:332-384, is its copy)
    embeds, mask = family.pipe.encode_prompt(CAPTIONS, device=CPU)
    assert torch.equal(text.embeds, embeds) and torch.equal(text.mask, mask)
    assert torch.equal(family_files.encode_prompts(CAPTIONS).embeds, text.embeds)
    # what is kept: the caption's tokens and the template's 5 closing tokens, the 34 prefix tokens dropped
    tokenizer = family.pipe.tokenizer
    lengths = [len(tokenizer(qi.PROMPT_TEMPLATE.format(c)).input_ids) - 34 for c in CAPTIONS]
    assert text.mask.sum(dim=1).tolist() == lengths
    assert lengths[0] == len(tokenizer("a red cat").input_ids) + 5
    assert text.embeds[0, lengths[0]:].abs().sum() == 0  # padding is zeros


def test_a_long_caption_is_cut_at_1024_tokens(family):
    text = family.encode_prompts([" ".join(["cat"] * 1500)])
    assert text.embeds.shape[1] == qi.MAX_TOKENS == 1024 and text.mask.all()


def test_latents_are_the_vae_mode_normalised_per_channel(family):
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = family.encode_images(pixels)
    vae = family.pipe.vae
    mode = vae.encode(pixels[:, :, None]).latent_dist.mode()[:, :, 0]
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1)
    assert latents.shape == (2, 16, 8, 8)
    assert torch.allclose(latents, (mode - mean) / std, atol=1e-6)
    assert vae.config.latents_mean[0] == -0.7571 and vae.config.latents_std[0] == 2.8184  # the released values


def test_pack_and_unpack_are_inverse_and_match_the_pipeline():
    from diffusers import QwenImagePipeline

    x = torch.randn(2, 16, 6, 8)
    packed = qi.pack_latents(x)
    assert torch.equal(packed, QwenImagePipeline._pack_latents(x, 2, 16, 6, 8))
    assert torch.equal(qi.unpack_latents(packed, 6, 8), x)
    assert qi.QwenImageFamily.image_seq_len(None, x.shape) == 12


def test_predict_trims_the_text_to_the_batch_and_masks_the_padding(family):
    # prepare_inputs (:400-412) pads each caption to the batch's longest and trims the rest; the mask keeps the
    # padding out of attention (:472-475), so a caption predicts the same alone or beside a longer one.
    text = family.encode_prompts(CAPTIONS)
    x = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        both = family.predict(x, t, text)
        alone = family.predict(x[:1], t[:1], text.index([0]))
        padded = family.predict(x[:1], t[:1], TextBatch.cat([text.index([0]), text.index([1])]).index([0]))
        unmasked = family.predict(x[:1], t[:1], TextBatch(text.embeds[:1], torch.ones_like(text.mask[:1])))
    assert torch.allclose(both[:1], alone, atol=1e-5) and torch.allclose(padded, alone, atol=1e-5)
    assert (unmasked - alone).abs().max() > 1e-4  # the mask matters


def test_the_lora_targets_every_linear_of_the_blocks(family):
    targets = family.lora_targets()
    expected = {f"transformer_blocks.0.{n}" for n in (
        "attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
        "attn.to_out.0", "attn.to_add_out", "img_mod.1", "txt_mod.1", "img_mlp.net.0.proj", "img_mlp.net.2",
        "txt_mlp.net.0.proj", "txt_mlp.net.2")}
    assert set(targets) == expected and len(targets) == len(expected)


def test_float8_keeps_the_listed_modules_in_dtype(tiny):
    # models/qwen_image.py:23 and :262: names holding time_text_embed/img_in/txt_in/norm_out/proj_out, and 1-D
    # parameters, load in dtype; every other weight in transformer_dtype.
    fam = qi.QwenImageFamily.load(qt.model_table(tiny[0], transformer_dtype="float8"), CPU)
    for name, param in fam.transformer.named_parameters():
        high = param.dim() == 1 or any(word in name for word in qi.KEEP_IN_HIGH_PRECISION)
        assert param.dtype == (torch.float32 if high else torch.float8_e4m3fn), name
    assert fam.transformer.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
    text = fam.encode_prompts(CAPTIONS[:1])
    out = fam.predict(torch.randn(1, 16, 8, 8), torch.tensor([0.5]), text)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_missing_paths_name_the_keys_to_set(tiny):
    with pytest.raises(ValueError, match="vae_path is missing.*diffusers_path"):
        qi.QwenImageFamily.load(qt.model_table(None, {k: v for k, v in tiny[1].items() if k != "vae_path"}), CPU)


def test_fp8_scaled_and_comfyui_vae_files_are_refused(tiny, tmp_path):
    state = load_file(str(tiny[1]["transformer_path"]))
    save_file({**state, "transformer_blocks.0.attn.to_q.scale_weight": torch.ones(1)}, str(tmp_path / "s.safetensors"))
    with pytest.raises(ValueError, match="fp8_scaled.*bf16 file"):
        qi.load_transformer(tmp_path / "s.safetensors", torch.float32, "[model] transformer_path")
    save_file({"encoder.conv1.weight": torch.ones(1)}, str(tmp_path / "v.safetensors"))
    with pytest.raises(ValueError, match="Diffusers VAE"):
        qi.load_vae(tmp_path / "v.safetensors", torch.float32, "[model] vae_path")


def test_qwen_image_edit_folders_are_refused_with_the_backend_to_use(tiny, tmp_path):
    folder = tmp_path / "edit"
    shutil.copytree(tiny[0], folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "QwenImageEditPipeline"}))
    with pytest.raises(ValueError, match="QwenImageEditPipeline.*diffusion-pipe backend"):
        qi.QwenImageFamily.load(qt.model_table(folder), CPU)


def test_a_single_file_setup_without_a_tokenizer_says_where_to_put_one(tiny, tmp_path):
    for path in tiny[1].values():
        shutil.copy(path, tmp_path / Path(path).name)
    files = {key: tmp_path / Path(path).name for key, path in tiny[1].items()}
    with pytest.raises(FileNotFoundError, match="tokenizer.*diffusers_path"):
        qi.QwenImageFamily.load(qt.model_table(None, files), CPU)


def test_the_cache_key_follows_the_encoders_and_dtype(tiny, family, family_files):
    assert family.cache_key() == qi.QwenImageFamily.load(qt.model_table(tiny[0]), CPU).cache_key()
    assert family.cache_key() != family_files.cache_key()  # other files, other key
    assert family.cache_key().startswith("qwen_image-")


def test_the_saved_keys_are_comfyui_layout(family):
    tensors, extra = family.export_lora({"transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 128)})
    assert list(tensors) == ["diffusion_model.transformer_blocks.0.attn.to_q.lora_A.weight"]
    assert extra["target_modules"] == sorted(family.lora_targets())
