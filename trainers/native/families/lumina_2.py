"""Lumina 2 (Lumina-Image-2.0) for the native trainer, following diffusion-pipe's models/lumina_2.py.

Config keys (diffusion-pipe's ``[model]`` for ``type = 'lumina_2'``): ``transformer_path``, ``llm_path`` (Gemma 2
2B) and ``vae_path`` (the Flux VAE), loaded as lumina_2_load.py describes; ``dtype`` for the transformer and
Gemma (models/lumina_2.py:46, 58, 83: diffusion-pipe does not read ``transformer_dtype`` for Lumina 2, so neither
does this family); ``lumina_shift`` (the resolution-dependent shift) and the shared flow keys.

Prompts: Gemma 2's second-to-last hidden states of the caption, no system prompt, padded on the right to exactly
256 tokens (longer ones truncated), with the mask (:115-137). Latents: a sample of the VAE's distribution,
``(z - shift_factor) * scaling_factor`` (:104-113). The objective (:139-182): x_t = (1 - t) x0 + t noise, the
model is called at 1 - t and predicts x0 - noise (the negated velocity). The LoRA is peft's on every Linear of
the JointTransformerBlocks (main, noise refiner and context refiner blocks, :38-41), alpha = rank; it is trained on
diffusers' Lumina2Transformer2DModel, whose q, k and v Linears share one A so that the LoRA is exactly one LoRA
on the original fused ``attention.qkv``, and saved as save_adapter writes it (:95-99): ``adapter_model.safetensors``
with ``diffusion_model.`` + original NextDiT module names, beside peft's ``adapter_config.json``.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel
from PIL import Image

from trainers.chroma_names import excluded
from trainers.native.families.base import SampleRequest, TextBatch, dtype_of, resolve_path
from trainers.native.families.chroma import _fuse_entry
from trainers.native.families.chroma_lora import SharedDropout
from trainers.native.families.lumina_2_keys import (
    QKV_PARTS,
    lora_targets,
    split_qkv_lora,
    to_diffusers_module,
    to_original_lora,
    to_original_module,
)
from trainers.native.families.lumina_2_load import (
    load_text_encoder,
    load_tokenizer,
    load_transformer,
    load_vae,
)
from trainers.native.lora_io import lora_pairs, read_adapter

log = logging.getLogger(__name__)

LORA_FILE = "adapter_model.safetensors"
KEY_PREFIX = "diffusion_model."  # save_adapter: ComfyUI format (models/lumina_2.py:97-99)
MAX_TOKENS = 256  # models/lumina_2.py:122
PATHS = ("transformer_path", "llm_path", "vae_path")


def predict(transformer: Lumina2Transformer2DModel, x_t: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor,
            mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The velocity noise - x0 for latents ``(B, C, h, w)`` at ``t`` in (0, 1): Lumina's model runs at 1 - t and
    predicts x0 - noise (models/lumina_2.py:176-182)."""
    out = transformer(hidden_states=x_t.to(dtype), timestep=(1 - t).to(dtype), encoder_hidden_states=embeds.to(dtype),
                      encoder_attention_mask=mask.bool(), return_dict=False)[0]
    return -out


def tie_qkv_lora(transformer: torch.nn.Module, adapter: str = "default") -> int:
    """Share to_q's ``lora_A`` (and one dropout) with to_k and to_v in every block where all three have a LoRA:
    one LoRA on the original ``attention.qkv``. Returns how many were tied."""
    tied = 0
    for name, module in transformer.named_modules():
        if not name.endswith(".attn") or not hasattr(module, "to_q"):
            continue
        layers = [getattr(module, part.split(".")[1]) for part in QKV_PARTS]
        if not all(adapter in getattr(layer, "lora_A", {}) for layer in layers):
            continue
        shared, dropout = layers[0].lora_A[adapter], layers[0].lora_dropout[adapter]
        if isinstance(dropout, torch.nn.Dropout) and dropout.p > 0:
            dropout = SharedDropout(dropout.p, 3)
        for layer in layers:
            layer.lora_A[adapter], layer.lora_dropout[adapter] = shared, dropout
        tied += 1
    return tied


