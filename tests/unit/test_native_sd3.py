"""SD3's parts on the tiny model: loading and the storage rule, the three encoders, latents, predict, the LoRA's
targets and keys, previews, each following diffusion-pipe's models/sd3.py at the cited lines."""

from __future__ import annotations

import logging

import pytest
import torch

pytest.importorskip("diffusers")

from tests.fixtures import sd3_tiny as st  # noqa: E402
from trainers.native.families import sd3  # noqa: E402
from trainers.native.families.base import SampleRequest  # noqa: E402
from trainers.native.families.sd3 import SD3Family  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return st.build(tmp_path_factory.mktemp("sd3"))


@pytest.fixture(scope="module")
def family(tiny) -> SD3Family:
    return SD3Family.load(st.model_table(tiny), CPU)


def test_the_diffusers_folder_is_the_only_path_and_is_loaded_whole(tiny, family, tmp_path):
    # models/sd3.py lines 35-38 and 46-49: diffusers_path or NotImplementedError; the transformer from its
    # transformer/ subfolder, everything else through StableDiffusion3Pipeline.from_pretrained
    reference = st.tiny_transformer().state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in family.transformer.state_dict().items())
    assert family.pipe.text_encoder_3 is not None and family.pipe.tokenizer_max_length == 77
    with pytest.raises(KeyError, match=r"\[model\] diffusers_path is required for type = 'sd3'"):
        SD3Family.load({"type": "sd3", "dtype": "float32"}, CPU)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no transformer/ folder"):
        SD3Family.load(st.model_table(tmp_path / "empty"), CPU)


def test_storage_dtype_follows_diffusion_pipe(tiny):
    # models/sd3.py line 12 and lines 51-53: every parameter but 1-D ones and names holding pos_embed,
    # time_text_embed, context_embedder, norm_out or proj_out goes to transformer_dtype
    fam = SD3Family.load(st.model_table(tiny, transformer_dtype="float8"), CPU)
    stored = {n: m.weight.dtype for n, m in fam.transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    for name in ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn2.to_out.0",
                 "transformer_blocks.0.norm1.linear", "transformer_blocks.1.ff.net.2"):
        assert stored[name] == torch.float8_e4m3fn, name
    for kept in ("context_embedder", "proj_out", "norm_out.linear", "time_text_embed.text_embedder.linear_1"):
        assert stored[kept] == torch.float32, kept
    assert fam.transformer.pos_embed.proj.weight.dtype == torch.float32
    assert fam.transformer.transformer_blocks[0].attn.to_q.bias.dtype == torch.float32
    assert not sd3.keeps_high_precision("transformer_blocks.3.attn.to_q")
    assert sd3.keeps_high_precision("time_text_embed.timestep_embedder.linear_1")


def test_prompts_are_encoded_as_the_sd3_pipeline_encodes_them(family):
    # models/sd3.py lines 80-104 (each encoder through the pipeline's own helpers, T5 at its default 256 tokens)
    # and lines 118-123 (the CLIPs side by side, padded to T5's width, then T5; the pooled outputs side by side):
    # the same tensors as StableDiffusion3Pipeline.encode_prompt
    captions = ["a red circle", ""]
    text = family.encode_prompts(captions)
    embeds, _, pooled, _ = family.pipe.encode_prompt(captions, None, None, device=CPU,
                                                     do_classifier_free_guidance=False)
    assert text.embeds.shape == (2, 77 + 256, 64) and text.pooled.shape == (2, 2 * st.CLIP_WIDTH)
    assert torch.equal(text.embeds, embeds) and torch.equal(text.pooled, pooled)
    assert bool(text.mask.all()) and not torch.equal(text.pooled[0], text.pooled[1])
    assert torch.equal(text.embeds[:, :77, 2 * st.CLIP_WIDTH:], torch.zeros(2, 77, 64 - 2 * st.CLIP_WIDTH))


def test_latents_use_the_vae_shift_and_scale(family):
    # models/sd3.py lines 69-78: a sample of the latent distribution, minus shift_factor, times scaling_factor
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    ours = family.encode_images(pixels, torch.Generator().manual_seed(0))
    vae = family.pipe.vae
    raw = vae.encode(pixels).latent_dist.sample(generator=torch.Generator().manual_seed(0))
    assert torch.equal(ours, (raw - vae.config.shift_factor) * vae.config.scaling_factor)


def test_predict_reads_t_times_1000_and_shift_reads_the_patch_count(family):
    # models/sd3.py line 161: the transformer gets t * 1000; line 153: flux_shift reads (h // 2) * (w // 2)
    text = family.encode_prompts(["a red circle"])
    x = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.25])
    with torch.no_grad():
        ours = family.predict(x, t, text)
        theirs = family.transformer(hidden_states=x, timestep=torch.tensor([250.0]), encoder_hidden_states=text.embeds,
                                    pooled_projections=text.pooled, return_dict=False)[0]
    assert ours.shape == x.shape and torch.equal(ours, theirs)
    assert family.image_seq_len(torch.Size([1, 16, 16, 24])) == 8 * 12


