"""What the native trainer honours of a Chroma config pair, key by key: the one table the validator and the
native trainer share.

Every key the schema knows for a Chroma main TOML and its dataset TOML is classified here as honoured,
rejected (with why and the fix), or honoured only with some values (``pipeline_stages = 1`` is fine, ``2`` is
not). A key the native trainer cannot honour is refused rather than silently ignored: training something else
than the file says costs a whole run. Plain Python only (no pydantic, no torch), so ``trainers.native`` can
import it at startup and refuse a hand-written file exactly as the studio's validator does.
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from trainers.config.registry import NATIVE_FAMILIES

Status = Literal["honoured", "rejected", "conditional"]
Severity = Literal["error", "warning"]

NATIVE_BACKEND = "native"
OTHER_BACKEND = "diffusion-pipe"
AUTO_BACKEND = "auto"
BACKENDS = (AUTO_BACKEND, NATIVE_BACKEND, OTHER_BACKEND)
NATIVE_TYPE = "chroma"  # the first native family (kept for callers that name one)
NATIVE_TYPES = tuple(NATIVE_FAMILIES)  # [model] types the native trainer trains (registry.py ``native``)


def _listed(names, last: str = "and") -> str:
    """``a, b and c``."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}"


SWITCH = f"or set [studio] backend = '{OTHER_BACKEND}'"


@dataclass(frozen=True)
class KeySupport:
    """How the native trainer treats one key.

    ``conditional`` keys are honoured except for the values ``refused`` returns True for; ``refused`` only flags
    well-typed values (a value of the wrong type is the schema's error, reported there).
    """

    status: Status
    why: str = ""  # rejected / conditional: why the native trainer refuses it; honoured: an optional note
    fix: str = ""  # what to change natively (the diffusion-pipe backend is always offered as well)
    accepted: str = ""  # conditional: the values that are fine, as TOML
    refused: Callable[[Any], bool] | None = None

    def refuses(self, value: Any) -> bool:
        """True when the native trainer refuses this key with this value."""
        if self.status == "honoured":
            return False
        if self.status == "rejected":
            return True
        return self.refused is not None and bool(self.refused(value))


@dataclass(frozen=True)
class NativeFinding:
    """One refusal (error) or caveat (warning) for the native backend, on a dotted key of one file."""

    file: Literal["main", "dataset"]
    key: str
    message: str
    fix: str
    severity: Severity = "error"

    def format(self) -> str:
        """``<file> config: key: message (fix: ...)``, for the trainer's refusal."""
        level = "" if self.severity == "error" else "warning: "
        return f"{self.file} config: {self.key}: {level}{self.message} (fix: {self.fix})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_above(limit: int) -> Callable[[Any], bool]:
    return lambda value: _is_int(value) and value > limit


def _one_of(*refused: str) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, str) and value in refused


def _partitioning(value: Any) -> bool:
    """A partition method other than the default (values outside the schema's pattern are its error)."""
    return isinstance(value, str) and (value in ("uniform", "manual") or value.startswith("type:"))


def _no_image_sizes(value: Any) -> bool:
    """size_buckets without a [width, height, 1] entry: images train only in those (diffusion-pipe
    utils/dataset.py _find_closest_size_bucket), so such a dataset has nothing to train on."""
    return isinstance(value, list) and bool(value) and not any(
        isinstance(entry, list) and len(entry) == 3 and entry[2] == 1 for entry in value)


def _by_type(value: Any) -> bool:
    """Keys whose refusal depends on the ``[model] type``, not on their value (DATASET_KEYS_OF_TYPE decides)."""
    return False


HONOURED = KeySupport("honoured")


def _honoured(*keys: str) -> dict[str, KeySupport]:
    return dict.fromkeys(keys, HONOURED)


# Optimizers diffusion-pipe implements itself (optimizers/*.py, train.py): the native trainer has none of them.
DP_ONLY_OPTIMIZERS = ("adamw8bitkahan", "offload", "automagic", "genericoptim")
# Built-ins the native trainer builds; any other type names a pytorch_optimizer class (e.g. Prodigy).
NATIVE_OPTIMIZERS = ("adamw", "adamw_optimi", "stableadamw", "sgd", "adamw8bit")

