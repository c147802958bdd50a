"""Flux (dev / schnell) for the native trainer, following diffusion-pipe's models/flux.py.

Config keys (diffusion-pipe's ``[model]`` for ``type = 'flux'``): ``diffusers_path`` is a FluxPipeline folder
(``model_index.json``, ``vae/``, ``text_encoder/`` + ``tokenizer/`` (CLIP), ``text_encoder_2/`` + ``tokenizer_2/``
(T5), ``scheduler/`` and, unless ``transformer_path`` is set, ``transformer/``); ``transformer_path`` is one
``.safetensors`` transformer in the original (BFL) layout, with or without ComfyUI's ``model.diffusion_model.`` or
``diffusion_model.`` prefix (its config is read off the tensor shapes; a diffusers transformer folder works too);
``dtype`` (compute), ``transformer_dtype`` (storage of the big weights, float8 included), ``guidance`` (the
guidance value dev models are trained at, 1.0 when absent, as in diffusion-pipe), ``bypass_guidance_embedding``
and the shared flow keys (``flux_shift`` ...).

The LoRA is peft's on every Linear inside the double and single blocks (alpha = rank), saved as diffusers'
``FluxPipeline.save_lora_weights`` writes it: ``pytorch_lora_weights.safetensors`` with ``transformer.`` keys and
no ``adapter_config.json``.

Edit datasets (``control_path``) train Flux Kontext as diffusion-pipe does, with ``type = 'flux'`` and a Kontext
model: the control latents are appended as extra tokens (flux_kontext.py), previews start from the first control
image, and the LoRA is saved in the same format.
"""

from __future__ import annotations

import hashlib
import logging
from functools import partial
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from diffusers.hooks import HookRegistry
from PIL import Image
from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizer, T5EncoderModel

from trainers.native.families.base import SampleRequest, TextBatch, dtype_of, resolve_path
from trainers.native.families.chroma import (
    WeightStorageHook,
    _fuse_entry,
    latent_image_ids,
    pack_latents,
    unpack_latents,
)
from trainers.native.families.flux_kontext import kontext_pipeline, predict_kontext, preview_control
from trainers.native.families.flux_load import load_transformer
from trainers.native.lora_io import lora_pairs, read_adapter

log = logging.getLogger(__name__)

# diffusion-pipe models/flux.py: adapter_target_modules = ['FluxTransformerBlock', 'FluxSingleTransformerBlock']
TARGET_BLOCKS = ("FluxTransformerBlock", "FluxSingleTransformerBlock")
# diffusion-pipe save_adapter -> FluxPipeline.save_lora_weights(transformer_lora_layers=...): this file name,
# every key prefixed with the transformer's name.
LORA_FILE = "pytorch_lora_weights.safetensors"
KEY_PREFIX = "transformer."
MAX_T5_TOKENS = 512  # FluxPipeline._get_t5_prompt_embeds' default, which diffusion-pipe uses
PREVIEW_BATCH = 4  # previews rendered per pipeline call
DEFAULT_GUIDANCE = 1.0  # diffusion-pipe train.py: model_config.setdefault('guidance', 1.0)
# diffusion-pipe keeps these in ``dtype`` when ``transformer_dtype`` is lower (models/flux.py KEEP_IN_HIGH_PRECISION,
# plus names starting with proj_out / norm_out and every 1-D parameter).
KEEP_IN_HIGH_PRECISION = ("time_text_embed", "context_embedder", "x_embedder")
KEEP_PREFIXES = ("proj_out", "norm_out")
ENCODER_PARTS = ("vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")


def lora_targets(transformer: torch.nn.Module) -> list[str]:
    """Every Linear inside a double or single transformer block, as peft selects them for those block classes
    (a LoRA's own Linears left out)."""
    names = []
    for block_name, block in transformer.named_modules():
        if type(block).__name__ not in TARGET_BLOCKS:
            continue
        for name, module in block.named_modules():
            if isinstance(module, torch.nn.Linear) and ".lora_" not in name:
                names.append(f"{block_name}.{name.removesuffix('.base_layer')}")
    return names


