"""SDXL's LoRA: peft LoRAs on the UNet blocks and both text encoders, saved and read in kohya's format.

diffusion-pipe models/sdxl.py configure_adapter (:430-463): every nn.Linear inside ``unet.down_blocks``,
``unet.mid_block`` and ``unet.up_blocks``, and every nn.Linear of each text encoder (the second one's
``text_projection`` included), alpha = rank. save_adapter (:465-472) converts the peft state dict, whose names carry
the ``unet.`` / ``text_encoder.`` / ``text_encoder_2.`` prefixes (:414-421), with diffusers'
``convert_state_dict_to_kohya``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from safetensors import safe_open

from trainers.native.families.base import resolve_path
from trainers.native.families.chroma import _fuse_entry

log = logging.getLogger(__name__)

# kohya prefix of each trained module (diffusers' convert_state_dict_to_kohya)
KOHYA_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
UNET_BLOCKS = ("down_blocks", "mid_block", "up_blocks")
LR_KEYS = {"unet": "unet_lr", "text_encoder": "text_encoder_1_lr", "text_encoder_2": "text_encoder_2_lr"}


def linear_names(module: torch.nn.Module, roots: tuple[str, ...] | None = None) -> list[str]:
    """Every nn.Linear of ``module`` (under ``roots`` when given), a LoRA's own Linears left out."""
    names = []
    for name, sub in module.named_modules():
        if not isinstance(sub, torch.nn.Linear) or ".lora_" in name:
            continue
        if roots is None or name.split(".")[0] in roots:
            names.append(name.removesuffix(".base_layer"))
    return names


