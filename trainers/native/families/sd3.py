"""Stable Diffusion 3 / 3.5 for the native trainer, following diffusion-pipe's models/sd3.py.

Config keys (diffusion-pipe's ``[model]`` for ``type = 'sd3'``): ``diffusers_path`` is a StableDiffusion3Pipeline
folder (``model_index.json``, ``transformer/``, ``vae/``, CLIP-L ``text_encoder/`` + ``tokenizer/``, CLIP-G
``text_encoder_2/`` + ``tokenizer_2/``, T5 ``text_encoder_3/`` + ``tokenizer_3/`` (may be absent: T5 embeddings are
then zeros, as in diffusers) and ``scheduler/``); it is the only path sd3.py reads (no single-file layout:
models/sd3.py:35-38 and :46-49 raise NotImplementedError without it). ``dtype`` (compute, everything is loaded in
it), ``transformer_dtype`` (storage of the block weights, float8 included) and the shared flow keys (``shift``,
``flux_shift`` ...). ``[adapter] fuse_adapters`` is not read by sd3.py and is ignored here too.

The LoRA is peft's on every Linear inside the ``JointTransformerBlock`` blocks (alpha = rank), saved as diffusers'
``StableDiffusion3Pipeline.save_lora_weights`` writes it (models/sd3.py:63-64): ``pytorch_lora_weights.safetensors``
with ``transformer.`` keys, metadata ``{"format": "pt"}`` and no ``adapter_config.json``.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
from diffusers.hooks import HookRegistry
from PIL import Image

from trainers.native.families.base import SampleRequest, TextBatch, dtype_of, resolve_path
from trainers.native.families.chroma import WeightStorageHook
from trainers.native.families.flux import FluxFamily
from trainers.native.lora_io import lora_pairs, read_adapter

log = logging.getLogger(__name__)

# diffusion-pipe models/sd3.py:28: adapter_target_modules = ['JointTransformerBlock']
TARGET_BLOCKS = ("JointTransformerBlock",)
# models/sd3.py:63-64 -> StableDiffusion3Pipeline.save_lora_weights(save_dir, transformer_lora_layers=...)
LORA_FILE = "pytorch_lora_weights.safetensors"
KEY_PREFIX = "transformer."
MAX_T5_TOKENS = 256  # StableDiffusion3Pipeline._get_t5_prompt_embeds' default, which models/sd3.py:104 uses
# models/sd3.py:12: parameters whose names contain one of these (and every 1-D parameter) stay in ``dtype``
KEEP_IN_HIGH_PRECISION = ("pos_embed", "time_text_embed", "context_embedder", "norm_out", "proj_out")
PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")
ENCODER_PARTS = ("vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3",
                 "tokenizer_3")


def lora_targets(transformer: torch.nn.Module) -> list[str]:
    """Every Linear inside a JointTransformerBlock (both attentions, the feed-forwards, the AdaLN Linears), as
    peft selects them for that block class (a LoRA's own Linears left out)."""
    names = []
    for block_name, block in transformer.named_modules():
        if type(block).__name__ not in TARGET_BLOCKS:
            continue
        for name, module in block.named_modules():
            if isinstance(module, torch.nn.Linear) and ".lora_" not in name:
                names.append(f"{block_name}.{name.removesuffix('.base_layer')}")
    return names


def keeps_high_precision(name: str) -> bool:
    """Whether models/sd3.py:51-53 keeps this (2-D) parameter's module in ``dtype`` under a lower
    ``transformer_dtype``."""
    return any(word in name for word in KEEP_IN_HIGH_PRECISION)


def apply_storage_dtype(transformer: torch.nn.Module, storage: torch.dtype, compute: torch.dtype) -> int:
    """Keep the weights of the Linears models/sd3.py casts in ``storage`` (the block Linears: biases are 1-D and
    the embedders, ``norm_out`` and ``proj_out`` stay in ``dtype``), computing in ``compute``. Before a LoRA is
    attached; returns the count."""
    count = 0
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and not keeps_high_precision(name):
            hook = WeightStorageHook(storage, compute, non_blocking=False)
            HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, "layerwise_casting")
            count += 1
    return count


