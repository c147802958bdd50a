"""The SDXL family's parts, each following diffusion-pipe's models/sdxl.py (lines cited per test): loading the
single-file checkpoint, the prompt encoding, the micro-conditioning, the DDPM objective and its weightings, the
LoRA targets, the kohya keys and the per-component learning rates; on the tiny model of tests/fixtures/sdxl_tiny.py.
"""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from tests.fixtures import sdxl_tiny as st  # noqa: E402
from trainers.native.families import sdxl  # noqa: E402
from trainers.native.families.sdxl import SDXLFamily  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    checkpoint, cache = st.build(tmp_path_factory.mktemp("sdxl"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_CACHE", str(cache))
        yield checkpoint, cache


@pytest.fixture(scope="module")
def family(tiny):
    return SDXLFamily.load(st.model_table(tiny[0]), CPU)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_single_file_checkpoint_loads_every_component_exactly(family):
    # models/sdxl.py:385-389: StableDiffusionXLPipeline.from_single_file(checkpoint_path)
    ref = st.tiny_pipeline()
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert same_weights(getattr(ref, part), getattr(family.pipe, part)), part
    assert family.pipe.tokenizer_2 is family.pipe.tokenizer  # :393


def test_dtype_is_the_compute_dtype_and_the_vae_stays_float32(tiny):
    # :387 torch_dtype=dtype; :405 upcast_vae
    family = SDXLFamily.load(st.model_table(tiny[0], dtype="bfloat16"), CPU)
    assert family.pipe.unet.dtype == torch.bfloat16 and family.pipe.text_encoder_2.dtype == torch.bfloat16
    assert family.pipe.vae.dtype == torch.float32


def test_bad_paths_and_a_missing_config_name_the_fix(tiny, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="must be one .safetensors file"):
        SDXLFamily.load(st.model_table(tmp_path), CPU)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SDXLFamily.load(st.model_table(tmp_path / "nope.safetensors"), CPU)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="huggingface-cli download stabilityai/stable-diffusion-xl-base-1.0"):
        SDXLFamily.load(st.model_table(tiny[0]), CPU)


def test_latents_are_scaled_by_the_vae_scaling_factor(family):
    # :527-536: vae.encode(...).latent_dist.sample() * scaling_factor (no shift factor for SDXL's VAE)
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    ours = family.encode_images(pixels, torch.Generator().manual_seed(3))
    raw = family.pipe.vae.encode(pixels).latent_dist.sample(generator=torch.Generator().manual_seed(3))
    assert ours.shape == (2, 4, 8, 8) and torch.equal(ours, raw * 0.13025)


def test_prompts_are_framed_per_75_token_chunk_with_penultimate_states_and_pooled_output(family):
    # :581-589 ids without special tokens, padded to the batch's longest; :745-784 chunks of 75 framed by BOS and
    # EOS/pad, hidden_states[-2] of each, pooled output of the second encoder's first chunk; :738-742 concatenated
    tok = family.pipe.tokenizer
    long = "abcdefghij" * 10  # 100 tokens with the character-level tokenizer: two chunks
    text = family.encode_prompts(["a cat", long])
    assert text.embeds.dtype == torch.int64 and text.mask.sum(dim=1).tolist() == [4, 100]
    with torch.no_grad():
        states, pooled = family.text_conditioning(text)
    assert states.shape == (2, 77 + 27, st.TE1_WIDTH + st.TE2_WIDTH)
    ids = tok(["a cat"], add_special_tokens=False).input_ids[0]
    first = torch.tensor([[tok.bos_token_id, *ids, tok.eos_token_id] + [tok.pad_token_id] * (77 - len(ids) - 2)])
    with torch.no_grad():
        out1 = family.pipe.text_encoder(first, output_hidden_states=True)
        out2 = family.pipe.text_encoder_2(first, output_hidden_states=True)
    expected = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
    assert torch.allclose(states[:1, :77], expected, atol=1e-6)
    assert torch.allclose(pooled[:1], out2.text_embeds, atol=1e-6)
    alone = family.encode_prompts(["a cat"])  # alone, the batch is only as long as its caption: 4 + 2 tokens
    with torch.no_grad():
        short, _ = family.text_conditioning(alone)
    assert short.shape[1] == 6 and torch.allclose(short, states[:1, :6], atol=1e-6)


def test_captions_past_the_cache_width_are_refused_by_name(family):
    with pytest.raises(ValueError, match="shorten it"):
        family.encode_prompts(["x" * (sdxl.MAX_TOKENS + 1)])


def test_time_ids_are_size_crop_and_target_as_the_pipeline_makes_them(family):
    # :567-577: original_size = target_size = the latents' pixel size, crop (0, 0)
    theirs = family.pipe._get_add_time_ids((64, 96), (0, 0), (64, 96), dtype=torch.float32,
                                           text_encoder_projection_dim=st.TE2_WIDTH)
    assert torch.equal(sdxl.time_ids(64, 96, 3, CPU), theirs.expand(3, -1))


def test_training_inputs_draw_noise_then_integer_timesteps_and_add_ddpm_noise(family):
    # :552-565: noise, randint(0, 1000), scheduler.add_noise, target = noise (epsilon)
    x0 = torch.randn(3, 4, 8, 8)
    x_t, t, target, weights = family.training_inputs(x0, torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    noise = torch.randn(x0.shape, generator=g)
    expected_t = torch.randint(0, 1000, (3,), generator=g)
    assert torch.equal(t, expected_t) and torch.equal(target, noise) and weights is None
    acp = family.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(x_t, acp.sqrt() * x0 + (1 - acp).sqrt() * noise, atol=1e-6)
    # :394-396: scaled-linear betas 0.00085 .. 0.012 over 1000 steps
    assert family.scheduler.betas[0].item() == pytest.approx(0.00085)
    assert family.scheduler.betas[-1].item() == pytest.approx(0.012)


def test_v_pred_targets_velocity_with_zero_terminal_snr_but_keeps_the_old_snr_table():
    # :400-402 all_snr from the original betas, then the zero-terminal-SNR fix; :562-563 get_velocity
    plain, v = sdxl.noise_scheduler(False), sdxl.noise_scheduler(True)
    assert torch.equal(plain.all_snr, v.all_snr)
    assert v.alphas_cumprod[-1].item() == pytest.approx(0.0, abs=1e-12)
    assert v.alphas_cumprod[0].item() == pytest.approx(plain.alphas_cumprod[0].item(), rel=1e-5)
    family = SDXLFamily.__new__(SDXLFamily)
    family.scheduler, family.v_pred, family.min_snr_gamma, family.debiased = v, True, None, False
    x0, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 999])
    _, _, target, _ = family.noised(x0, noise, t)
    acp = v.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(target, acp.sqrt() * noise - (1 - acp).sqrt() * x0, atol=1e-6)


