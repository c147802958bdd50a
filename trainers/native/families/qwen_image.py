"""Qwen-Image for the native trainer, following diffusion-pipe's models/qwen_image.py.

Config keys (diffusion-pipe's ``[model]`` for ``type = 'qwen_image'``): ``diffusers_path`` (a QwenImagePipeline
folder: ``transformer/``, ``text_encoder/`` (Qwen2.5-VL), ``tokenizer/``, ``vae/``, ``scheduler/``), and/or the
single files ``transformer_path``, ``text_encoder_path`` (ComfyUI's ``qwen_2.5_vl_7b.safetensors``) and
``vae_path`` (the Diffusers VAE file), each winning over its subfolder (see qwen_image_load.py); ``dtype``
(compute), ``transformer_dtype`` (storage of the block weights, float8 included) and the shared flow keys.

Prompts are encoded by Qwen2.5-VL inside Qwen-Image's prompt template, its 34 prefix tokens dropped, up to 1024
tokens, with a mask (models/qwen_image.py:182-183, 332-384). Latents are the VAE's mode, normalised per channel
by latents_mean / latents_std (:296-302). The LoRA is peft's on every Linear inside the QwenImageTransformerBlocks
(alpha = rank), saved as diffusion-pipe's save_adapter writes it (:284-288): ``adapter_model.safetensors`` with
``diffusion_model.`` + peft keys (ComfyUI's layout) beside ``adapter_config.json``. Qwen-Image-Edit (edit datasets
with ``control_path``, the Edit models) trains through the diffusion-pipe backend only.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline, QwenImageTransformer2DModel
from diffusers.hooks import HookRegistry
from PIL import Image

from trainers.native.families.base import SampleRequest, TextBatch, dtype_of, resolve_path
from trainers.native.families.chroma import WeightStorageHook
from trainers.native.families.flux import FluxFamily
from trainers.native.families.qwen_image_load import (
    load_text_encoder,
    load_tokenizer,
    load_transformer,
    load_vae,
)
from trainers.native.lora_io import lora_pairs, read_adapter

log = logging.getLogger(__name__)

# models/qwen_image.py:180 adapter_target_modules
TARGET_BLOCKS = ("QwenImageTransformerBlock",)
LORA_FILE = "adapter_model.safetensors"
KEY_PREFIX = "diffusion_model."  # save_adapter: ComfyUI format
# models/qwen_image.py:23: parameters whose name holds one of these (and every 1-D one) stay in ``dtype``.
KEEP_IN_HIGH_PRECISION = ("time_text_embed", "img_in", "txt_in", "norm_out", "proj_out")
# models/qwen_image.py:182-183 and diffusers' QwenImagePipeline (tokenizer_max_length = 1024)
PROMPT_TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
                   "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n"
                   "{}<|im_end|>\n<|im_start|>assistant\n")
TEMPLATE_PREFIX_TOKENS = 34
MAX_TOKENS = 1024
PARTS = ("transformer", "text_encoder", "vae")
EDIT_PIPELINES = ("QwenImageEditPipeline", "QwenImageEditPlusPipeline", "QwenImageEditInpaintPipeline",
                  "QwenImageLayeredPipeline")
# Qwen-Image's scheduler config, for previews when no diffusers folder gives one.
SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, shift=1.0,
                 shift_terminal=0.02, time_shift_type="exponential", use_dynamic_shifting=True)
EDIT_FIX = "Qwen-Image-Edit trains with the diffusion-pipe backend only: set [studio] backend = 'diffusion-pipe'"


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` -> ``(B, h/2 * w/2, 4C)``: 2x2 patches, as QwenImagePipeline._pack_latents."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(packed: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of :func:`pack_latents` for latents of ``h`` x ``w``."""
    b, _, d = packed.shape
    x = packed.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, h, w)


