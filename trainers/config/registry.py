"""Torch-free facts about diffusion-pipe's 24 ``[model].type`` strings: the keys each reads and what it can do.

The UI reads capabilities from here (never compares family names). Sources: diffusion-pipe's train.py dispatch,
models/*.py and docs/supported_models.md at commit 8f83dbf (see shared notes §1.3, §4.2).
"""

from __future__ import annotations

from dataclasses import dataclass

from trainers.config.model_keys import MODEL_KEYS

FLOW = ("timestep_sample_method", "sigmoid_scale", "shift", "flux_shift")
COMFY = ("diffusion_model_dtype", "merge_adapters", *FLOW)
COMFY_LORA = ("comfyui", "adapter_model.safetensors")
DIFFUSERS_LORA = ("diffusers", "pytorch_lora_weights.safetensors")


@dataclass(frozen=True)
class ModelTypeInfo:
    """One ``[model].type``: its keys (besides ``type`` and the always-required ``dtype``) and capabilities."""

    type: str
    label: str
    required: tuple[str, ...] = ()
    # At least one group must be fully present (e.g. hunyuan-video: ckpt_path, or the four ComfyUI files).
    alternatives: tuple[tuple[str, ...], ...] = ()
    optional: tuple[str, ...] = ()
    full_finetune: bool = False
    block_swap: bool = False
    block_swap_max: int | None = None  # None: diffusion-pipe asserts a model-specific limit we do not know
    fp8: bool = True
    video: bool = False
    framerate: int | None = None
    lora_format: str = "comfyui"  # comfyui | diffusers | kohya | transformer-prefix
    lora_file: str = "adapter_model.safetensors"
    lokr: bool = True
    edit: bool = False  # datasets may use control_path (edit training)
    text_encoder_type: str | None = None  # the ComfyUI CLIP type the docs use in text_encoders
    fp8_key: str | None = "transformer_dtype"
    notes: str = ""
    lora: bool = True  # every type trains LoRAs
    # The native trainer's family for this type, as "module:Class" (imported only when a run starts); "" = the
    # type trains through diffusion-pipe only. NATIVE_TYPES and the loop's FAMILIES are read from here.
    native: str = ""
    native_params: float = 0.0  # the trained model's parameters (the VRAM estimate's base weights)
    lora_params_per_rank: int = 0  # LoRA parameters per unit of rank on the modules the family targets

    @property
    def keys(self) -> tuple[str, ...]:
        """Every ``[model]`` key this type reads, ``type`` and ``dtype`` first."""
        seen: dict[str, None] = {"type": None, "dtype": None}
        for group in (self.required, *self.alternatives, self.optional):
            seen.update(dict.fromkeys(group))
        return tuple(seen)

    def is_required(self, key: str) -> bool:
        return key in ("type", "dtype") or key in self.required


def _comfy(type_: str, label: str, te: str, **extra: object) -> ModelTypeInfo:
    base: dict = dict(required=("diffusion_model", "vae", "text_encoders"), optional=COMFY, full_finetune=True,
                      block_swap=True, text_encoder_type=te, fp8_key="diffusion_model_dtype")
    base.update(extra)
    return ModelTypeInfo(type_, label, **base)


_PREDICT2 = dict(required=("transformer_path", "vae_path"), alternatives=(("t5_path",), ("llm_path",)),
                 optional=("llm_adapter_path", "transformer_dtype", "text_encoder_fp8", "text_encoder_nf4",
                           "cache_text_embeddings", "multiscale_loss_weight", "self_attn_lr", "cross_attn_lr",
                           "mlp_lr", "mod_lr", "llm_adapter_lr", *FLOW),
                 full_finetune=True, block_swap=True, framerate=16, notes="t2i only; docs: use float8_e5m2")

