"""Loading Qwen-Image's three models from what the ``[model]`` table names, as diffusion-pipe's
models/qwen_image.py does: each of ``transformer_path``, ``text_encoder_path`` and ``vae_path`` (one
``.safetensors`` file) wins over the matching subfolder of ``diffusers_path`` (docs/supported_models.md: "it will
prefer to read the sub-model from the individual path").

diffusion-pipe builds every model from the released configs it bundles (configs/qwen_image/*); here a diffusers
folder brings its own config, and a single file's config is read off its tensor shapes with what the released
architecture fixes (attention heads of 128 channels, RoPE axes 16/56/56, M-RoPE sections 16/24/24, theta 1e6,
the VAE's stage layout and 16 latent channels), which gives the released configs for the released files.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import accelerate
import torch
from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
from safetensors import SafetensorError, safe_open
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer

log = logging.getLogger("trainers.native.families.qwen_image")
HEAD = 128  # the released attention head width (transformer and text encoder)
ROPE_AXES = (16, 56, 56)  # configs/qwen_image/transformer/config.json axes_dims_rope
MROPE_SECTION = [16, 24, 24]  # the text encoder's M-RoPE sections (64 frequency pairs = head 128)
COMFY_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
SCALED_FP8_SUFFIXES = (".scale_weight", ".scale_input", ".weight_scale", ".comfy_quant")


def _open(path: Path, what: str):
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{what} is not a readable .safetensors file ({exc})") from None


def _load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ValueError(f"{what} does not fit the model its own shapes describe: {exc}") from None


def _reject_scaled_fp8(keys: list[str], what: str) -> None:
    scaled = [k for k in keys if k.endswith(SCALED_FP8_SUFFIXES) or k == "scaled_fp8"]
    if scaled:
        raise ValueError(f"{what} is an fp8_scaled checkpoint ({scaled[0]!r}), which diffusion-pipe cannot load "
                         "either: pick the bf16 file and set [model] transformer_dtype = 'float8'")


def _count(keys, pattern: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


# ----- transformer ------------------------------------------------------------------------------------------
def transformer_config(shapes: dict[str, list[int]]) -> dict:
    """``QwenImageTransformer2DModel`` arguments read off a diffusers-named state dict's shapes."""
    need = ("img_in.weight", "txt_in.weight", "proj_out.weight", "transformer_blocks.0.attn.norm_q.weight")
    missing = [k for k in need if k not in shapes]
    if missing:
        raise ValueError(f"not a Qwen-Image transformer ({', '.join(missing)} missing; keys like "
                         "transformer_blocks.0.attn.to_q.weight are expected)")
    inner, in_channels = shapes["img_in.weight"]
    head = shapes["transformer_blocks.0.attn.norm_q.weight"][0]
    if head != HEAD or inner % head:
        raise ValueError(f"attention heads of {head} channels (width {inner}): only Qwen-Image's 128-channel heads "
                         "(RoPE axes 16/56/56) are supported")
    return dict(patch_size=2, in_channels=in_channels, out_channels=shapes["proj_out.weight"][0] // 4,
                num_layers=_count(shapes, r"^transformer_blocks\.(\d+)\."), attention_head_dim=head,
                num_attention_heads=inner // head, joint_attention_dim=shapes["txt_in.weight"][1],
                guidance_embeds=any(k.startswith("time_text_embed.guidance_embedder.") for k in shapes),
                axes_dims_rope=ROPE_AXES)


def load_transformer(path: Path, dtype: torch.dtype, what: str) -> QwenImageTransformer2DModel:
    """A diffusers ``transformer/`` folder, or one file with diffusers' names (bare or ComfyUI-prefixed)."""
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{what}: {path} has no config.json; point [model] diffusers_path at a "
                                    "Qwen-Image diffusers folder, or transformer_path at a .safetensors file")
        return QwenImageTransformer2DModel.from_pretrained(path, torch_dtype=dtype, local_files_only=True).eval()
    with _open(path, what) as fh:
        keys = list(fh.keys())
        _reject_scaled_fp8(keys, what)
        prefix = next((p for p in COMFY_PREFIXES if any(k.startswith(p + "img_in.") for k in keys)), "")
        names = [k for k in keys if k.startswith(prefix)]
        try:
            config = transformer_config({k[len(prefix):]: fh.get_slice(k).get_shape() for k in names})
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None
        state = {k[len(prefix):]: fh.get_tensor(k).to(dtype) for k in names}
    with accelerate.init_empty_weights():
        model = QwenImageTransformer2DModel.from_config(config)
    _load_into(model, state, what)
    log.info("loaded %s as %s", path.name, config)
    return model.to(dtype).eval()


# ----- text encoder -----------------------------------------------------------------------------------------
def text_encoder_key(key: str) -> str | None:
    """A Qwen2.5-VL checkpoint key -> the language model's name in transformers (None: the vision tower, which
    text-to-image training never runs). Released files say ``model.layers.*`` (diffusion-pipe maps them to
    ``model.language_model.*``); newer saves already say ``model.language_model.*``."""
    if key.startswith(("visual.", "model.visual.")):
        return None
    if key.startswith("lm_head."):
        return "lm_head.weight"
    key = key.removeprefix("model.").removeprefix("language_model.")
    return "model.language_model." + key