_TOP = {
    **_honoured(
        "output_dir", "dataset", "eval_datasets", "epochs", "max_steps", "micro_batch_size_per_gpu",
        "image_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping", "warmup_steps",
        "lr_scheduler", "force_constant_lr", "save_every_n_epochs", "save_every_n_steps", "save_every_n_examples",
        "checkpoint_every_n_epochs", "checkpoint_every_n_minutes", "eval_every_n_epochs", "eval_every_n_steps",
        "eval_every_n_examples", "eval_before_first_step", "eval_micro_batch_size_per_gpu",
        "eval_image_micro_batch_size_per_gpu", "eval_gradient_accumulation_steps",
        "reentrant_activation_checkpointing", "save_dtype", "caching_batch_size", "map_num_proc", "steps_per_print",
        "logging_steps", "x_axis_examples", "huber_delta", "smooth_l1_beta", "uncond_fraction",
        "resume_from_checkpoint", "regenerate_cache", "model", "adapter", "optimizer", "monitoring", "studio"),
    "disable_block_swap_for_eval": KeySupport(
        "honoured", "there is no block swap natively, so evaluation never swaps blocks"),
    "activation_checkpointing": KeySupport(
        "conditional", "no CPU-offloaded ('unsloth') checkpointing",
        "set activation_checkpointing = true", "true or false", _one_of("unsloth")),
    "pipeline_stages": KeySupport(
        "conditional", "no pipeline parallelism (the model split over several GPUs): it trains on one GPU",
        "set pipeline_stages = 1", "1", _int_above(1)),
    "partition_method": KeySupport(
        "conditional", "layer partitioning only matters with pipeline_stages > 1", "remove it",
        "'parameters' (the default, which changes nothing on one GPU)", _partitioning),
    "partition_split": KeySupport(
        "rejected", "manual split points only matter with pipeline_stages > 1, and it trains on one GPU",
        "remove it"),
    "blocks_to_swap": KeySupport(
        "conditional", "no RAM offload of transformer blocks",
        "set blocks_to_swap = 0 and save memory with [model] transformer_dtype = 'float8'", "0", _int_above(0)),
    "compile": KeySupport(
        "conditional", "torch.compile is not supported yet", "set compile = false", "false",
        lambda value: value is True),
    "video_clip_mode": KeySupport(
        "conditional", "the native families train on images, so no clip is ever cut from a video", "remove it",
        "'single_beginning' (the default, which changes nothing for images)", _one_of("single_middle")),
}

SDXL_KEYS = ("checkpoint_path", "v_pred", "min_snr_gamma", "debiased_estimation_loss", "unet_lr",
             "text_encoder_1_lr", "text_encoder_2_lr")
HIDREAM_KEYS = ("llama3_path", "llama3_4bit", "max_llama3_sequence_length")
_MODEL = {
    **_honoured("dtype", "diffusers_path", "transformer_path", "transformer_dtype", "timestep_sample_method",
                "sigmoid_scale", "shift", "flux_shift"),
    "guidance": KeySupport("honoured", "flux only"),
    "bypass_guidance_embedding": KeySupport("honoured", "flux only"),
    **{key: KeySupport("honoured", "sdxl only") for key in SDXL_KEYS},
    "text_encoder_path": KeySupport("honoured", "qwen_image only"),
    "vae_path": KeySupport("honoured", "qwen_image and lumina_2 only"),
    "llm_path": KeySupport("honoured", "lumina_2 only"),
    "lumina_shift": KeySupport("honoured", "lumina_2 only"),
    **{key: KeySupport("honoured", "hidream only") for key in HIDREAM_KEYS},
    "type": KeySupport("honoured", f"{', '.join(NATIVE_TYPES)}: any other type rejects the whole config natively"),
}

# [model] keys only one native type (or a few: a tuple) reads: for the others they are unknown keys (a warning),
# as the table says.
MODEL_KEYS_OF_TYPE = {"guidance": "flux", "bypass_guidance_embedding": "flux", **dict.fromkeys(SDXL_KEYS, "sdxl"),
                      "text_encoder_path": "qwen_image", "vae_path": ("qwen_image", "lumina_2"),
                      "llm_path": "lumina_2", "lumina_shift": "lumina_2", **dict.fromkeys(HIDREAM_KEYS, "hidream")}