def joint_embeds(clip_l: torch.Tensor, clip_g: torch.Tensor, t5: torch.Tensor) -> torch.Tensor:
    """The transformer's text sequence (models/sd3.py:118-123): the two CLIPs' hidden states side by side, zero-padded
    to T5's width, followed by T5's tokens."""
    clip = torch.cat([clip_l, clip_g], dim=-1)
    clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
    return torch.cat([clip, t5], dim=-2)


def predict(transformer: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor,
            pooled: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Velocity for latents ``(B, C, h, w)`` at timesteps ``t`` in (0, 1); the transformer reads ``t * 1000``
    (models/sd3.py:161) and patches the latents itself."""
    dtype = dtype or transformer.dtype
    return transformer(hidden_states=x_t.to(dtype), timestep=(t * 1000).to(dtype),
                       encoder_hidden_states=embeds.to(dtype), pooled_projections=pooled.to(dtype),
                       return_dict=False)[0]


def export_lora(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """peft adapter weights (diffusers module names) -> the keys ``save_lora_weights`` writes for SD3."""
    return {KEY_PREFIX + name: tensor for name, tensor in state_dict.items()}


def _require_grad(_module, _inputs, output: torch.Tensor) -> torch.Tensor:
    return output.requires_grad_(True) if torch.is_grad_enabled() and not output.requires_grad else output


class SD3Family:
    """SD3 LoRA training and sampling on diffusers components."""

    name = "sd3"
    lora_layout = "peft"  # one peft LoRA per diffusers Linear (training-state checkpoints record it)
    lora_file = LORA_FILE
    pixel_multiple = 16  # VAE factor 8 x 2x2 patches

    def __init__(self, pipe: StableDiffusion3Pipeline, device: torch.device, dtype: torch.dtype,
                 sources: dict[str, Path]):
        self.pipe, self.device, self.dtype = pipe, device, dtype
        self.sources = sources  # encoder folders on disk (for cache_key)
        self.pipe.set_progress_bar_config(disable=True)
        self.vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        self._checkpoint_hooks: list = []
        self._prompt_embeds: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # preview prompts, encoded once
        self._transformer_dtype: torch.dtype | None = None

    @classmethod
    def load(cls, model: dict, device: torch.device, fuse_adapters: list[dict] | None = None) -> SD3Family:
        """Load the pipeline ``[model] diffusers_path`` names, frozen, offline, with models/sd3.py's dtype rules:
        everything in ``dtype`` (:36, :47), then the transformer's block weights to ``transformer_dtype`` (:51-53).
        ``fuse_adapters`` is ignored, as models/sd3.py does (it never reads it)."""
        for key in ("diffusers_path", "dtype"):
            if key not in model:
                raise KeyError(f"[model] {key} is required for type = 'sd3'")
        dtype = dtype_of(model["dtype"], "[model] dtype")
        storage = dtype_of(model.get("transformer_dtype", model["dtype"]), "[model] transformer_dtype", storage=True)
        root = resolve_path(model["diffusers_path"], "[model] diffusers_path")
        for part in PARTS:
            if not (root / part).is_dir():
                raise FileNotFoundError(f"[model] diffusers_path = {str(root)!r} has no {part}/ folder: point it at a "
                                        "Stable Diffusion 3 (or 3.5) diffusers folder from Hugging Face")
        transformer = SD3Transformer2DModel.from_pretrained(root, subfolder="transformer", torch_dtype=dtype,
                                                           local_files_only=True)
        pipe = StableDiffusion3Pipeline.from_pretrained(root, transformer=transformer, torch_dtype=dtype,
                                                        local_files_only=True)
        if fuse_adapters:
            log.warning("[adapter] fuse_adapters is ignored for type = 'sd3' (diffusion-pipe does not read it)")
        family = cls(pipe, device, dtype, {p: root / p for p in ENCODER_PARTS if (root / p).is_dir()})
        if storage != dtype:
            count = apply_storage_dtype(transformer, storage, dtype)
            log.info("%d transformer Linears store their weights in %s (compute in %s)", count, storage, dtype)
        encoders = (pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3)
        for module in (pipe.vae, *(e for e in encoders if e is not None), transformer):
            module.requires_grad_(False)
            module.eval()
            module.to(device)
        return family

    @property
    def transformer(self) -> SD3Transformer2DModel:
        """The SD3 transformer (the adapter lives inside it)."""
        return self.pipe.transformer

    @property
    def transformer_dtype(self) -> torch.dtype:
        """The transformer's compute dtype, read once (ModelMixin.dtype walks every module)."""
        if self._transformer_dtype is None:
            self._transformer_dtype = self.transformer.dtype
        return self._transformer_dtype

    def encode_images(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels in [-1, 1] -> a sample of the VAE's latents, ``(z - shift_factor) * scaling_factor``
        (get_call_vae_fn, models/sd3.py:69-78)."""
        vae = self.pipe.vae
        latents = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist.sample(generator=generator)
        shift = getattr(vae.config, "shift_factor", None)
        return (latents - (shift or 0.0)) * vae.config.scaling_factor

    @torch.no_grad()
    def encode_prompts(self, captions: list[str]) -> TextBatch:
        """The three encoders as models/sd3.py:80-104 calls them (StableDiffusion3Pipeline's own: each CLIP's
        penultimate hidden states over 77 tokens and its projected pooled output, T5's last hidden states over 256
        tokens), joined as prepare_inputs joins them (:118-123): a 77 + 256 token sequence (no mask: SD3 attends to
        the padding) and the two pooled outputs side by side."""
        pipe, device = self.pipe, self.device
        clip_l, pooled_l = pipe._get_clip_prompt_embeds(prompt=captions, device=device, clip_model_index=0)
        clip_g, pooled_g = pipe._get_clip_prompt_embeds(prompt=captions, device=device, clip_model_index=1)
        t5 = pipe._get_t5_prompt_embeds(prompt=captions, device=device, max_sequence_length=MAX_T5_TOKENS)
        embeds = joint_embeds(clip_l, clip_g, t5)
        mask = torch.ones(embeds.shape[:2], dtype=torch.int64, device=embeds.device)
        return TextBatch(embeds, mask, torch.cat([pooled_l, pooled_g], dim=-1))

    def cache_key(self) -> str:
        """Changes when the VAE, encoders or tokenizers (file names, sizes, mtimes) or ``dtype`` do."""
        digest = hashlib.sha256(f"{self.name}|{self.dtype}|{MAX_T5_TOKENS}".encode())
        for part, folder in sorted(self.sources.items()):
            for file in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
                stat = file.stat()
                digest.update(f"|{part}/{file.relative_to(folder).as_posix()}:{stat.st_size}:"
                              f"{stat.st_mtime_ns}".encode())
        return f"{self.name}-{digest.hexdigest()[:32]}"

    def image_seq_len(self, latent_shape: torch.Size) -> int:
        """Image tokens, (h / 2) * (w / 2): what flux_shift reads (models/sd3.py:152-153)."""
        return (latent_shape[-2] // 2) * (latent_shape[-1] // 2)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, text: TextBatch) -> torch.Tensor:
        """Velocity prediction in latent layout."""
        return predict(self.transformer, x_t, t, text.embeds, text.pooled, self.transformer_dtype)

    def lora_targets(self) -> list[str]:
        """Every nn.Linear inside the JointTransformerBlocks (what diffusion-pipe targets)."""
        return lora_targets(self.transformer)

    # ----- previews -----------------------------------------------------------------------------------
    def check_size(self, width: int, height: int) -> None:
        """Sample sizes must be multiples of the VAE factor times the 2x2 patches."""
        step = self.vae_scale * self.transformer.config.patch_size
        if width % step or height % step:
            raise ValueError(f"[studio] sample_width/sample_height must be multiples of {step}; "
                             f"got {width}x{height}")

    @torch.no_grad()
    def sample(self, requests: list[SampleRequest]) -> list[Image.Image]:
        """Render previews with StableDiffusion3Pipeline on the live modules (the adapter as trained).
        ``guidance`` is the classifier-free guidance scale; above 1 the negative prompt ("" when none) is the
        unconditional branch, as diffusers does it."""
        for r in requests:
            self.check_size(r.width, r.height)
        was_training = self.transformer.training
        self.transformer.eval()  # LoRA dropout off while sampling
        try:
            return [self._sample_one(r) for r in requests]
        finally:
            self.transformer.train(was_training)

    def _sample_one(self, r: SampleRequest) -> Image.Image:
        embeds, pooled = self.prompt_inputs(r.prompt)
        inputs = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        if r.guidance > 1:
            neg, neg_pooled = self.prompt_inputs(r.negative_prompt)
            inputs |= {"negative_prompt_embeds": neg, "negative_pooled_prompt_embeds": neg_pooled}
        generator = torch.Generator(device="cpu").manual_seed(r.seed)
        return self.pipe(**inputs, height=r.height, width=r.width, num_inference_steps=r.steps,
                         guidance_scale=float(r.guidance), generator=generator).images[0]

    @torch.no_grad()
    def prompt_inputs(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A preview prompt's embeddings and pooled embedding, encoded once per run (the encoders are frozen)."""
        if prompt not in self._prompt_embeds:
            text = self.encode_prompts([prompt])
            self._prompt_embeds[prompt] = (text.embeds.to(self.transformer_dtype),
                                           text.pooled.to(self.transformer_dtype))
        return self._prompt_embeds[prompt]

    # ----- LoRA -----------------------------------------------------------------------------------------
    def export_lora(self, state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], None]:
        """peft names -> ``transformer.`` keys; None: diffusers' SD3 format has no adapter_config.json."""
        return export_lora(state_dict), None

    def _saved_lora(self, path: Path, what: str) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], int]:
        """(diffusers module -> (A, B with alpha/rank folded in), rank) of a saved LoRA; names are checked."""
        tensors, config, file = read_adapter(path, what)
        pairs = lora_pairs(tensors, config, file)
        unknown = sorted(set(pairs) - set(self.lora_targets()))
        if unknown:
            raise ValueError(f"{file}: {len(unknown)} LoRA modules match no block Linear of this SD3 transformer, "
                             f"e.g. {', '.join(unknown[:4])} (a LoRA for another model?)")
        ranks = {pair.rank for pair in pairs.values()}
        if not pairs or len(ranks) != 1:
            raise ValueError(f"{file}: {'no LoRA weights' if not pairs else f'per-module ranks {sorted(ranks)}'}; "
                             "only LoRAs of one rank can be loaded")
        weights = {name: (p.a, p.b if p.scale() == 1 else p.b * p.scale()) for name, p in pairs.items()}
        return weights, ranks.pop()

    # The rest of the LoRA handling is Flux's: a plain peft LoRA on diffusers module names.
    attach_new_lora = FluxFamily.attach_new_lora
    _attach_weights = FluxFamily._attach_weights
    attach_saved_lora = FluxFamily.attach_saved_lora
    init_from_existing = FluxFamily.init_from_existing
    fuse_adapters = FluxFamily.fuse_adapters

    # ----- memory ---------------------------------------------------------------------------------------
    def enable_activation_checkpointing(self, reentrant: bool = False) -> None:
        """Recompute each block's activations in the backward pass (diffusers' gradient checkpointing, per
        JointTransformerBlock as models/sd3.py's checkpointable TransformerLayer); with reentrant checkpointing
        the embedders' outputs are marked as requiring grad, as diffusion-pipe does (:185-187)."""
        for handle in self._checkpoint_hooks:
            handle.remove()
        self._checkpoint_hooks = []
        if reentrant:
            for embedder in (self.transformer.pos_embed, self.transformer.context_embedder):
                self._checkpoint_hooks.append(embedder.register_forward_hook(_require_grad))

        def checkpoint(block, *args):
            return torch.utils.checkpoint.checkpoint(block.__call__, *args, use_reentrant=reentrant)

        self.transformer.enable_gradient_checkpointing(checkpoint)
