"""Checks that span keys of the main TOML: every invalid combination in notes §1.8, and a few traps.

Rules read the raw TOML data defensively (a value of the wrong type is the schema's problem, reported there),
so one pass reports every problem at once. Each rule names the key the user should change.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainers.config.issues import Reporter
from trainers.config.optimizers import accepted_keys, builtin
from trainers.config.registry import MODEL_TYPES, ModelTypeInfo
from trainers.config.unknown_keys import suggest

SAVE_KEYS = ("save_every_n_epochs", "save_every_n_steps", "save_every_n_examples")
# Models loading weights with load_state_dict/iterate_safetensors reject ComfyUI fp8_scaled files (notes §1.8).
NO_FP8_SCALED = ("wan", "qwen_image", "cosmos_predict2", "anima")
_QUANTIZED_NAME = re.compile(r"fp8_scaled|int8|convrot|nvfp4|mxfp8", re.IGNORECASE)


def number(table: Any, key: str) -> float | None:
    """The value if it is a real number (not a bool), else None."""
    value = table.get(key) if isinstance(table, dict) else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def text(table: Any, key: str) -> str | None:
    value = table.get(key) if isinstance(table, dict) else None
    return value if isinstance(value, str) else None


def table_of(data: Any, key: str) -> dict[str, Any] | None:
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, dict) else None


@dataclass
class MainContext:
    data: dict[str, Any]
    report: Reporter
    num_gpus: int | None
    model: dict[str, Any]
    info: ModelTypeInfo | None
    adapter: dict[str, Any] | None
    optimizer: dict[str, Any] | None

    @property
    def stages(self) -> int:
        value = number(self.data, "pipeline_stages")
        return int(value) if value else 1


def check_main(data: dict[str, Any], report: Reporter, num_gpus: int | None = 1) -> None:
    """Run every cross-key rule of the main TOML."""
    model = table_of(data, "model") or {}
    info = MODEL_TYPES.get(model.get("type")) if isinstance(model.get("type"), str) else None
    ctx = MainContext(data, report, num_gpus, model, info, table_of(data, "adapter"), table_of(data, "optimizer"))
    for rule in RULES:
        rule(ctx)


def _save_every(ctx: MainContext) -> None:
    present = [key for key in SAVE_KEYS if key in ctx.data]
    if not present:
        ctx.report.error("save_every_n_epochs", "none of save_every_n_epochs / save_every_n_steps / "
                         "save_every_n_examples is set (diffusion-pipe asserts at startup)",
                         "add e.g. save_every_n_epochs = 1 at the top of the file")
    elif len(present) > 1:
        ctx.report.warning(present[1], f"{', '.join(present)} are all set", "keep only one save_every_n_* key")


def _checkpoints(ctx: MainContext) -> None:
    has = [key for key in ("checkpoint_every_n_epochs", "checkpoint_every_n_minutes") if key in ctx.data]
    if len(has) == 2:
        ctx.report.warning("checkpoint_every_n_epochs", "both checkpoint_every_n_epochs and "
                           "checkpoint_every_n_minutes are set", "set only one of them")
    elif not has:
        ctx.report.warning("checkpoint_every_n_minutes", "no training-state checkpoints: a stopped run cannot "
                           "be resumed", "add checkpoint_every_n_minutes = 120")


def _adapter(ctx: MainContext) -> None:
    adapter, info = ctx.adapter, ctx.info
    if adapter is None:
        return
    kind = text(adapter, "type")
    if kind == "lokr" and info is not None and not info.lokr:
        ctx.report.error("adapter.type", f"LoKr cannot be saved for type {info.type!r} (fails at the first save)",
                         "use type = 'lora'")
    rank = adapter.get("rank")
    if kind == "lora" and isinstance(rank, float):
        ctx.report.error("adapter.rank", f"LoRA rank must be a whole number, got {rank!r}", "e.g. rank = 32")
    for key, only in (("dropout", "lora"), ("decompose_factor", "lokr"), ("rank_dropout", "lokr")):
        if key in adapter and kind in ("lora", "lokr") and kind != only:
            ctx.report.warning(f"adapter.{key}", f"only used by {only} adapters", "remove it")
    if "fuse_adapters" in adapter and info is not None and info.type not in ("flux", "chroma"):
        # models/flux.py:197 and models/chroma.py:157 read it; every other type ignores the key.
        ctx.report.warning("adapter.fuse_adapters", f"ignored: only Flux and Chroma read fuse_adapters, not "
                           f"{info.type!r}", "use [model] merge_adapters where the type supports it, or remove it")


def _full_finetune(ctx: MainContext) -> None:
    info = ctx.info
    if ctx.adapter is not None or info is None:
        return
    if not info.full_finetune:
        ctx.report.error("adapter", f"type {info.type!r} cannot save a full fine-tune: training would run and "
                         "then crash at the first save", "add an [adapter] table (type = 'lora', rank = 32)")
        return
    weights = text(ctx.model, "diffusion_model") or ""
    if info.fp8_key == "diffusion_model_dtype" and _QUANTIZED_NAME.search(weights):
        ctx.report.warning("model.diffusion_model", "full fine-tuning asserts on ComfyUI-quantized weights, and "
                           "this file name looks quantized", "use bf16 weights, or add an [adapter]")
    if info.fp8_key and str(ctx.model.get(info.fp8_key, "")).startswith("float8"):
        ctx.report.warning(f"model.{info.fp8_key}", "fp8 weights only make sense for LoRA training",
                           "remove it for a full fine-tune, or add an [adapter]")


def _block_swap(ctx: MainContext) -> None:
    blocks = number(ctx.data, "blocks_to_swap")
    if not blocks:
        return
    info, report = ctx.info, ctx.report
    if ctx.stages > 1:
        report.error("blocks_to_swap", "block swap requires pipeline_stages = 1",
                     "set blocks_to_swap = 0 or pipeline_stages = 1")
    if ctx.adapter is None:
        report.error("blocks_to_swap", "block swap only works for LoRA training (no [adapter] table)",
                     "set blocks_to_swap = 0, or add an [adapter] table")
    if info is not None and not info.block_swap:
        report.error("blocks_to_swap", f"type {info.type!r} does not support block swap", "remove blocks_to_swap")
    elif info is not None and info.block_swap_max is not None and blocks > info.block_swap_max:
        report.error("blocks_to_swap", f"{info.type!r} can swap at most {info.block_swap_max} blocks, got "
                     f"{int(blocks)}", f"use blocks_to_swap <= {info.block_swap_max}")


def _gpus(ctx: MainContext) -> None:
    if ctx.num_gpus is None:
        return
    stages = ctx.stages
    if ctx.num_gpus % stages:
        ctx.report.error("pipeline_stages", f"pipeline_stages = {stages} does not divide the {ctx.num_gpus} "
                         "GPU(s) available", "set pipeline_stages to a divisor of the GPU count (or --num-gpus)")
        return
    if ctx.optimizer and ctx.optimizer.get("gradient_release") is True and ctx.num_gpus // stages > 1:
        ctx.report.error("optimizer.gradient_release", f"gradient_release needs data-parallel size 1, but "
                         f"{ctx.num_gpus} GPUs / {stages} stages = {ctx.num_gpus // stages}",
                         f"set pipeline_stages = {ctx.num_gpus}, or remove gradient_release")


def _gradient_release(ctx: MainContext) -> None:
    if ctx.optimizer and ctx.optimizer.get("gradient_release") is True and number(ctx.data, "gradient_clipping"):
        ctx.report.warning("gradient_clipping", "ignored: gradient_release forces gradient clipping to 0",
                           "remove gradient_clipping")


def _minimax_cfg(ctx: MainContext) -> None:
    cfg = number(ctx.model, "cfg")
    if ctx.info is not None and ctx.info.type == "minimax_h3" and cfg is not None and cfg > 1 and ctx.stages > 1:
        ctx.report.error("model.cfg", "CFG-augmented training (cfg > 1) requires pipeline_stages = 1",
                         "set pipeline_stages = 1, or cfg = 1")


def _partition(ctx: MainContext) -> None:
    method, split = text(ctx.data, "partition_method"), ctx.data.get("partition_split")
    if method == "manual":
        want = ctx.stages - 1
        if not isinstance(split, list) or len(split) != want:
            got = len(split) if isinstance(split, list) else "none"
            ctx.report.error("partition_split", f"partition_method = 'manual' needs {want} split point(s) "
                             f"(pipeline_stages - 1), got {got}", f"set partition_split to {want} layer indices")
    elif split is not None:
        ctx.report.warning("partition_split", "only used with partition_method = 'manual'", "remove it")


def _model_alternatives(ctx: MainContext) -> None:
    info = ctx.info
    if info is None or not info.alternatives:
        return
    if any(all(key in ctx.model for key in group) for group in info.alternatives):
        return
    best = max(info.alternatives, key=lambda group: sum(key in ctx.model for key in group))
    missing = next(key for key in best if key not in ctx.model)
    options = " or ".join(" + ".join(group) for group in info.alternatives)
    ctx.report.error(f"model.{missing}", f"type {info.type!r} needs {options}", f"add {missing} under [model]")


def _model_schedule(ctx: MainContext) -> None:
    model, report = ctx.model, ctx.report
    if number(model, "shift") and model.get("flux_shift") is True:  # shift = 0 is no shift (models/chroma.py:263)
        report.warning("model.flux_shift", "ignored: shift takes precedence over flux_shift", "remove one of them")
    if "sigmoid_scale" in model and model.get("timestep_sample_method") == "uniform":
        report.warning("model.sigmoid_scale", "only used with timestep_sample_method = 'logit_normal'",
                       "remove it")
    low, high = number(model, "min_t"), number(model, "max_t")
    if low is not None and high is not None and low >= high:
        report.error("model.min_t", f"min_t ({low}) must be below max_t ({high})", "e.g. min_t = 0, max_t = 0.875")


def _model_weights(ctx: MainContext) -> None:
    info, model = ctx.info, ctx.model
    if info is None:
        return
    if info.fp8_key and not info.fp8 and str(model.get(info.fp8_key, "")).startswith("float8"):
        ctx.report.warning(f"model.{info.fp8_key}", f"fp8 is not supported for {info.label} "
                           "(docs/supported_models.md)", f"remove {info.fp8_key}")
    if info.type in NO_FP8_SCALED:
        for key in ("transformer_path", "ckpt_path", "diffusers_path"):
            if "fp8_scaled" in (text(model, key) or "").lower():
                ctx.report.error(f"model.{key}", f"{info.type!r} loads weights with load_state_dict and rejects "
                                 "fp8_scaled files", "use the bf16 file (transformer_dtype = 'float8' for fp8)")
    encoders = model.get("text_encoders")
    if info.text_encoder_type and isinstance(encoders, list):
        for index, entry in enumerate(encoders):
            kind = text(entry, "type")
            if kind is not None and kind != info.text_encoder_type:
                ctx.report.warning(f"model.text_encoders[{index}].type", f"the docs use type = "
                                   f"'{info.text_encoder_type}' for {info.label}, got {kind!r}",
                                   f"use type = '{info.text_encoder_type}' unless you know better")


def _monitoring(ctx: MainContext) -> None:
    monitoring = table_of(ctx.data, "monitoring")
    if not monitoring:
        return
    if monitoring.get("enable_wandb") is True:
        for key in ("wandb_tracker_name", "wandb_run_name"):
            if not text(monitoring, key):
                ctx.report.error(f"monitoring.{key}", "required when enable_wandb = true (diffusion-pipe reads it "
                                 "unconditionally)", f"add {key} = '...' under [monitoring]")
    if text(monitoring, "wandb_api_key"):
        ctx.report.warning("monitoring.wandb_api_key", "an API key in a config file leaks into copies, exports "
                           "and W&B's uploaded config", "import the file with dp-studio, which moves the key to "
                           "the secret store, or set WANDB_API_KEY")


def _loss_and_schedule(ctx: MainContext) -> None:
    data = ctx.data
    if "huber_delta" in data and "smooth_l1_beta" in data:
        ctx.report.warning("smooth_l1_beta", "both huber_delta and smooth_l1_beta are set", "keep only one loss")
    if "max_steps" in data and text(data, "lr_scheduler") in ("linear", "cosine"):
        ctx.report.warning("lr_scheduler", "linear/cosine decay runs over epochs x steps per epoch; max_steps is "
                           "not considered", "lower epochs so the schedule ends where you stop")
    evals = [key for key in ("eval_every_n_epochs", "eval_every_n_steps", "eval_every_n_examples") if key in data]
    if evals and not data.get("eval_datasets"):
        ctx.report.warning(evals[0], "no eval_datasets are configured, so nothing is evaluated",
                           "add eval_datasets = [{name = 'eval', config = '...'}] or remove it")


def _optimizer_keys(ctx: MainContext) -> None:
    optimizer = ctx.optimizer
    kind = text(optimizer, "type")
    if optimizer is None or not kind:
        return
    accepted = accepted_keys(kind)
    if accepted is None:
        extra = sorted(set(optimizer) - {"type", "gradient_release", "beta2_half_life"})
        ctx.report.warning("optimizer.type", f"{kind!r} is not a built-in: diffusion-pipe loads it from "
                           f"pytorch_optimizer, and its keys ({', '.join(extra) or 'none'}) cannot be checked here",
                           "check the class name and its keywords in pytorch_optimizer's docs")
        return
    for key in optimizer:
        if key not in accepted:
            ctx.report.error(f"optimizer.{key}", f"{kind} does not take {key} (TypeError at startup)",
                             suggest(key, accepted, "remove it"))
    lr = number(optimizer, "lr")
    if builtin(kind) == "automagic" and lr is not None and lr > 1e-3:
        ctx.report.warning("optimizer.lr", "automagic forces a start lr above 1e-3 down to 1e-6",
                           "use lr <= 1e-3 or leave it out")


RULES: tuple[Callable[[MainContext], None], ...] = (
    _save_every, _checkpoints, _adapter, _full_finetune, _block_swap, _gpus, _gradient_release, _minimax_cfg,
    _partition, _model_alternatives, _model_schedule, _model_weights, _monitoring, _loss_and_schedule,
    _optimizer_keys,
)
