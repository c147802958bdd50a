"""HiDream's family against diffusion-pipe's models/hidream.py, on the tiny model (tests/fixtures/hidream_tiny.py):
loading, the four text encoders, predict against diffusion-pipe's layer-by-layer forward, the storage rule, the
MoE gates and the LoRA targets."""

from __future__ import annotations

import pytest
import torch

from tests.fixtures import hidream_tiny as ht
from trainers.native.families import hidream as hd

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return ht.build(tmp_path_factory.mktemp("hidream"))


@pytest.fixture(scope="module")
def family(tiny):
    return hd.HiDreamFamily.load(ht.model_table(*tiny), CPU)


def test_the_pooled_embedding_is_both_clips_concatenated_and_t5_is_cached(family):
    # models/hidream.py:150-183 (each encoder through the pipeline's own helpers), :192 (torch.cat, dim=-1)
    pipe = family.pipe
    text = family.encode_prompts(["a red cat", "a blue dog photo"])
    one = pipe._get_clip_prompt_embeds(pipe.tokenizer, pipe.text_encoder, ["a red cat", "a blue dog photo"], 128)
    two = pipe._get_clip_prompt_embeds(pipe.tokenizer_2, pipe.text_encoder_2, ["a red cat", "a blue dog photo"], 128)
    assert torch.equal(text.pooled, torch.cat([one, two], dim=-1))
    assert text.pooled.shape == (2, sum(ht.CLIP_PROJ))
    t5 = pipe._get_t5_prompt_embeds(["a red cat", "a blue dog photo"], 128)
    assert torch.equal(text.embeds, t5)


def test_llama_tokens_are_padded_to_max_llama3_sequence_length_with_eos(tiny):
    # models/hidream.py:194-203: max_length = min(max_llama3_sequence_length (128), model_max_length),
    # padding='max_length', add_special_tokens; the pipeline pads with eos (HiDreamImagePipeline.__init__)
    family = hd.HiDreamFamily.load(ht.model_table(*tiny, max_llama3_sequence_length=6), CPU)
    tokens = family.encode_prompts(["a red cat"]).mask
    assert tokens.shape == (1, 6, 2)
    eos = family.pipe.tokenizer_4.eos_token_id
    assert tokens[0, :, 0].tolist() == [0, 3, 4, 6, eos, eos]  # <|begin_of_text|> a red cat, then eos padding
    assert tokens[0, :, 1].tolist() == [1, 1, 1, 1, 0, 0]
    assert hd.HiDreamFamily.load(ht.model_table(*tiny), CPU).llama_tokens == 128


def test_llama_states_are_the_hidden_states_after_each_layer(family):
    # models/hidream.py:337-344 (LlamaLayer): hidden_states[1:] stacked on a new first dimension
    tokens = family.encode_prompts(["a red cat"]).mask
    states = family.llama_states(tokens)
    out = family.pipe.text_encoder_4(tokens[:, :128, 0], attention_mask=tokens[:, :128, 1], output_hidden_states=True)
    assert states.shape == (ht.LLAMA_LAYERS, 1, 128, ht.WIDTH)
    assert torch.equal(states, torch.stack(out.hidden_states[1:]))