class Lumina2Family:
    """Lumina 2 LoRA training and sampling on diffusers components."""

    name = "lumina_2"
    lora_layout = "lumina_2_original"  # original NextDiT names, qkv fused (training states record it)
    lora_file = LORA_FILE
    pixel_multiple = 16  # VAE factor 8 x 2x2 patches

    def __init__(self, pipe: Lumina2Pipeline, device: torch.device, dtype: torch.dtype, sources: dict[str, Path]):
        self.pipe, self.device, self.dtype, self.sources = pipe, device, dtype, sources
        self.pipe.set_progress_bar_config(disable=True)
        self._prompt_embeds: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._exclude = None

    @classmethod
    def load(cls, model: dict, device: torch.device, fuse_adapters: list[dict] | None = None) -> Lumina2Family:
        """The three models from the config's paths, offline, frozen; transformer and Gemma in ``dtype``."""
        for key in PATHS:
            if not model.get(key):
                raise KeyError(f"[model] {key} is required for type = 'lumina_2'")
        dtype = dtype_of(model.get("dtype", "bfloat16"), "[model] dtype")
        if model.get("transformer_dtype") and model.get("transformer_dtype") != model.get("dtype"):
            log.warning("[model] transformer_dtype is not used for lumina_2 (diffusion-pipe loads the transformer "
                        "in dtype): the transformer stays in %s", dtype)
        paths = {key: resolve_path(model[key], f"[model] {key}") for key in PATHS}
        what = {key: f"[model] {key} = {model[key]!r}" for key in PATHS}
        transformer = load_transformer(paths["transformer_path"], dtype, what["transformer_path"])
        text_encoder = load_text_encoder(paths["llm_path"], dtype, what["llm_path"])
        tokenizer = load_tokenizer(paths["llm_path"], what["llm_path"])
        vae = load_vae(paths["vae_path"], what["vae_path"])
        pipe = Lumina2Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                               text_encoder=text_encoder, tokenizer=tokenizer)
        family = cls(pipe, device, dtype, {"llm": paths["llm_path"], "vae": paths["vae_path"],
                                           "tokenizer": Path(tokenizer.name_or_path)})
        if fuse_adapters:
            family.fuse_adapters(fuse_adapters)
        for module in (vae, text_encoder, transformer):
            module.requires_grad_(False)
            module.eval()
            module.to(device)
        return family

    @property
    def transformer(self) -> Lumina2Transformer2DModel:
        return self.pipe.transformer

    def encode_images(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels in [-1, 1] -> a sample of the VAE's latent distribution, ``(z - shift) * scale``
        (get_call_vae_fn, models/lumina_2.py:104-113)."""
        vae = self.pipe.vae
        latents = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist.sample(generator)
        if vae.config.get("shift_factor") is not None:
            latents = latents - vae.config.shift_factor
        return latents * vae.config.scaling_factor

    @torch.no_grad()
    def encode_prompts(self, captions: list[str]) -> TextBatch:
        """Gemma 2's second-to-last hidden states, 256 tokens padded on the right, and the mask (:115-137)."""
        tokens = self.pipe.tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                                     return_tensors="pt").to(self.device)
        out = self.pipe.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                                     output_hidden_states=True)
        return TextBatch(out.hidden_states[-2], tokens.attention_mask)

    def cache_key(self) -> str:
        """Changes when the VAE, Gemma or its tokenizer (names, sizes, mtimes) or ``dtype`` do."""
        digest = hashlib.sha256(f"{self.name}|{self.dtype}|{MAX_TOKENS}".encode())
        for part, place in sorted(self.sources.items()):
            files = [place] if place.is_file() else sorted(p for p in place.rglob("*") if p.is_file())
            for file in files:
                stat = file.stat()
                digest.update(f"|{part}/{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return f"{self.name}-{digest.hexdigest()[:32]}"

    def image_seq_len(self, latent_shape: torch.Size) -> int:
        """(h / 2) * (w / 2) image tokens: what lumina_shift reads (models/lumina_2.py:173)."""
        return (latent_shape[-2] // 2) * (latent_shape[-1] // 2)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, text: TextBatch) -> torch.Tensor:
        return predict(self.transformer, x_t, t, text.embeds, text.mask, self.dtype)

    def lora_targets(self) -> list[str]:
        return lora_targets(self.transformer)

    # ----- previews -----------------------------------------------------------------------------------
    def check_size(self, width: int, height: int) -> None:
        if width % self.pixel_multiple or height % self.pixel_multiple:
            raise ValueError(f"[studio] sample_width/sample_height must be multiples of {self.pixel_multiple}; "
                             f"got {width}x{height}")

    @torch.no_grad()
    def sample(self, requests: list[SampleRequest]) -> list[Image.Image]:
        """Previews with Lumina2Pipeline on the live transformer, prompts encoded as in training (no system
        prompt); ``guidance`` above 1 is classifier-free guidance against the negative prompt ("" when none)."""
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
        inputs = {"prompt_embeds": embeds, "prompt_attention_mask": mask}
        if r.guidance > 1:
            neg, neg_mask = self.prompt_inputs(r.negative_prompt or "")
            inputs |= {"negative_prompt_embeds": neg, "negative_prompt_attention_mask": neg_mask}
        generator = torch.Generator(device="cpu").manual_seed(r.seed)
        return self.pipe(**inputs, height=r.height, width=r.width, num_inference_steps=r.steps,
                         guidance_scale=max(float(r.guidance), 1.0), generator=generator).images[0]

    @torch.no_grad()
    def prompt_inputs(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        if prompt not in self._prompt_embeds:
            text = self.encode_prompts([prompt])
            self._prompt_embeds[prompt] = (text.embeds.to(self.dtype), text.mask)
        return self._prompt_embeds[prompt]

    # ----- LoRA -----------------------------------------------------------------------------------------
    def export_lora(self, state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
        """peft names -> ``diffusion_model.`` + original module names (save_adapter, :95-99), and the
        adapter_config fields of diffusion-pipe's peft config: every block Linear by its original full name
        (models/base.py:262-283), ``exclude_modules`` as the config gave it."""
        tensors = {KEY_PREFIX + k: v for k, v in to_original_lora(state_dict).items()}
        targets = sorted({to_original_module(name)[0] for name in self.lora_targets()})
        return tensors, {"target_modules": targets, "exclude_modules": self._exclude}

    def _kept_targets(self, exclude: str | list[str] | None) -> list[str]:
        """The diffusers targets whose original Linear ``[adapter] exclude_modules`` leaves in (peft's rule on
        diffusion-pipe's names, models/base.py:283)."""
        targets = [t for t in self.lora_targets() if not excluded(exclude, to_original_module(t)[0])]
        if not targets:
            raise ValueError(f"[adapter] exclude_modules = {exclude!r} excludes every LoRA target")
        return targets

    def attach_new_lora(self, rank: int, dropout: float, dtype: torch.dtype | None = None,
                        exclude: str | list[str] | None = None) -> list[tuple[str, torch.nn.Parameter]]:
        """A trainable LoRA (alpha = rank), q/k/v sharing one A; returns its parameters."""
        return self._attach_weights({}, rank, True, dtype, dropout, exclude)

    def _attach_weights(self, weights: dict[str, tuple[torch.Tensor, torch.Tensor]], rank: int, trainable: bool,
                        dtype: torch.dtype | None, dropout: float, exclude: str | list[str] | None,
                        ) -> list[tuple[str, torch.nn.Parameter]]:
        from peft import LoraConfig

        if getattr(self.transformer, "_hf_peft_config_loaded", False):
            self.transformer.unload_lora()
        self._exclude = exclude
        config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=dropout, bias="none",
                            target_modules=self._kept_targets(exclude))
        self.transformer.add_adapter(config)
        tie_qkv_lora(self.transformer)
        modules = dict(self.transformer.named_modules())
        with torch.no_grad():
            for module, (a, b) in weights.items():
                layer = modules.get(module)
                if layer is None or "default" not in getattr(layer, "lora_A", {}):
                    raise ValueError(f"the saved LoRA has weights for {module}, which is not a LoRA target here "
                                     "(see [adapter] exclude_modules)")
                for param, value in ((layer.lora_A["default"].weight, a), (layer.lora_B["default"].weight, b)):
                    if param.shape != value.shape:
                        raise ValueError(f"{module}: saved LoRA shape {list(value.shape)} does not fit "
                                         f"{list(param.shape)} (a LoRA for another model size?)")
                    param.copy_(value)
        named = [(n, p) for n, p in self.transformer.named_parameters() if ".lora_" in n]
        for _, param in named:
            param.data = param.data.to(dtype or self.dtype)
            param.requires_grad_(trainable)
        return named

    def _saved_lora(self, path: Path, what: str) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], int]:
        """(diffusers module -> (A, B with alpha/rank folded in), rank) of a LoRA in diffusion-pipe's layout
        (original names) or on diffusers names."""
        tensors, config, file = read_adapter(path, what)
        pairs = lora_pairs(tensors, config, file)
        targets = set(self.lora_targets())
        weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name, pair in pairs.items():
            b = pair.b if pair.scale() == 1 else pair.b * pair.scale()
            try:
                parts = to_diffusers_module(name)
            except KeyError:
                parts = (name,)
            if not set(parts) <= targets:
                raise ValueError(f"{file}: {name} matches no LoRA target of this Lumina 2 transformer (a LoRA for "
                                 "another model?)")
            if len(parts) == 3:
                outs = [self.transformer.get_submodule(p).out_features for p in parts]
                try:
                    weights.update(zip(parts, split_qkv_lora(pair.a, b, outs), strict=True))
                except ValueError as exc:
                    raise ValueError(f"{file}: {name}: {exc}") from None
            else:
                weights[parts[0]] = (pair.a, b)
        ranks = {pair.rank for pair in pairs.values()}
        if not pairs or len(ranks) != 1:
            raise ValueError(f"{file}: {'no LoRA weights' if not pairs else f'per-module ranks {sorted(ranks)}'}; "
                             "only LoRAs of one rank can be loaded")
        return weights, ranks.pop()

    def attach_saved_lora(self, folder_or_file: Path, trainable: bool = False, dtype: torch.dtype | None = None,
                          *, dropout: float = 0.0, exclude: str | list[str] | None = None,
                          ) -> tuple[int, list[tuple[str, torch.nn.Parameter]]]:
        """Attach a saved LoRA (a save folder or its ``adapter_model.safetensors``) exactly."""
        weights, rank = self._saved_lora(Path(folder_or_file), "saved LoRA")
        return rank, self._attach_weights(weights, rank, trainable, dtype, dropout, exclude)

    def init_from_existing(self, path: str | Path, rank: int, dropout: float = 0.0, dtype: torch.dtype | None = None,
                           exclude: str | list[str] | None = None) -> list[tuple[str, torch.nn.Parameter]]:
        what = "[adapter] init_from_existing"
        weights, saved_rank = self._saved_lora(resolve_path(path, what), what)
        if saved_rank != rank:
            raise ValueError(f"{what} = {str(path)!r} has rank {saved_rank} but [adapter] rank = {rank}: set "
                             f"rank = {saved_rank}, or start from a LoRA of rank {rank}")
        return self._attach_weights(weights, rank, True, dtype, dropout, exclude)

    def fuse_adapters(self, tables: list[dict]) -> None:
        """Merge each ``{path, weight}`` LoRA into the base weights, ``W += weight * alpha/rank * B @ A``, before
        the trainable LoRA is attached."""
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
        """Recompute each main block's activations in the backward pass (diffusers' gradient checkpointing)."""
        def checkpoint(block, *args):
            return torch.utils.checkpoint.checkpoint(block.__call__, *args, use_reentrant=reentrant)

        self.transformer.enable_gradient_checkpointing(checkpoint)
