"""The Flux family's parts that follow diffusion-pipe models/flux.py (lines cited per test)."""

from __future__ import annotations

import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")

from trainers.native.families import flux  # noqa: E402


def tiny_transformer(guidance: bool = True):
    torch.manual_seed(0)
    return diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8,
        guidance_embeds=guidance, axes_dims_rope=(2, 2, 4))


def test_lora_targets_are_every_linear_in_the_two_block_kinds():
    # models/flux.py line 163: adapter_target_modules = ['FluxTransformerBlock', 'FluxSingleTransformerBlock']
    model = tiny_transformer()
    names = flux.lora_targets(model)
    assert "transformer_blocks.0.attn.to_q" in names
    assert "single_transformer_blocks.0.proj_out" in names
    assert not any(n.startswith(("x_embedder", "context_embedder", "proj_out", "time_text_embed")) for n in names)
    in_blocks = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                 and n.startswith(("transformer_blocks.", "single_transformer_blocks."))]
    assert sorted(names) == sorted(in_blocks)


def test_flux_shift_reads_the_packed_image_length():
    # models/flux.py lines 122-130 and 364-366: time_shift(get_lin_function()((h // 2) * (w // 2)), 1.0, t)
    from trainers.native import flow
    cfg = flow.TimestepConfig(method="uniform", flux_shift=True)
    assert flux.image_seq_len(torch.Size([1, 16, 32, 128])) == 16 * 64
    for shape, mu in ((torch.Size([1, 16, 32, 32]), 0.5), (torch.Size([1, 16, 128, 128]), 1.15)):
        t = flow.sample_timesteps(cfg, 3, flux.image_seq_len(shape), quantile=0.4)
        assert torch.allclose(t, math.exp(mu) / (math.exp(mu) + (1 / torch.full((3,), 0.4) - 1)))


def test_guidance_vector_is_float32_per_sample():
    # models/flux.py line 373
    g = flux.guidance_vector(3, 3.5, torch.device("cpu"))
    assert g.dtype == torch.float32 and g.tolist() == [3.5, 3.5, 3.5]


def test_bypass_guidance_makes_the_embedding_ignore_guidance():
    # models/flux.py lines 132-150
    model = tiny_transformer()
    embed = model.time_text_embed
    t, pooled = torch.tensor([500.0]), torch.randn(1, 8)
    before = [embed(t, torch.tensor([g]), pooled) for g in (1000.0, 4000.0)]
    assert not torch.allclose(*before)
    assert flux.bypass_guidance_embedding(model)
    after = [embed(t, torch.tensor([g]), pooled) for g in (1000.0, 4000.0)]
    assert torch.equal(*after)
    assert not flux.bypass_guidance_embedding(tiny_transformer(guidance=False))


def test_export_keys_are_what_save_lora_weights_writes(tmp_path):
    # models/flux.py line 234: self.save_lora_weights(save_dir, transformer_lora_layers=peft_state_dict)
    from safetensors.torch import load_file
    model = tiny_transformer()
    model.add_adapter(peft.LoraConfig(r=2, lora_alpha=2, target_modules=flux.lora_targets(model)))
    state = peft.get_peft_model_state_dict(model)
    diffusers.FluxPipeline.save_lora_weights(tmp_path, transformer_lora_layers=state)
    written = load_file(tmp_path / flux.LORA_FILE)
    ours = flux.export_lora(state)
    assert sorted(ours) == sorted(written)
    assert all(torch.equal(ours[k], written[k]) for k in written)


def test_predict_packs_as_flux_pipeline_does():
    # models/flux.py lines 337-341: packed latents, image ids from _prepare_latent_image_ids, zero text ids
    model = tiny_transformer().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 4, 6, generator=g)
    t5, pooled = torch.randn(2, 5, 16, generator=g), torch.randn(2, 8, generator=g)
    t, guidance = torch.tensor([0.3, 0.8]), torch.tensor([3.5, 3.5])
    pipe = diffusers.FluxPipeline
    with torch.no_grad():
        ours = flux.predict(model, x, t, t5, pooled, guidance)
        ref = model(hidden_states=pipe._pack_latents(x, 2, 4, 4, 6), timestep=t, guidance=guidance,
                    pooled_projections=pooled, encoder_hidden_states=t5, txt_ids=torch.zeros(5, 3),
                    img_ids=pipe._prepare_latent_image_ids(2, 2, 3, "cpu", torch.float32), return_dict=False)[0]
    assert ours.shape == x.shape
    assert torch.allclose(pipe._pack_latents(ours, 2, 4, 4, 6), ref, atol=1e-6)
