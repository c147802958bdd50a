"""Chroma: a Flux-style MMDiT without guidance/modulation layers, T5 only, the Flux VAE.

Config keys (diffusion-pipe's ``[model]`` for ``type = 'chroma'``): ``diffusers_path`` is a Flux diffusers
folder the VAE (``vae/``), T5 (``text_encoder_2/``) and tokenizer (``tokenizer_2/``) come from;
``transformer_path`` is the Chroma transformer (a diffusers folder, or a single ``.safetensors`` file);
``dtype`` and optional ``transformer_dtype``. Everything loads offline.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler
from PIL import Image
from transformers import AutoTokenizer, T5EncoderModel

from trainers.native.families.base import SampleRequest, TextBatch, dtype_of, resolve_path
from trainers.native.families.chroma_keys import to_original_lora

log = logging.getLogger(__name__)

# T5 sequence length Chroma trains and samples with (the tokenizer's own limit when it is shorter).
MAX_T5_TOKENS = 512
BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): Flux's 2x2 patch packing (same order as ChromaPipeline)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(packed: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents` for latents of height ``h`` and width ``w``."""
    b, _, c4 = packed.shape
    x = packed.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, h, w)


def latent_image_ids(h2: int, w2: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Position ids (0, row, col) of the packed image tokens, as Flux/Chroma use for RoPE."""
    ids = torch.zeros(h2, w2, 3)
    ids[..., 1] = torch.arange(h2)[:, None]
    ids[..., 2] = torch.arange(w2)[None, :]
    return ids.reshape(h2 * w2, 3).to(device=device, dtype=dtype)


class ChromaFamily:
    """Chroma LoRA training and sampling on diffusers components."""

    name = "chroma"

    def __init__(self, vae: AutoencoderKL, text_encoder: T5EncoderModel, tokenizer, transformer:
                 ChromaTransformer2DModel, scheduler: FlowMatchEulerDiscreteScheduler,
                 device: torch.device, dtype: torch.dtype):
        self.device, self.dtype = device, dtype
        self.vae, self.text_encoder, self.tokenizer = vae, text_encoder, tokenizer
        self._transformer = transformer
        self.pipe = ChromaPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                                   tokenizer=tokenizer, transformer=transformer)
        self.pipe.set_progress_bar_config(disable=True)
        self.max_sequence_length = min(MAX_T5_TOKENS, int(tokenizer.model_max_length))
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)

    @classmethod
    def load(cls, model: dict, device: torch.device) -> ChromaFamily:
        """Load every component named by a ``[model]`` table, frozen, offline."""
        for key in ("diffusers_path", "transformer_path", "dtype"):
            if key not in model:
                raise KeyError(f"[model] {key} is required for type = 'chroma'")
        dtype = dtype_of(model["dtype"], "[model] dtype")
        tdtype = dtype_of(model.get("transformer_dtype", model["dtype"]), "[model] transformer_dtype")
        root = resolve_path(model["diffusers_path"], "[model] diffusers_path")
        vae = AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=dtype, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer_2", local_files_only=True)
        text_encoder = T5EncoderModel.from_pretrained(root / "text_encoder_2", torch_dtype=dtype,
                                                      local_files_only=True)
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(root, subfolder="scheduler",
                                                                    local_files_only=True)
        transformer = load_transformer(resolve_path(model["transformer_path"], "[model] transformer_path"),
                                       tdtype)
        for module in (vae, text_encoder, transformer):
            module.requires_grad_(False)
            module.eval()
            module.to(device)
        return cls(vae, text_encoder, tokenizer, transformer, scheduler, device, dtype)

    @property
    def transformer(self) -> ChromaTransformer2DModel:
        """The Chroma transformer (the adapter lives inside it)."""
        return self._transformer

    def encode_images(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels in [-1, 1] -> latents normalised with the VAE's shift and scaling factors."""
        dist = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist
        latents = dist.sample(generator=generator)
        cfg = self.vae.config
        return (latents - (cfg.shift_factor or 0.0)) * cfg.scaling_factor

    def encode_prompts(self, captions: list[str]) -> TextBatch:
        """T5 embeddings and Chroma's mask (every padding token masked but the first) via ChromaPipeline."""
        embeds, _, mask, *_ = self.pipe.encode_prompt(
            prompt=captions, do_classifier_free_guidance=False, device=self.device,
            max_sequence_length=self.max_sequence_length)
        return TextBatch(embeds, mask)

    def image_seq_len(self, latent_shape: torch.Size) -> int:
        """Packed image tokens: one per 2x2 latent patch."""
        return (latent_shape[-2] // 2) * (latent_shape[-1] // 2)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, text: TextBatch) -> torch.Tensor:
        """Velocity prediction in latent layout; inputs are prepared exactly as ChromaPipeline does."""
        b, _, h, w = x_t.shape
        tdtype = self.transformer.dtype
        packed = pack_latents(x_t).to(tdtype)
        # ChromaPipeline._prepare_attention_mask: the text mask followed by ones for every image token.
        mask = torch.cat([text.mask.to(tdtype), torch.ones(b, packed.shape[1], dtype=tdtype, device=x_t.device)],
                         dim=1)
        out = self.transformer(
            hidden_states=packed,
            timestep=t.to(device=x_t.device, dtype=tdtype),
            encoder_hidden_states=text.embeds.to(tdtype),
            txt_ids=torch.zeros(text.embeds.shape[1], 3, device=x_t.device, dtype=tdtype),
            img_ids=latent_image_ids(h // 2, w // 2, x_t.device, tdtype),
            attention_mask=mask,
            return_dict=False,
        )[0]
        return unpack_latents(out, h, w)

    def lora_targets(self) -> list[str]:
        """Every nn.Linear inside the double and single blocks (what diffusion-pipe targets)."""
        return [name for name, module in self.transformer.named_modules()
                if isinstance(module, torch.nn.Linear) and name.split(".")[0] in BLOCK_LISTS
                and ".lora_" not in name and not name.endswith(".base_layer")]

    def check_size(self, width: int, height: int) -> None:
        """Sample sizes must be multiples of the VAE factor times the 2x2 packing."""
        step = self.vae_scale * 2
        if width % step or height % step:
            raise ValueError(f"[studio] sample_width/sample_height must be multiples of {step}; "
                             f"got {width}x{height}")

    @torch.no_grad()
    def sample(self, requests: list[SampleRequest]) -> list[Image.Image]:
        """Render previews with ChromaPipeline on the live modules (the adapter is used as trained)."""
        was_training = self.transformer.training
        self.transformer.eval()  # LoRA dropout off while sampling
        try:
            return [self._sample_one(r) for r in requests]
        finally:
            self.transformer.train(was_training)

    def _sample_one(self, r: SampleRequest) -> Image.Image:
        self.check_size(r.width, r.height)
        generator = torch.Generator(device="cpu").manual_seed(r.seed)
        out = self.pipe(prompt=r.prompt, negative_prompt=r.negative_prompt, height=r.height, width=r.width,
                        num_inference_steps=r.steps, guidance_scale=r.guidance, generator=generator,
                        max_sequence_length=self.max_sequence_length)
        return out.images[0]

    def export_lora(self, state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
        """PEFT (diffusers names) -> ``diffusion_model.`` keys in original Chroma names, ComfyUI-loadable."""
        out_features = {name: m.out_features for name, m in self.transformer.named_modules()
                        if isinstance(m, torch.nn.Linear)}
        return to_original_lora(state_dict, out_features)


def load_transformer(path: Path, dtype: torch.dtype) -> ChromaTransformer2DModel:
    """A diffusers folder, or a single file in the original Chroma layout (its config must be beside it)."""
    if path.is_dir():
        return ChromaTransformer2DModel.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
    config_dir = path.parent / "config.json"
    if not config_dir.exists():
        raise FileNotFoundError(
            f"[model] transformer_path = {str(path)!r} is a single file; the native trainer needs the diffusers "
            f"config.json of the transformer beside it (offline, nothing is downloaded)")
    return ChromaTransformer2DModel.from_single_file(str(path), config=str(path.parent), torch_dtype=dtype,
                                                     local_files_only=True)