_TYPES: tuple[ModelTypeInfo, ...] = (
    ModelTypeInfo("sdxl", "SDXL", required=("checkpoint_path",),
                  optional=("v_pred", "min_snr_gamma", "debiased_estimation_loss", "unet_lr", "text_encoder_1_lr",
                            "text_encoder_2_lr"),
                  full_finetune=True, fp8=False, fp8_key=None, lora_format="kohya", lora_file="lora.safetensors",
                  lokr=False, notes="text encoders are LoRA-trained too",
                  # the UNet (2.57e9); LoRA per rank: every Linear of the UNet's down/mid/up blocks (2,695,360)
                  # plus both text encoders' (165,888 + 739,840), from SDXL base's released configs
                  native="trainers.native.families.sdxl:SDXLFamily", native_params=2.567e9,
                  lora_params_per_rank=3_601_088),
    ModelTypeInfo("flux", "Flux", required=("diffusers_path",),
                  optional=("transformer_path", "transformer_dtype", *FLOW, "guidance", "bypass_guidance_embedding"),
                  full_finetune=True, block_swap=True, block_swap_max=34, lora_format=DIFFUSERS_LORA[0],
                  lora_file=DIFFUSERS_LORA[1], lokr=False, edit=True, notes="Flux Kontext: edit dataset",
                  native="trainers.native.families.flux:FluxFamily", native_params=11.9e9),
    ModelTypeInfo("ltx-video", "LTX-Video", required=("diffusers_path", "single_file_path"),
                  optional=("transformer_dtype", "first_frame_conditioning_p", "timestep_sample_method",
                            "sigmoid_scale"),
                  fp8=False, video=True, framerate=25),
    ModelTypeInfo("hunyuan-video", "HunyuanVideo",
                  alternatives=(("ckpt_path",), ("transformer_path", "vae_path", "llm_path", "clip_path")),
                  optional=("transformer_dtype", "timestep_sample_method", "sigmoid_scale", "shift", "guidance"),
                  block_swap=True, video=True, framerate=24, lora_format="transformer-prefix"),
    ModelTypeInfo("cosmos", "Cosmos", required=("transformer_path", "vae_path", "text_encoder_path"),
                  fp8=False, fp8_key=None, video=True, framerate=24,
                  notes="dataset must use size_buckets; not actively supported"),
    ModelTypeInfo("lumina_2", "Lumina 2", required=("transformer_path", "llm_path", "vae_path"),
                  optional=("lumina_shift", "shift", "timestep_sample_method", "sigmoid_scale"),
                  full_finetune=True, fp8=False, fp8_key=None, lora_file="adapter_model.safetensors",
                  native="trainers.native.families.lumina_2:Lumina2Family", native_params=2.6e9,
                  lora_params_per_rank=1_646_080),
    ModelTypeInfo("wan", "Wan 2.1 / 2.2", required=("ckpt_path",),
                  optional=("transformer_path", "llm_path", "transformer_dtype", "min_t", "max_t", *FLOW,
                            "cache_text_embeddings", "text_encoder_fp8"),
                  full_finetune=True, block_swap=True, block_swap_max=38, video=True, framerate=16,
                  notes="i2v/flf2v need video-only datasets; 5B and SkyReels run at 24 fps"),
    ModelTypeInfo("chroma", "Chroma", required=("diffusers_path", "transformer_path"),
                  optional=("transformer_dtype", *FLOW), full_finetune=True, block_swap=True, block_swap_max=34,
                  native="trainers.native.families.chroma:ChromaFamily", native_params=8.9e9),
    ModelTypeInfo("hidream", "HiDream", required=("diffusers_path", "llama3_path"),
                  optional=("llama3_4bit", "transformer_dtype", "max_llama3_sequence_length", *FLOW),
                  block_swap=True, notes="poor below 1024 px",
                  native="trainers.native.families.hidream:HiDreamFamily", native_params=17.1e9,
                  lora_params_per_rank=9_211_904),
    ModelTypeInfo("sd3", "SD3", required=("diffusers_path",), optional=("transformer_dtype", *FLOW),
                  lora_format=DIFFUSERS_LORA[0], lora_file=DIFFUSERS_LORA[1],
                  # SD3.5 Large's transformer (8.06e9); LoRA per rank: every Linear of its 38 joint blocks
                  # (529 Linears, 4,581,888 in + out features), from its released config
                  native="trainers.native.families.sd3:SD3Family", native_params=8.06e9,
                  lora_params_per_rank=4_581_888),
    ModelTypeInfo("cosmos_predict2", "Cosmos-Predict2", **_PREDICT2),  # type: ignore[arg-type]
    ModelTypeInfo("anima", "Anima", **_PREDICT2),  # type: ignore[arg-type]
    ModelTypeInfo("omnigen2", "OmniGen2", required=("diffusers_path",), optional=FLOW, fp8=False, fp8_key=None),
    ModelTypeInfo("qwen_image", "Qwen-Image",
                  alternatives=(("diffusers_path",), ("transformer_path", "text_encoder_path", "vae_path")),
                  optional=("transformer_dtype", *FLOW), full_finetune=True, block_swap=True, edit=True,
                  notes="Qwen-Image-Edit: edit dataset; fp8_scaled files are rejected",
                  native="trainers.native.families.qwen_image:QwenImageFamily", native_params=20.4e9,
                  lora_params_per_rank=9_216_000),
    ModelTypeInfo("hunyuan_image", "HunyuanImage 2.1",
                  required=("transformer_path", "vae_path", "text_encoder_path", "byt5_path"),
                  optional=("transformer_dtype", *FLOW), full_finetune=True, block_swap=True),
    ModelTypeInfo("auraflow", "AuraFlow",
                  required=("transformer_path", "text_encoder_path", "vae_path", "max_sequence_length"),
                  optional=("transformer_dtype", *FLOW), block_swap=True, lora_format=DIFFUSERS_LORA[0],
                  lora_file=DIFFUSERS_LORA[1]),
    _comfy("z_image", "Z-Image", "lumina2"),
    _comfy("hunyuan_video_15", "HunyuanVideo 1.5", "hunyuan_video_15", video=True, framerate=24),
    _comfy("flux2", "Flux 2", "flux2", edit=True, notes="Dev / Klein 4B / Klein 9B autodetected"),
    _comfy("ernie_image", "Ernie-Image", "flux2"),
    ModelTypeInfo("ltx2", "LTX 2.3", required=("diffusion_model", "text_encoder"),
                  optional=("diffusion_model_dtype", "merge_adapters", "timestep_sample_method", "sigmoid_scale",
                            "shift", "flux_shift"),
                  full_finetune=True, block_swap=True, block_swap_max=46, video=True, framerate=24,
                  fp8_key="diffusion_model_dtype", notes="t2i/t2v only, no audio"),
    _comfy("ideogram4", "Ideogram 4", "ideogram4"),
    _comfy("krea2", "Krea 2", "krea2"),
    _comfy("minimax_h3", "MiniMax H3", "minimax", required=("diffusion_model", "vae", "audio_vae", "text_encoders"),
           optional=(*COMFY, "cfg", "image_shift"), block_swap_max=48, video=True, framerate=24),
)

