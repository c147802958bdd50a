"""Lumina 2's parts against diffusion-pipe's models/lumina_2.py (and models/base.py), on the tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from tests.fixtures import lumina_2_tiny as lt
from trainers.native.families import lumina_2 as lu
from trainers.native.families import lumina_2_keys as keys
from trainers.native.flow import TimestepConfig, flux_mu, time_shift

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return lt.build(tmp_path_factory.mktemp("lumina"))


@pytest.fixture(scope="module")
def family(tiny):
    return lu.Lumina2Family.load(lt.model_table(tiny[1]), CPU)


def test_the_key_table_is_diffusers_own_conversion_of_the_original_layout():
    # diffusers' single-file converter hard-codes the released qkv split (2304/768/768): the wide model
    from diffusers.loaders.single_file_utils import convert_lumina2_to_diffusers

    model = lt.transformer(wide=True)
    ours = model.state_dict()
    original = keys.to_original_checkpoint(ours)
    assert "layers.0.attention.qkv.weight" in original and "context_refiner.0.attention_norm1.weight" in original
    theirs = convert_lumina2_to_diffusers(dict(original))
    assert sorted(theirs) == sorted(ours)
    assert all(torch.equal(theirs[k], ours[k]) for k in ours)
    back = keys.from_original_checkpoint(original, q_out=2304)
    assert all(torch.equal(back[k], ours[k]) for k in ours)


def test_every_transformer_layout_loads_the_same_weights(tiny):
    # models/lumina_2.py:71-80: bare keys, or a checkpoint with model.diffusion_model. (other parts skipped)
    from trainers.native.families.lumina_2_load import load_transformer

    want = tiny[0].transformer.state_dict()
    for path in (tiny[1]["transformer_path"], tiny[1]["checkpoint"]):
        model = load_transformer(path, torch.float32, "t")
        assert model.config.num_layers == 1 and model.config.num_refiner_layers == 1
        got = model.state_dict()
        assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_the_vae_file_and_folder_load_the_same_weights(tiny):
    # models/lumina_2.py:48: AutoencoderKL.from_single_file(vae_path, config='configs/flux_vae')
    from trainers.native.families.lumina_2_load import load_vae

    want = tiny[0].vae.state_dict()
    for path in (tiny[1]["vae_folder"], tiny[1]["vae_path"]):
        got = load_vae(path, "v").state_dict()
        assert sorted(got) == sorted(want)
        assert all(torch.equal(got[k].view_as(want[k]), want[k]) for k in want)


def test_gemma_config_and_tokenizer_come_from_the_diffusion_pipe_checkout(tiny, tmp_path, monkeypatch):
    # models/lumina_2.py:50-53: configs/gemma_2_2b and configs/flux_vae of diffusion-pipe's own checkout
    import shutil

    from trainers.native.families.lumina_2_load import load_text_encoder, load_vae

    alone = tmp_path / "models"
    alone.mkdir()
    llm, vae = alone / "gemma.safetensors", alone / "ae.safetensors"
    shutil.copy(tiny[1]["llm_path"], llm)
    shutil.copy(tiny[1]["vae_path"], vae)
    with pytest.raises(FileNotFoundError, match="configs/gemma_2_2b"):
        load_text_encoder(llm, torch.float32, "[model] llm_path")
    checkout = tmp_path / "diffusion-pipe"
    shutil.copytree(tiny[1]["llm_path"].parent / "gemma_2_2b", checkout / "configs" / "gemma_2_2b")
    shutil.copytree(tiny[1]["vae_path"].parent / "flux_vae", checkout / "configs" / "flux_vae")
    monkeypatch.setenv("DP_STUDIO_DIFFUSION_PIPE", str(checkout))
    family = lu.Lumina2Family.load(lt.model_table({**tiny[1], "llm_path": llm, "vae_path": vae}), CPU)
    assert family.pipe.text_encoder.config.hidden_size == lt.TEXT_WIDTH
    assert load_vae(vae, "v").config.shift_factor == pytest.approx(0.1159)


def test_transformer_and_gemma_load_in_dtype_and_the_vae_in_float32(tiny):
    # models/lumina_2.py:48 (from_single_file, no dtype), :58 and :83 (dtype)
    family = lu.Lumina2Family.load(lt.model_table(tiny[1], dtype="bfloat16", transformer_dtype="float8"), CPU)
    assert {p.dtype for p in family.transformer.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in family.pipe.text_encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in family.pipe.vae.parameters()} == {torch.float32}
    assert all(not p.requires_grad for p in family.transformer.parameters())


def test_prompts_are_gemma_second_to_last_hidden_states_at_256_tokens(family, tiny):
    # models/lumina_2.py:119-136: padding='max_length', max_length=256, truncation, hidden_states[-2], right padding
    text = family.encode_prompts(["a red cat", "x" * 400])
    assert text.embeds.shape == (2, 256, lt.TEXT_WIDTH) and text.mask.shape == (2, 256)
    assert text.mask[1].all() and text.mask[0].sum() < 256 and text.mask[0, 0] == 1
    tokens = tiny[0].tokenizer(["a red cat"], padding="max_length", max_length=256, truncation=True,
                               return_tensors="pt")
    with torch.no_grad():
        want = tiny[0].text_encoder(**tokens, output_hidden_states=True).hidden_states[-2]
    assert torch.allclose(text.embeds[:1], want, atol=1e-6)
    assert torch.equal(text.mask[:1], tokens.attention_mask)


def test_latents_are_a_sample_shifted_then_scaled(family):
    # models/lumina_2.py:104-113: latent_dist.sample(), minus shift_factor, times scaling_factor
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    got = family.encode_images(pixels, torch.Generator().manual_seed(3))
    dist = family.pipe.vae.encode(pixels).latent_dist
    want = (dist.sample(torch.Generator().manual_seed(3)) - 0.1159) * 0.3611
    assert got.shape == (1, 16, 8, 8) and torch.allclose(got, want)
    assert not torch.allclose(got, (dist.mode() - 0.1159) * 0.3611)  # a sample, not the mode


def test_predict_is_the_velocity_from_a_model_run_at_one_minus_t(family):
    # models/lumina_2.py:176-182: x_t = (1-t) x0 + t noise, target = x0 - noise, the model gets 1 - t
    text = family.encode_prompts(["a red cat"])
    x0, noise = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 8, 8)
    t = torch.tensor([0.3])
    x_t = (1 - t) * x0 + t * noise
    with torch.no_grad():
        raw = family.transformer(x_t, 1 - t, text.embeds, text.mask.bool(), return_dict=False)[0]
        assert torch.equal(family.predict(x_t, t, text), -raw)  # the loop's target is noise - x0


def test_lumina_shift_is_the_resolution_shift_of_diffusion_pipe():
    # models/lumina_2.py:23-33, 170-174: mu = lin(256 -> 0.5, 4096 -> 1.15)((h//2)*(w//2)), sigma = 1
    cfg = TimestepConfig.from_model_table({"type": "lumina_2", "lumina_shift": True})
    assert cfg.flux_shift and cfg.shift is None
    assert not TimestepConfig.from_model_table({"type": "lumina_2", "flux_shift": True}).flux_shift
    assert TimestepConfig.from_model_table({"type": "lumina_2", "shift": 3, "lumina_shift": True}).shift == 3.0
    h = w = 128
    m = (1.15 - 0.5) / (4096 - 256)
    mu = 0.5 + m * ((h // 2) * (w // 2) - 256)
    assert flux_mu(lu.Lumina2Family.image_seq_len(None, (1, 16, h, w))) == pytest.approx(mu)
    t = torch.tensor([0.25, 0.5, 0.75])
    import math

    assert torch.allclose(time_shift(mu, t), math.exp(mu) / (math.exp(mu) + (1 / t - 1)))


def test_lora_targets_every_linear_of_every_joint_block(family):
    # models/lumina_2.py:38-41 (refiners included), models/base.py:262-270
    originals = sorted({keys.to_original_module(n)[0] for n in family.lora_targets()})
    want = []
    for block in ("context_refiner.0", "layers.0", "noise_refiner.0"):
        want += [f"{block}.{s}" for s in keys.LORA_LINEARS if not (block[0] == "c" and s.startswith("adaLN"))]
    assert originals == sorted(want)
    assert "x_embedder" not in family.lora_targets() and "norm_out.linear_1" not in family.lora_targets()


def test_q_k_v_share_one_a_so_the_lora_is_one_lora_on_qkv(family):
    named = dict(family.attach_new_lora(4, 0.0, torch.float32))
    attn = family.transformer.layers[0].attn
    assert attn.to_q.lora_A["default"] is attn.to_k.lora_A["default"] is attn.to_v.lora_A["default"]
    assert len({id(p) for p in named.values()}) == len(named)
    with torch.no_grad():
        for p in named.values():
            p.normal_()
    from trainers.native.lora_io import lora_state_dict

    tensors, extra = family.export_lora(lora_state_dict(family.transformer))
    a = tensors["diffusion_model.layers.0.attention.qkv.lora_A.weight"]
    b = tensors["diffusion_model.layers.0.attention.qkv.lora_B.weight"]
    assert a.shape == (4, 96) and b.shape == (96 + 2 * 48, 4)
    fused = torch.cat([attn.to_q.lora_B["default"].weight, attn.to_k.lora_B["default"].weight,
                       attn.to_v.lora_B["default"].weight]) @ attn.to_q.lora_A["default"].weight
    assert torch.allclose(b @ a, fused)
    assert "diffusion_model.context_refiner.0.adaLN_modulation.1.lora_A.weight" not in tensors
    assert extra["exclude_modules"] is None and "layers.0.attention.qkv" in extra["target_modules"]
    family.transformer.unload_lora()


def test_exclude_modules_names_original_modules(family):
    # models/base.py:283: exclude_modules goes to peft on the original NextDiT
    family.attach_new_lora(2, 0.0, torch.float32, exclude=["attention.qkv", "layers.0.feed_forward.w1"])
    kept = {keys.to_original_module(n.split(".lora_")[0])[0] for n, _ in family.transformer.named_parameters()
            if ".lora_" in n}
    assert not any(k.endswith("attention.qkv") for k in kept) and "layers.0.feed_forward.w1" not in kept
    assert "noise_refiner.0.feed_forward.w1" in kept
    family.attach_new_lora(2, 0.0, torch.float32, exclude="layers\\..*")
    kept = {n for n, _ in family.transformer.named_parameters() if ".lora_" in n}
    assert kept and not any(n.startswith("layers.") for n in kept)
    family.transformer.unload_lora()


def test_the_adapter_config_is_the_one_peft_writes_for_diffusion_pipe(family, tmp_path):
    # models/base.py:262-297 LoraConfig on the original model; models/lumina_2.py:96 save_pretrained
    import peft

    from trainers.native.lora_io import adapter_config

    targets = sorted({keys.to_original_module(n)[0] for n in family.lora_targets()})
    root = torch.nn.Module()
    for name in targets:
        parent = root
        for part in name.split(".")[:-1]:
            if not hasattr(parent, part):
                parent.add_module(part, torch.nn.Module())
            parent = getattr(parent, part)
        parent.add_module(name.split(".")[-1], torch.nn.Linear(2, 2))
    config = peft.LoraConfig(r=4, lora_alpha=4, lora_dropout=0.1, bias="none", target_modules=targets,
                             exclude_modules=None)
    peft.get_peft_model(root, config)
    config.save_pretrained(tmp_path)
    theirs = json.loads((tmp_path / "adapter_config.json").read_text())
    family.attach_new_lora(4, 0.1, torch.float32)
    _, extra = family.export_lora({})
    ours = adapter_config(4, 0.1, extra)
    family.transformer.unload_lora()
    theirs["target_modules"], ours["target_modules"] = sorted(theirs["target_modules"]), sorted(ours["target_modules"])
    assert ours == theirs


def _saved_lora(family, folder):
    """A random rank-2 LoRA saved as the loop saves it (adapter_model.safetensors in diffusion-pipe's layout)."""
    from safetensors.torch import save_file

    from trainers.native.lora_io import lora_state_dict

    named = dict(family.attach_new_lora(2, 0.0, torch.float32))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in named.values():
            p.normal_(0, 0.05)
    tensors, _ = family.export_lora(lora_state_dict(family.transformer))
    deltas = {}
    for name, module in family.transformer.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            deltas[name] = module.lora_B["default"].weight @ module.lora_A["default"].weight
    family.transformer.unload_lora()
    folder.mkdir()
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    return tensors, deltas


def test_init_from_existing_and_fuse_adapters_read_diffusion_pipe_files(tiny, tmp_path):
    family = lu.Lumina2Family.load(lt.model_table(tiny[1]), CPU)
    tensors, deltas = _saved_lora(family, tmp_path / "lora")
    named = dict(family.init_from_existing(tmp_path / "lora", 2, 0.0, torch.float32))
    assert all(p.requires_grad for p in named.values())
    attn = family.transformer.layers[0].attn
    assert attn.to_q.lora_A["default"] is attn.to_v.lora_A["default"]
    assert torch.equal(attn.to_q.lora_A["default"].weight, tensors["diffusion_model.layers.0.attention.qkv.lora_A.weight"])
    with pytest.raises(ValueError, match="rank 2 but"):
        family.init_from_existing(tmp_path / "lora", 4)
    family.transformer.unload_lora()
    before = {n: family.transformer.get_submodule(n).weight.clone() for n in deltas}
    family.fuse_adapters([{"path": str(tmp_path / "lora"), "weight": 0.5}])
    for name, delta in deltas.items():
        after = family.transformer.get_submodule(name).weight
        assert torch.allclose(after - before[name], 0.5 * delta, atol=1e-6), name


def test_activation_checkpointing_gives_the_same_gradients(family):
    named = dict(family.attach_new_lora(2, 0.0, torch.float32))
    with torch.no_grad():
        for p in named.values():
            p.normal_(0, 0.05)
    text = family.encode_prompts(["a red cat"])
    x, t = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(2)), torch.tensor([0.4])
    family.transformer.train()

    def grads():
        for p in named.values():
            p.grad = None
        family.predict(x, t, text).square().mean().backward()
        return {n: p.grad.clone() for n, p in named.items()}

    plain = grads()
    family.enable_activation_checkpointing()
    checkpointed = grads()
    family.transformer.disable_gradient_checkpointing()
    family.transformer.eval()
    family.transformer.unload_lora()
    assert all(torch.allclose(plain[n], checkpointed[n], atol=1e-6) for n in plain)
    assert any(g.abs().sum() > 0 for g in plain.values())


def test_the_key_check_reads_diffusion_pipe_files_against_the_model_or_the_released_shapes(family, tiny, tmp_path):
    # models/lumina_2.py:95-99: diffusion_model. + original names
    from trainers.lora_check import check_lora
    from trainers.lora_check_lumina import FULL_SIZE, block_linears

    tensors, _ = _saved_lora(family, tmp_path / "lora")
    file = tmp_path / "lora" / "adapter_model.safetensors"
    for model in (tiny[1]["transformer_path"], tiny[1]["checkpoint"]):
        report = check_lora(file, model)
        assert report.ok and report.exact and report.covered == len(tensors) // 2 == report.targets, report.summary()
    released = block_linears(**FULL_SIZE)
    assert len(released) == 28 * 6 + 2 * 5  # 26 layers + 2 noise refiners (modulated), 2 context refiners
    assert released["layers.0.attention.qkv"] == (2304 + 2 * 768, 2304)
    report = check_lora(file)  # no model: the released shapes, so the tiny LoRA does not fit
    assert not report.exact and report.mismatched
