"""Turn pydantic's ValidationError into ConfigIssues that name the dotted key, say what is wrong and how to fix it."""

from __future__ import annotations

import difflib
import re
from typing import Any

from pydantic import ValidationError

from trainers.config.issues import Reporter
from trainers.config.model_keys import MODEL_KEYS
from trainers.config.registry import MODEL_TYPES, TYPE_NAMES
from trainers.config.toml_io import join_key
from trainers.config.types import describe

_NOUNS = {
    "int_type": ("an integer", "write a whole number without quotes, e.g. 4"),
    "float_type": ("a number", "write a number without quotes, e.g. 1e-4"),
    "bool_type": ("true or false", "write true or false without quotes"),
    "string_type": ("a string", "quote it, e.g. '...'"),
    "list_type": ("an array", "write an array, e.g. [1, 2]"),
    "dict_type": ("a table", "write a table, e.g. [name] or {key = value}"),
    "model_type": ("a table", "write a table, e.g. {key = value}"),
    "model_attributes_type": ("a table", "write a table, e.g. {key = value}"),
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
_CUSTOM_FIXES = {
    "bare_eval_dataset": "write it as a table: {name = 'eval', config = 'path/to/eval_dataset.toml'}",
    "text_encoder_source": "keep either path or paths in this entry",
    "shape": "see the tooltip / diffusion-pipe's examples for the accepted forms",
}
_EXAMPLE_BY_KIND = {"file": "'/path/to/file.safetensors'", "dir": "'/path/to/folder'", "path": "'/path/to/it'",
                    "dtype": "'bfloat16'", "bool": "true", "text_encoders": "[{path = '...', type = '...'}]"}


def report_validation_error(exc: ValidationError, data: dict[str, Any], report: Reporter) -> None:
    """Add one issue per pydantic error (``extra_forbidden`` is left to the unknown-key pass)."""
    for error in exc.errors():
        if error["type"] == "extra_forbidden":
            continue
        loc = _clean_loc(error["loc"])
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc = (*loc, "type")
        key = join_key(loc) if loc else "(file)"
        message, fix = describe_error(error, loc, data)
        report.error(key, message, fix)


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop the union tag pydantic inserts for the discriminated [model] union (``model.chroma.dtype``)."""
    if len(loc) > 1 and loc[0] == "model" and loc[1] in TYPE_NAMES:
        return (loc[0], *loc[2:])
    return loc


def describe_error(error: Any, loc: tuple[Any, ...], data: dict[str, Any]) -> tuple[str, str]:
    """(message, fix) for one pydantic error dict."""
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "missing":
        return _missing(loc, data)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return _model_type(value)
    if kind in _NOUNS:
        noun, fix = _NOUNS[kind]
        if loc == ("directory",) and isinstance(value, dict):
            fix = "write [[directory]] (double brackets) above each folder's keys"
        return f"expected {noun}, got {describe(value)}", fix
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()), "?")
        return f"must be {_BOUNDS[kind]} {bound}, got {value!r}", f"use a value {_BOUNDS[kind]} {bound}"
    return _other(kind, ctx, value, error["msg"])


def _other(kind: str, ctx: dict[str, Any], value: Any, msg: str) -> tuple[str, str]:
    if kind == "literal_error":
        options = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        close = difflib.get_close_matches(str(value), options, n=1, cutoff=0.5)
        fix = f"did you mean {close[0]!r}?" if close else f"use one of: {', '.join(repr(o) for o in options)}"
        return f"{value!r} is not allowed (expected {ctx.get('expected')})", fix
    if kind == "string_too_short":
        return "must not be empty", "fill it in, or remove the key to use the default"
    if kind in ("too_short", "too_long"):
        return msg.replace("List", "array").replace("after validation, ", ""), "check the number of entries"
    if kind == "multiple_of":
        return f"must be a multiple of {ctx.get('multiple_of')}, got {value!r}", "round it to a multiple"
    if kind == "string_pattern_mismatch":
        return f"{value!r} is not allowed", "use parameters, uniform, manual or type:<regex>"
    return msg, _CUSTOM_FIXES.get(kind, "")


def _missing(loc: tuple[Any, ...], data: dict[str, Any]) -> tuple[str, str]:
    name = str(loc[-1])
    if len(loc) == 1:
        if name in ("model", "optimizer"):
            return f"the [{name}] table is required", f"add a [{name}] table"
        if name == "directory":
            return "no [[directory]] entry", "add [[directory]] with path = '/path/to/images'"
        return "required but missing", f"add {name} = ... at the top of the file"
    where = join_key(loc[:-1])
    if loc[0] == "model" and len(loc) == 2:
        model = data.get("model") if isinstance(data.get("model"), dict) else {}
        spec = MODEL_KEYS.get(name)
        example = _EXAMPLE_BY_KIND.get(spec.kind if spec else "", "...")
        about = f" ({spec.description.rstrip('.')})" if spec else ""
        return f"required for type {model.get('type')!r} but missing", f"add {name} = {example} under [model]{about}"
    return "required but missing", f"add {name} = ... in {where}"


def _model_type(value: Any) -> tuple[str, str]:
    tag = value.get("type") if isinstance(value, dict) else None
    if tag is None:
        return "required but missing", f"add type = 'chroma' under [model] (one of: {', '.join(TYPE_NAMES)})"
    close = difflib.get_close_matches(str(tag), list(MODEL_TYPES), n=1, cutoff=0.5)
    fix = f"did you mean {close[0]!r}?" if close else f"use one of: {', '.join(TYPE_NAMES)}"
    return f"unknown model type {tag!r} (diffusion-pipe raises NotImplementedError)", fix
