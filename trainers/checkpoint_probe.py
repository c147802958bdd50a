"""Tell what a model file is by reading only its safetensors header (no torch, no weights loaded).

A Chroma checkpoint is recognised by its distilled-guidance approximator and the absence of Flux's
guidance/vector embedders; the key layout says whether it is the original (BFL/ComfyUI) naming, with or
without ComfyUI's ``model.diffusion_model.`` prefix, or diffusers' naming.
"""

from __future__ import annotations

import json
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

MAX_HEADER = 100 * 2**20  # real headers are a few MB; more means the file is not safetensors
_DOUBLE = re.compile(r"(?:^|\.)(?:double_blocks|transformer_blocks)\.(\d+)\.")
_SINGLE = re.compile(r"(?:^|\.)(?:single_blocks|single_transformer_blocks)\.(\d+)\.")
_DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F8_E4M3": "float8_e4m3fn",
                "F8_E5M2": "float8_e5m2", "F64": "float64", "I8": "int8", "U8": "uint8"}


class ProbeError(ValueError):
    """The file cannot be read as what it should be; the message says what to pick instead."""


def read_header(path: Path) -> dict:
    """The JSON header of a .safetensors file: tensor name -> {dtype, shape, data_offsets}."""
    path = Path(path)
    if not path.is_file():
        raise ProbeError(f"{path} does not exist or is not a file: pick the .safetensors checkpoint file")
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise ProbeError(f"{path.name} is too short to be a .safetensors file")
        (size,) = struct.unpack("<Q", raw)
        if size <= 1 or size > MAX_HEADER:
            raise ProbeError(f"{path.name} is not a .safetensors file (bad header length {size})")
        try:
            header = json.loads(fh.read(size))
        except ValueError as exc:
            raise ProbeError(f"{path.name} is not a .safetensors file (unreadable header: {exc})") from exc
    if not isinstance(header, dict):
        raise ProbeError(f"{path.name} is not a .safetensors file (header is not a table)")
    return header


@dataclass(frozen=True)
class TransformerProbe:
    family: str  # "chroma" | "flux" | "unknown"
    layout: str  # "original" | "comfyui" | "diffusers" | "unknown"
    dtype: str  # dominant storage dtype of the weights
    params: int
    double_blocks: int
    single_blocks: int
    dtypes: dict[str, int] = field(default_factory=dict)

    @property
    def is_chroma(self) -> bool:
        return self.family == "chroma"

    def summary(self) -> str:
        return (f"{self.family} transformer, {self.layout} key layout, {self.dtype}, "
                f"{self.params / 1e9:.2f}B parameters, {self.double_blocks} double + "
                f"{self.single_blocks} single blocks")


def _layout(keys: list[str]) -> str:
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return "comfyui"
    if any(".img_attn." in k or k.startswith("double_blocks.") for k in keys):
        return "original"
    if any(k.startswith(("transformer_blocks.", "single_transformer_blocks.")) for k in keys):
        return "diffusers"
    return "unknown"


def _family(keys: list[str]) -> str:
    has_approximator = any("distilled_guidance_layer." in k for k in keys)
    flux_embedders = any(re.search(r"(^|\.)(guidance_in|vector_in|time_text_embed)\.", k) for k in keys)
    has_blocks = any(_DOUBLE.search(k) for k in keys)
    if has_approximator and has_blocks:
        return "chroma"
    if flux_embedders and has_blocks:
        return "flux"
    return "unknown"


def probe_transformer(path: Path) -> TransformerProbe:
    """Family, key layout, dtype and size of a transformer checkpoint, from its header alone."""
    header = read_header(path)
    tensors = {k: v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
    if not tensors:
        raise ProbeError(f"{Path(path).name} holds no tensors")
    keys = list(tensors)
    counts: Counter[str] = Counter()
    params = 0
    for info in tensors.values():
        n = 1
        for dim in info.get("shape", []):
            n *= int(dim)
        params += n
        counts[_DTYPE_NAMES.get(info.get("dtype", ""), info.get("dtype", "?"))] += n
    doubles = {int(m.group(1)) for k in keys if (m := _DOUBLE.search(k))}
    singles = {int(m.group(1)) for k in keys if (m := _SINGLE.search(k))}
    return TransformerProbe(family=_family(keys), layout=_layout(keys), dtype=counts.most_common(1)[0][0],
                            params=params, double_blocks=len(doubles), single_blocks=len(singles),
                            dtypes=dict(counts))


def probe_transformer_path(path: Path) -> TransformerProbe:
    """A single file, or a diffusers folder (``config.json`` + ``*.safetensors`` shards)."""
    path = Path(path)
    if path.is_dir():
        shards = sorted(path.glob("*.safetensors"))
        if not (path / "config.json").is_file() or not shards:
            raise ProbeError(f"{path} is a folder without config.json and .safetensors weights: pick the "
                             "Chroma .safetensors file, or a diffusers transformer folder")
        probes = [probe_transformer(s) for s in shards]
        first = probes[0]
        return TransformerProbe(first.family, "diffusers", first.dtype, sum(p.params for p in probes),
                                max(p.double_blocks for p in probes), max(p.single_blocks for p in probes),
                                first.dtypes)
    return probe_transformer(path)


FLUX_FOLDER_PARTS = {"vae": "the VAE", "text_encoder_2": "the T5 text encoder", "tokenizer_2": "the T5 tokenizer"}


def check_flux_folder(path: Path) -> list[str]:
    """Problems with a Flux diffusers folder as Chroma's ``diffusers_path`` (VAE + T5 come from it)."""
    path = Path(path)
    if not path.is_dir():
        return [f"{path} is not a folder: pick the FLUX.1 (schnell or dev) diffusers folder"]
    return [f"{path} has no {part}/ folder ({what}); pick a complete FLUX.1 diffusers download"
            for part, what in FLUX_FOLDER_PARTS.items() if not (path / part).is_dir()]