def read_kohya(path: Path, what: str) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor, float]], Path]:
    """kohya module name -> (down, up, alpha) of a LoRA file, or of the ``.safetensors`` in a saved folder."""
    file = path
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if len(files) != 1:
            raise ValueError(f"{what} = {str(path)!r} must hold exactly one .safetensors LoRA, found {len(files)}")
        file = files[0]
    with safe_open(str(file), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    modules = {k.split(".")[0] for k in tensors if k.endswith(".lora_down.weight")}
    if not modules:
        raise ValueError(f"{what}: {file} has no kohya LoRA weights (keys <module>.lora_down.weight); SDXL LoRAs "
                         "are read in kohya's format, as diffusion-pipe saves them")
    out = {}
    for m in sorted(modules):
        if f"{m}.lora_up.weight" not in tensors:
            raise ValueError(f"{what}: {file} has {m}.lora_down.weight but no {m}.lora_up.weight")
        down = tensors[f"{m}.lora_down.weight"]
        alpha = float(tensors[f"{m}.alpha"]) if f"{m}.alpha" in tensors else float(down.shape[0])
        out[m] = (down, tensors[f"{m}.lora_up.weight"], alpha)
    return out, file


def _strip_lora(module: torch.nn.Module) -> None:
    """Put every LoRA-wrapped Linear of ``module`` back to its base layer."""
    from peft.tuners.lora import LoraLayer

    for name, sub in list(module.named_modules()):
        if isinstance(sub, LoraLayer) and name:
            parent, _, child = name.rpartition(".")
            setattr(module.get_submodule(parent) if parent else module, child, sub.get_base_layer())


def _add_lora(module: torch.nn.Module, config, unet: bool) -> None:
    """A fresh LoRA ``default`` on ``module``: diffusers' add_adapter for the UNet; peft's injection for the text
    encoders (transformers' add_adapter wants a newer peft), which is what that method does."""
    from peft import inject_adapter_in_model

    if unet:
        if getattr(module, "_hf_peft_config_loaded", False):
            module.unload_lora()
        module.add_adapter(config)
        return
    _strip_lora(module)
    inject_adapter_in_model(config, module, adapter_name="default")


def original_name(component: str, name: str) -> str:
    """A module's name as SDXL files and diffusion-pipe's saves name it: transformers 5's CLIPTextModel has no
    ``text_model`` level any more, but kohya's ``lora_te1_text_model_...`` keys (and every loader) keep it."""
    if component == "text_encoder" and not name.startswith("text_model."):
        return f"text_model.{name}"
    return name


class SDXLLoraMixin:
    """The LoRA half of SDXLFamily (``self.models`` holds ``unet``, ``text_encoder``, ``text_encoder_2``)."""

    def lora_targets(self) -> list[str]:
        """Every targeted Linear, named as the trained module names it (``unet.down_blocks...``)."""
        out = []
        for component in KOHYA_PREFIX:
            roots = UNET_BLOCKS if component == "unet" else None
            out += [f"{component}.{n}" for n in linear_names(getattr(self.models, component), roots)]
        return out

    def kohya_names(self) -> dict[str, tuple[str, str]]:
        """kohya module name -> (component, module name)."""
        out = {}
        for target in self.lora_targets():
            component, name = target.split(".", 1)
            out[KOHYA_PREFIX[component] + original_name(component, name).replace(".", "_")] = (component, name)
        return out

    def attach_new_lora(self, rank: int, dropout: float, dtype: torch.dtype | None = None,
                        exclude: str | list[str] | None = None) -> list[tuple[str, torch.nn.Parameter]]:
        """A trainable LoRA (alpha = rank) on the UNet blocks and both text encoders; returns its parameters."""
        from peft import LoraConfig

        for component in KOHYA_PREFIX:
            module = getattr(self.models, component)
            config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=dropout, bias="none",
                                target_modules=linear_names(module, UNET_BLOCKS if component == "unet" else None),
                                exclude_modules=exclude)
            try:
                _add_lora(module, config, unet=component == "unet")
            except ValueError as exc:
                raise ValueError(f"[adapter] exclude_modules = {exclude!r} ({component}): {exc}") from None
        named = [(n, p) for n, p in self.models.named_parameters() if ".lora_" in n]
        for _, param in named:
            param.data = param.data.to(dtype or self.dtype)
            param.requires_grad_(True)
        return named

    def export_lora(self, state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], None]:
        """peft names -> kohya keys with an ``.alpha`` per module (diffusers' converter, as diffusion-pipe);
        None: the format has no adapter_config.json."""
        from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

        named = {}
        for key, tensor in state_dict.items():
            component, name = key.split(".", 1)
            named[f"{component}.{original_name(component, name)}"] = tensor
        return convert_state_dict_to_kohya(named), None

    def lr_groups(self, named: list[tuple[str, torch.nn.Parameter]]) -> list[tuple[list, float | None]]:
        """Optimizer groups with their own learning rate: the UNet's, the first and the second text encoder's
        LoRA (``unet_lr`` / ``text_encoder_1_lr`` / ``text_encoder_2_lr``; None: ``[optimizer] lr``), as
        diffusion-pipe's get_param_groups (:604-630)."""
        groups = []
        for component, key in LR_KEYS.items():
            params = [(n, p) for n, p in named if n.split(".", 1)[0] == component]
            lr = self.lrs.get(key)
            groups.append((params, None if lr is None else float(lr)))
        return groups

    def _saved_weights(self, path: Path, what: str) -> tuple[dict[tuple[str, str], tuple], int]:
        """(component, module) -> (A, B with alpha/rank folded in) of a kohya LoRA, and its rank."""
        pairs, file = read_kohya(path, what)
        names = self.kohya_names()
        unknown = sorted(set(pairs) - set(names))
        if unknown:
            raise ValueError(f"{file}: {len(unknown)} LoRA modules match no targeted Linear of this SDXL model, e.g. "
                             f"{', '.join(unknown[:4])} (a LoRA for another model?)")
        ranks = {down.shape[0] for down, _, _ in pairs.values()}
        if len(ranks) != 1:
            raise ValueError(f"{file}: per-module ranks {sorted(ranks)}; only LoRAs of one rank can be loaded")
        weights = {names[m]: (down, up * (alpha / down.shape[0])) for m, (down, up, alpha) in pairs.items()}
        return weights, ranks.pop()

    def _attach_weights(self, weights: dict, rank: int, trainable: bool, dtype, dropout: float, exclude,
                        ) -> list[tuple[str, torch.nn.Parameter]]:
        named = self.attach_new_lora(rank, dropout, dtype, exclude)
        with torch.no_grad():
            for (component, module), (a, b) in weights.items():
                layer = getattr(self.models, component).get_submodule(module)
                if "default" not in getattr(layer, "lora_A", {}):
                    raise ValueError(f"the saved LoRA has weights for {component}.{module}, which is not a LoRA "
                                     "target here (see [adapter] exclude_modules)")
                for param, value in ((layer.lora_A["default"].weight, a), (layer.lora_B["default"].weight, b)):
                    if param.shape != value.shape:
                        raise ValueError(f"{component}.{module}: saved LoRA shape {list(value.shape)} does not fit "
                                         f"{list(param.shape)} (a LoRA for another model size?)")
                    param.copy_(value)
        for _, param in named:
            param.requires_grad_(trainable)
        return named

    def attach_saved_lora(self, folder_or_file: Path, trainable: bool = False, dtype: torch.dtype | None = None,
                          *, dropout: float = 0.0, exclude: str | list[str] | None = None,
                          ) -> tuple[int, list[tuple[str, torch.nn.Parameter]]]:
        """Attach a saved kohya LoRA (a save folder or its ``lora.safetensors``) exactly."""
        weights, rank = self._saved_weights(Path(folder_or_file), "saved LoRA")
        return rank, self._attach_weights(weights, rank, trainable, dtype, dropout, exclude)

    def init_from_existing(self, path: str | Path, rank: int, dropout: float = 0.0, dtype: torch.dtype | None = None,
                           exclude: str | list[str] | None = None) -> list[tuple[str, torch.nn.Parameter]]:
        """``[adapter] init_from_existing``: a trainable LoRA starting from a saved one of the same rank."""
        what = "[adapter] init_from_existing"
        weights, saved_rank = self._saved_weights(resolve_path(path, what), what)
        if saved_rank != rank:
            raise ValueError(f"{what} = {str(path)!r} has rank {saved_rank} but [adapter] rank = {rank}: set "
                             f"rank = {saved_rank}, or start from a LoRA of rank {rank}")
        return self._attach_weights(weights, rank, True, dtype, dropout, exclude)

    def fuse_adapters(self, tables: list[dict]) -> None:
        """Merge each ``{path, weight}`` kohya LoRA into the base weights, ``W += weight * alpha/rank * up @ down``,
        before the LoRA is attached."""
        if not isinstance(tables, list):
            raise ValueError("[adapter] fuse_adapters must be a list of {path = '...', weight = 1.0} tables")
        for index, table in enumerate(tables):
            what = f"[adapter] fuse_adapters[{index}]"
            path, weight = _fuse_entry(table, what)
            weights, _ = self._saved_weights(path, what)
            with torch.no_grad():
                for (component, module), (a, b) in weights.items():
                    param = getattr(self.models, component).get_submodule(module).weight
                    delta = b.float() @ a.float()
                    if delta.shape != param.shape:
                        raise ValueError(f"{what}: {path} changes {component}.{module} by a {list(delta.shape)} "
                                         f"matrix but its weight is {list(param.shape)}")
                    param.data = (param.data.float() + weight * delta.to(param.device)).to(param.dtype)
            log.info("fused %s at weight %s into %d Linears", path, weight, len(weights))


