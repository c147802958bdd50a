"""A ComfyUI workflow (API format) that renders a run's sample prompts with one of its exported LoRAs.

The API format is what ComfyUI's ``POST /prompt`` queues: a JSON object of nodes keyed by id, each
``{"class_type": ..., "inputs": {...}}``, where an input wired to another node is ``[node id, output index]``.
For Chroma the graph is the one ComfyUI's own Chroma example uses: the transformer from ``models/diffusion_models``
(UNETLoader), the T5-XXL file through CLIPLoader with ``type = "chroma"``, the Flux VAE (VAELoader), the LoRA on
the model only (LoraLoaderModelOnly: Chroma LoRAs touch no text encoder), real CFG with a negative prompt in a
KSampler, a 16-channel latent (EmptySD3LatentImage), VAEDecode and SaveImage. One KSampler per prompt x seed, as
the studio's previews render them.

Torch-free: it reads the run folder's config copies only. File names are the names ComfyUI lists in its model
folders; the base model's is taken from the run's ``transformer_path``, the others are ComfyUI's usual names and
can be overridden.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from trainers.files import atomic_write_text
from trainers.runs import RunError, RunInfo
from trainers.safe_paths import PathRefused, resolve_under

# Families the workflow is written for: the CLIPLoader type string ComfyUI uses for each (nodes.py, CLIPLoader).
CLIP_TYPES = {"chroma": "chroma"}
DEFAULT_CLIP = "t5xxl_fp16.safetensors"
DEFAULT_VAE = "ae.safetensors"
# The native trainer's preview defaults (trainers/native/settings.py StudioSettings).
DEFAULT_STEPS, DEFAULT_GUIDANCE, DEFAULT_SEED = 20, 4.0, 42


@dataclass(frozen=True)
class SampleSettings:
    """What the run's previews used: prompts, negative prompt, seeds, size, steps and CFG guidance."""

    prompts: tuple[str, ...]
    negative: str
    seeds: tuple[int, ...]
    width: int
    height: int
    steps: int
    guidance: float


def _run_toml(info: RunInfo, key: str) -> dict:
    name = info.meta.get(key)
    if not name:
        return {}
    try:
        path = resolve_under(info.run_dir, str(name), "config copy of the run")
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (PathRefused, OSError, tomllib.TOMLDecodeError) as exc:
        raise RunError(f"run {info.run_id}: cannot read its {key} copy {name!r}: {exc}") from None


def sample_settings(main: dict, dataset: dict) -> SampleSettings:
    """The ``[studio]`` sample settings with the native trainer's defaults (size: the dataset's first resolution)."""
    studio = main.get("studio") or {}
    resolutions = dataset.get("resolutions") or [512]
    first = resolutions[0]
    side = int(first if isinstance(first, int | float) else first[0])
    prompts = tuple(str(p) for p in studio.get("sample_prompts", [])) or ("",)
    return SampleSettings(prompts=prompts, negative=str(studio.get("sample_negative_prompt", "")),
                          seeds=tuple(int(s) for s in studio.get("sample_seeds") or [DEFAULT_SEED]),
                          width=int(studio.get("sample_width") or side), height=int(studio.get("sample_height") or side),
                          steps=int(studio.get("sample_steps") or DEFAULT_STEPS),
                          guidance=float(studio.get("sample_guidance", DEFAULT_GUIDANCE)))


def _loaders(unet: str, clip: str, clip_type: str, vae: str, lora: str, weight_dtype: str) -> dict:
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": weight_dtype}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": clip, "type": clip_type}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": vae}},
        "4": {"class_type": "LoraLoaderModelOnly",
              "inputs": {"model": ["1", 0], "lora_name": lora, "strength_model": 1.0}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["2", 0]}},  # the negative prompt
    }


def build_workflow(settings: SampleSettings, *, unet: str, lora: str, family: str = "chroma",
                   clip: str = DEFAULT_CLIP, vae: str = DEFAULT_VAE, weight_dtype: str = "default",
                   prefix: str = "dp-studio") -> dict:
    """The API-format graph: shared loaders, then per prompt x seed a text encode, latent, sampler, decode, save."""
    if family not in CLIP_TYPES:
        raise RunError(f"no ComfyUI workflow for model type {family!r} yet; supported: {', '.join(CLIP_TYPES)}")
    graph = _loaders(unet, clip, CLIP_TYPES[family], vae, lora, weight_dtype)
    graph["5"]["inputs"]["text"] = settings.negative
    graph["6"] = {"class_type": "EmptySD3LatentImage",
                  "inputs": {"width": settings.width, "height": settings.height, "batch_size": 1}}
    next_id = 7
    for p, prompt in enumerate(settings.prompts):
        text_id = str(next_id)
        graph[text_id] = {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["2", 0]}}
        next_id += 1
        for seed in settings.seeds:
            sampler, decode, save = str(next_id), str(next_id + 1), str(next_id + 2)
            graph[sampler] = {"class_type": "KSampler", "inputs": {
                "model": ["4", 0], "seed": seed, "steps": settings.steps, "cfg": settings.guidance,
                "sampler_name": "euler", "scheduler": "simple", "positive": [text_id, 0], "negative": ["5", 0],
                "latent_image": ["6", 0], "denoise": 1.0}}
            graph[decode] = {"class_type": "VAEDecode", "inputs": {"samples": [sampler, 0], "vae": ["3", 0]}}
            graph[save] = {"class_type": "SaveImage",
                           "inputs": {"images": [decode, 0], "filename_prefix": f"{prefix}/p{p}_s{seed}"}}
            next_id += 3
    return graph


def run_workflow(info: RunInfo, lora_file: Path, *, clip: str = DEFAULT_CLIP, vae: str = DEFAULT_VAE) -> dict:
    """The workflow for a run and one of its exported LoRA files (named as ComfyUI lists it in models/loras)."""
    main, dataset = _run_toml(info, "main_config"), _run_toml(info, "dataset_config")
    model = main.get("model") or {}
    family = str(model.get("type", ""))
    transformer = model.get("transformer_path")
    if not isinstance(transformer, str) or not transformer:
        raise RunError(f"run {info.run_id} has no [model] transformer_path to load in ComfyUI")
    fp8 = str(model.get("transformer_dtype", "")) == "float8"  # the base ran in fp8 during training
    return build_workflow(sample_settings(main, dataset), unet=Path(transformer).name, lora=Path(lora_file).name,
                          family=family, clip=clip, vae=vae, weight_dtype="fp8_e4m3fn" if fp8 else "default",
                          prefix=f"dp-studio/{info.run_id}")


def write_workflow(info: RunInfo, lora_file: Path, out: Path, **names: str) -> Path:
    """Write the run's workflow JSON beside ``lora_file`` (or at ``out``) atomically; returns the path."""
    atomic_write_text(out, json.dumps(run_workflow(info, lora_file, **names), indent=2) + "\n")
    return out


def workflow_path(lora_file: Path) -> Path:
    """Where the workflow of an exported LoRA goes: ``<lora stem>.workflow.json`` in the same folder."""
    return lora_file.with_name(lora_file.stem + ".workflow.json")
