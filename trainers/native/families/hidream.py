"""HiDream-I1 for the native trainer, following diffusion-pipe's models/hidream.py.

Config keys (diffusion-pipe's ``[model]`` for ``type = 'hidream'``): ``diffusers_path`` (a HiDreamImagePipeline
folder: ``transformer/``, ``vae/``, the CLIPs ``text_encoder/`` + ``tokenizer/`` and ``text_encoder_2/`` +
``tokenizer_2/``, the T5 ``text_encoder_3/`` + ``tokenizer_3/``, ``scheduler/``), ``llama3_path`` (a Llama 3
folder: LlamaForCausalLM weights and its fast tokenizer), ``llama3_4bit`` (Llama loaded in bitsandbytes nf4),
``max_llama3_sequence_length`` (default 128), ``dtype`` (compute), ``transformer_dtype`` (storage of the Linear
weights outside KEEP_IN_HIGH_PRECISION, float8 included; nf4 is diffusion-pipe's alone) and the shared flow keys.

Four text encoders (models/hidream.py:150-183, 186-212): the two CLIPs' projected pooled outputs, concatenated
(``TextBatch.pooled``), and T5's 128-token embeddings (``TextBatch.embeds``) are cached; Llama 3 runs during
training, as in diffusion-pipe (LlamaLayer, :331-349; docs/supported_models.md: caching its 32 hidden-state layers
would take an enormous amount of disk), so the cache holds its tokens: ``TextBatch.mask`` is ``(B, L, 2)`` with
the token ids in ``[..., 0]`` and the attention mask in ``[..., 1]``. The transformer reads every Llama layer
``llama_layers`` names out of ``hidden_states[1:]``.

Latents are a VAE sample, ``(x - shift_factor) * scaling_factor`` (:138-147). The target is ``x_1 - x_0``
(data - noise, :258): the transformer's output is the negated velocity, so :meth:`HiDreamFamily.predict` returns
minus it (what HiDreamImagePipeline does: ``noise_pred = -noise_pred``), the loop's ``noise - x0`` convention.
Timesteps reach the transformer as ``t * 1000`` (:260). The MoE gates' load-balancing loss is switched off
(``alpha = 0``, :120-124), as diffusion-pipe does: no auxiliary loss is trained. The LoRA is peft's on every Linear
inside HiDreamImageTransformerBlock / HiDreamImageSingleTransformerBlock (:45), saved as save_adapter writes it
(:131-136): ``adapter_model.safetensors`` with ``diffusion_model.`` + peft keys beside ``adapter_config.json``.
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path

import torch
from diffusers import HiDreamImagePipeline, HiDreamImageTransformer2DModel
from diffusers.hooks import HookRegistry
from PIL import Image
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from trainers.native.families.base import SampleRequest, TextBatch, dtype_of, resolve_path
from trainers.native.families.chroma import WeightStorageHook
from trainers.native.families.flux import FluxFamily
from trainers.native.families.qwen_image import QwenImageFamily
from trainers.native.lora_io import lora_pairs, read_adapter

log = logging.getLogger(__name__)

# models/hidream.py:45 adapter_target_modules
TARGET_BLOCKS = ("HiDreamImageTransformerBlock", "HiDreamImageSingleTransformerBlock")
LORA_FILE = "adapter_model.safetensors"
KEY_PREFIX = "diffusion_model."  # save_adapter: ComfyUI format (models/hidream.py:134)
# models/hidream.py:24: parameters whose name holds one of these stay in ``dtype``.
KEEP_IN_HIGH_PRECISION = ("norm", "bias", "t_embedder", "p_embedder", "x_embedder", "final_layer", "gate")
MAX_TOKENS = 128  # T5 and both CLIPs: HiDreamImagePipeline's max_sequence_length default, as diffusion-pipe calls it
DEFAULT_LLAMA_TOKENS = 128  # models/hidream.py:194
PARTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2",
         "tokenizer_3")
DP_ONLY = "train it with the diffusion-pipe backend: set [studio] backend = 'diffusion-pipe'"


def lora_targets(transformer: torch.nn.Module) -> list[str]:
    """Every Linear inside the two block classes (models/base.py:262-270 get_target_modules), LoRA Linears left
    out."""
    names = []
    for block_name, block in transformer.named_modules():
        if type(block).__name__ in TARGET_BLOCKS:
            names += [f"{block_name}.{name.removesuffix('.base_layer')}" for name, m in block.named_modules()
                      if isinstance(m, torch.nn.Linear) and ".lora_" not in name]
    return names


def keeps_high_precision(name: str) -> bool:
    """Whether diffusion-pipe keeps this parameter in ``dtype`` under a lower ``transformer_dtype``
    (models/hidream.py:111-114: a keyword anywhere in its name)."""
    return any(word in name for word in KEEP_IN_HIGH_PRECISION)


def apply_storage_dtype(transformer: torch.nn.Module, storage: torch.dtype, compute: torch.dtype) -> int:
    """Keep the weights diffusion-pipe casts in ``storage`` (every Linear weight whose name holds no keyword; the
    transformer's other parameters all hold one), computing in ``compute``. Before a LoRA; returns the count."""
    count = 0
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and not keeps_high_precision(f"{name}.weight"):
            hook = WeightStorageHook(storage, compute, non_blocking=False)
            HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, "layerwise_casting")
            count += 1
    return count