def test_lora_targets_every_linear_of_the_joint_blocks(family):
    # models/sd3.py line 28: adapter_target_modules = ['JointTransformerBlock'] (models/base.py: every Linear
    # inside those blocks): both attentions, the feed-forwards and the AdaLN Linears, nothing outside the blocks
    model = st.tiny_transformer()
    expected = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                and n.startswith("transformer_blocks.")}
    assert set(family.lora_targets()) == expected and len(expected) == 29
    assert {"transformer_blocks.0.attn2.to_q", "transformer_blocks.1.norm1_context.linear"} <= expected
    assert "transformer_blocks.1.attn.to_add_out" not in expected  # the last block is context_pre_only


def test_the_lora_is_saved_with_diffusers_keys_and_no_adapter_config(tiny):
    # models/sd3.py lines 63-64: save_lora_weights(transformer_lora_layers=...) -> transformer. keys, no config
    fam = SD3Family.load(st.model_table(tiny), CPU)
    named = fam.attach_new_lora(2, 0.0, torch.float32)
    assert all(p.requires_grad and p.dtype == torch.float32 for _, p in named) and len(named) == 2 * 29
    from peft import get_peft_model_state_dict

    tensors, config = fam.export_lora(get_peft_model_state_dict(fam.transformer))
    assert config is None
    assert sorted(tensors) == sorted(f"transformer.{n}.lora_{ab}.weight" for n in fam.lora_targets() for ab in "AB")


def test_fuse_adapters_is_ignored_as_diffusion_pipe_ignores_it(tiny, caplog):
    # models/sd3.py never reads [adapter] fuse_adapters (only models/flux.py and models/chroma.py do)
    with caplog.at_level(logging.WARNING):
        fam = SD3Family.load(st.model_table(tiny), CPU, fuse_adapters=[{"path": "missing.safetensors"}])
    assert any("fuse_adapters is ignored" in r.message for r in caplog.records)
    reference = st.tiny_transformer().state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in fam.transformer.state_dict().items())


def test_previews_render_with_and_without_guidance(family):
    images = family.sample([SampleRequest("a red circle", 7, 64, 64, 2, 3.5),
                            SampleRequest("a red circle", 7, 64, 64, 2, 1.0)])
    assert [im.size for im in images] == [(64, 64), (64, 64)]
    again = family.sample([SampleRequest("a red circle", 7, 64, 64, 2, 3.5)])[0]
    assert again.tobytes() == images[0].tobytes()
    with pytest.raises(ValueError, match="multiples of 8"):
        family.sample([SampleRequest("x", 1, 60, 64, 2, 1.0)])


def _grads(fam: SD3Family, named, text, checkpointing: bool | None) -> dict[str, torch.Tensor]:
    if checkpointing is not None:
        fam.enable_activation_checkpointing(reentrant=checkpointing)
    fam.transformer.train()
    x = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(3))
    for _, p in named:
        p.grad = None
    fam.predict(x, torch.tensor([0.3, 0.8]), text).square().mean().backward()  # reentrant: backward() only
    return {n: p.grad.clone() for n, p in named}


def test_activation_checkpointing_gives_the_same_gradients(tiny):
    # models/sd3.py line 27: the joint blocks are checkpointed; lines 185-187 mark the embedders' outputs as
    # requiring grad (what reentrant checkpointing needs)
    fam = SD3Family.load(st.model_table(tiny), CPU)
    named = fam.attach_new_lora(2, 0.0, torch.float32)
    with torch.no_grad():
        for name, p in named:
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    text = fam.encode_prompts(["a red circle", "b"])
    plain = _grads(fam, named, text, None)
    for reentrant in (False, True):
        checked = _grads(fam, named, text, reentrant)
        assert all(torch.allclose(plain[n], checked[n], atol=1e-6) for n in plain), reentrant
        assert any(g.abs().sum() > 0 for n, g in checked.items() if "lora_A" in n)


def test_a_saved_lora_attaches_exactly_and_init_from_existing_checks_the_rank(tiny, tmp_path):
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    fam = SD3Family.load(st.model_table(tiny), CPU)
    named = fam.attach_new_lora(2, 0.0, torch.float32)
    with torch.no_grad():
        for name, p in named:
            p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    tensors, _ = fam.export_lora(get_peft_model_state_dict(fam.transformer))
    save_file(tensors, str(tmp_path / sd3.LORA_FILE), metadata={"format": "pt"})
    text = fam.encode_prompts(["a red circle"])
    x = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        trained = fam.predict(x, torch.tensor([0.5]), text)
    other = SD3Family.load(st.model_table(tiny), CPU)
    rank, params = other.attach_saved_lora(tmp_path)
    assert rank == 2 and not any(p.requires_grad for _, p in params)
    with torch.no_grad():
        assert torch.equal(other.predict(x, torch.tensor([0.5]), text), trained)
    assert all(p.requires_grad for _, p in other.init_from_existing(tmp_path / sd3.LORA_FILE, 2))
    with pytest.raises(ValueError, match="has rank 2 but \\[adapter\\] rank = 4"):
        other.init_from_existing(tmp_path / sd3.LORA_FILE, 4)
