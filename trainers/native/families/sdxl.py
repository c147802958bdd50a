"""SDXL for the native trainer, following diffusion-pipe's models/sdxl.py.

Config keys (diffusion-pipe's ``[model]`` for ``type = 'sdxl'``): ``checkpoint_path`` is one original-layout SDXL
``.safetensors`` holding the UNet, the VAE and both CLIP text encoders, read with diffusers'
``StableDiffusionXLPipeline.from_single_file`` as diffusion-pipe reads it (:385). Offline, the component configs and
tokenizers come from the Hugging Face cache entry of ``stabilityai/stable-diffusion-xl-base-1.0`` (configs only,
no weights), the repository ``from_single_file`` resolves an SDXL base checkpoint to. ``dtype`` is the compute
dtype (the VAE always runs in float32: diffusion-pipe's ``upcast_vae``, :405); ``v_pred``, ``min_snr_gamma``,
``debiased_estimation_loss`` choose the objective and its weighting; ``unet_lr``, ``text_encoder_1_lr``,
``text_encoder_2_lr`` are per-component learning rates (:604-630).

Unlike the flow families this one is a DDPM model: integer timesteps uniform in [0, 1000), noise added by a
scaled-linear DDPMScheduler, epsilon or v target (:552-565). Both text encoders get a LoRA too and their output is
never cached (:407-439, ``get_text_encoders`` returns []): the cache keeps token ids and the encoders run in every
step. The LoRA is saved in kohya's format through diffusers' ``convert_state_dict_to_kohya`` (:465-472):
``lora.safetensors`` with ``lora_unet_`` / ``lora_te1_`` / ``lora_te2_`` keys, ``lora_down`` / ``lora_up`` and an
``.alpha`` tensor (= rank) per module, no ``adapter_config.json``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from diffusers import DDPMScheduler, EulerDiscreteScheduler, StableDiffusionXLPipeline
from PIL import Image

from trainers.native.families.base import SampleRequest, TextBatch, dtype_of, resolve_path
from trainers.native.families.sdxl_lora import SDXLLoraMixin

log = logging.getLogger(__name__)

CONFIG_REPO = "stabilityai/stable-diffusion-xl-base-1.0"
LORA_FILE = "lora.safetensors"
NUM_TRAIN_TIMESTEPS = 1000
# Token ids kept per caption in the cache: diffusion-pipe has no token limit (it encodes 75-token chunks, :745-784),
# so this only bounds the cache's row width. Longer captions are an error naming the caption.
MAX_TOKENS = 75 * 8
DEBIASED_SNR_CAP = 1000.0  # models/sdxl.py:349: the SNR of timestep 0 is capped before 1/sqrt(snr)
PREVIEW_BATCH = 4
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


class SDXLModels(torch.nn.Module):
    """The three trained modules under the names diffusion-pipe gives their parameters (``unet.``,
    ``text_encoder.``, ``text_encoder_2.``, models/sdxl.py:414-421): the loop trains, saves and checkpoints the
    LoRA of all three through this one module."""

    def __init__(self, unet: torch.nn.Module, text_encoder: torch.nn.Module, text_encoder_2: torch.nn.Module):
        super().__init__()
        self.unet, self.text_encoder, self.text_encoder_2 = unet, text_encoder, text_encoder_2

    @property
    def peft_config(self) -> dict:
        """The LoRA config (one for all three modules), read by peft's ``get_peft_model_state_dict``."""
        return self.unet.peft_config

    @property
    def dtype(self) -> torch.dtype:
        """The UNet's compute dtype."""
        return self.unet.dtype


def noise_scheduler(v_pred: bool) -> DDPMScheduler:
    """diffusion-pipe's training scheduler (:394-402): scaled-linear DDPM, the SNR table taken *before* the
    zero-terminal-SNR fix that ``v_pred`` applies (diffusion-pipe keeps sd-scripts' order, :398-402)."""
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=NUM_TRAIN_TIMESTEPS, clip_sample=False)
    cumprod = scheduler.alphas_cumprod
    scheduler.all_snr = cumprod / (1.0 - cumprod)  # (sqrt(a) / sqrt(1 - a))^2, sd-scripts' table
    if v_pred:
        scheduler.betas = zero_terminal_snr_betas(scheduler.betas)
        scheduler.alphas = 1.0 - scheduler.betas
        scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)
    return scheduler


def zero_terminal_snr_betas(betas: torch.Tensor) -> torch.Tensor:
    """Betas rescaled so the last timestep has zero SNR (arXiv:2305.08891, algorithm 1), as diffusion-pipe's
    fix_noise_scheduler_betas_for_zero_terminal_snr (:295-330)."""
    root = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    cumprod = root**2
    alphas = torch.cat([cumprod[:1], cumprod[1:] / cumprod[:-1]])
    return 1.0 - alphas