def switch_off_aux_loss(transformer: torch.nn.Module) -> int:
    """``alpha = 0`` on every MoE gate (models/hidream.py:120-124): no load-balancing loss is computed."""
    gates = [m for m in transformer.modules() if type(m).__name__ == "MoEGate"]
    for gate in gates:
        gate.alpha = 0
    return len(gates)


def patchify(latents: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, C, h, w)`` -> ``(B, h/p * w/p, p*p*C)``, rows then columns, each patch ``(p1 p2 C)``: the official
    patchify diffusion-pipe calls (models/hidream.py:215), for every aspect ratio (no padding to max_seq)."""
    b, c, h, w = latents.shape
    x = latents.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


def image_ids(b: int, ph: int, pw: int, device: torch.device) -> torch.Tensor:
    """Position ids ``(B, ph*pw, 3)``: 0, row, column (models/hidream.py:222-226)."""
    ids = torch.zeros(ph, pw, 3, device=device)
    ids[..., 1] += torch.arange(ph, device=device)[:, None]
    ids[..., 2] += torch.arange(pw, device=device)[None, :]
    return ids.reshape(1, ph * pw, 3).expand(b, -1, -1)


def predict(transformer: HiDreamImageTransformer2DModel, x_t: torch.Tensor, t: torch.Tensor, t5: torch.Tensor,
            llama: torch.Tensor, pooled: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Velocity (noise - x0) for latents ``x_t`` (B, C, h, w) at ``t`` in (0, 1), from T5's embeddings, Llama's
    stacked hidden states ``(layers, B, L, D)`` and the pooled CLIP embedding.

    The tokens go in already patched with an all-ones mask (diffusers' only way in for non-square latents without
    padding them to max_seq; the mask multiplies the keys by one), so every aspect ratio runs as diffusion-pipe
    runs it. The output is negated: the transformer predicts x0 - noise (models/hidream.py:258)."""
    b, c, h, w = x_t.shape
    p = transformer.config.patch_size
    ph, pw = h // p, w // p
    tokens = patchify(x_t, p).to(dtype)
    out = transformer(hidden_states=tokens, timesteps=t.to(x_t.device, torch.float32) * 1000,
                      encoder_hidden_states_t5=t5.to(dtype), encoder_hidden_states_llama3=llama.to(dtype),
                      pooled_embeds=pooled.to(dtype), img_ids=image_ids(b, ph, pw, x_t.device),
                      img_sizes=torch.tensor([[ph, pw]] * b, device=x_t.device),
                      hidden_states_masks=torch.ones(b, ph * pw, dtype=dtype, device=x_t.device),
                      return_dict=False)[0]
    if out.shape[-2:] != (h, w):  # training mode: (B, C, ph*pw, p*p), each patch (p1 p2)
        out = out.reshape(b, -1, ph, pw, p, p).permute(0, 1, 2, 4, 3, 5).reshape(b, -1, h, w)
    return -out


def _require_grad(_module, _inputs, output: torch.Tensor) -> torch.Tensor:
    return output.requires_grad_(True) if torch.is_grad_enabled() and not output.requires_grad else output