def text_encoder_config(shapes: dict[str, list[int]]) -> Qwen2_5_VLConfig:
    """Qwen2.5-VL's text config read off the language model's shapes (released constants for the rest)."""
    need = ("model.language_model.embed_tokens.weight", "model.language_model.layers.0.self_attn.q_proj.weight",
            "model.language_model.layers.0.self_attn.k_proj.weight", "model.language_model.layers.0.mlp.up_proj.weight")
    missing = [k for k in need if k not in shapes]
    if missing:
        raise ValueError(f"not a Qwen2.5-VL text encoder ({', '.join(missing)} missing; keys like "
                         "model.layers.0.self_attn.q_proj.weight are expected)")
    vocab, hidden = shapes[need[0]]
    heads, kv_heads = shapes[need[1]][0] // HEAD, shapes[need[2]][0] // HEAD
    if heads * HEAD != hidden:
        raise ValueError(f"width {hidden} is not a whole number of 128-channel heads, as Qwen2.5-VL's are")
    text = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=shapes[need[3]][0],
                num_hidden_layers=_count(shapes, r"^model\.language_model\.layers\.(\d+)\."),
                num_attention_heads=heads, num_key_value_heads=kv_heads, rms_norm_eps=1e-6,
                max_position_embeddings=128000,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": MROPE_SECTION})
    return Qwen2_5_VLConfig(text_config=text, vision_config={"depth": 0, "out_hidden_size": hidden},
                            tie_word_embeddings="lm_head.weight" not in shapes)


def load_text_encoder(path: Path, dtype: torch.dtype, what: str) -> Qwen2_5_VLForConditionalGeneration:
    """A diffusers ``text_encoder/`` folder, or one Qwen2.5-VL checkpoint file (its language model: the vision
    tower is left out, as text-to-image training never calls it)."""
    if path.is_dir():
        return Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=dtype, local_files_only=True).eval()
    with _open(path, what) as fh:
        names = {name: key for key in fh.keys() if (name := text_encoder_key(key)) is not None}
        try:
            config = text_encoder_config({n: fh.get_slice(k).get_shape() for n, k in names.items()})
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None
        state = {n: fh.get_tensor(k).to(dtype) for n, k in names.items()}
    with accelerate.init_empty_weights():
        model = Qwen2_5_VLForConditionalGeneration(config)
    del model.model.visual  # never built: its weights stay on disk
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.language_model.embed_tokens.weight"]
    _load_into(model, state, what)
    return model.to(dtype).eval()


# ----- VAE --------------------------------------------------------------------------------------------------
def load_vae(path: Path, dtype: torch.dtype, what: str) -> AutoencoderKLQwenImage:
    """A diffusers ``vae/`` folder, or one file with diffusers' names (ComfyUI's VAE names are not read, as in
    diffusion-pipe); a file's widths are read off its shapes, the released stage layout is assumed."""
    if path.is_dir():
        return AutoencoderKLQwenImage.from_pretrained(path, torch_dtype=dtype, local_files_only=True).eval()
    with _open(path, what) as fh:
        keys = list(fh.keys())
        if "encoder.conv_in.weight" not in keys or "post_quant_conv.weight" not in keys:
            raise ValueError(f"{what} is not a diffusers Qwen-Image VAE (no encoder.conv_in.weight): diffusion-pipe "
                             "reads the Diffusers VAE file (Qwen-Image/vae/diffusion_pytorch_model.safetensors), "
                             "not ComfyUI's")
        shapes = {k: fh.get_slice(k).get_shape() for k in keys}
        state = {k: fh.get_tensor(k).to(dtype) for k in keys}
    # encoder.down_blocks: num_res_blocks residual blocks per stage of the 4, and a resampler between stages
    blocks = _count(keys, r"^encoder\.down_blocks\.(\d+)\.")
    config = dict(base_dim=shapes["encoder.conv_in.weight"][0], z_dim=shapes["post_quant_conv.weight"][0],
                  num_res_blocks=max(1, (blocks - 3) // 4))
    if config["z_dim"] != 16:
        raise ValueError(f"{what} has {config['z_dim']} latent channels; Qwen-Image's VAE has 16 (its "
                         "latents_mean / latents_std are per channel)")
    with accelerate.init_empty_weights():
        model = AutoencoderKLQwenImage(**config)
    _load_into(model, state, what)
    return model.to(dtype).eval()


# ----- tokenizer --------------------------------------------------------------------------------------------
def load_tokenizer(diffusers_root: Path | None, text_encoder_path: Path | None) -> Qwen2Tokenizer:
    """The Qwen2 tokenizer: ``diffusers_path``'s ``tokenizer/``, else a ``tokenizer/`` folder beside
    ``text_encoder_path`` (diffusion-pipe bundles the released one in configs/qwen_image/tokenizer)."""
    places = []
    if diffusers_root is not None:
        places.append(diffusers_root / "tokenizer")
    if text_encoder_path is not None:
        places.append((text_encoder_path if text_encoder_path.is_dir() else text_encoder_path.parent) / "tokenizer")
    for folder in places:
        if folder.is_dir():
            return Qwen2Tokenizer.from_pretrained(folder, local_files_only=True)
    raise FileNotFoundError(f"no Qwen2 tokenizer found (looked in {', '.join(map(str, places)) or 'nothing'}): "
                            "set [model] diffusers_path to the Qwen-Image diffusers folder (its tokenizer/ is "
                            "used), or copy that tokenizer/ folder beside the text_encoder_path file")