def image_seq_len(latent_shape: torch.Size) -> int:
    """Packed image tokens for latents ``(B, C, h, w)``: (h / 2) * (w / 2), the length ``flux_shift`` reads
    (models/flux.py prepare_inputs); the shift itself is trainers/native/flow.py's, shared by every family."""
    return (latent_shape[-2] // 2) * (latent_shape[-1] // 2)


def guidance_vector(batch: int, guidance: float, device: torch.device) -> torch.Tensor:
    """The ``[model] guidance`` value for every sample, float32 (diffusion-pipe prepare_inputs)."""
    return torch.full((batch,), float(guidance), device=device, dtype=torch.float32)


def _embed_without_guidance(embed: torch.nn.Module, timestep, guidance, pooled_projection):
    steps = embed.timestep_embedder(embed.time_proj(timestep).to(dtype=pooled_projection.dtype))
    return steps + embed.text_embedder(pooled_projection)


def bypass_guidance_embedding(transformer: torch.nn.Module) -> bool:
    """``bypass_guidance_embedding = true``: the time/text embedding ignores guidance; False for a model without
    a guidance embedder (schnell), which is left as it is, as diffusion-pipe does."""
    embed = transformer.time_text_embed
    if not hasattr(embed, "guidance_embedder"):
        return False
    embed.forward = partial(_embed_without_guidance, embed)
    return True


def export_lora(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """peft adapter weights (diffusers module names) -> the keys ``save_lora_weights`` writes for Flux."""
    return {KEY_PREFIX + name: tensor for name, tensor in state_dict.items()}


def predict(transformer: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, t5_embeds: torch.Tensor,
            pooled: torch.Tensor, guidance: torch.Tensor | None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Velocity for unpacked latents ``(B, C, h, w)`` at timesteps ``t`` in (0, 1), inputs packed as FluxPipeline
    packs them (2x2 patches, zero text ids, (0, row, col) image ids); ``guidance`` is None for schnell.
    ``dtype``: the transformer's compute dtype (read from it when not given)."""
    b, _, h, w = x_t.shape
    dtype = dtype or transformer.dtype
    out = transformer(
        hidden_states=pack_latents(x_t).to(dtype),
        timestep=t.to(dtype),
        guidance=None if guidance is None else guidance.to(dtype),
        pooled_projections=pooled.to(dtype),
        encoder_hidden_states=t5_embeds.to(dtype),
        txt_ids=torch.zeros(t5_embeds.shape[1], 3, device=x_t.device, dtype=dtype),
        img_ids=latent_image_ids(h // 2, w // 2, x_t.device, dtype),
        return_dict=False,
    )[0]
    return unpack_latents(out, h, w)


def keeps_high_precision(name: str) -> bool:
    """Whether diffusion-pipe keeps this (2-D) parameter's module in ``dtype`` under a lower ``transformer_dtype``."""
    return any(word in name for word in KEEP_IN_HIGH_PRECISION) or name.startswith(KEEP_PREFIXES)


def apply_storage_dtype(transformer: torch.nn.Module, storage: torch.dtype, compute: torch.dtype) -> int:
    """Keep the weights of the Linears diffusion-pipe casts in ``storage``, computing in ``compute`` (biases are
    1-D and stay in ``compute``, as there). Call before a LoRA is attached; returns the count."""
    count = 0
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and not keeps_high_precision(name):
            hook = WeightStorageHook(storage, compute, non_blocking=False)
            HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, "layerwise_casting")
            count += 1
    return count


def _require_grad(_module, _inputs, output: torch.Tensor) -> torch.Tensor:
    return output.requires_grad_(True) if torch.is_grad_enabled() and not output.requires_grad else output


class FluxFamily:
    """Flux LoRA training and sampling on diffusers components."""

    name = "flux"
    lora_layout = "peft"  # one peft LoRA per diffusers Linear (training-state checkpoints record it)
    lora_file = LORA_FILE
    pixel_multiple = 16  # diffusion-pipe rounds image sides to 16 px (VAE factor 8 x 2x2 packing)
    edit_datasets = True  # control_path datasets train Flux Kontext (models/flux.py:381-392)

    def __init__(self, pipe: FluxPipeline, device: torch.device, dtype: torch.dtype, guidance: float,
                 sources: dict[str, Path]):
        self.pipe, self.device, self.dtype = pipe, device, dtype
        self.guidance = float(guidance)
        self.sources = sources  # encoder folders on disk (for cache_key)
        self.pipe.set_progress_bar_config(disable=True)
        self.vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        self._checkpoint_hooks: list = []
        self._prompt_embeds: dict[str, dict[str, torch.Tensor]] = {}  # preview prompts, encoded once
        self._transformer_dtype: torch.dtype | None = None
        self.preview_control: Path | None = None  # edit datasets: the reference image of the previews

    @classmethod
    def load(cls, model: dict, device: torch.device, fuse_adapters: list[dict] | None = None) -> FluxFamily:
        """Load every component named by a ``[model]`` table, frozen, offline, with diffusion-pipe's dtype rules:
        everything in ``dtype``; ``fuse_adapters`` merged; then the big transformer weights to ``transformer_dtype``."""
        for key in ("diffusers_path", "dtype"):
            if key not in model:
                raise KeyError(f"[model] {key} is required for type = 'flux'")
        dtype = dtype_of(model["dtype"], "[model] dtype")
        storage = dtype_of(model.get("transformer_dtype", model["dtype"]), "[model] transformer_dtype", storage=True)
        root = resolve_path(model["diffusers_path"], "[model] diffusers_path")
        if model.get("transformer_path"):
            transformer = load_transformer(resolve_path(model["transformer_path"], "[model] transformer_path"),
                                           dtype, root)
        else:
            transformer = load_transformer(root / "transformer", dtype, root)
        if model.get("bypass_guidance_embedding", False) and bypass_guidance_embedding(transformer):
            log.info("Bypassing Flux guidance")
        pipe = load_pipeline(root, transformer, dtype)
        packed = 4 * pipe.vae.config.latent_channels
        if transformer.config.in_channels != packed:  # diffusion-pipe pads Flex.2's 196 inputs (is_flex2)
            raise ValueError(f"the Flux transformer takes {transformer.config.in_channels} input channels, not the "
                             f"{packed} of the VAE's packed latents (Flex.2 and other inpainting variants): set "
                             "[studio] backend = 'diffusion-pipe' for it")
        guidance = model.get("guidance", DEFAULT_GUIDANCE)
        if isinstance(guidance, bool) or not isinstance(guidance, int | float):
            raise ValueError(f"[model] guidance = {guidance!r} must be a number (e.g. 1.0)")
        family = cls(pipe, device, dtype, guidance, {part: root / part for part in ENCODER_PARTS})
        if fuse_adapters:
            family.fuse_adapters(fuse_adapters)
        if storage != dtype:
            count = apply_storage_dtype(transformer, storage, dtype)
            log.info("%d transformer Linears store their weights in %s (compute in %s)", count, storage, dtype)
        for module in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2, transformer):
            module.requires_grad_(False)
            module.eval()
            module.to(device)
        return family

    @property
    def transformer(self) -> FluxTransformer2DModel:
        """The Flux transformer (the adapter lives inside it)."""
        return self.pipe.transformer

    @property
    def transformer_dtype(self) -> torch.dtype:
        """The transformer's compute dtype, read once (ModelMixin.dtype walks every module)."""
        if self._transformer_dtype is None:
            self._transformer_dtype = self.transformer.dtype
        return self._transformer_dtype

    def encode_images(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels in [-1, 1] -> latents with the VAE's shift and scaling factors (models/flux.py vae_encode)."""
        vae = self.pipe.vae
        latents = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist.sample(generator=generator)
        return (latents - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor

    def encode_prompts(self, captions: list[str]) -> TextBatch:
        """T5 embeddings (512 tokens, no mask: Flux attends to the padding) and CLIP's pooled embedding, made by
        FluxPipeline's own encoders as diffusion-pipe calls them (get_call_text_encoder_fn)."""
        pooled = self.pipe._get_clip_prompt_embeds(prompt=captions, device=self.device)
        t5 = self.pipe._get_t5_prompt_embeds(prompt=captions, device=self.device,
                                             max_sequence_length=MAX_T5_TOKENS)
        return TextBatch(t5, torch.ones(t5.shape[:2], dtype=torch.int64, device=t5.device), pooled)

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
        """Packed image tokens: one per 2x2 latent patch."""
        return image_seq_len(latent_shape)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, text: TextBatch,
                control: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity prediction in latent layout, with ``[model] guidance`` for models that embed it; ``control``:
        an edit dataset's control latents, appended as Kontext tokens (the prediction covers the target only)."""
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = guidance_vector(x_t.shape[0], self.guidance, x_t.device)
        if control is not None:
            return predict_kontext(self.transformer, x_t, control, t, text.embeds, text.pooled, guidance,
                                   self.transformer_dtype)
        return predict(self.transformer, x_t, t, text.embeds, text.pooled, guidance, self.transformer_dtype)

    def lora_targets(self) -> list[str]:
        """Every nn.Linear inside the double and single blocks (what diffusion-pipe targets)."""
        return lora_targets(self.transformer)

    # ----- previews -----------------------------------------------------------------------------------
    def check_size(self, width: int, height: int) -> None:
        """Sample sizes must be multiples of the VAE factor times the 2x2 packing."""
        step = self.vae_scale * 2
        if width % step or height % step:
            raise ValueError(f"[studio] sample_width/sample_height must be multiples of {step}; "
                             f"got {width}x{height}")

    @torch.no_grad()
    def sample(self, requests: list[SampleRequest]) -> list[Image.Image]:
        """Render previews with FluxPipeline on the live modules (the adapter as trained), or FluxKontextPipeline
        from ``preview_control`` (edit datasets). ``guidance`` is Flux's embedded guidance (``guidance_scale``);
        the negative prompt is not used (no true CFG)."""
        was_training = self.transformer.training
        self.transformer.eval()  # LoRA dropout off while sampling
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            self.check_size(r.width, r.height)
            groups.setdefault((r.width, r.height, r.steps, r.guidance, i // PREVIEW_BATCH), []).append(i)
        images: dict[int, Image.Image] = {}
        try:
            for indices in groups.values():
                images |= zip(indices, self._sample_batch([requests[i] for i in indices]), strict=True)
            return [images[i] for i in range(len(requests))]
        finally:
            self.transformer.train(was_training)

    def _sample_batch(self, rs: list[SampleRequest]) -> list[Image.Image]:
        """One pipeline call; each image has its own seeded generator, as if rendered alone."""
        inputs = [self.prompt_inputs(r.prompt) for r in rs]
        batched = {key: torch.cat([i[key] for i in inputs]) for key in inputs[0]}
        generators = [torch.Generator(device="cpu").manual_seed(r.seed) for r in rs]
        if self.preview_control is not None:  # the reference image at the preview size (no Kontext auto-resize)
            image = preview_control(self.preview_control, rs[0].width, rs[0].height)
            return kontext_pipeline(self.pipe)(
                **batched, image=image, height=rs[0].height, width=rs[0].width,
                num_inference_steps=rs[0].steps, guidance_scale=rs[0].guidance, generator=generators,
                max_area=rs[0].width * rs[0].height, _auto_resize=False).images
        return self.pipe(**batched, height=rs[0].height, width=rs[0].width, num_inference_steps=rs[0].steps,
                         guidance_scale=rs[0].guidance, generator=generators).images

    @torch.no_grad()
    def prompt_inputs(self, prompt: str) -> dict[str, torch.Tensor]:
        """A preview prompt's embeddings, encoded once per run (the encoders are frozen)."""
        if prompt not in self._prompt_embeds:
            text = self.encode_prompts([prompt])
            self._prompt_embeds[prompt] = {"prompt_embeds": text.embeds, "pooled_prompt_embeds": text.pooled}
        return self._prompt_embeds[prompt]

    # ----- LoRA -----------------------------------------------------------------------------------------
    def export_lora(self, state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], None]:
        """peft names -> ``transformer.`` keys; None: diffusers' Flux format has no adapter_config.json."""
        return export_lora(state_dict), None

    def attach_new_lora(self, rank: int, dropout: float, dtype: torch.dtype | None = None,
                        exclude: str | list[str] | None = None) -> list[tuple[str, torch.nn.Parameter]]:
        """A trainable peft LoRA (alpha = rank) on :meth:`lora_targets`, ``[adapter] exclude_modules`` handed to
        peft as diffusion-pipe does (models/base.py configure_adapter); returns its parameters."""
        from peft import LoraConfig

        if getattr(self.transformer, "_hf_peft_config_loaded", False):
            self.transformer.unload_lora()
        config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=dropout, bias="none",
                            target_modules=self.lora_targets(), exclude_modules=exclude)
        try:
            self.transformer.add_adapter(config)
        except ValueError as exc:
            raise ValueError(f"[adapter] exclude_modules = {exclude!r}: {exc}") from None
        named = [(n, p) for n, p in self.transformer.named_parameters() if ".lora_" in n]
        for _, param in named:
            param.data = param.data.to(dtype or self.dtype)
        return named

    def _saved_lora(self, path: Path, what: str) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], int]:
        """(diffusers module -> (A, B with alpha/rank folded in), rank) of a saved LoRA; names are checked."""
        tensors, config, file = read_adapter(path, what)
        pairs = lora_pairs(tensors, config, file)
        targets = set(self.lora_targets())
        unknown = sorted(set(pairs) - targets)
        if unknown:
            raise ValueError(f"{file}: {len(unknown)} LoRA modules match no block Linear of this Flux transformer, "
                             f"e.g. {', '.join(unknown[:4])} (a LoRA for another model, or in ComfyUI's layout?)")
        ranks = {pair.rank for pair in pairs.values()}
        if not pairs or len(ranks) != 1:
            raise ValueError(f"{file}: {'no LoRA weights' if not pairs else f'per-module ranks {sorted(ranks)}'}; "
                             "only LoRAs of one rank can be loaded")
        weights = {name: (p.a, p.b if p.scale() == 1 else p.b * p.scale()) for name, p in pairs.items()}
        return weights, ranks.pop()

    def _attach_weights(self, weights: dict[str, tuple[torch.Tensor, torch.Tensor]], rank: int, trainable: bool,
                        dtype: torch.dtype | None, dropout: float, exclude: str | list[str] | None,
                        ) -> list[tuple[str, torch.nn.Parameter]]:
        named = self.attach_new_lora(rank, dropout, dtype, exclude)
        modules = dict(self.transformer.named_modules())
        with torch.no_grad():
            for module, (a, b) in weights.items():
                layer = modules[module]
                if "default" not in getattr(layer, "lora_A", {}):
                    raise ValueError(f"the saved LoRA has weights for {module}, which is not a LoRA target here "
                                     "(see [adapter] exclude_modules)")
                for param, value in ((layer.lora_A["default"].weight, a), (layer.lora_B["default"].weight, b)):
                    if param.shape != value.shape:
                        raise ValueError(f"{module}: saved LoRA shape {list(value.shape)} does not fit "
                                         f"{list(param.shape)} (a LoRA for another model size?)")
                    param.copy_(value)
        for _, param in named:
            param.requires_grad_(trainable)
        return named

    def attach_saved_lora(self, folder_or_file: Path, trainable: bool = False, dtype: torch.dtype | None = None,
                          *, dropout: float = 0.0, exclude: str | list[str] | None = None,
                          ) -> tuple[int, list[tuple[str, torch.nn.Parameter]]]:
        """Attach a saved LoRA (a saved folder or its ``.safetensors``: diffusers/peft/kohya names) exactly."""
        weights, rank = self._saved_lora(Path(folder_or_file), "saved LoRA")
        return rank, self._attach_weights(weights, rank, trainable, dtype, dropout, exclude)

    def init_from_existing(self, path: str | Path, rank: int, dropout: float = 0.0, dtype: torch.dtype | None = None,
                           exclude: str | list[str] | None = None) -> list[tuple[str, torch.nn.Parameter]]:
        """``[adapter] init_from_existing``: a trainable LoRA starting from a saved one of the same rank."""
        what = "[adapter] init_from_existing"
        weights, saved_rank = self._saved_lora(resolve_path(path, what), what)
        if saved_rank != rank:
            raise ValueError(f"{what} = {str(path)!r} has rank {saved_rank} but [adapter] rank = {rank}: set "
                             f"rank = {saved_rank}, or start from a LoRA of rank {rank}")
        return self._attach_weights(weights, rank, True, dtype, dropout, exclude)

    def fuse_adapters(self, tables: list[dict]) -> None:
        """Merge each ``{path, weight}`` LoRA into the base weights, ``W += weight * alpha/rank * B @ A`` (what
        diffusion-pipe's load_lora_weights + fuse_lora(lora_scale=weight) computes). Before the LoRA is attached."""
        if not isinstance(tables, list):
            raise ValueError("[adapter] fuse_adapters must be a list of {path = '...', weight = 1.0} tables")
        for index, table in enumerate(tables):
            what = f"[adapter] fuse_adapters[{index}]"
            path, weight = _fuse_entry(table, what)
            weights, _ = self._saved_lora(path, what)
            with torch.no_grad():
                for module, (a, b) in weights.items():
                    param = self.transformer.get_submodule(module).weight
                    delta = b.float() @ a.float()
                    if delta.shape != param.shape:
                        raise ValueError(f"{what}: {path} changes {module} by a {list(delta.shape)} matrix but its "
                                         f"weight is {list(param.shape)}: the LoRA is for a model of another size")
                    param.data = (param.data.float() + weight * delta.to(param.device)).to(param.dtype)
            log.info("fused %s at weight %s into %d Linears", path, weight, len(weights))

    # ----- memory ---------------------------------------------------------------------------------------
    def enable_activation_checkpointing(self, reentrant: bool = False) -> None:
        """Recompute each block's activations in the backward pass (diffusers' gradient checkpointing); with
        reentrant checkpointing the embedders' outputs are marked as requiring grad, as diffusion-pipe does."""
        for handle in self._checkpoint_hooks:
            handle.remove()
        self._checkpoint_hooks = []
        if reentrant:
            for embedder in (self.transformer.x_embedder, self.transformer.context_embedder):
                self._checkpoint_hooks.append(embedder.register_forward_hook(_require_grad))

        def checkpoint(block, *args):
            return torch.utils.checkpoint.checkpoint(block.__call__, *args, use_reentrant=reentrant)

        self.transformer.enable_gradient_checkpointing(checkpoint)


def load_pipeline(root: Path, transformer: FluxTransformer2DModel, dtype: torch.dtype) -> FluxPipeline:
    """FluxPipeline's other components from the diffusers folder, offline, in ``dtype``."""
    for part in ("vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler"):
        if not (root / part).is_dir():
            raise FileNotFoundError(f"[model] diffusers_path = {str(root)!r} has no {part}/ folder: point it at a "
                                    "Flux diffusers folder (FLUX.1-dev or -schnell from Hugging Face)")
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(root, subfolder="scheduler", local_files_only=True),
        vae=AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=dtype, local_files_only=True),
        text_encoder=CLIPTextModel.from_pretrained(root / "text_encoder", torch_dtype=dtype, local_files_only=True),
        tokenizer=CLIPTokenizer.from_pretrained(root / "tokenizer", local_files_only=True),
        text_encoder_2=T5EncoderModel.from_pretrained(root / "text_encoder_2", torch_dtype=dtype,
                                                      local_files_only=True),
        tokenizer_2=AutoTokenizer.from_pretrained(root / "tokenizer_2", local_files_only=True),
        transformer=transformer)

