"""Value types shared by the schema models: strict scalars, dtypes, paths and diffusion-pipe's union shapes.

Models use pydantic's strict mode: TOML already has real types, so a string where a number belongs is an
error, never silently converted. Union-shaped values get one readable error instead of one per member.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationError, WrapValidator
from pydantic_core import PydanticCustomError

STRICT = ConfigDict(strict=True, extra="forbid", frozen=True)

# diffusion-pipe's DTYPE_MAP (utils/common.py); 'float8' means float8_e4m3fn.
DTYPES = ("float32", "float16", "bfloat16", "float8", "float8_e4m3fn", "float8_e5m2")
Dtype = Literal["float32", "float16", "bfloat16", "float8", "float8_e4m3fn", "float8_e5m2"]
TimestepMethod = Literal["logit_normal", "uniform"]


@dataclass(frozen=True)
class PathKind:
    """Marks a string field as a filesystem path: 'file', 'dir', 'any' (must exist) or 'output' (created)."""

    kind: Literal["file", "dir", "any", "output"]


@dataclass(frozen=True)
class UiType:
    """The widget hint ``form_fields`` reports for a field whose Python type says too little."""

    name: str


def one_of(description: str) -> WrapValidator:
    """Collapse a union's per-member errors into one error: 'expected <description>'."""

    def _validate(value: Any, handler: Any) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            raise PydanticCustomError("shape", "expected {expected}, got {got}",
                                      {"expected": description, "got": describe(value)}) from exc

    return WrapValidator(_validate)


def describe(value: Any) -> str:
    """A short, user-facing rendering of a TOML value for messages."""
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
             dict: "a table"}
    kind = names.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{kind} {text if len(text) <= 40 else text[:37] + '...'}"


PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
NonEmptyStr = Annotated[str, Field(min_length=1)]

FilePath = Annotated[str, Field(min_length=1), PathKind("file")]
DirPath = Annotated[str, Field(min_length=1), PathKind("dir")]
AnyPath = Annotated[str, Field(min_length=1), PathKind("any")]
OutputDir = Annotated[str, Field(min_length=1), PathKind("output")]

Pair = Annotated[list[PosInt], Field(min_length=2, max_length=2)]
Triple = Annotated[list[PosInt], Field(min_length=3, max_length=3)]

BatchSize = Annotated[PosInt | list[Pair], one_of("an integer >= 1 or a list of [resolution, batch_size] pairs"),
                      UiType("batch_size")]
Resolution = Annotated[PosInt | Pair, one_of("a side length (integer) or a [width, height] pair"),
                       UiType("resolution")]
ArBuckets = Annotated[list[PosFloat] | list[Pair],
                      one_of("a list of width/height ratios or a list of [width, height] pairs (not mixed)"),
                      UiType("ar_buckets")]
ActivationCheckpointing = Annotated[bool | Literal["unsloth"], one_of("true, false or 'unsloth'"),
                                    UiType("activation_checkpointing")]
ResumeFrom = Annotated[bool | NonEmptyStr, one_of("true, false or a run folder name"), UiType("bool_or_str")]