def _as_tuple(kinds: str | tuple[str, ...] | None) -> tuple[str | None, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


_ADAPTER = {
    **_honoured("rank", "dtype", "dropout", "init_from_existing", "fuse_adapters"),
    "type": KeySupport("conditional", "no LoKr adapters", "use type = 'lora'", "'lora'",
                       _one_of("lokr")),
    "decompose_factor": KeySupport("rejected", "a LoKr setting, and there are no LoKr adapters", "remove it"),
    "rank_dropout": KeySupport("rejected", "a LoKr setting, and there are no LoKr adapters", "remove it"),
    **_honoured("exclude_modules"),
}

_OPTIMIZER = {
    **_honoured("lr", "betas", "weight_decay", "eps"),
    "type": KeySupport(
        "conditional", "diffusion-pipe's own optimizers (AdamW8bitKahan, offload, automagic, genericoptim) are "
        "not available", "use adamw_optimi (or adamw8bit to save memory)",
        "adamw, adamw_optimi, stableadamw, sgd, adamw8bit (CUDA + bitsandbytes) or a pytorch_optimizer class "
        "name such as 'Prodigy'", lambda value: isinstance(value, str) and value.lower() in DP_ONLY_OPTIMIZERS),
    "gradient_release": KeySupport(
        "conditional", "no per-parameter optimizer steps during backward",
        "remove gradient_release", "false", lambda value: value is True),
    "beta2_half_life": KeySupport(
        "rejected", "beta2 is not derived from a half-life", "set betas = [beta1, beta2]"),
}

_MONITORING = _honoured("enable_wandb", "wandb_api_key", "wandb_tracker_name", "wandb_run_name")

_STUDIO = _honoured(
    "backend", "sample_prompts", "sample_negative_prompt", "sample_seeds", "sample_every_n_steps", "sample_at_start",
    "sample_width", "sample_height", "sample_steps", "sample_guidance", "notes", "diffusion_pipe_path",
    "deepspeed_command", "dp_num_gpus", "dp_master_port", "dp_disable_nccl_p2p_ib", "dp_expandable_segments",
    "dp_extra_args", "dp_stop_grace_s", "seed", "nonfinite_loss", "i_know_what_i_am_doing", "strict_dataset",
    "epoch_order")

# Dataset keys a [[directory]] may override: the same support at both levels.
_DATASET_SHARED = {
    **_honoured("resolutions", "enable_ar_bucket", "min_ar", "max_ar", "num_ar_buckets", "ar_buckets", "num_repeats",
                "caption_prefix", "shuffle_tags", "cache_shuffle_num", "cache_shuffle_delimiter",
                "skip_empty_caption", "shuffle_metadata", "online_captions", "frame_buckets"),
    "size_buckets": KeySupport("conditional", "the native families train on images, which use only the "
                               "[width, height, 1] entries", "add [width, height, 1] entries", "lists with a [width, height, 1] entry",
                               _no_image_sizes),
}

# Section -> key -> support. A section is a dotted path; "[]" marks the entries of an array of tables.
MAIN_SUPPORT: dict[str, dict[str, KeySupport]] = {
    "": _TOP,
    "eval_datasets[]": _honoured("name", "config"),
    "model": _MODEL,
    "adapter": _ADAPTER,
    "adapter.fuse_adapters[]": _honoured("path", "weight"),
    "optimizer": _OPTIMIZER,
    "monitoring": _MONITORING,
    "studio": _STUDIO,
}
DATASET_SUPPORT: dict[str, dict[str, KeySupport]] = {
    "": {**_DATASET_SHARED, **_honoured("subsample_ratio", "directory")},
    "directory[]": {
        **_DATASET_SHARED, **_honoured("path", "mask_path", "default_mask_file"),
        "control_path": KeySupport("conditional", "edit datasets train natively with type = 'flux' (Flux Kontext) "
                                   "only; Qwen-Image-Edit's do not", "remove it, or use type = 'flux' with a "
                                   "Kontext model", "a folder with type = 'flux'", _by_type),
    },
}
# Dataset keys honoured only for some [model] types (key -> those types); any other type refuses them.
DATASET_KEYS_OF_TYPE = {"control_path": ("flux",)}
# Sections whose unlisted keys are still passed on: [optimizer] keywords go to the optimizer's constructor.
OPEN_SECTIONS = frozenset({"optimizer"})


def backend_of(main: Mapping[str, Any], backend: str | None = None) -> str:
    """The trainer a main config runs on: ``backend`` if given, else ``[studio] backend``, else "auto"; "auto"
    is the native trainer for the types it trains (NATIVE_TYPES) and diffusion-pipe for every other type."""
    if backend is None:
        studio = main.get("studio")
        chosen = studio.get("backend") if isinstance(studio, Mapping) else None
        backend = chosen if isinstance(chosen, str) else AUTO_BACKEND
    if backend != AUTO_BACKEND:
        return backend
    kind = model_type_of(main)
    return NATIVE_BACKEND if kind is None or kind in NATIVE_TYPES else OTHER_BACKEND


def model_type_of(main: Mapping[str, Any]) -> str | None:
    """``[model] type`` when it is a string, else None."""
    model = main.get("model")
    kind = model.get("type") if isinstance(model, Mapping) else None
    return kind if isinstance(kind, str) else None


def tables_at(data: Mapping[str, Any], section: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """The tables a section names in ``data``, with their dotted prefixes (``adapter.fuse_adapters[1]``)."""
    found: list[tuple[str, Any]] = [("", data)]
    for part in section.split(".") if section else ():
        name, many = part.removesuffix("[]"), part.endswith("[]")
        step: list[tuple[str, Any]] = []
        for prefix, table in found:
            value = table.get(name) if isinstance(table, Mapping) else None
            dotted = f"{prefix}.{name}" if prefix else name
            if many and isinstance(value, list):
                step += [(f"{dotted}[{index}]", item) for index, item in enumerate(value)]
            elif not many:
                step.append((dotted, value))
        found = step
    yield from ((prefix, table) for prefix, table in found if isinstance(table, Mapping))


def toml_text(value: Any) -> str:
    """A value as TOML spells it (true, 'text', [1, 33]), for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml_text(item) for item in value) + "]"
    return repr(value)


def _finding(file: Literal["main", "dataset"], key: str, support: KeySupport, value: Any) -> NativeFinding:
    name = key.rpartition(".")[2]
    message = f"native trainer: {support.why}"
    if support.status == "conditional":
        message += f"; only {name} = {support.accepted} works natively (got {toml_text(value)})"
    return NativeFinding(file, key, message, f"{support.fix}, {SWITCH}")


def section_findings(data: Mapping[str, Any], support: Mapping[str, Mapping[str, KeySupport]],
                     file: Literal["main", "dataset"]) -> list[NativeFinding]:
    """Every refused key of one file, and a warning for each key the table does not know (not read natively)."""
    found: list[NativeFinding] = []
    for section, keys in support.items():
        for prefix, table in tables_at(data, section):
            for key, value in table.items():
                dotted = f"{prefix}.{key}" if prefix else key
                entry = keys.get(key)
                if entry is not None and entry.refuses(value):
                    found.append(_finding(file, dotted, entry, value))
                elif entry is None and section not in OPEN_SECTIONS:
                    found.append(NativeFinding(file, dotted, "unknown key: the native trainer does not read it",
                                               "remove it (or check its spelling)", "warning"))
    return found


def wrong_type_finding(main: Mapping[str, Any]) -> NativeFinding | None:
    """The one refusal of a whole config whose ``[model] type`` the native trainer does not train (None for
    those it trains, or no type)."""
    kind = model_type_of(main)
    if kind is None or kind in NATIVE_TYPES:
        return None
    return NativeFinding("main", "model.type", f"the native trainer trains {_listed(NATIVE_TYPES)} only, "
                         f"not {kind!r}",
                         f"set [studio] backend = '{OTHER_BACKEND}' or 'auto' (or remove it: auto is the default)")


def module_available(name: str) -> bool:
    """Whether a top-level module can be imported here, without importing it (so torch is never loaded)."""
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def optimizer_warnings(main: Mapping[str, Any]) -> list[NativeFinding]:
    """Caveats of optimizers the native trainer builds only when a package is installed."""
    optimizer = main.get("optimizer")
    kind = optimizer.get("type") if isinstance(optimizer, Mapping) else None
    if not isinstance(kind, str) or not kind or kind.lower() in DP_ONLY_OPTIMIZERS:
        return []
    if kind.lower() == "adamw8bit" and not module_available("bitsandbytes"):
        return [NativeFinding("main", "optimizer.type", "adamw8bit needs bitsandbytes (and a CUDA GPU), which is "
                              "not installed here", "pip install bitsandbytes, or use adamw_optimi", "warning")]
    if kind.lower() not in NATIVE_OPTIMIZERS and not module_available("pytorch_optimizer"):
        return [NativeFinding("main", "optimizer.type", f"{kind!r} is looked up in pytorch_optimizer, which is not "
                              "installed here", "pip install pytorch-optimizer, or use adamw_optimi", "warning")]
    return []


def main_findings(main: Mapping[str, Any]) -> list[NativeFinding]:
    """The native trainer's refusals and caveats for a parsed main TOML (which should run natively)."""
    wrong = wrong_type_finding(main)
    if wrong is not None:
        return [wrong]
    kind = model_type_of(main)
    model = {key: entry for key, entry in _MODEL.items()
             if kind in _as_tuple(MODEL_KEYS_OF_TYPE.get(key, kind))}
    return section_findings(main, {**MAIN_SUPPORT, "model": model}, "main") + optimizer_warnings(main)


def _dataset_support(kind: str | None) -> dict[str, dict[str, KeySupport]]:
    """DATASET_SUPPORT for one ``[model] type``: the keys of DATASET_KEYS_OF_TYPE it does not honour, rejected
    (no type known: honoured, since the main config decides)."""
    support = {section: dict(keys) for section, keys in DATASET_SUPPORT.items()}
    for keys in support.values():
        for key, types in DATASET_KEYS_OF_TYPE.items():
            entry = keys.get(key)
            if entry is None:
                continue
            keys[key] = HONOURED if kind is None or kind in types else KeySupport("rejected", entry.why, entry.fix)
    return support


def dataset_findings(dataset: Mapping[str, Any], kind: str | None = None) -> list[NativeFinding]:
    """The native trainer's refusals and caveats for a parsed dataset TOML of a run of ``[model] type`` ``kind``
    (None: the type-dependent keys are not checked)."""
    return section_findings(dataset, _dataset_support(kind), "dataset")


def native_findings(main: Mapping[str, Any], dataset: Mapping[str, Any] | None = None) -> list[NativeFinding]:
    """Everything the native trainer refuses or warns about in a config pair (a non-Chroma type: one refusal)."""
    found = main_findings(main)
    if dataset is not None and wrong_type_finding(main) is None:
        found += dataset_findings(dataset, model_type_of(main))
    return found


def native_rejections(main: Mapping[str, Any], dataset: Mapping[str, Any] | None = None) -> list[str]:
    """Human messages for every key the native trainer refuses; empty when it can train this pair."""
    return [finding.format() for finding in native_findings(main, dataset) if finding.severity == "error"]


def native_warnings(main: Mapping[str, Any], dataset: Mapping[str, Any] | None = None) -> list[str]:
    """Human messages for what the native trainer does not read or may fail to load (it still starts)."""
    return [finding.format() for finding in native_findings(main, dataset) if finding.severity == "warning"]


_TITLES = {
    "": "top level", "eval_datasets[]": "`eval_datasets` entries", "model": f"`[model]` (type = {_listed([repr(t) for t in NATIVE_TYPES], 'or')})",
    "adapter": "`[adapter]`", "adapter.fuse_adapters[]": "`[adapter] fuse_adapters` entries",
    "optimizer": "`[optimizer]` (other keys: the optimizer's keywords, passed to it)", "monitoring": "`[monitoring]`",
    "studio": "`[studio]`", "directory[]": "`[[directory]]` (the shared keys as at the top level)",
}


def _section_markdown(file: str, section: str, keys: Mapping[str, KeySupport]) -> list[str]:
    honoured = [f"`{key}`" + (f" ({entry.why})" if entry.why else "") for key, entry in keys.items()
                if entry.status == "honoured"]
    lines = [f"**{file} TOML, {_TITLES[section]}**", "",
             *textwrap.wrap("Honoured: " + ", ".join(honoured) + ".", 120, break_long_words=False), ""]
    refused = [(key, entry) for key, entry in keys.items() if entry.status != "honoured"]
    if refused:
        lines += ["| key | natively | why | fix |", "|---|---|---|---|"]
        lines += [f"| `{key}` | {'only ' + entry.accepted if entry.status == 'conditional' else 'rejected'} | "
                  f"{entry.why} | {entry.fix}, {SWITCH} |" for key, entry in refused]
        lines.append("")
    return lines


def support_markdown() -> str:
    """The table as the Markdown section of docs/config-validation.md (a test keeps the two identical)."""
    lines: list[str] = []
    for file, support in (("main", MAIN_SUPPORT), ("dataset", DATASET_SUPPORT)):
        for section, keys in support.items():
            lines += _section_markdown(file, section, keys)
    return "\n".join(lines).rstrip("\n") + "\n"