def loss_weights(t: torch.Tensor, all_snr: torch.Tensor, v_pred: bool, min_snr_gamma: float | None,
                 debiased: bool) -> torch.Tensor | None:
    """Per-sample loss weights of integer timesteps ``t`` (models/sdxl.py:333-355, applied at :645-648):
    min-SNR ``min(snr, gamma) / snr`` (``/ (snr + 1)`` for v), then debiased estimation ``1 / sqrt(snr)``
    (``1 / (snr + 1)`` for v, snr capped at 1000); None when neither is set."""
    if min_snr_gamma is None and not debiased:
        return None
    snr = all_snr[t.cpu()].float()
    weight = torch.ones_like(snr)
    if min_snr_gamma is not None:
        weight = weight * torch.minimum(snr, torch.full_like(snr, float(min_snr_gamma))) / (snr + 1 if v_pred else snr)
    if debiased:
        capped = torch.minimum(snr, torch.full_like(snr, DEBIASED_SNR_CAP))
        weight = weight * (1 / (capped + 1) if v_pred else 1 / torch.sqrt(capped))
    return weight.to(t.device)


def time_ids(height: int, width: int, batch: int, device: torch.device) -> torch.Tensor:
    """SDXL's micro-conditioning: original size = target size = the image's pixel size, crop (0, 0)
    (models/sdxl.py:567-577), one row per sample, float32."""
    row = torch.tensor([height, width, 0, 0, height, width], dtype=torch.float32, device=device)
    return row.expand(batch, -1)


def chunk_ids(ids: torch.Tensor, bos: int, eos: int, pad: int, chunk: int) -> list[torch.Tensor]:
    """diffusion-pipe's prompt chunks (:745-765): the batch's token ids (padded to its longest caption) split into
    ``chunk`` tokens, each framed by BOS and one pad, the first pad of each row turned into EOS."""
    out = []
    for part in torch.split(ids, chunk, dim=-1) if ids.shape[-1] else [ids]:
        rows = part.shape[0]
        framed = torch.cat([torch.full((rows, 1), bos), part.cpu(), torch.full((rows, 1), pad)], dim=-1)
        first_pad = torch.argmax((framed == pad).to(torch.int32), dim=-1)
        framed[torch.arange(rows), first_pad] = eos
        out.append(framed.to(ids.device))
    return out


def encoder_states(encoder: torch.nn.Module, chunks: list[torch.Tensor], pooled: bool):
    """Penultimate hidden states of every chunk, concatenated; with ``pooled`` also the first chunk's pooled
    (projected) output (:767-784)."""
    states, first = [], None
    for i, ids in enumerate(chunks):
        out = encoder(ids, output_hidden_states=True)
        if i == 0 and pooled:
            first = out[0]
        states.append(out.hidden_states[-2])
    return torch.cat(states, dim=1), first


def load_pipeline(checkpoint: Path, dtype: torch.dtype) -> StableDiffusionXLPipeline:
    """The checkpoint through ``from_single_file``, offline, with SDXL base's configs from the Hugging Face cache
    (``HF_HUB_CACHE`` read at call time)."""
    try:
        return StableDiffusionXLPipeline.from_single_file(
            str(checkpoint), config=CONFIG_REPO, local_files_only=True, torch_dtype=dtype, add_watermarker=False,
            cache_dir=os.environ.get("HF_HUB_CACHE"))
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(
            f"[model] checkpoint_path = {str(checkpoint)!r}: reading it needs SDXL's configs and tokenizers "
            f"({CONFIG_REPO}, a few MB, no weights) in the Hugging Face cache, offline ({exc}). Fetch them once "
            f"with `huggingface-cli download {CONFIG_REPO} --exclude '*.safetensors' '*.bin' '*.onnx*' "
            "'*.msgpack'` (diffusion-pipe fetches the same files on its first SDXL run), or set HF_HUB_CACHE to "
            "the cache that has them") from None


def _check_checkpoint(model: dict) -> Path:
    value = model.get("checkpoint_path")
    if not isinstance(value, str) or not value:
        raise ValueError("[model] checkpoint_path is required for type = 'sdxl': the path of a single-file SDXL "
                         "checkpoint (.safetensors with UNet, VAE and both text encoders)")
    path = resolve_path(value, "[model] checkpoint_path")
    if not path.is_file() or path.suffix != ".safetensors":
        raise ValueError(f"[model] checkpoint_path = {value!r} must be one .safetensors file (an SDXL checkpoint "
                         "such as sd_xl_base_1.0.safetensors), not a folder or another format")
    return path


