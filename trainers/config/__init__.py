"""dp-studio's config layer: diffusion-pipe's TOML pair (main + dataset) plus the ``[studio]`` table.

Torch-free. The UI calls ``validate_texts``, ``form_fields`` and the registry; the CLI calls ``validate_files``.
"""

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

__all__ = [
    "MODEL_TYPES", "TYPE_NAMES", "ConfigError", "ConfigIssue", "ConfigParseError", "FieldSpec", "ModelTypeInfo",
    "capabilities", "form_fields", "is_valid", "model_type", "parse_dataset", "parse_main", "validate_files",
    "validate_texts",
]