MODEL_TYPES: dict[str, ModelTypeInfo] = {info.type: info for info in _TYPES}
TYPE_NAMES: tuple[str, ...] = tuple(MODEL_TYPES)
ALL_MODEL_KEYS: frozenset[str] = frozenset(key for info in _TYPES for key in info.keys)
# Chroma first (the studio's first family), then the registry's order.
NATIVE_FAMILIES: dict[str, str] = {name: info.native for name, info in sorted(MODEL_TYPES.items(),
                                   key=lambda item: item[0] != "chroma") if info.native}
BLOCK_SWAP_UNSUPPORTED = tuple(name for name, info in MODEL_TYPES.items() if not info.block_swap)

assert ALL_MODEL_KEYS - {"type"} <= set(MODEL_KEYS), ALL_MODEL_KEYS - {"type"} - set(MODEL_KEYS)


def model_type(type_name: str) -> ModelTypeInfo:
    """The registry entry for a type string; KeyError for an unknown one."""
    return MODEL_TYPES[type_name]


def capabilities(type_name: str) -> dict[str, object]:
    """A plain dict of what the UI needs to enable/disable controls for this type."""
    info = MODEL_TYPES[type_name]
    return {
        "type": info.type, "label": info.label, "lora": info.lora, "full_finetune": info.full_finetune,
        "lokr": info.lokr, "block_swap": info.block_swap, "block_swap_max": info.block_swap_max,
        "fp8": info.fp8, "fp8_key": info.fp8_key, "video": info.video, "framerate": info.framerate,
        "lora_format": info.lora_format, "lora_file": info.lora_file, "edit": info.edit,
        "text_encoder_type": info.text_encoder_type, "notes": info.notes,
    }