def lora_targets(transformer: torch.nn.Module) -> list[str]:
    """Every Linear inside a QwenImageTransformerBlock (models/base.py get_target_modules), LoRA Linears left out."""
    names = []
    for block_name, block in transformer.named_modules():
        if type(block).__name__ in TARGET_BLOCKS:
            names += [f"{block_name}.{name.removesuffix('.base_layer')}" for name, m in block.named_modules()
                      if isinstance(m, torch.nn.Linear) and ".lora_" not in name]
    return names


def keeps_high_precision(name: str) -> bool:
    """Whether diffusion-pipe loads this parameter in ``dtype`` under a lower ``transformer_dtype``
    (models/qwen_image.py:262: a keyword in its name; 1-D parameters always)."""
    return any(word in name for word in KEEP_IN_HIGH_PRECISION)


def apply_storage_dtype(transformer: torch.nn.Module, storage: torch.dtype, compute: torch.dtype) -> int:
    """Keep the weights of the Linears diffusion-pipe casts in ``storage``, computing in ``compute`` (biases are
    1-D and stay in ``compute``). Call before a LoRA is attached; returns the count."""
    count = 0
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and not keeps_high_precision(f"{name}.weight"):
            hook = WeightStorageHook(storage, compute, non_blocking=False)
            HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, "layerwise_casting")
            count += 1
    return count


