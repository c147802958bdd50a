"""Keys nobody reads: typos get a "did you mean", keys of another model type a warning, stale keys their story.

diffusion-pipe silently ignores unknown keys, so a typo (``save_every_n_epoch``) costs a whole run. This pass
runs before the pydantic models and returns a copy of the data without the reported keys.
"""

from __future__ import annotations

import copy
import difflib
from typing import Any

from trainers.config.issues import Reporter
from trainers.config.registry import ALL_MODEL_KEYS, MODEL_TYPES
from trainers.config.schema_dataset import DATASET_TOP_KEYS, DIRECTORY_KEYS
from trainers.config.schema_main import AdapterConfig, EvalDataset, FuseAdapter, MainConfig, MonitoringConfig
from trainers.config.schema_model import TextEncoderEntry
from trainers.config.schema_studio import StudioConfig

# Keys that once existed or that a comment spells wrongly: key -> (message, fix).
STALE: dict[str, tuple[str, str]] = {
    "pseudo_huber_c": ("no longer read by diffusion-pipe (replaced in 2026-04)",
                       "use huber_delta or smooth_l1_beta instead"),
    "image_eval_micro_batch_size_per_gpu": ("not read by diffusion-pipe (main_example's comment misspells it)",
                                            "rename it to eval_image_micro_batch_size_per_gpu"),
    "adapter.alpha": ("diffusion-pipe forbids alpha (NotImplementedError): alpha is always equal to rank",
                      "remove alpha; scale the effect with rank or the learning rate"),
    "control_paths": ("multi-control datasets exist only in an open diffusion-pipe PR (#529)",
                      "use a single control_path"),
    "subsample_ratio": ("only read at the top level of the dataset file", "move it above the first [[directory]]"),
}


def suggest(key: str, known: set[str] | frozenset[str],
            otherwise: str = "remove it (diffusion-pipe would silently ignore it)") -> str:
    """'did you mean X?' for the closest known key, else ``otherwise``."""
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f"did you mean {close[0]}?" if close else otherwise


def _fields(model: Any) -> frozenset[str]:
    return frozenset(model.model_fields)


def check_main(data: dict[str, Any], report: Reporter) -> dict[str, Any]:
    """Report unknown keys of the main TOML; return a copy without them."""
    clean = copy.deepcopy(data)
    _check_table(clean, "", _fields(MainConfig), report)
    _check_sections(clean, report)
    _check_list(clean, "eval_datasets", _fields(EvalDataset), report)
    return clean


def _check_sections(clean: dict[str, Any], report: Reporter) -> None:
    simple = {"adapter": AdapterConfig, "monitoring": MonitoringConfig, "studio": StudioConfig}
    for section, model in simple.items():
        if isinstance(clean.get(section), dict):
            _check_table(clean[section], section, _fields(model), report)
    if isinstance(clean.get("adapter"), dict):
        _check_list(clean["adapter"], "adapter.fuse_adapters", _fields(FuseAdapter), report)
    if isinstance(clean.get("model"), dict):
        _check_model(clean["model"], report)


def _check_model(table: dict[str, Any], report: Reporter) -> None:
    info = MODEL_TYPES.get(table.get("type")) if isinstance(table.get("type"), str) else None
    known = frozenset(info.keys) if info else ALL_MODEL_KEYS
    for key in list(table):
        if key in known:
            continue
        if key in ALL_MODEL_KEYS and info is not None:
            readers = [name for name, other in MODEL_TYPES.items() if key in other.keys]
            report.warning(f"model.{key}", f"type {info.type!r} does not read {key} "
                           f"(read by {', '.join(readers[:4])}{'...' if len(readers) > 4 else ''})", "remove it")
        else:
            report.error(f"model.{key}", "unknown key", suggest(key, known))
        del table[key]
    _check_list(table, "model.text_encoders", _fields(TextEncoderEntry), report)


def check_dataset(data: dict[str, Any], report: Reporter) -> dict[str, Any]:
    """Report unknown keys of a dataset TOML; return a copy without them."""
    clean = copy.deepcopy(data)
    _check_table(clean, "", DATASET_TOP_KEYS, report)
    _check_list(clean, "directory", DIRECTORY_KEYS, report)
    return clean


def _check_list(parent: dict[str, Any], dotted: str, known: frozenset[str], report: Reporter) -> None:
    items = parent.get(dotted.rpartition(".")[2])
    if not isinstance(items, list):
        return
    for index, item in enumerate(items):
        if isinstance(item, dict):
            _check_table(item, f"{dotted}[{index}]", known, report)


def _check_table(table: dict[str, Any], prefix: str, known: frozenset[str], report: Reporter) -> None:
    for key in list(table):
        if key in known:
            continue
        dotted = f"{prefix}.{key}" if prefix else key
        stale = STALE.get(dotted) or STALE.get(key)
        if stale:
            report.error(dotted, stale[0], stale[1])
        else:
            report.error(dotted, "unknown key", suggest(key, known))
        del table[key]