def test_min_snr_and_debiased_weights():
    # :333-355 and :645-648
    snr = sdxl.noise_scheduler(False).all_snr
    t = torch.tensor([0, 500, 999])
    s = snr[t]
    eps = sdxl.loss_weights(t, snr, False, 5.0, False)
    assert torch.allclose(eps, torch.minimum(s, torch.tensor(5.0)) / s)
    vel = sdxl.loss_weights(t, snr, True, 5.0, False)
    assert torch.allclose(vel, torch.minimum(s, torch.tensor(5.0)) / (s + 1))
    deb = sdxl.loss_weights(t, snr, False, None, True)
    assert torch.allclose(deb, 1 / torch.sqrt(torch.minimum(s, torch.tensor(1000.0))))
    both = sdxl.loss_weights(t, snr, False, 5.0, True)
    assert torch.allclose(both, eps * deb)
    assert sdxl.loss_weights(t, snr, False, None, False) is None


def test_debiased_key_present_turns_the_weighting_on_even_when_false(tiny):
    # :376 and :647: `if self.debiased_estimation_loss is not None`
    off = SDXLFamily.load(st.model_table(tiny[0], debiased_estimation_loss=False), CPU)
    assert off.debiased is True
    assert SDXLFamily.load(st.model_table(tiny[0]), CPU).debiased is False


def test_lora_targets_the_unet_blocks_and_every_text_encoder_linear(tiny):
    # :435-439: every nn.Linear in down_blocks, mid_block, up_blocks, and in each whole text encoder
    family = SDXLFamily.load(st.model_table(tiny[0]), CPU)
    ref = st.tiny_pipeline()
    unet = [n for n, m in ref.unet.named_modules() if isinstance(m, torch.nn.Linear)
            and n.startswith(("down_blocks.", "mid_block.", "up_blocks."))]
    te1 = [n for n, m in ref.text_encoder.named_modules() if isinstance(m, torch.nn.Linear)]
    te2 = [n for n, m in ref.text_encoder_2.named_modules() if isinstance(m, torch.nn.Linear)]
    expected = [f"unet.{n}" for n in unet] + [f"text_encoder.{n}" for n in te1] + [f"text_encoder_2.{n}" for n in te2]
    assert sorted(family.lora_targets()) == sorted(expected)
    assert "text_encoder_2.text_projection" in expected and not any("time_embedding" in n for n in expected)
    named = family.attach_new_lora(4, 0.0, torch.float32)
    assert len(named) == 2 * len(expected) and all(p.requires_grad for _, p in named)


def test_export_is_diffusers_kohya_conversion_with_integer_alphas(tiny):
    # :465-472: convert_state_dict_to_kohya(peft_state_dict), keys lora_unet_/lora_te1_/lora_te2_, .alpha = rank
    from trainers.native.lora_io import lora_state_dict

    family = SDXLFamily.load(st.model_table(tiny[0]), CPU)
    family.attach_new_lora(4, 0.0, torch.float32)
    tensors, config = family.export_lora(lora_state_dict(family.transformer))
    assert config is None
    modules = {k.split(".")[0] for k in tensors}
    assert modules == set(family.kohya_names())
    assert {m.split("_")[1] for m in modules} == {"unet", "te1", "te2"}
    for m in modules:
        assert tensors[f"{m}.alpha"].dtype == torch.int64 and int(tensors[f"{m}.alpha"]) == 4
        assert tensors[f"{m}.lora_down.weight"].shape[0] == 4 and tensors[f"{m}.lora_up.weight"].shape[1] == 4


def test_per_component_learning_rates_make_their_own_groups(tiny):
    # :604-630 get_param_groups: unet_lr / text_encoder_1_lr / text_encoder_2_lr, else [optimizer] lr
    from trainers.native.optim import build_optimizer, set_lr

    family = SDXLFamily.load(st.model_table(tiny[0], unet_lr=2e-4, text_encoder_1_lr=0.0), CPU)
    named = family.attach_new_lora(4, 0.0, torch.float32)
    opt = build_optimizer(named, {"type": "adamw", "lr": 1e-4}, family.lr_groups(named))
    assert [g["lr"] for g in opt.param_groups] == [2e-4, 0.0, 1e-4]
    sizes = [len(g["params"]) for g in opt.param_groups]
    assert sum(sizes) == len(named) and all(sizes)
    set_lr(opt, 5e-5)  # a warm-up / decay factor of 0.5 scales every group
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-4, 0.0, 5e-5])