def _paths(model: dict) -> tuple[Path, Path]:
    """(the diffusers folder, the Llama 3 folder), resolved and checked."""
    for key in ("diffusers_path", "llama3_path"):
        if not model.get(key):
            raise ValueError(f"[model] {key} is missing: HiDream needs diffusers_path (a HiDream-I1 diffusers "
                             "folder) and llama3_path (a Llama 3.1 8B Instruct folder)")
    root = resolve_path(model["diffusers_path"], "[model] diffusers_path")
    missing = [part for part in PARTS if not (root / part).is_dir()]
    if missing:
        raise FileNotFoundError(f"[model] diffusers_path = {str(root)!r} has no {', '.join(m + '/' for m in missing)}"
                                ": point it at a HiDream-I1 diffusers folder")
    return root, resolve_path(model["llama3_path"], "[model] llama3_path")


def load_llama(path: Path, dtype: torch.dtype, four_bit: bool) -> LlamaForCausalLM:
    """Llama 3 as models/hidream.py:75-89 loads it (``llama3_4bit``: bitsandbytes nf4, computing in ``dtype``)."""
    quantization = None
    if four_bit:
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
            raise ValueError("[model] llama3_4bit = true needs bitsandbytes and a CUDA GPU; install bitsandbytes, "
                             "or set llama3_4bit = false")
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    try:
        return LlamaForCausalLM.from_pretrained(path, dtype=dtype, quantization_config=quantization,
                                                local_files_only=True).eval()
    except OSError as exc:
        raise ValueError(f"[model] llama3_path = {str(path)!r} is not a Llama 3 folder ({exc})") from None


