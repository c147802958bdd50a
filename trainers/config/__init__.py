"""dp-studio's config layer: diffusion-pipe's TOML pair (main + dataset) plus the ``[studio]`` table.

Torch-free. The UI calls ``validate_texts``, ``form_fields`` and the registry; the CLI calls ``validate_files``.
Names load on first use, so ``trainers.native`` can import the plain-Python ``native_support`` table without
building the pydantic schema.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainers.config.fields import FieldSpec, form_fields
    from trainers.config.issues import ConfigIssue, ConfigParseError
    from trainers.config.registry import MODEL_TYPES, TYPE_NAMES, ModelTypeInfo, capabilities, model_type
    from trainers.config.validate import (
        ConfigError,
        is_valid,
        parse_dataset,
        parse_main,
        validate_files,
        validate_texts,
    )

_EXPORTS = {
    "FieldSpec": "fields", "form_fields": "fields", "ConfigIssue": "issues", "ConfigParseError": "issues",
    "MODEL_TYPES": "registry", "TYPE_NAMES": "registry", "ModelTypeInfo": "registry", "capabilities": "registry",
    "model_type": "registry", "ConfigError": "validate", "is_valid": "validate", "parse_dataset": "validate",
    "parse_main": "validate", "validate_files": "validate", "validate_texts": "validate",
}

__all__ = [
    "MODEL_TYPES", "TYPE_NAMES", "ConfigError", "ConfigIssue", "ConfigParseError", "FieldSpec", "ModelTypeInfo",
    "capabilities", "form_fields", "is_valid", "model_type", "parse_dataset", "parse_main", "validate_files",
    "validate_texts",
]


def __getattr__(name: str) -> Any:
    """Load an exported name (or a submodule, as ``trainers.config.toml_io``) on first access."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value
