"""The main training TOML: every top-level key diffusion-pipe reads, with its type and default (notes §1).

``None`` means "unset" (diffusion-pipe reads the key with ``.get`` or derives it from another key).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WrapValidator
from pydantic_core import PydanticCustomError

from trainers.config.schema_model import ModelTable
from trainers.config.schema_studio import StudioConfig
from trainers.config.types import (
    STRICT,
    ActivationCheckpointing,
    AnyPath,
    BatchSize,
    Dtype,
    FilePath,
    Fraction,
    NonEmptyStr,
    NonNegFloat,
    NonNegInt,
    OutputDir,
    PosFloat,
    PosInt,
    ResumeFrom,
    one_of,
)


class EvalDataset(BaseModel):
    model_config = STRICT
    name: NonEmptyStr = Field(description="Name used as the TensorBoard tag prefix.")
    config: FilePath = Field(description="Dataset TOML of this eval set.")


def _no_bare_string(value: Any, handler: Any) -> Any:
    if isinstance(value, str):
        raise PydanticCustomError(
            "bare_eval_dataset",
            "a bare path string ('{path}') makes diffusion-pipe crash when it copies the eval config",
            {"path": value})
    return handler(value)


EvalDatasetEntry = Annotated[EvalDataset, WrapValidator(_no_bare_string)]


class FuseAdapter(BaseModel):
    model_config = STRICT
    path: FilePath = Field(description="LoRA file fused into the base weights before training.")
    weight: float = Field(1.0, description="Fusion weight.")


class AdapterConfig(BaseModel):
    """``[adapter]``; omit the table for a full fine-tune. ``alpha`` is forbidden (forced to rank)."""

    model_config = STRICT
    type: Literal["lora", "lokr"] = Field(description="Adapter kind: lora, or lokr (barely tested upstream).")
    rank: Annotated[PosInt | PosFloat, one_of("a positive rank")] = Field(
        description="Adapter rank (alpha is always equal to rank). LoKr: a very high rank means full-matrix LoKr.")
    dtype: Dtype | None = Field(None, description="dtype of the trainable adapter weights (default: model dtype).")
    dropout: Fraction = Field(0.0, description="LoRA dropout (LoRA only).")
    decompose_factor: int = Field(-1, description="LoKr decompose factor (LoKr only).")
    rank_dropout: Fraction = Field(0.0, description="LoKr rank dropout (LoKr only).")
    exclude_modules: Annotated[NonEmptyStr | list[NonEmptyStr], one_of("a regex string or a list of module names")] \
        | None = Field(None, description="Modules PEFT must not adapt.")
    init_from_existing: AnyPath | None = Field(
        None, description="Start from a previous output (e.g. .../epoch50) holding exactly one .safetensors.")
    fuse_adapters: list[FuseAdapter] | None = Field(None, description="Flux/Chroma: LoRAs fused before training.")


class OptimizerConfig(BaseModel):
    """``[optimizer]``: ``type`` plus constructor keywords (checked per optimizer in ``optimizers.py``)."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    type: NonEmptyStr = Field(description="adamw_optimi (recommended), adamw, adamw8bit, AdamW8bitKahan, "
                                          "stableadamw, sgd, offload, automagic, genericoptim or a "
                                          "pytorch_optimizer class name such as Prodigy.")
    lr: NonNegFloat | None = Field(None, description="Learning rate.")
    betas: Annotated[list[Fraction], Field(min_length=2, max_length=2)] | None = Field(
        None, description="Adam betas [beta1, beta2].")
    weight_decay: NonNegFloat | None = Field(None, description="Decoupled weight decay (0 for biases/norms).")
    eps: Annotated[PosFloat | list[PosFloat], one_of("a positive number or a list of them")] | None = Field(
        None, description="Numerical-stability epsilon.")
    gradient_release: bool = Field(False, description="Step each parameter during backward (disables clipping; "
                                                      "needs data-parallel size 1).")
    beta2_half_life: PosFloat | None = Field(None, description="Derive betas[1] from this half-life in examples.")


class MonitoringConfig(BaseModel):
    """``[monitoring]``: Weights & Biases. The API key belongs in the secret store, not here."""

    model_config = STRICT
    enable_wandb: bool = Field(False, description="Log to Weights & Biases.")
    wandb_api_key: str | None = Field(None, description="Do not set: dp-studio reads it from the secret store.")
    wandb_tracker_name: str | None = Field(None, description="W&B project name.")
    wandb_run_name: str | None = Field(None, description="W&B run name.")


_PARTITION = r"^(parameters|uniform|manual|type:.+)$"


