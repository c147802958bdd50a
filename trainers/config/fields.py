"""Form descriptions for the UI: which keys a model type reads, with type, default, tooltip and choices."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from trainers.config.model_keys import MODEL_KEYS
from trainers.config.optimizers import BUILTIN_NAMES
from trainers.config.registry import MODEL_TYPES, TYPE_NAMES
from trainers.config.schema_dataset import DatasetConfig, DirectoryConfig
from trainers.config.schema_main import AdapterConfig, MainConfig, MonitoringConfig, OptimizerConfig
from trainers.config.schema_studio import StudioConfig
from trainers.config.types import DTYPES, PathKind, UiType


@dataclass(frozen=True)
class FieldSpec:
    """One form field. ``key`` is dotted (``model.dtype``; ``directory.path`` for every [[directory]])."""

    file: Literal["main", "dataset"]
    section: str  # "" (top level), model, adapter, optimizer, monitoring, studio, directory
    key: str
    # bool | int | float | str | choice | file | dir | path | output_dir | batch_size | activation_checkpointing |
    # ar_buckets | resolution | bool_or_str | str_or_list | text_encoders | table | list[<one of these>]
    type: str
    default: Any
    description: str
    choices: tuple[str, ...] | None = None
    required: bool = False


_MODEL_KIND_TYPES = {"file": "file", "dir": "dir", "path": "path", "dtype": "choice", "bool": "bool",
                     "float": "float", "pos_float": "float", "nonneg_float": "float", "fraction": "float", "int": "int",
                     "method": "choice",
                     "file_list": "list[file]", "text_encoders": "text_encoders"}
_SECTIONS = ("model", "adapter", "optimizer", "monitoring", "studio")
_VIDEO_ONLY = {"image_micro_batch_size_per_gpu", "eval_image_micro_batch_size_per_gpu", "video_clip_mode"}
_BLOCK_SWAP_ONLY = {"blocks_to_swap", "disable_block_swap_for_eval"}
_HIDDEN = {"regenerate_cache", "monitoring.wandb_api_key"}  # ignored upstream / belongs in the secret store


def form_fields(model_type: str) -> list[FieldSpec]:
    """Every key a config of ``model_type`` uses, main file first, in file order; KeyError for unknown types."""
    info = MODEL_TYPES[model_type]
    out = [spec for spec in _model_fields(MainConfig, "main", "") if spec.key not in _SECTIONS]
    out = [spec for spec in out if _applies(spec.key, info.video, info.block_swap)]
    out += _model_table(model_type)
    out += _adapter_fields(model_type)
    out += _optimizer_fields()
    out += _model_fields(MonitoringConfig, "main", "monitoring")
    out += _model_fields(StudioConfig, "main", "studio")
    out += [spec for spec in _model_fields(DatasetConfig, "dataset", "") if spec.key != "directory"]
    out += _model_fields(DirectoryConfig, "dataset", "directory")
    out = [spec for spec in out if _applies_dataset(spec.key, info.video, info.edit)]
    return [spec for spec in out if spec.key not in _HIDDEN]


def _applies(key: str, video: bool, block_swap: bool) -> bool:
    return (video or key not in _VIDEO_ONLY) and (block_swap or key not in _BLOCK_SWAP_ONLY)


def _applies_dataset(key: str, video: bool, edit: bool) -> bool:
    name = key.rpartition(".")[2]
    return (video or name != "frame_buckets") and (edit or name != "control_path")


def _model_table(model_type: str) -> list[FieldSpec]:
    info = MODEL_TYPES[model_type]
    out = [FieldSpec("main", "model", "model.type", "choice", model_type, "Model family.", TYPE_NAMES, True)]
    for key in info.keys[1:]:
        spec = MODEL_KEYS[key]
        choices = DTYPES if spec.kind == "dtype" else ("logit_normal", "uniform") if spec.kind == "method" else None
        out.append(FieldSpec("main", "model", f"model.{key}", _MODEL_KIND_TYPES[spec.kind], spec.default,
                             spec.description, choices, info.is_required(key)))
    return out


def _adapter_fields(model_type: str) -> list[FieldSpec]:
    info = MODEL_TYPES[model_type]
    out = []
    for spec in _model_fields(AdapterConfig, "main", "adapter"):
        if spec.key == "adapter.fuse_adapters" and model_type not in ("flux", "chroma"):
            continue
        if spec.key == "adapter.type" and not info.lokr:
            spec = FieldSpec(**{**spec.__dict__, "choices": ("lora",)})
        out.append(spec)
    return out


def _optimizer_fields() -> list[FieldSpec]:
    out = []
    for spec in _model_fields(OptimizerConfig, "main", "optimizer"):
        if spec.key == "optimizer.type":
            spec = FieldSpec(**{**spec.__dict__, "type": "choice", "choices": BUILTIN_NAMES,
                                "default": "adamw_optimi"})
        out.append(spec)
    return out


def _model_fields(model: type[BaseModel], file: Literal["main", "dataset"], section: str) -> list[FieldSpec]:
    out = []
    for name, field in model.model_fields.items():
        kind, choices = describe_field(field)
        default = None if field.default is PydanticUndefined else field.default
        key = f"{section}.{name}" if section else name
        out.append(FieldSpec(file, section, key, kind, default, field.description or "", choices,
                             field.is_required()))
    return out


def describe_field(field: FieldInfo) -> tuple[str, tuple[str, ...] | None]:
    """(ui type, choices) of a pydantic field, from its markers and annotation."""
    for marker in field.metadata:
        if isinstance(marker, UiType):
            return marker.name, None
        if isinstance(marker, PathKind):
            return {"any": "path", "output": "output_dir"}.get(marker.kind, marker.kind), None
    return _annotation_type(field.annotation)


def _annotation_type(annotation: Any) -> tuple[str, tuple[str, ...] | None]:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        kinds = {_annotation_type(arg)[0] for arg in args if arg is not type(None)}
        if len(kinds) == 1:
            return _annotation_type(next(arg for arg in args if arg is not type(None)))
        if kinds <= {"int", "float"}:
            return "float", None  # e.g. a LoKr rank may be 1e6
        if kinds <= {"float", "list[float]"}:
            return "float", None  # eps: a number (automagic also takes a pair)
        return ("str_or_list" if "str" in kinds else "str"), None
    if origin is typing.Annotated:
        for marker in args[1:]:
            if isinstance(marker, UiType):
                return marker.name, None
            if isinstance(marker, PathKind):
                return {"any": "path", "output": "output_dir"}.get(marker.kind, marker.kind), None
        return _annotation_type(args[0])
    if origin is Literal:
        return "choice", tuple(str(arg) for arg in args)
    if origin is list:
        inner, _ = _annotation_type(args[0]) if args else ("str", None)
        return f"list[{inner}]", None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table", None
    names = {bool: "bool", int: "int", float: "float", str: "str"}
    return names.get(annotation, "str"), None