def predict(transformer: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor,
            mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Velocity for unpacked latents ``(B, C, h, w)`` at ``t`` in (0, 1) (prepare_inputs, models/qwen_image.py:
    394-481): text trimmed to the batch's longest prompt, the mask over text and image, one (1, h/2, w/2) image."""
    b, _, h, w = x_t.shape
    length = int(mask.sum(dim=1).max().item())
    out = transformer(hidden_states=pack_latents(x_t).to(dtype), encoder_hidden_states=embeds[:, :length].to(dtype),
                      encoder_hidden_states_mask=mask[:, :length].bool(), timestep=t.float(),
                      img_shapes=[[(1, h // 2, w // 2)]] * b, return_dict=False)[0]
    return unpack_latents(out, h, w)


def _require_grad(_module, _inputs, output: torch.Tensor) -> torch.Tensor:
    return output.requires_grad_(True) if torch.is_grad_enabled() and not output.requires_grad else output


def _paths(model: dict) -> tuple[Path | None, dict[str, Path]]:
    """(the diffusers folder or None, each model's folder or file), every path resolved and checked."""
    root = resolve_path(model["diffusers_path"], "[model] diffusers_path") if model.get("diffusers_path") else None
    paths = {}
    for part in PARTS:
        key = f"{part}_path"
        if model.get(key):
            paths[part] = resolve_path(model[key], f"[model] {key}")
        elif root is not None:
            paths[part] = root / part
            if not paths[part].is_dir():
                raise FileNotFoundError(f"[model] diffusers_path = {str(root)!r} has no {part}/ folder: point it at "
                                        f"a Qwen-Image diffusers folder, or set [model] {key}")
        else:
            raise ValueError(f"[model] {key} is missing: give diffusers_path (a Qwen-Image diffusers folder), or "
                             "all of transformer_path, text_encoder_path and vae_path")
    return root, paths


def refuse_edit_models(root: Path | None, transformer: QwenImageTransformer2DModel) -> None:
    """Qwen-Image-Edit folders and transformers are refused with the way to train them."""
    index = root / "model_index.json" if root is not None else None
    if index is not None and index.is_file():
        kind = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
        if kind in EDIT_PIPELINES:
            raise ValueError(f"[model] diffusers_path = {str(root)!r} is a {kind} folder. {EDIT_FIX}")
    config = transformer.config
    if config.get("zero_cond_t") or config.get("use_additional_t_cond") or config.get("use_layer3d_rope"):
        raise ValueError(f"the transformer is a Qwen-Image-Edit / Layered variant. {EDIT_FIX}")


class QwenImageFamily:
    """Qwen-Image LoRA training and sampling on diffusers components."""

    name = "qwen_image"
    lora_layout = "peft"  # one peft LoRA per diffusers Linear (training-state checkpoints record it)
    lora_file = LORA_FILE
    pixel_multiple = 16  # VAE factor 8 x 2x2 packing

    def __init__(self, pipe: QwenImagePipeline, device: torch.device, dtype: torch.dtype, sources: dict[str, Path]):
        self.pipe, self.device, self.dtype = pipe, device, dtype
        self.sources = sources  # encoders and tokenizer on disk (cache_key)
        self.pipe.set_progress_bar_config(disable=True)
        vae = pipe.vae
        self.latents_mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1)
        self.latents_std = torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1)
        self._checkpoint_hooks: list = []
        self._prompt_embeds: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._exclude = None
        self._transformer_dtype: torch.dtype | None = None

    @classmethod
    def load(cls, model: dict, device: torch.device, fuse_adapters: list[dict] | None = None) -> QwenImageFamily:
        """The three models from the config's paths, offline; the block Linears kept in ``transformer_dtype``."""
        dtype = dtype_of(model.get("dtype", "bfloat16"), "[model] dtype")
        storage = dtype_of(model.get("transformer_dtype", model.get("dtype", "bfloat16")),
                           "[model] transformer_dtype", storage=True)
        root, paths = _paths(model)
        transformer = load_transformer(paths["transformer"], dtype, _what("transformer", model, root))
        refuse_edit_models(root, transformer)
        text_encoder = load_text_encoder(paths["text_encoder"], dtype, _what("text_encoder", model, root))
        vae = load_vae(paths["vae"], dtype, _what("vae", model, root))
        tokenizer = load_tokenizer(root, paths["text_encoder"] if model.get("text_encoder_path") else None)
        scheduler = (FlowMatchEulerDiscreteScheduler.from_pretrained(root, subfolder="scheduler", local_files_only=True)
                     if root is not None and (root / "scheduler").is_dir() else
                     FlowMatchEulerDiscreteScheduler(**SCHEDULER))
        pipe = QwenImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                 transformer=transformer)
        family = cls(pipe, device, dtype, {"text_encoder": paths["text_encoder"], "vae": paths["vae"],
                                           "tokenizer": Path(tokenizer.name_or_path)})
        if fuse_adapters:
            family.fuse_adapters(fuse_adapters)
        if storage != dtype:
            count = apply_storage_dtype(transformer, storage, dtype)
            log.info("%d transformer Linears store their weights in %s (compute in %s)", count, storage, dtype)
        for module in (vae, text_encoder, transformer):
            module.requires_grad_(False)
            module.eval()
            module.to(device)
        return family

    @property
    def transformer(self) -> QwenImageTransformer2DModel:
        """The Qwen-Image transformer (the adapter lives inside it)."""
        return self.pipe.transformer

    @property
    def transformer_dtype(self) -> torch.dtype:
        """The transformer's compute dtype, read once (ModelMixin.dtype walks every module)."""
        if self._transformer_dtype is None:
            self._transformer_dtype = self.transformer.dtype
        return self._transformer_dtype

    def encode_images(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels in [-1, 1] -> the VAE's mode, ``(x - latents_mean) / latents_std`` per channel
        (get_call_vae_fn, models/qwen_image.py:296-302; the mode: ``generator`` is not used)."""
        vae = self.pipe.vae
        latents = vae.encode(pixels.to(self.device, vae.dtype)[:, :, None]).latent_dist.mode()
        mean, std = self.latents_mean.to(latents), self.latents_std.to(latents)
        return ((latents - mean) / std)[:, :, 0]

    @torch.no_grad()
    def encode_prompts(self, captions: list[str]) -> TextBatch:
        """Qwen2.5-VL's last hidden states of the templated captions, the 34 template-prefix tokens dropped,
        padded with zeros to the longest caption, and their mask (_get_qwen_prompt_embeds, :332-384)."""
        tokens = self.pipe.tokenizer([PROMPT_TEMPLATE.format(c) for c in captions],
                                     max_length=MAX_TOKENS + TEMPLATE_PREFIX_TOKENS, padding=True,
                                     truncation=True, return_tensors="pt").to(self.device)
        # The language model alone: the same hidden states without the vocabulary-wide logits.
        out = self.pipe.text_encoder.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                                           output_hidden_states=True)
        hidden, keep = out.hidden_states[-1], tokens.attention_mask.bool()
        rows = [hidden[i][keep[i]][TEMPLATE_PREFIX_TOKENS:] for i in range(len(captions))]
        length = max(row.shape[0] for row in rows)
        embeds = hidden.new_zeros(len(rows), length, hidden.shape[-1])
        mask = torch.zeros(len(rows), length, dtype=torch.int64, device=hidden.device)
        for i, row in enumerate(rows):
            embeds[i, :row.shape[0]], mask[i, :row.shape[0]] = row, 1
        return TextBatch(embeds, mask)

    def cache_key(self) -> str:
        """Changes when the VAE, text encoder or tokenizer (file names, sizes, mtimes) or ``dtype`` do."""
        digest = hashlib.sha256(f"{self.name}|{self.dtype}|{MAX_TOKENS}|{TEMPLATE_PREFIX_TOKENS}".encode())
        for part, place in sorted(self.sources.items()):
            files = [place] if place.is_file() else sorted(p for p in place.rglob("*") if p.is_file())
            for file in files:
                stat = file.stat()
                digest.update(f"|{part}/{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return f"{self.name}-{digest.hexdigest()[:32]}"

    def image_seq_len(self, latent_shape: torch.Size) -> int:
        """Packed image tokens, (h / 2) * (w / 2): what flux_shift reads (models/qwen_image.py:448)."""
        return (latent_shape[-2] // 2) * (latent_shape[-1] // 2)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, text: TextBatch) -> torch.Tensor:
        """Velocity prediction in latent layout."""
        return predict(self.transformer, x_t, t, text.embeds, text.mask, self.transformer_dtype)

    def lora_targets(self) -> list[str]:
        """Every nn.Linear inside the transformer blocks (what diffusion-pipe targets)."""
        return lora_targets(self.transformer)

    # ----- previews -----------------------------------------------------------------------------------
    def check_size(self, width: int, height: int) -> None:
        """Sample sizes must be multiples of the VAE factor times the 2x2 packing."""
        if width % self.pixel_multiple or height % self.pixel_multiple:
            raise ValueError(f"[studio] sample_width/sample_height must be multiples of {self.pixel_multiple}; "
                             f"got {width}x{height}")

    @torch.no_grad()
    def sample(self, requests: list[SampleRequest]) -> list[Image.Image]:
        """Render previews with QwenImagePipeline on the live transformer (the adapter as trained). ``guidance``
        is the true-CFG scale (``true_cfg_scale``): above 1 the negative prompt ("" when none) is the
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
        embeds, mask = self.prompt_inputs(r.prompt)
        inputs = {"prompt_embeds": embeds, "prompt_embeds_mask": mask}
        if r.guidance > 1:
            neg, neg_mask = self.prompt_inputs(r.negative_prompt)
            inputs |= {"negative_prompt_embeds": neg, "negative_prompt_embeds_mask": neg_mask}
        generator = torch.Generator(device="cpu").manual_seed(r.seed)
        return self.pipe(**inputs, height=r.height, width=r.width, num_inference_steps=r.steps,
                         true_cfg_scale=max(float(r.guidance), 1.0), generator=generator).images[0]

    @torch.no_grad()
    def prompt_inputs(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A preview prompt's embeddings and mask, encoded once per run (the encoders are frozen)."""
        if prompt not in self._prompt_embeds:
            text = self.encode_prompts([prompt])
            self._prompt_embeds[prompt] = (text.embeds.to(self.transformer_dtype), text.mask)
        return self._prompt_embeds[prompt]

    # ----- LoRA -----------------------------------------------------------------------------------------
    def export_lora(self, state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
        """peft names -> ``diffusion_model.`` keys (save_adapter, models/qwen_image.py:284-288) and the
        adapter_config fields of diffusion-pipe's peft config: ``target_modules`` as peft leaves them once the
        LoRA is injected (every block Linear by name, models/base.py:262-283; from 20 names on, which the
        released model has, peft replaces them by the shortest suffixes that pick the same modules, and
        save_pretrained writes those), ``exclude_modules`` as the config gave it."""
        tensors = {KEY_PREFIX + name: tensor for name, tensor in state_dict.items()}
        attached = getattr(self.transformer, "peft_config", {}).get("default")
        targets = attached.target_modules if attached is not None else self.lora_targets()
        return tensors, {"target_modules": sorted(targets), "exclude_modules": self._exclude}

    def attach_new_lora(self, rank: int, dropout: float, dtype: torch.dtype | None = None,
                        exclude: str | list[str] | None = None) -> list[tuple[str, torch.nn.Parameter]]:
        """A trainable peft LoRA (alpha = rank) on :meth:`lora_targets`, ``[adapter] exclude_modules`` handed to
        peft as diffusion-pipe does (models/base.py configure_adapter); returns its parameters."""
        self._exclude = exclude
        return FluxFamily.attach_new_lora(self, rank, dropout, dtype, exclude)

    def _saved_lora(self, path: Path, what: str) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], int]:
        """(diffusers module -> (A, B with alpha/rank folded in), rank) of a saved LoRA; names are checked."""
        tensors, config, file = read_adapter(path, what)
        pairs = lora_pairs(tensors, config, file)
        unknown = sorted(set(pairs) - set(self.lora_targets()))
        if unknown:
            raise ValueError(f"{file}: {len(unknown)} LoRA modules match no block Linear of this Qwen-Image "
                             f"transformer, e.g. {', '.join(unknown[:4])} (a LoRA for another model?)")
        ranks = {pair.rank for pair in pairs.values()}
        if not pairs or len(ranks) != 1:
            raise ValueError(f"{file}: {'no LoRA weights' if not pairs else f'per-module ranks {sorted(ranks)}'}; "
                             "only LoRAs of one rank can be loaded")
        weights = {name: (p.a, p.b if p.scale() == 1 else p.b * p.scale()) for name, p in pairs.items()}
        return weights, ranks.pop()

    # The rest of the LoRA handling is Flux's: a plain peft LoRA on diffusers module names.
    _attach_weights = FluxFamily._attach_weights
    attach_saved_lora = FluxFamily.attach_saved_lora
    init_from_existing = FluxFamily.init_from_existing
    fuse_adapters = FluxFamily.fuse_adapters

    # ----- memory ---------------------------------------------------------------------------------------
    def enable_activation_checkpointing(self, reentrant: bool = False) -> None:
        """Recompute each block's activations in the backward pass (diffusers' gradient checkpointing); with
        reentrant checkpointing the embedders' outputs are marked as requiring grad, as diffusion-pipe does."""
        for handle in self._checkpoint_hooks:
            handle.remove()
        self._checkpoint_hooks = []
        if reentrant:
            for embedder in (self.transformer.img_in, self.transformer.txt_in):
                self._checkpoint_hooks.append(embedder.register_forward_hook(_require_grad))

        def checkpoint(block, *args):
            return torch.utils.checkpoint.checkpoint(block.__call__, *args, use_reentrant=reentrant)

        self.transformer.enable_gradient_checkpointing(checkpoint)


def _what(part: str, model: dict, root: Path | None) -> str:
    key = f"{part}_path"
    return f"[model] {key} = {model[key]!r}" if model.get(key) else f"[model] diffusers_path = {str(root)!r} {part}/"