# diffusers' legacy attention-processor names that ``lora_state_dict`` gives kohya SDXL files, and the Linear
# each stands for (UNet: Attention's to_q ... to_out.0; CLIP: q_proj ... out_proj)
_UNET_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.")
_CLIP_ATTENTION = re.compile(r"\.self_attn\.(to_q|to_k|to_v|to_out)_lora\.")
_CLIP_NAMES = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}
_DIFFUSERS_KEY = re.compile(r"^(unet|text_encoder|text_encoder_2)\.(.+)\.(?:lora|lora_linear_layer)\.(down|up)\.weight$")


def kohya_to_diffusers(path: Path) -> dict[str, torch.Tensor]:
    """A kohya SDXL LoRA file (diffusion-pipe's save) as diffusers' peft-style keys
    (``unet.<module>.lora_A.weight``, ``text_encoder.…``, ``text_encoder_2.…``) that
    ``StableDiffusionXLPipeline.load_lora_weights`` takes whole. diffusers' own reader does the kohya name
    resolution; its legacy processor names are mapped to the Linears they stand for. The file's alphas must
    equal their ranks (scale 1, as diffusion-pipe saves them): the diffusers layout has no alpha."""
    from diffusers import StableDiffusionXLPipeline

    state, _ = StableDiffusionXLPipeline.lora_state_dict(str(path))
    out = {}
    for key, tensor in state.items():
        key = _UNET_PROCESSOR.sub(lambda m: f".{m.group(1)}{'.0' if m.group(1) == 'to_out' else ''}.lora.", key)
        key = _CLIP_ATTENTION.sub(lambda m: f".self_attn.{_CLIP_NAMES[m.group(1)]}.lora.", key)
        match = _DIFFUSERS_KEY.match(key)
        if match is None:
            raise ValueError(f"{path.name}: the key {key!r} is not a LoRA Linear of SDXL's UNet or text encoders")
        component, module, which = match.groups()
        out[f"{component}.{module}.lora_{'A' if which == 'down' else 'B'}.weight"] = tensor.contiguous()
    return out