def diffusion_pipe_forward(model, x_t, t, t5, llama, pooled):
    """models/hidream.py:186-262 and the layers of :331-460, written out on the diffusers modules: latents
    patched (B, (h w), (p1 p2 C)), t * 1000, the caption projections, the text ids, the double blocks on the
    initial text + the block's Llama layer, the single blocks, final_layer on the image tokens."""
    b, c, h, w = x_t.shape
    p = model.config.patch_size
    tokens = x_t.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, p * p * c)
    ph, pw = h // p, w // p
    img_ids = torch.zeros(ph, pw, 3)
    img_ids[..., 1] += torch.arange(ph)[:, None]
    img_ids[..., 2] += torch.arange(pw)[None, :]
    img_ids = img_ids.reshape(1, -1, 3).repeat(b, 1, 1)
    temb = model.t_embedder(t * 1000, tokens.dtype) + model.p_embedder(pooled)
    hidden = model.x_embedder(tokens)
    enc = [model.caption_projection[i](llama[k]).view(b, -1, hidden.shape[-1])
           for i, k in enumerate(model.config.llama_layers)]
    enc.append(model.caption_projection[-1](t5).view(b, -1, hidden.shape[-1]))
    txt_ids = torch.zeros(b, enc[-1].shape[1] + enc[-2].shape[1] + enc[0].shape[1], 3)
    rope = model.pe_embedder(torch.cat((img_ids, txt_ids), dim=1))
    initial = torch.cat([enc[-1], enc[-2]], dim=1)
    block_id = 0
    for block in model.double_stream_blocks:
        length = initial.shape[1]
        hidden, initial = block(hidden_states=hidden, hidden_states_masks=None,
                                encoder_hidden_states=torch.cat([initial, enc[block_id]], dim=1), temb=temb,
                                image_rotary_emb=rope)
        initial = initial[:, :length]
        block_id += 1
    image_len = hidden.shape[1]
    hidden = torch.cat([hidden, initial], dim=1)
    for block in model.single_stream_blocks:
        length = hidden.shape[1]
        hidden = block(hidden_states=torch.cat([hidden, enc[block_id]], dim=1), hidden_states_masks=None,
                       encoder_hidden_states=None, temb=temb, image_rotary_emb=rope)[:, :length]
        block_id += 1
    out = model.final_layer(hidden[:, :image_len], temb)  # (B, (h w), (p1 p2 C)), compared with x_1 - x_0 (:258)
    return out.reshape(b, ph, pw, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)


@pytest.mark.parametrize("training", [False, True])
def test_predict_is_minus_diffusion_pipes_output_for_every_aspect_ratio(family, training):
    # models/hidream.py:254-258: x_t = (1 - t) x_1 + t x_0, target = x_1 - x_0; the loop's target is x_0 - x_1
    text = family.encode_prompts(["a red cat", "a dog"])
    llama = family.llama_states(text.mask)
    x = torch.randn(2, 16, 8, 12, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0.25, 0.8])
    family.transformer.train(training)
    try:
        with torch.no_grad():
            ours = family.predict(x, t, text)
            theirs = diffusion_pipe_forward(family.transformer, x, t, text.embeds, llama, text.pooled)
    finally:
        family.transformer.eval()
    assert (ours + theirs).abs().max().item() <= 1e-5
    assert theirs.abs().max().item() > 1e-2


def test_the_moe_load_balancing_loss_is_off(family):
    # models/hidream.py:120-124: every MoEGate gets alpha = 0
    gates = [m for m in family.transformer.modules() if type(m).__name__ == "MoEGate"]
    assert len(gates) == 2 and all(g.alpha == 0 for g in gates)


def test_lora_targets_are_every_linear_in_both_block_classes(family):
    # models/hidream.py:45 adapter_target_modules; models/base.py:262-270 every nn.Linear inside them
    targets = family.lora_targets()
    assert len(targets) == 47 and len(set(targets)) == 47
    assert all(t.startswith(("double_stream_blocks.0.block.", "single_stream_blocks.0.block.")) for t in targets)
    assert "double_stream_blocks.0.block.ff_i.experts.3.w2" in targets
    assert "double_stream_blocks.0.block.ff_t.w1" in targets and "single_stream_blocks.0.block.adaLN_modulation.1" in targets
    assert not any("caption_projection" in t or "gate" in t for t in targets)


