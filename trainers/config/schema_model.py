"""The ``[model]`` table: one strict pydantic model per type string, built from the registry, and their union.

Per-type models know the keys that type reads, their kinds and defaults. Rules that span keys (alternatives such
as hunyuan-video's ckpt_path *or* its four ComfyUI files) live in ``rules.py`` so they can name the exact key.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, create_model, model_validator
from pydantic_core import PydanticCustomError

from trainers.config.model_keys import MODEL_KEYS, KeySpec
from trainers.config.registry import MODEL_TYPES, ModelTypeInfo
from trainers.config.types import (
    STRICT,
    AnyPath,
    DirPath,
    Dtype,
    FilePath,
    Fraction,
    NonEmptyStr,
    NonNegFloat,
    PosFloat,
    PosInt,
    TimestepMethod,
    one_of,
)


class TextEncoderEntry(BaseModel):
    """One ``text_encoders`` entry of the ComfyUI-based models."""

    model_config = STRICT
    # diffusion-pipe models/base.py:578-585: ``paths`` wins over ``path``, and either may be a string or a list.
    path: FileOrFiles | None = Field(None, description="Text encoder file (or a list of files).")
    paths: FileOrFiles | None = Field(None, description="Several files forming one text encoder (wins over path).")
    type: NonEmptyStr = Field(description="ComfyUI CLIP type, e.g. 'lumina2', 'flux2', 'minimax'.")

    @model_validator(mode="after")
    def _one_source(self) -> TextEncoderEntry:
        if self.path is None and self.paths is None:
            raise PydanticCustomError("text_encoder_source", "give path = '...' or paths = [...]")
        return self


FileOrFiles = Annotated[FilePath | Annotated[list[FilePath], Field(min_length=1)],
                        one_of("a file path or a non-empty list of file paths")]

KIND_TYPES: dict[str, Any] = {
    "file": FilePath, "dir": DirPath, "path": AnyPath, "dtype": Dtype, "bool": bool, "float": float,
    "pos_float": PosFloat, "nonneg_float": NonNegFloat, "fraction": Fraction, "int": PosInt, "method": TimestepMethod,
    "file_list": list[FilePath], "text_encoders": Annotated[list[TextEncoderEntry], Field(min_length=1)],
}


class ModelTableBase(BaseModel):
    """Common base of the per-type ``[model]`` models."""

    model_config = STRICT


def _field(spec: KeySpec, required: bool) -> tuple[Any, Any]:
    annotation = KIND_TYPES[spec.kind]
    if required:
        return annotation, Field(description=spec.description)
    return annotation | None, Field(spec.default, description=spec.description)


def _build(info: ModelTypeInfo) -> type[ModelTableBase]:
    fields: dict[str, Any] = {"type": (Literal[info.type], Field(description="Model family."))}
    for key in info.keys:
        if key != "type":
            fields[key] = _field(MODEL_KEYS[key], info.is_required(key))
    name = "Model_" + re.sub(r"\W", "_", info.type)
    return create_model(name, __base__=ModelTableBase, **fields)


MODEL_TABLES: dict[str, type[ModelTableBase]] = {name: _build(info) for name, info in MODEL_TYPES.items()}

ModelTable = Annotated[Union[tuple(MODEL_TABLES.values())], Field(discriminator="type")]  # noqa: UP007