class HiDreamFamily:
    """HiDream-I1 LoRA training and sampling on diffusers components."""

    name = "hidream"
    lora_layout = "peft"  # one peft LoRA per diffusers Linear (training-state checkpoints record it)
    lora_file = LORA_FILE
    pixel_multiple = 16  # VAE factor 8 x 2x2 patches

    def __init__(self, pipe: HiDreamImagePipeline, device: torch.device, dtype: torch.dtype,
                 sources: dict[str, Path], llama_tokens: int):
        self.pipe, self.device, self.dtype = pipe, device, dtype
        self.sources = sources  # encoders and tokenizers on disk (cache_key)
        self.llama_tokens = min(llama_tokens, pipe.tokenizer_4.model_max_length)  # models/hidream.py:194-195
        self.pipe.set_progress_bar_config(disable=True)
        self._checkpoint_hooks: list = []
        self._prompt_embeds: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._exclude = None
        self._transformer_dtype: torch.dtype | None = None

    @classmethod
    def load(cls, model: dict, device: torch.device, fuse_adapters: list[dict] | None = None) -> HiDreamFamily:
        """The pipeline from ``diffusers_path`` and Llama 3 from ``llama3_path``, offline, frozen."""
        dtype = dtype_of(model.get("dtype", "bfloat16"), "[model] dtype")
        if model.get("transformer_dtype") == "nf4":
            raise ValueError(f"[model] transformer_dtype = 'nf4' (bitsandbytes) is not in the native trainer; use "
                             f"'float8', or {DP_ONLY}")
        storage = dtype_of(model.get("transformer_dtype", model.get("dtype", "bfloat16")),
                           "[model] transformer_dtype", storage=True)
        llama_tokens = int(model.get("max_llama3_sequence_length", DEFAULT_LLAMA_TOKENS))
        if llama_tokens < 1:
            raise ValueError(f"[model] max_llama3_sequence_length = {llama_tokens} must be at least 1")
        root, llama_path = _paths(model)
        llama = load_llama(llama_path, dtype, bool(model.get("llama3_4bit", False)))
        try:
            tokenizer_4 = PreTrainedTokenizerFast.from_pretrained(llama_path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ValueError(f"[model] llama3_path = {str(llama_path)!r} has no fast tokenizer ({exc})") from None
        pipe = HiDreamImagePipeline.from_pretrained(root, text_encoder_4=llama, tokenizer_4=tokenizer_4,
                                                    dtype=dtype, local_files_only=True)
        sources = {part: root / part for part in PARTS if part != "transformer"} | {"llama3": llama_path}
        family = cls(pipe, device, dtype, sources, llama_tokens)
        transformer = pipe.transformer
        switch_off_aux_loss(transformer)
        if fuse_adapters:
            family.fuse_adapters(fuse_adapters)
        if storage != dtype:
            count = apply_storage_dtype(transformer, storage, dtype)
            log.info("%d transformer Linears store their weights in %s (compute in %s)", count, storage, dtype)
        modules = (pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3, llama, transformer)
        for module in modules:
            module.requires_grad_(False)
            module.eval()
            if module is not llama or not model.get("llama3_4bit"):
                module.to(device)
        return family

    @property
    def transformer(self) -> HiDreamImageTransformer2DModel:
        """The HiDream transformer (the adapter lives inside it)."""
        return self.pipe.transformer

    @property
    def transformer_dtype(self) -> torch.dtype:
        """The transformer's compute dtype, read once (ModelMixin.dtype walks every module)."""
        if self._transformer_dtype is None:
            self._transformer_dtype = self.transformer.dtype
        return self._transformer_dtype

    def encode_images(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels in [-1, 1] -> a VAE sample, ``(x - shift_factor) * scaling_factor`` (models/hidream.py:138-147)."""
        return FluxFamily.encode_images(self, pixels, generator)

    @torch.no_grad()
    def encode_prompts(self, captions: list[str]) -> TextBatch:
        """T5's embeddings (128 tokens, padding included), the two CLIPs' pooled outputs concatenated, and the
        Llama 3 tokens (ids and attention mask, ``max_llama3_sequence_length`` long) as ``mask`` (module doc)."""
        pipe = self.pipe
        pooled = torch.cat([pipe._get_clip_prompt_embeds(pipe.tokenizer, pipe.text_encoder, captions, MAX_TOKENS,
                                                         self.device),
                            pipe._get_clip_prompt_embeds(pipe.tokenizer_2, pipe.text_encoder_2, captions, MAX_TOKENS,
                                                         self.device)], dim=-1)
        t5 = pipe._get_t5_prompt_embeds(captions, MAX_TOKENS, self.device)
        return TextBatch(t5, self.llama_tokens_of(captions).to(t5.device), pooled)

    def llama_tokens_of(self, captions: list[str]) -> torch.Tensor:
        """``(B, L, 2)``: Llama 3's token ids and attention mask, padded with ``<|eot_id|>`` to
        ``max_llama3_sequence_length`` (models/hidream.py:194-203)."""
        tokens = self.pipe.tokenizer_4(captions, padding="max_length", max_length=self.llama_tokens, truncation=True,
                                       add_special_tokens=True, return_tensors="pt")
        return torch.stack([tokens.input_ids, tokens.attention_mask], dim=-1)

    @torch.no_grad()
    def llama_states(self, tokens: torch.Tensor) -> torch.Tensor:
        """Llama 3's hidden states after each layer, stacked ``(layers, B, L, D)`` (LlamaLayer, :331-349). The
        ``(B, L, 2)`` tokens are cut to ``max_llama3_sequence_length`` (a batch may be padded to T5's length)."""
        tokens = tokens[:, :self.llama_tokens].to(self.device)
        llama = self.pipe.text_encoder_4
        # The language model alone: the same hidden states without the vocabulary-wide logits.
        out = llama.model(input_ids=tokens[..., 0], attention_mask=tokens[..., 1], output_hidden_states=True)
        return torch.stack(out.hidden_states[1:], dim=0)

    def cache_key(self) -> str:
        """Changes when the VAE, an encoder or tokenizer (file names, sizes, mtimes), ``dtype`` or the Llama token
        count do."""
        digest = hashlib.sha256(f"{self.name}|{self.dtype}|{MAX_TOKENS}|{self.llama_tokens}".encode())
        for part, place in sorted(self.sources.items()):
            files = [place] if place.is_file() else sorted(p for p in place.rglob("*") if p.is_file())
            for file in files:
                stat = file.stat()
                digest.update(f"|{part}/{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return f"{self.name}-{digest.hexdigest()[:32]}"

    def image_seq_len(self, latent_shape: torch.Size) -> int:
        """Image tokens, (h / 2) * (w / 2): what flux_shift reads (models/hidream.py:250)."""
        return (latent_shape[-2] // 2) * (latent_shape[-1] // 2)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, text: TextBatch) -> torch.Tensor:
        """Velocity prediction in latent layout, Llama 3 run on the cached tokens."""
        return predict(self.transformer, x_t, t, text.embeds, self.llama_states(text.mask), text.pooled,
                       self.transformer_dtype)

    def lora_targets(self) -> list[str]:
        """Every nn.Linear inside the transformer blocks (what diffusion-pipe targets)."""
        return lora_targets(self.transformer)

    # ----- previews -----------------------------------------------------------------------------------
    check_size = QwenImageFamily.check_size

    @torch.no_grad()
    def sample(self, requests: list[SampleRequest]) -> list[Image.Image]:
        """Render previews with HiDreamImagePipeline (its own scheduler) on the live transformer; ``guidance``
        above 1 is classifier-free guidance against the negative prompt ("" when none)."""
        for r in requests:
            self.check_size(r.width, r.height)
        was_training = self.transformer.training
        self.transformer.eval()  # LoRA dropout off, and the output in image layout
        try:
            return [self._sample_one(r) for r in requests]
        finally:
            self.transformer.train(was_training)

    def _sample_one(self, r: SampleRequest) -> Image.Image:
        t5, llama, pooled = self.prompt_inputs(r.prompt)
        inputs = {"prompt_embeds_t5": t5, "prompt_embeds_llama3": llama, "pooled_prompt_embeds": pooled}
        if r.guidance > 1:
            t5, llama, pooled = self.prompt_inputs(r.negative_prompt)
            inputs |= {"negative_prompt_embeds_t5": t5, "negative_prompt_embeds_llama3": llama,
                       "negative_pooled_prompt_embeds": pooled}
        generator = torch.Generator(device="cpu").manual_seed(r.seed)
        # HiDreamImagePipeline rescales every request to the area of default_sample_size (1024 x 1024 for the
        # released VAE); an area a hair above the requested one keeps the requested sides.
        self.pipe.default_sample_size = math.sqrt(r.width * r.height) * (1 + 1e-9) / self.pipe.vae_scale_factor
        return self.pipe(**inputs, height=r.height, width=r.width, num_inference_steps=r.steps,
                         guidance_scale=float(r.guidance), generator=generator).images[0]

    @torch.no_grad()
    def prompt_inputs(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A preview prompt's T5 embeddings, Llama states and pooled embedding, encoded once per run."""
        if prompt not in self._prompt_embeds:
            text = self.encode_prompts([prompt])
            dtype = self.transformer_dtype
            self._prompt_embeds[prompt] = (text.embeds.to(dtype), self.llama_states(text.mask).to(dtype),
                                           text.pooled.to(dtype))
        return self._prompt_embeds[prompt]

    # ----- LoRA -----------------------------------------------------------------------------------------
    def export_lora(self, state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
        """peft names -> ``diffusion_model.`` keys (save_adapter, models/hidream.py:131-136) and the adapter_config
        fields of diffusion-pipe's peft config: ``target_modules`` as peft leaves them once the LoRA is injected
        (from 20 names on, peft replaces the block Linears' full names (models/base.py:262-283) by the shortest
        suffixes that pick the same modules, and save_pretrained writes those), ``exclude_modules`` as the config
        gave it."""
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
            raise ValueError(f"{file}: {len(unknown)} LoRA modules match no block Linear of this HiDream "
                             f"transformer, e.g. {', '.join(unknown[:4])} (a LoRA for another model?)")
        ranks = {pair.rank for pair in pairs.values()}
        if not pairs or len(ranks) != 1:
            raise ValueError(f"{file}: {'no LoRA weights' if not pairs else f'per-module ranks {sorted(ranks)}'}; "
                             "only LoRAs of one rank can be loaded")
        weights = {name: (p.a, p.b if p.scale() == 1 else p.b * p.scale()) for name, p in pairs.items()}
        return weights, ranks.pop()

    _attach_weights = FluxFamily._attach_weights
    attach_saved_lora = FluxFamily.attach_saved_lora
    init_from_existing = FluxFamily.init_from_existing
    fuse_adapters = FluxFamily.fuse_adapters

    # ----- memory ---------------------------------------------------------------------------------------
    def enable_activation_checkpointing(self, reentrant: bool = False) -> None:
        """Recompute each block's activations in the backward pass (diffusers' gradient checkpointing); with
        reentrant checkpointing the patch embedder's output is marked as requiring grad, as diffusion-pipe marks
        its layers' inputs (LlamaLayer, :345-347)."""
        for handle in self._checkpoint_hooks:
            handle.remove()
        self._checkpoint_hooks = []
        if reentrant:
            self._checkpoint_hooks.append(self.transformer.x_embedder.register_forward_hook(_require_grad))

        def checkpoint(block, *args):
            return torch.utils.checkpoint.checkpoint(block.__call__, *args, use_reentrant=reentrant)

        self.transformer.enable_gradient_checkpointing(checkpoint)