class SDXLFamily(SDXLLoraMixin):
    """SDXL LoRA training (UNet and both text encoders) and sampling on diffusers components."""

    name = "sdxl"
    lora_layout = "peft"
    lora_file = LORA_FILE
    pixel_multiple = 16  # diffusion-pipe's default round_height / round_width (models/base.py:57)

    def __init__(self, pipe: StableDiffusionXLPipeline, device: torch.device, dtype: torch.dtype, model: dict,
                 source: Path):
        self.pipe, self.device, self.dtype, self.source = pipe, device, dtype, source
        # models/sdxl.py:393: both encoders read the first tokenizer's ids
        self.pipe.tokenizer_2 = self.pipe.tokenizer
        self.pipe.set_progress_bar_config(disable=True)
        self.v_pred = bool(model.get("v_pred", False))
        gamma = model.get("min_snr_gamma")
        self.min_snr_gamma = None if gamma is None else float(gamma)
        # models/sdxl.py:647 tests `is not None`: the key present (even false) turns the weighting on
        self.debiased = model.get("debiased_estimation_loss") is not None
        if model.get("debiased_estimation_loss") is False:
            log.warning("[model] debiased_estimation_loss = false still applies the weighting, as in diffusion-pipe "
                        "(it tests whether the key is present); remove the key to train without it")
        self.lrs = {key: model.get(key) for key in ("unet_lr", "text_encoder_1_lr", "text_encoder_2_lr")}
        self.scheduler = noise_scheduler(self.v_pred)
        self.sample_scheduler = EulerDiscreteScheduler.from_config(
            pipe.scheduler.config, **({"prediction_type": "v_prediction", "rescale_betas_zero_snr": True}
                                       if self.v_pred else {}))
        self.pipe.scheduler = self.sample_scheduler
        self.models = SDXLModels(pipe.unet, pipe.text_encoder, pipe.text_encoder_2)
        self.vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)

    @classmethod
    def load(cls, model: dict, device: torch.device, fuse_adapters: list[dict] | None = None) -> SDXLFamily:
        """Read ``[model] checkpoint_path`` as diffusion-pipe does; everything frozen, on ``device``."""
        checkpoint = _check_checkpoint(model)
        dtype = dtype_of(model.get("dtype", "bfloat16"), "[model] dtype")
        pipe = load_pipeline(checkpoint, dtype)
        pipe.vae.to(torch.float32)  # diffusion-pipe's upcast_vae (:405)
        family = cls(pipe, device, dtype, model, checkpoint)
        if fuse_adapters:
            family.fuse_adapters(fuse_adapters)
        for module in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.unet):
            module.requires_grad_(False)
            module.eval()
            module.to(device)
        return family

    @property
    def transformer(self) -> SDXLModels:
        """The UNet and both text encoders (all three carry the LoRA)."""
        return self.models

    # ----- encoding -----------------------------------------------------------------------------------
    def encode_images(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels in [-1, 1] -> latents times the VAE's scaling factor, in float32 (get_call_vae_fn, :527-536)."""
        vae = self.pipe.vae
        latents = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist.sample(generator=generator)
        return (latents - (getattr(vae.config, "shift_factor", None) or 0.0)) * vae.config.scaling_factor

    def encode_prompts(self, captions: list[str]) -> TextBatch:
        """Token ids, not embeddings: the text encoders are trained, so they run in every step (diffusion-pipe
        caches no text, :426-428). ``embeds`` holds the ids (no special tokens, :581-589), padded to MAX_TOKENS
        with the pad token; ``mask`` marks the caption's own tokens."""
        tok = self.pipe.tokenizer
        rows = tok(captions, add_special_tokens=False, truncation=False).input_ids
        ids = torch.full((len(captions), MAX_TOKENS), tok.pad_token_id, dtype=torch.int64)
        mask = torch.zeros((len(captions), MAX_TOKENS), dtype=torch.int64)
        for i, row in enumerate(rows):
            if len(row) > MAX_TOKENS:
                raise ValueError(f"caption {captions[i][:60]!r}... has {len(row)} tokens; SDXL captions are "
                                 f"limited to {MAX_TOKENS} here: shorten it")
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.int64)
            mask[i, :len(row)] = 1
        return TextBatch(ids.to(self.device), mask.to(self.device))

    def cache_key(self) -> str:
        """Changes when the checkpoint (name, size, mtime), the dtype or the token layout does."""
        stat = self.source.stat()
        text = f"{self.name}|{self.dtype}|{MAX_TOKENS}|{self.source.name}:{stat.st_size}:{stat.st_mtime_ns}"
        return f"{self.name}-{hashlib.sha256(text.encode()).hexdigest()[:32]}"

    def image_seq_len(self, latent_shape: torch.Size) -> int:
        """Latent positions (SDXL has no timestep shift; kept for the Protocol)."""
        return int(latent_shape[-2] * latent_shape[-1])

    def text_conditioning(self, text: TextBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Both encoders' penultimate states concatenated, and the second one's pooled output (:738-742), for the
        batch's token ids cut to its longest caption (diffusion-pipe pads to the longest, :581-589)."""
        longest = int(text.mask.sum(dim=1).max()) if text.mask.numel() else 0
        tok = self.pipe.tokenizer
        chunks = chunk_ids(text.embeds[:, :longest], tok.bos_token_id, tok.eos_token_id, tok.pad_token_id,
                           tok.model_max_length - 2)
        first, _ = encoder_states(self.pipe.text_encoder, chunks, pooled=False)
        second, pooled = encoder_states(self.pipe.text_encoder_2, chunks, pooled=True)
        return torch.cat([first, second], dim=-1), pooled

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, text: TextBatch) -> torch.Tensor:
        """The UNet's output (epsilon, or v with ``v_pred``) for noisy latents at integer timesteps ``t``."""
        states, pooled = self.text_conditioning(text)
        b, _, h, w = x_t.shape
        ids = time_ids(h * self.vae_scale, w * self.vae_scale, b, x_t.device).to(pooled.dtype)
        unet = self.pipe.unet
        dtype = self.dtype
        return unet(x_t.to(dtype), t, encoder_hidden_states=states.to(dtype),
                    added_cond_kwargs={"text_embeds": pooled.to(dtype), "time_ids": ids.to(dtype)},
                    return_dict=False)[0]

    def training_inputs(self, x0: torch.Tensor, generator: torch.Generator,
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(noisy latents, timesteps, target, per-sample loss weights) of one batch, as prepare_inputs (:552-565):
        noise first, then integer timesteps uniform in [0, 1000), DDPM ``add_noise``, target noise or
        ``get_velocity``; all in float32."""
        x0 = x0.float()
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (x0.shape[0],), generator=generator).to(x0.device)
        return self.noised(x0, noise, t)

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor):
        """(noisy latents, t, target, weights) for given noise and timesteps."""
        x_t = self.scheduler.add_noise(x0, noise, t)
        target = self.scheduler.get_velocity(x0, noise, t) if self.v_pred else noise
        weights = loss_weights(t, self.scheduler.all_snr, self.v_pred, self.min_snr_gamma, self.debiased)
        return x_t, t, target, weights

    def timesteps_at(self, quantile: float, batch: int) -> torch.Tensor:
        """Eval timesteps: ``int(quantile * 1000)`` for every sample (:555-557)."""
        return torch.full((batch,), int(quantile * NUM_TRAIN_TIMESTEPS), dtype=torch.int64)

    # ----- previews -----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, requests: list[SampleRequest]) -> list[Image.Image]:
        """Previews with StableDiffusionXLPipeline on the live UNet and encoders (LoRA dropout off), real CFG with
        the negative prompt; each image has its own seeded generator."""
        for r in requests:
            if r.width % self.pixel_multiple or r.height % self.pixel_multiple:
                raise ValueError(f"[studio] sample_width/sample_height must be multiples of {self.pixel_multiple}; "
                                 f"got {r.width}x{r.height}")
        was_training = self.models.training
        self.models.eval()
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.width, r.height, r.steps, r.guidance, r.negative_prompt, i // PREVIEW_BATCH),
                              []).append(i)
        images: dict[int, Image.Image] = {}
        try:
            for (width, height, steps, guidance, negative, _), indices in groups.items():
                rs = [requests[i] for i in indices]
                out = self.pipe(prompt=[r.prompt for r in rs], negative_prompt=[negative] * len(rs),
                                width=width, height=height, num_inference_steps=steps, guidance_scale=guidance,
                                generator=[torch.Generator(device="cpu").manual_seed(r.seed) for r in rs]).images
                images |= zip(indices, out, strict=True)
            return [images[i] for i in range(len(requests))]
        finally:
            self.models.train(was_training)

    # ----- memory ---------------------------------------------------------------------------------------
    def enable_activation_checkpointing(self, reentrant: bool = False) -> None:
        """Recompute the UNet blocks' activations in the backward pass (diffusers' gradient checkpointing)."""

        def checkpoint(block, *args):
            return torch.utils.checkpoint.checkpoint(block.__call__, *args, use_reentrant=reentrant)

        self.pipe.unet.enable_gradient_checkpointing(checkpoint)
