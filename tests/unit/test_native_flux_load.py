"""Loading the Flux family from the paths a diffusion-pipe ``[model]`` table names, its dtype rules, encoders and
predict (diffusion-pipe models/flux.py, lines cited per test), on the tiny model of tests/fixtures/flux_tiny.py."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from tests.fixtures import flux_tiny as ft  # noqa: E402
from trainers.native.families.flux import FluxFamily  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    return ft.build(tmp_path_factory.mktemp("flux"))


@pytest.fixture(scope="module")
def family(tiny):
    return FluxFamily.load(ft.model_table(tiny[0]), CPU)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_single_file_and_diffusers_folder_load_the_same_transformer(tiny, family, tmp_path):
    # models/flux.py lines 175-187: transformer_path (one original-layout file) overrides diffusers_path/transformer
    folder, file = tiny
    from_file = FluxFamily.load(ft.model_table(folder, file), CPU)
    assert same_weights(family.transformer, from_file.transformer)
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in from_file.transformer.config.items()}
    assert config.items() <= dict(family.transformer.config).items()
    comfy = ft.write_original_file(family.transformer, tmp_path / "comfy.safetensors", "model.diffusion_model.")
    assert same_weights(family.transformer, FluxFamily.load(ft.model_table(folder, comfy), CPU).transformer)


def test_schnell_file_has_no_guidance_embedder(tiny, tmp_path):
    # models/flux.py lines 114-119 and 177: a file without guidance_in is schnell
    schnell = ft.tiny_transformer(guidance_embeds=False)
    file = ft.write_original_file(schnell, tmp_path / "schnell.safetensors")
    loaded = FluxFamily.load(ft.model_table(tiny[0], file), CPU).transformer
    assert loaded.config.guidance_embeds is False and same_weights(schnell, loaded)


def test_a_file_of_another_model_is_refused_by_name(tiny, tmp_path):
    from safetensors.torch import save_file
    other = tmp_path / "chroma.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(3, 2)}, str(other))
    with pytest.raises(ValueError, match=r"chroma\.safetensors.*not a Flux transformer"):
        FluxFamily.load(ft.model_table(tiny[0], other), CPU)


def test_guidance_defaults_to_one(tiny, family):
    # train.py line 113: model_config.setdefault('guidance', 1.0); models/flux.py line 373 reads it every step
    table = ft.model_table(tiny[0])
    del table["guidance"]
    assert FluxFamily.load(table, CPU).guidance == 1.0 and family.guidance == 3.5
    with pytest.raises(ValueError, match=r"\[model\] guidance = 'high' must be a number"):
        FluxFamily.load({**table, "guidance": "high"}, CPU)


def test_float8_storage_follows_diffusion_pipe(tiny):
    # models/flux.py lines 203-205: all but time_text_embed, context_embedder, x_embedder, proj_out*, norm_out*
    # and 1-D parameters go to transformer_dtype
    fam = FluxFamily.load(ft.model_table(tiny[0], transformer_dtype="float8"), CPU)
    stored = {n: m.weight.dtype for n, m in fam.transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    assert stored["transformer_blocks.0.attn.to_q"] == torch.float8_e4m3fn
    assert stored["transformer_blocks.0.norm1.linear"] == torch.float8_e4m3fn
    assert stored["single_transformer_blocks.0.proj_out"] == torch.float8_e4m3fn
    for kept in ("x_embedder", "context_embedder", "proj_out", "norm_out.linear",
                 "time_text_embed.guidance_embedder.linear_1"):
        assert stored[kept] == torch.float32, kept
    assert fam.transformer.transformer_blocks[0].attn.to_q.bias.dtype == torch.float32
    assert fam.transformer_dtype == torch.float32


def test_prompts_are_encoded_as_flux_pipeline_encodes_them(family):
    # models/flux.py lines 308-319: _get_clip_prompt_embeds (pooled) and _get_t5_prompt_embeds (512 tokens)
    text = family.encode_prompts(["a red circle", ""])
    embeds, pooled, _ = family.pipe.encode_prompt(["a red circle", ""], device=CPU, max_sequence_length=512)
    assert text.embeds.shape[1] == 512 and torch.equal(text.embeds, embeds) and torch.equal(text.pooled, pooled)
    assert not torch.equal(text.pooled[0], text.pooled[1])


def test_latents_use_the_vae_shift_and_scale(family):
    # models/flux.py lines 82-89: (latents - shift_factor) * scaling_factor
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    ours = family.encode_images(pixels, torch.Generator().manual_seed(0))
    vae = family.pipe.vae
    raw = vae.encode(pixels).latent_dist.sample(generator=gen)
    assert torch.equal(ours, (raw - vae.config.shift_factor) * vae.config.scaling_factor)


def test_predict_passes_the_configured_guidance(family):
    # models/flux.py line 373: guidance_vec = full(bs, model_config['guidance']), read by the guidance embedder
    text = family.encode_prompts(["a red circle"])
    x, t = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(2)), torch.tensor([0.4])
    with torch.no_grad():
        at_default = family.predict(x, t, text)
        family.guidance = 1.0
        at_one = family.predict(x, t, text)
        family.guidance = 3.5
    assert not torch.allclose(at_default, at_one)


def test_a_transformer_with_extra_input_channels_is_refused(tiny, tmp_path):
    # models/flux.py line 207: Flex.2 (196 inputs) gets its latents padded; the native family trains plain Flux only
    file = ft.write_original_file(ft.tiny_transformer(in_channels=80), tmp_path / "flex.safetensors")
    with pytest.raises(ValueError, match="takes 80 input channels.*backend = 'diffusion-pipe'"):
        FluxFamily.load(ft.model_table(tiny[0], file), CPU)