def test_transformer_dtype_stores_the_linears_diffusion_pipe_casts(tiny):
    # models/hidream.py:24 KEEP_IN_HIGH_PRECISION, :111-114 (a keyword anywhere in the name keeps dtype)
    family = hd.HiDreamFamily.load(ht.model_table(*tiny, transformer_dtype="float8"), CPU)
    stored = {n for n, m in family.transformer.named_modules()
              if isinstance(m, torch.nn.Linear) and m.weight.dtype == torch.float8_e4m3fn}
    kept = {n for n, m in family.transformer.named_modules()
            if isinstance(m, torch.nn.Linear) and m.weight.dtype == torch.float32}
    assert "caption_projection.0.linear" in stored and "double_stream_blocks.0.block.attn1.to_q" in stored
    assert {"t_embedder.timestep_embedder.linear_1", "p_embedder.pooled_embedder.linear_1", "x_embedder.proj",
            "final_layer.linear"} <= kept
    assert all(not hd.keeps_high_precision(f"{n}.weight") for n in stored)
    assert all(hd.keeps_high_precision(f"{n}.weight") for n in kept)
    text = family.encode_prompts(["a red cat"])
    assert torch.isfinite(family.predict(torch.randn(1, 16, 8, 8), torch.tensor([0.5]), text)).all()


def test_config_errors_name_the_key(tiny):
    with pytest.raises(ValueError, match="llama3_path is missing"):
        hd.HiDreamFamily.load({"type": "hidream", "diffusers_path": str(tiny[0]), "dtype": "float32"}, CPU)
    with pytest.raises(ValueError, match="transformer_dtype = 'nf4'"):
        hd.HiDreamFamily.load(ht.model_table(*tiny, transformer_dtype="nf4"), CPU)
    if not torch.cuda.is_available():  # models/hidream.py:76-81 loads Llama through bitsandbytes (CUDA only)
        with pytest.raises(ValueError, match="llama3_4bit = true needs bitsandbytes and a CUDA GPU"):
            hd.HiDreamFamily.load(ht.model_table(*tiny, llama3_4bit=True), CPU)
    with pytest.raises(FileNotFoundError, match="no transformer/"):
        hd.HiDreamFamily.load(ht.model_table(tiny[1], tiny[1]), CPU)


def test_flux_shift_counts_two_by_two_patches(family):
    # models/hidream.py:250: mu from (h // 2) * (w // 2)
    assert family.image_seq_len(torch.Size([1, 16, 128, 64])) == 64 * 32


def test_cache_key_follows_the_llama_token_count(tiny, family):
    other = hd.HiDreamFamily.load(ht.model_table(*tiny, max_llama3_sequence_length=64), CPU)
    assert other.cache_key() != family.cache_key()
    assert hd.HiDreamFamily.load(ht.model_table(*tiny), CPU).cache_key() == family.cache_key()


def test_released_block_linears_match_the_released_transformer():
    # trainers/lora_check_hidream.py's released shapes against HiDreamImageTransformer2DModel at HiDream-I1's
    # config (built on the meta device), every Linear the family targets
    import accelerate
    from diffusers import HiDreamImageTransformer2DModel

    from trainers.lora_check_hidream import RELEASED, block_linears

    config = dict(patch_size=2, in_channels=16, out_channels=16, num_layers=16, num_single_layers=32,
                  attention_head_dim=128, num_attention_heads=20, caption_channels=[4096, 4096], text_emb_dim=2048,
                  num_routed_experts=4, num_activated_experts=2, axes_dims_rope=(64, 32, 32),
                  max_resolution=(128, 128), llama_layers=list(range(48)))
    with accelerate.init_empty_weights():
        model = HiDreamImageTransformer2DModel(**config)
    modules = dict(model.named_modules())
    real = {n: (modules[n].out_features, modules[n].in_features) for n in hd.lora_targets(model)}
    assert block_linears(**RELEASED) == real


def test_the_key_check_reads_a_hidream_lora_against_the_folder(tiny, family, tmp_path):
    from safetensors.torch import save_file

    from trainers.lora_check import check_lora

    family.attach_new_lora(4, 0.0, torch.float32)
    try:
        state = {n.replace(".default", ""): p.detach() for n, p in family.transformer.named_parameters()
                 if ".lora_" in n}
        tensors, _ = family.export_lora(state)
    finally:
        family.transformer.unload_lora()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "adapter_model.safetensors"))
    report = check_lora(tmp_path / "adapter_model.safetensors", tiny[0])
    assert report.ok and report.covered == report.targets == 47, report.summary()
    released = check_lora(tmp_path / "adapter_model.safetensors", None)
    assert not released.exact and released.unmatched == [] and released.mismatched  # tiny widths vs released