class MainConfig(BaseModel):
    """diffusion-pipe's main training TOML, plus dp-studio's ``[studio]`` table (which diffusion-pipe ignores)."""

    model_config = STRICT
    output_dir: OutputDir = Field(description="Each run makes a new timestamped folder in here.")
    dataset: FilePath = Field(description="Dataset TOML (relative paths: against this file's folder).")
    eval_datasets: list[EvalDatasetEntry] = Field([], description="Eval sets: [{name = '...', config = '...'}].")
    epochs: PosInt = Field(description="Training stops after this many epochs (1000 = effectively forever).")
    max_steps: PosInt | None = Field(None, description="Stop at this step (the last save is step<N>).")
    micro_batch_size_per_gpu: BatchSize = Field(1, description="Batch size per GPU per forward pass, or "
                                                                "[[resolution, batch], ...] pairs.")
    image_micro_batch_size_per_gpu: BatchSize | None = Field(None, description="Batch size for images in "
                                                                               "mixed image/video training.")
    pipeline_stages: PosInt = Field(1, description="GPUs per model replica (pipeline parallelism).")
    gradient_accumulation_steps: PosInt = Field(1, description="Micro-batches per optimizer step.")
    gradient_clipping: NonNegFloat = Field(1.0, description="Gradient-norm clipping (0 = off).")
    warmup_steps: NonNegInt = Field(0, description="Linear learning-rate warmup steps.")
    lr_scheduler: Literal["constant", "linear", "cosine"] = Field("constant", description="LR schedule after "
                                                                                          "warmup.")
    force_constant_lr: NonNegFloat | None = Field(None, description="Force this LR everywhere, even on resume.")
    save_every_n_epochs: PosInt | None = Field(None, description="Save the LoRA every N epochs.")
    save_every_n_steps: PosInt | None = Field(None, description="Save the LoRA every N steps.")
    save_every_n_examples: PosInt | None = Field(None, description="Save the LoRA every N examples.")
    checkpoint_every_n_epochs: PosInt | None = Field(None, description="Training-state checkpoint every N epochs.")
    checkpoint_every_n_minutes: PosFloat | None = Field(None, description="Training-state checkpoint every N "
                                                                          "minutes.")
    eval_every_n_epochs: PosInt | None = Field(None, description="Evaluate every N epochs.")
    eval_every_n_steps: PosInt | None = Field(None, description="Evaluate every N steps.")
    eval_every_n_examples: PosInt | None = Field(None, description="Evaluate every N examples.")
    eval_before_first_step: bool = Field(True, description="Evaluate before training starts.")
    eval_micro_batch_size_per_gpu: BatchSize | None = Field(None, description="Eval batch size.")
    eval_image_micro_batch_size_per_gpu: BatchSize | None = Field(None, description="Eval batch size for images.")
    eval_gradient_accumulation_steps: PosInt = Field(1, description="Eval micro-batches per step.")
    disable_block_swap_for_eval: bool = Field(False, description="Turn block swap off while evaluating.")
    activation_checkpointing: ActivationCheckpointing = Field(False, description="true, false or 'unsloth' "
                                                                                 "(CPU-offloaded).")
    reentrant_activation_checkpointing: bool = Field(False, description="Reentrant checkpointing (sometimes "
                                                                        "needed with pipeline_stages > 1).")
    partition_method: Annotated[str, Field(pattern=_PARTITION)] = Field(
        "parameters", description="DeepSpeed layer partitioning: parameters, uniform, type:regex or manual.")
    partition_split: list[PosInt] | None = Field(None, description="Manual split points "
                                                                   "(pipeline_stages - 1 of them).")
    blocks_to_swap: NonNegInt = Field(0, description="Transformer blocks offloaded to RAM (LoRA only, "
                                                     "pipeline_stages = 1).")
    save_dtype: Dtype | None = Field(None, description="dtype of saved weights (default: training dtype).")
    caching_batch_size: PosInt = Field(1, description="Batch size for latent/text-embedding caching.")
    map_num_proc: PosInt | None = Field(None, description="CPU processes for caching (default min(8, cores)).")
    steps_per_print: PosInt = Field(1, description="DeepSpeed console print frequency.")
    logging_steps: PosInt = Field(1, description="Loss logging frequency (TensorBoard/W&B).")
    x_axis_examples: bool = Field(False, description="Plot against examples seen instead of steps.")
    video_clip_mode: Literal["single_beginning", "single_middle"] = Field(
        "single_beginning", description="Where a clip is cut from a longer video.")
    compile: bool = Field(False, description="torch.compile the model.")
    huber_delta: PosFloat | None = Field(None, description="Use Huber loss with this delta.")
    smooth_l1_beta: PosFloat | None = Field(None, description="Use SmoothL1 loss with this beta.")
    uncond_fraction: Fraction = Field(0.0, description="Probability of training on an empty caption.")
    resume_from_checkpoint: ResumeFrom = Field(False, description="Resume (true = newest run, or a run name).")
    regenerate_cache: bool | None = Field(None, description="Read but ignored by diffusion-pipe (use the flag).")
    model: ModelTable = Field(description="[model] table; keys depend on type.")
    adapter: AdapterConfig | None = Field(None, description="[adapter]; omit for a full fine-tune.")
    optimizer: OptimizerConfig = Field(description="[optimizer] table.")
    monitoring: MonitoringConfig | None = Field(None, description="[monitoring] (Weights & Biases).")
    studio: StudioConfig | None = Field(None, description="[studio]: dp-studio-only settings.")
