"""Chroma: a Flux-style MMDiT without guidance/modulation layers, T5 only, the Flux VAE.

Config keys (diffusion-pipe's ``[model]`` for ``type = 'chroma'``): ``diffusers_path`` is a Flux diffusers
folder the VAE (``vae/``), T5 (``text_encoder_2/``) and tokenizer (``tokenizer_2/``) come from;
``transformer_path`` is the Chroma transformer: a diffusers folder, or a single ``.safetensors`` file in the
original layout (``double_blocks.0.img_attn.qkv.weight``), with or without ComfyUI's ``model.diffusion_model.``
or ``diffusion_model.`` prefix; ``dtype`` (compute) and optional ``transformer_dtype`` (storage of the big
weights, float8 included). Everything loads offline: a single file's config is read off its tensor shapes.

``[adapter]`` extras: ``fuse_adapters`` LoRAs are merged into the base weights before the trainable LoRA is
attached (:meth:`ChromaFamily.fuse_adapters`), ``init_from_existing`` starts the LoRA from a saved one
(:meth:`ChromaFamily.init_from_existing`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler
from diffusers.hooks import HookRegistry
from diffusers.hooks.layerwise_casting import LayerwiseCastingHook
from diffusers.models.transformers.transformer_chroma import ChromaSingleTransformerBlock
from PIL import Image
from transformers import AutoTokenizer, T5EncoderModel

from trainers.native.families.base import SampleRequest, TextBatch, dtype_of, resolve_path
from trainers.native.families.chroma_keys import (
    fused_parts,
    original_name,
    split_fused_lora,
    to_original_lora,
)
from trainers.native.families.chroma_load import load_transformer
from trainers.native.families.chroma_lora import all_shared, shared_weights, tie_fused_lora
from trainers.native.families.chroma_sample import render_guided
from trainers.native.lora_io import LoraPair, attach_lora, lora_pairs, read_adapter

log = logging.getLogger(__name__)

# T5 sequence length Chroma trains and samples with (the tokenizer's own limit when it is shorter).
MAX_T5_TOKENS = 512
PREVIEW_BATCH = 4  # previews rendered per pipeline call (inference without gradients: far below a training step)
BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")
# diffusion-pipe keeps parameters whose original name holds one of these in ``dtype`` when ``transformer_dtype``
# is lower: in diffusers names the norms, every bias, x_embedder, context_embedder, the approximator and proj_out.
KEEP_IN_HIGH_PRECISION = ("norm", "bias", "img_in", "txt_in", "distilled_guidance_layer", "final_layer")
# ComfyUI's fp8_scaled files: float8 weights that only mean something multiplied by these per-tensor scales.
ENCODER_PARTS = ("vae", "text_encoder_2", "tokenizer_2")  # what cached latents and text embeddings depend on


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
    lora_layout = "fused"  # diffusion-pipe's: one A per fused original Linear (chroma_lora.py); in checkpoints
    pixel_multiple = 16  # diffusion-pipe rounds Chroma image sides to 16 px (VAE factor 8 x 2x2 packing)
    lora_file = "adapter_model.safetensors"  # diffusion-pipe's ComfyUI-layout save, beside adapter_config.json

    def __init__(self, vae: AutoencoderKL, text_encoder: T5EncoderModel, tokenizer, transformer:
                 ChromaTransformer2DModel, scheduler: FlowMatchEulerDiscreteScheduler,
                 device: torch.device, dtype: torch.dtype, sources: dict[str, Path] | None = None):
        self.device, self.dtype = device, dtype
        self.vae, self.text_encoder, self.tokenizer = vae, text_encoder, tokenizer
        self._transformer = transformer
        self.sources = sources  # encoder folders on disk (for cache_key); None for modules built in memory
        self.pipe = ChromaPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                                   tokenizer=tokenizer, transformer=transformer)
        self.pipe.set_progress_bar_config(disable=True)
        self.max_sequence_length = min(MAX_T5_TOKENS, int(tokenizer.model_max_length))
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self._checkpoint_hooks: list = []
        self._exclude: str | list[str] | None = None  # [adapter] exclude_modules of the attached LoRA
        self._timestep: torch.Tensor | None = None  # float32 t of the predict() in progress
        self._prompt_embeds: dict[tuple, dict[str, torch.Tensor]] = {}  # the fixed preview prompts, encoded once
        self._transformer_dtype: torch.dtype | None = None  # read once: ModelMixin.dtype walks every module
        transformer.time_text_embed.register_forward_pre_hook(self._float32_timestep)
        transformer.time_text_embed.register_forward_hook(self._to_compute_dtype)

    def _float32_timestep(self, _module, args):
        """diffusers rounds t to the model dtype before x1000 and the embedding; diffusion-pipe embeds the float32
        t (models/chroma.py:277, :367) and rounds only the embedding, where the autocast Linear reads it."""
        if self._timestep is None:
            return None
        return (self._timestep.to(args[0].device, torch.float32) * 1000,)

    def _to_compute_dtype(self, _module, _args, output: torch.Tensor) -> torch.Tensor | None:
        return None if self._timestep is None else output.to(self.transformer_dtype)

    @property
    def transformer_dtype(self) -> torch.dtype:
        """The transformer's dtype, read on first use (after loading, storage casting and the adapter)."""
        if self._transformer_dtype is None:
            self._transformer_dtype = self.transformer.dtype
        return self._transformer_dtype

    @classmethod
    def load(cls, model: dict, device: torch.device, fuse_adapters: list[dict] | None = None) -> ChromaFamily:
        """Load every component named by a ``[model]`` table, frozen, offline.

        ``fuse_adapters`` (``[adapter] fuse_adapters``) are merged while the weights are still in ``dtype``;
        then the transformer's big weights go to ``transformer_dtype`` storage, as in diffusion-pipe.
        """
        for key in ("diffusers_path", "transformer_path", "dtype"):
            if key not in model:
                raise KeyError(f"[model] {key} is required for type = 'chroma'")
        dtype = dtype_of(model["dtype"], "[model] dtype")
        storage = dtype_of(model.get("transformer_dtype", model["dtype"]), "[model] transformer_dtype", storage=True)
        root = resolve_path(model["diffusers_path"], "[model] diffusers_path")
        vae = AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=dtype, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer_2", local_files_only=True)
        text_encoder = T5EncoderModel.from_pretrained(root / "text_encoder_2", torch_dtype=dtype,
                                                      local_files_only=True)
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(root, subfolder="scheduler",
                                                                    local_files_only=True)
        transformer = load_transformer(resolve_path(model["transformer_path"], "[model] transformer_path"), dtype)
        family = cls(vae, text_encoder, tokenizer, transformer, scheduler, device, dtype,
                     {part: root / part for part in ENCODER_PARTS})
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

    def cache_key(self) -> str:
        """Changes when the VAE, T5 or tokenizer files (names, sizes, mtimes), ``dtype`` or the T5 length do.

        Families built from in-memory modules (the demo builder) hash the encoders' weights and vocabulary.
        """
        digest = hashlib.sha256(f"{self.name}|{self.dtype}|{self.max_sequence_length}".encode())
        if self.sources:
            for part, folder in sorted(self.sources.items()):
                for file in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
                    stat = file.stat()
                    digest.update(f"|{part}/{file.relative_to(folder).as_posix()}:{stat.st_size}:"
                                  f"{stat.st_mtime_ns}".encode())
        else:
            for module in (self.vae, self.text_encoder):
                for key, tensor in module.state_dict().items():
                    digest.update(key.encode())
                    digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            digest.update(json.dumps(sorted(self.tokenizer.get_vocab().items())).encode())
        return f"{self.name}-{digest.hexdigest()[:32]}"

    def image_seq_len(self, latent_shape: torch.Size) -> int:
        """Packed image tokens: one per 2x2 latent patch."""
        return (latent_shape[-2] // 2) * (latent_shape[-1] // 2)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, text: TextBatch) -> torch.Tensor:
        """Velocity prediction in latent layout; inputs are prepared exactly as ChromaPipeline does."""
        b, _, h, w = x_t.shape
        tdtype = self.transformer_dtype
        packed = pack_latents(x_t).to(tdtype)
        # ChromaPipeline._prepare_attention_mask: the text mask followed by ones for every image token.
        mask = torch.cat([text.mask.to(tdtype), torch.ones(b, packed.shape[1], dtype=tdtype, device=x_t.device)],
                         dim=1)
        self._timestep = t.to(device=x_t.device, dtype=torch.float32)
        try:
            out = self.transformer(
                hidden_states=packed,
                timestep=self._timestep.to(tdtype),
                encoder_hidden_states=text.embeds.to(tdtype),
                txt_ids=torch.zeros(text.embeds.shape[1], 3, device=x_t.device, dtype=tdtype),
                img_ids=latent_image_ids(h // 2, w // 2, x_t.device, tdtype),
                attention_mask=mask,
                return_dict=False,
            )[0]
        finally:
            self._timestep = None
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
        images: dict[int, Image.Image] = {}
        groups: dict[tuple, list[int]] = {}  # requests that differ only in prompt and seed render as one batch
        for i, r in enumerate(requests):
            self.check_size(r.width, r.height)
            group = groups.setdefault((r.width, r.height, r.steps, r.guidance, i // PREVIEW_BATCH), [])
            group.append(i)
        try:
            for indices in groups.values():
                images |= zip(indices, self._sample_batch([requests[i] for i in indices]), strict=True)
            return [images[i] for i in range(len(requests))]
        finally:
            self.transformer.train(was_training)

    def _sample_batch(self, rs: list[SampleRequest]) -> list[Image.Image]:
        """One pipeline call for the batch; each image has its own seeded generator, as if rendered alone."""
        inputs = [self.prompt_inputs(r) for r in rs]
        batched = {key: torch.cat([i[key] for i in inputs]) for key in inputs[0]}
        generators = [torch.Generator(device="cpu").manual_seed(r.seed) for r in rs]
        if rs[0].guidance > 1:  # both guidance passes in one call (chroma_sample.py), else the pipeline's one
            return render_guided(self.pipe, batched, height=rs[0].height, width=rs[0].width, steps=rs[0].steps,
                                 guidance=rs[0].guidance, generators=generators)
        out = self.pipe(**batched, height=rs[0].height, width=rs[0].width, num_inference_steps=rs[0].steps,
                        guidance_scale=rs[0].guidance, generator=generators)
        return out.images

    @torch.no_grad()
    def prompt_inputs(self, r: SampleRequest) -> dict[str, torch.Tensor]:
        """T5 embeddings of a preview prompt (and its negative under guidance), encoded once per run: the text
        encoder is frozen, so every preview round gets the same tensors ChromaPipeline would compute."""
        guided = r.guidance > 1  # ChromaPipeline.do_classifier_free_guidance
        key = (r.prompt, r.negative_prompt if guided else None)
        if key not in self._prompt_embeds:
            embeds, _, mask, neg, _, neg_mask = self.pipe.encode_prompt(
                prompt=r.prompt, negative_prompt=r.negative_prompt, do_classifier_free_guidance=guided,
                device=self.device, max_sequence_length=self.max_sequence_length)
            inputs = {"prompt_embeds": embeds, "prompt_attention_mask": mask}
            if guided:
                inputs |= {"negative_prompt_embeds": neg, "negative_prompt_attention_mask": neg_mask}
            self._prompt_embeds[key] = inputs
        return self._prompt_embeds[key]

    def export_lora(self, state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
        """PEFT (diffusers names) -> ``diffusion_model.`` keys in original Chroma names, ComfyUI-loadable, and the
        adapter_config fields diffusion-pipe's peft config has: every block Linear in ``target_modules`` (by its
        full original name, models/base.py:262-270) and ``exclude_modules`` as the config gave it."""
        out_features, targets = {}, set()
        for name, m in self.transformer.named_modules():
            if isinstance(m, torch.nn.Linear) and ".lora_" not in name:
                name = name.removesuffix(".base_layer")
                out_features[name] = m.out_features
                if name.split(".")[0] in BLOCK_LISTS:
                    targets.add(original_name(name)[0])
        tensors, extra = to_original_lora(state_dict, out_features)
        return tensors, {**extra, "target_modules": sorted(targets), "exclude_modules": self._exclude}

    # ----- LoRAs from files ----------------------------------------------------------------------------
    def _name_table(self) -> dict[str, str]:
        """Every way a LoRA file may name a Linear -> its diffusers name, or the original name of a fused Linear.

        Diffusers and original names, dotted or with ``_`` (kohya writes ``double_blocks_0_img_attn_qkv``).
        """
        table: dict[str, str] = {}
        for name, module in self.transformer.named_modules():
            if not isinstance(module, torch.nn.Linear) or ".lora_" in name:
                continue
            name = name.removesuffix(".base_layer")  # a Linear inside an attached LoRA
            names = {name: name}
            try:
                original, slot = original_name(name)
                names[original] = original if slot is not None else name
            except KeyError:
                pass
            for alias, target in names.items():
                table[alias] = table[alias.replace(".", "_")] = target
        return table

    def _resolve(self, pairs: dict[str, LoraPair], file: Path) -> dict[str, LoraPair]:
        """Module names as written in a LoRA file -> diffusers module or fused original module."""
        table = self._name_table()
        unknown = sorted(name for name in pairs if name not in table)
        if unknown:
            raise ValueError(f"{file}: {len(unknown)} LoRA modules match no Linear of this Chroma transformer, "
                             f"e.g. {', '.join(unknown[:4])} (is it a LoRA for another model?)")
        resolved: dict[str, LoraPair] = {}
        for name, pair in pairs.items():
            target = table[name]
            if target in resolved:
                raise ValueError(f"{file}: {target} appears twice (as {name} and under another name)")
            resolved[target] = pair
        return resolved

    def _out_features(self, module: str) -> int:
        return self.transformer.get_submodule(module).out_features

    def lora_deltas(self, path: Path, what: str) -> dict[str, torch.Tensor]:
        """diffusers Linear -> the float32 weight change ``scale * B @ A`` of the LoRA at ``path`` (fused split)."""
        tensors, config, file = read_adapter(path, what)
        deltas: dict[str, torch.Tensor] = {}
        for target, pair in self._resolve(lora_pairs(tensors, config, file), file).items():
            delta = pair.scale() * (pair.b.float() @ pair.a.float())
            parts = fused_parts(target) or (target,)
            outs = [self._out_features(p) for p in parts]
            weight_in = self.transformer.get_submodule(parts[0]).in_features
            if list(delta.shape) != [sum(outs), weight_in]:
                raise ValueError(f"{what}: {file} changes {target} by a {list(delta.shape)} matrix but its weight is "
                                 f"{[sum(outs), weight_in]}: the LoRA is for a model of another size")
            deltas.update(zip(parts, torch.split(delta, outs, dim=0), strict=True))
        return deltas

    def fuse_adapters(self, tables: list[dict]) -> None:
        """Merge each ``{path, weight}`` LoRA into the base weights: ``W += weight * alpha/rank * B @ A``.

        Reads our and diffusion-pipe's ComfyUI layout, diffusers/peft and kohya files (alpha tensors honoured).
        diffusion-pipe fuses Chroma LoRAs at weight 1 whatever ``weight`` says; here ``weight`` counts (as it
        does for diffusion-pipe's Flux). Must run before the trainable LoRA is attached.
        """
        if not isinstance(tables, list):
            raise ValueError("[adapter] fuse_adapters must be a list of {path = '...', weight = 1.0} tables")
        if getattr(self.transformer, "_hf_peft_config_loaded", False):
            raise RuntimeError("fuse_adapters must run before a LoRA is attached to the transformer")
        for index, table in enumerate(tables):
            what = f"[adapter] fuse_adapters[{index}]"
            path, weight = _fuse_entry(table, what)
            deltas = self.lora_deltas(path, what)
            with torch.no_grad():
                for module, delta in deltas.items():
                    param = self.transformer.get_submodule(module).weight
                    param.data = (param.data.float() + weight * delta.to(param.device)).to(param.dtype)
            log.info("fused %s at weight %s into %d Linears", path, weight, len(deltas))

    def _saved_lora(self, path: Path, what: str) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], int]:
        """(diffusers module -> (A, B) of the given rank, rank) for a saved LoRA; alpha/rank is folded into B."""
        tensors, config, file = read_adapter(path, what)
        resolved = self._resolve(lora_pairs(tensors, config, file), file)
        rank = self._saved_rank(resolved, config, file)
        weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for target, pair in resolved.items():
            b = pair.b if pair.scale() == 1 else pair.b * pair.scale()
            parts = fused_parts(target)
            if parts:
                try:
                    split = split_fused_lora(target, pair.a, b, [self._out_features(p) for p in parts], rank)
                except ValueError as exc:
                    raise ValueError(f"{file}: {exc}") from None
                weights.update((p, ab) for p, ab in zip(parts, split, strict=True) if ab is not None)
            elif pair.rank != rank:
                raise ValueError(f"{file}: {target} has rank {pair.rank} but the LoRA's rank is {rank}; "
                                 "LoRAs with per-module ranks cannot be loaded")
            else:
                weights[target] = (pair.a, b)
        return weights, rank

    def _saved_rank(self, resolved: dict[str, LoraPair], config: dict | None, file: Path) -> int:
        """``r`` of adapter_config.json, else the rank of the unfused modules (a fused one's when alone)."""
        if config and "r" in config:
            return int(config["r"])
        plain = {pair.rank for target, pair in resolved.items() if not fused_parts(target)}
        if len(plain) > 1:
            raise ValueError(f"{file}: modules have different ranks {sorted(plain)} and no adapter_config.json says "
                             "which is the LoRA's rank")
        if plain:
            return plain.pop()
        if not resolved:
            raise ValueError(f"{file} holds no LoRA weights")
        target, pair = next(iter(resolved.items()))
        parts = fused_parts(target) or ()
        if pair.rank % len(parts) == 0:  # our stacking of the parts' LoRAs, when it splits exactly
            try:
                split_fused_lora(target, pair.a, pair.b, [self._out_features(p) for p in parts],
                                 pair.rank // len(parts))
                return pair.rank // len(parts)
            except ValueError:
                pass
        return pair.rank

    def attach_saved_lora(self, folder_or_file: Path, trainable: bool = False, dtype: torch.dtype | None = None,
                          *, dropout: float = 0.0, exclude: list[str] | None = None,
                          ) -> tuple[int, list[tuple[str, torch.nn.Parameter]]]:
        """Attach a peft LoRA (alpha = rank) to :meth:`lora_targets` holding exactly the saved weights.

        ``folder_or_file``: a saved ``epochN``/``stepN`` folder or its ``adapter_model.safetensors`` (our and
        diffusion-pipe's ComfyUI layout; diffusers/peft and kohya files work too); the rank comes from
        ``adapter_config.json`` beside it, else from the tensor shapes. The inverse of :meth:`export_lora`, fused
        qkv/linear1 included. A LoRA already attached is replaced. Returns (rank, the LoRA's named parameters,
        ``requires_grad = trainable``, in ``dtype`` or the family's dtype).
        """
        weights, rank = self._saved_lora(Path(folder_or_file), "saved LoRA")
        return rank, self._attach_weights(weights, rank, trainable, dtype, dropout, exclude)

    def init_from_existing(self, path: str | Path, rank: int, dropout: float = 0.0, dtype: torch.dtype | None = None,
                           exclude: list[str] | None = None) -> list[tuple[str, torch.nn.Parameter]]:
        """``[adapter] init_from_existing``: a trainable LoRA starting from a saved one of the same rank."""
        what = "[adapter] init_from_existing"
        weights, saved_rank = self._saved_lora(resolve_path(path, what), what)
        if saved_rank != rank:
            raise ValueError(f"{what} = {str(path)!r} has rank {saved_rank} but [adapter] rank = {rank}: set "
                             f"rank = {saved_rank}, or start from a LoRA of rank {rank}")
        return self._attach_weights(weights, rank, True, dtype, dropout, exclude)

    def attach_new_lora(self, rank: int, dropout: float, dtype: torch.dtype | None = None,
                        exclude: str | list[str] | None = None) -> list[tuple[str, torch.nn.Parameter]]:
        """A new trainable LoRA in diffusion-pipe's parametrisation (one A per fused original Linear)."""
        return self._attach_weights({}, rank, True, dtype, dropout, exclude)

    def _attach_weights(self, weights: dict[str, tuple[torch.Tensor, torch.Tensor]], rank: int, trainable: bool,
                        dtype: torch.dtype | None, dropout: float, exclude: list[str] | None,
                        ) -> list[tuple[str, torch.nn.Parameter]]:
        if getattr(self.transformer, "_hf_peft_config_loaded", False):
            self.transformer.unload_lora()
        attach_lora(self.transformer, self.lora_targets(), rank, dropout, dtype or self.dtype, exclude)
        self._exclude = exclude
        modules = dict(self.transformer.named_modules())
        shared = trainable or not weights or all_shared(weights, modules)
        if shared and weights:
            weights = shared_weights(weights, modules, rank)
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
        if shared:  # a LoRA saved per q/k/v part (older files) stays as it is when only sampled or checked
            tie_fused_lora(self.transformer)
        named = [(n, p) for n, p in self.transformer.named_parameters() if ".lora_" in n]
        for _, param in named:
            param.requires_grad_(trainable)
        return named

    # ----- memory ---------------------------------------------------------------------------------------
    def enable_activation_checkpointing(self, reentrant: bool = False) -> None:
        """Recompute each block's activations in the backward pass (diffusers' gradient checkpointing).

        diffusers 0.42 does not hand the attention mask to checkpointed single blocks; it is passed here, so
        masked text padding stays masked. Reentrant checkpointing needs an input that requires grad, so the
        embedders' outputs are marked (as diffusion-pipe marks its first layer's inputs).
        """
        for handle in self._checkpoint_hooks:
            handle.remove()
        mask: dict[str, torch.Tensor | None] = {}

        def remember_mask(_module, args, kwargs):
            mask["value"] = kwargs.get("attention_mask", args[5] if len(args) > 5 else None)

        def checkpoint(block, *args):
            if isinstance(block, ChromaSingleTransformerBlock) and len(args) == 3:
                args = (*args, mask.get("value"))
            return torch.utils.checkpoint.checkpoint(block.__call__, *args, use_reentrant=reentrant)

        transformer = self.transformer
        self._checkpoint_hooks = [transformer.register_forward_pre_hook(remember_mask, with_kwargs=True)]
        if reentrant:
            for embedder in (transformer.x_embedder, transformer.context_embedder):
                self._checkpoint_hooks.append(embedder.register_forward_hook(_require_grad))
        transformer.enable_gradient_checkpointing(checkpoint)


def _require_grad(_module, _inputs, output: torch.Tensor) -> torch.Tensor:
    return output.requires_grad_(True) if torch.is_grad_enabled() and not output.requires_grad else output


def _fuse_entry(table, what: str) -> tuple[Path, float]:
    """(path, weight) of one ``fuse_adapters`` table; unknown keys are errors."""
    if not isinstance(table, dict) or "path" not in table:
        raise ValueError(f"{what} must be a table with path (and optional weight), e.g. "
                         "{path = 'loras/style', weight = 1.0}")
    unknown = sorted(set(table) - {"path", "weight"})
    if unknown:
        raise ValueError(f"{what} has unknown keys {', '.join(unknown)}; only path and weight are read")
    weight = table.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise ValueError(f"{what} weight = {weight!r} must be a number")
    return resolve_path(table["path"], f"{what} path"), float(weight)


# ----- storage dtype ---------------------------------------------------------------------------------------
class WeightStorageHook(LayerwiseCastingHook):
    """diffusers' layerwise casting for the weight alone: stored in ``storage_dtype``, upcast to
    ``compute_dtype`` for each forward; the bias stays in the compute dtype (diffusion-pipe keeps biases high)."""

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        module.weight.data = module.weight.data.to(self.storage_dtype)
        return module

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        module.weight.data = module.weight.data.to(self.compute_dtype)
        return args, kwargs

    def post_forward(self, module: torch.nn.Module, output):
        module.weight.data = module.weight.data.to(self.storage_dtype)
        return output


def keeps_high_precision(diffusers_module: str) -> bool:
    """Whether diffusion-pipe keeps this Linear's weight in ``dtype`` (by its original name)."""
    try:
        original, _ = original_name(diffusers_module)
    except KeyError:
        return True
    return any(word in original for word in KEEP_IN_HIGH_PRECISION)


def apply_storage_dtype(transformer: torch.nn.Module, storage: torch.dtype, compute: torch.dtype) -> int:
    """Keep the weights of the transformer's big Linears in ``storage``, computing in ``compute``.

    Call before a LoRA is attached (the LoRA's own Linears stay in the adapter dtype). The hook is registered
    under diffusers' layerwise-casting name, so ``transformer.dtype`` reports ``compute``. Returns the count.
    """
    count = 0
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and not keeps_high_precision(name):
            hook = WeightStorageHook(storage, compute, non_blocking=False)
            HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, "layerwise_casting")
            count += 1
    return count


# ----- loading the transformer -----------------------------------------------------------------------------
