"""Every key a ``[model]`` table can hold, across all 24 types: value kind, default and tooltip text.

Which type reads which key lives in ``registry.py``; the pydantic model per type is built from both in
``schema_model.py``. Defaults are diffusion-pipe's (``None`` = unset / read with ``.get``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KeySpec:
    name: str
    kind: str  # file | dir | path | dtype | bool | float | pos_float | nonneg_float | fraction | int | method | file_list | text_encoders
    description: str
    default: Any = None


def _k(name: str, kind: str, description: str, default: Any = None) -> tuple[str, KeySpec]:
    return name, KeySpec(name, kind, description, default)


MODEL_KEYS: dict[str, KeySpec] = dict([
    _k("dtype", "dtype", "Base/compute dtype of the model (bfloat16 recommended)."),
    _k("transformer_dtype", "dtype", "Storage dtype of the transformer weights; float8 saves VRAM (LoRA only)."),
    _k("diffusion_model_dtype", "dtype", "Storage dtype of the diffusion model weights (ComfyUI-based models)."),
    # checkpoints and folders
    _k("diffusers_path", "dir", "Diffusers model folder (VAE and text encoders are loaded from here)."),
    _k("transformer_path", "path", "Transformer weights: a single .safetensors file (or a folder for Wan)."),
    _k("checkpoint_path", "file", "Single-file SDXL checkpoint (.safetensors)."),
    _k("ckpt_path", "dir", "Folder laid out as for the official inference scripts."),
    _k("single_file_path", "file", "LTX-Video single file holding transformer and VAE."),
    _k("vae_path", "path", "VAE weights (file, or Diffusers VAE folder where the model needs one)."),
    _k("llm_path", "path", "Language-model text encoder (file or folder)."),
    _k("clip_path", "path", "CLIP text encoder folder."),
    _k("text_encoder_path", "path", "Text encoder weights."),
    _k("t5_path", "path", "T5-XXL text encoder (old Cosmos-Predict2 setup)."),
    _k("llama3_path", "path", "Llama 3 text encoder folder (HiDream)."),
    _k("byt5_path", "path", "byT5 text encoder (HunyuanImage)."),
    _k("llm_adapter_path", "file", "LLM adapter weights (Anima)."),
    _k("diffusion_model", "file", "Diffusion model file (ComfyUI format; Comfy-quantized weights are fine for LoRA)."),
    _k("vae", "file", "VAE file (ComfyUI format)."),
    _k("audio_vae", "file", "Audio VAE file (MiniMax H3)."),
    _k("text_encoder", "file", "Single Gemma-3-12B text encoder file (LTX 2.3)."),
    _k("text_encoders", "text_encoders",
       "List of {path = '...' (or paths = [...]), type = '<ComfyUI CLIP type>'} text encoders."),
    _k("merge_adapters", "file_list", "LoRAs merged into the base weights before training (e.g. training adapters)."),
    # noise schedule
    _k("timestep_sample_method", "method", "How training timesteps are drawn: logit_normal or uniform.", "logit_normal"),
    _k("sigmoid_scale", "pos_float", "Scale of the logit-normal timestep distribution.", 1.0),
    _k("shift", "nonneg_float", "Constant timestep shift (takes precedence over flux_shift; 0 = no shift)."),
    _k("flux_shift", "bool", "Resolution-dependent timestep shift, as in sd-scripts.", False),
    _k("lumina_shift", "bool", "Lumina's resolution-dependent timestep shift.", False),
    _k("image_shift", "pos_float", "Shift used for image batches (MiniMax H3)."),
    _k("min_t", "fraction", "Lowest training timestep (Wan; e.g. 0.875 for the high-noise model).", 0.0),
    _k("max_t", "fraction", "Highest training timestep (Wan; e.g. 0.875 for the low-noise model).", 1.0),
    _k("guidance", "float", "Guidance-embedding value used while training (Flux, HunyuanVideo).", 1.0),
    _k("bypass_guidance_embedding", "bool", "Skip the guidance embedding (Flex.1-alpha).", False),
    _k("first_frame_conditioning_p", "fraction", "Probability of first-frame (i2v-style) conditioning.", 0.0),
    _k("cfg", "pos_float", "CFG-augmented training scale (> 1 requires pipeline_stages = 1)."),
    # text encoders
    _k("cache_text_embeddings", "bool", "Cache text embeddings (false keeps the text encoder loaded).", True),
    _k("text_encoder_fp8", "bool", "Load the text encoder in fp8.", False),
    _k("text_encoder_nf4", "bool", "Load the text encoder in nf4.", False),
    _k("llama3_4bit", "bool", "Load Llama 3 in 4 bit.", False),
    _k("max_llama3_sequence_length", "int", "Llama 3 prompt length (<= 256).", 128),
    _k("max_sequence_length", "int", "Text encoder sequence length (768 for Pony V7, 256 for base AuraFlow)."),
    # SDXL
    _k("v_pred", "bool", "The checkpoint is v-prediction.", False),
    _k("min_snr_gamma", "pos_float", "Min-SNR loss weighting gamma."),
    _k("debiased_estimation_loss", "bool", "Debiased estimation loss weighting.", False),
    _k("unet_lr", "float", "Learning rate for the UNet (overrides [optimizer] lr)."),
    _k("text_encoder_1_lr", "float", "Learning rate for text encoder 1 (CLIP-L)."),
    _k("text_encoder_2_lr", "float", "Learning rate for text encoder 2 (CLIP-G)."),
    # Cosmos-Predict2 / Anima
    _k("multiscale_loss_weight", "float", "Weight of the multiscale loss term."),
    _k("self_attn_lr", "float", "Learning rate for self-attention parameters."),
    _k("cross_attn_lr", "float", "Learning rate for cross-attention parameters."),
    _k("mlp_lr", "float", "Learning rate for MLP parameters."),
    _k("mod_lr", "float", "Learning rate for modulation parameters."),
    _k("llm_adapter_lr", "float", "Learning rate for the LLM adapter (0 freezes it; Anima docs)."),
])
