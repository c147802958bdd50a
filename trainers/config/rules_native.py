"""The native backend's refusals as validation issues: ``native_support``'s table applied to a config pair.

A config runs natively when its backend (the caller's, else ``[studio] backend``, else "auto") resolves to the
native trainer: "native", or "auto" with a Chroma config (``native_support.backend_of``). Then a Chroma config gets one error per key the native trainer refuses, and any other model type
one error for the whole config. The data is the unknown-key pass's cleaned copy, so unknown keys (already
reported) are not reported twice.
"""

from __future__ import annotations

from typing import Any

from trainers.config import native_support
from trainers.config.issues import Reporter
from trainers.config.registry import MODEL_TYPES


def runs_natively(main: dict[str, Any], backend: str | None = None) -> bool:
    """Whether this main config is checked for the native trainer (``backend`` overrides ``[studio] backend``)."""
    return native_support.backend_of(main, backend) == native_support.NATIVE_BACKEND


def trains_chroma(main: dict[str, Any]) -> bool:
    """Whether the native table applies to the config pair's keys (``[model] type`` is one the native trainer
    trains: Chroma or Flux)."""
    return native_support.model_type_of(main) in native_support.NATIVE_TYPES


def check_main(main: dict[str, Any], report: Reporter) -> None:
    """Report what the native trainer refuses in a main TOML that runs natively."""
    kind = native_support.model_type_of(main)
    if kind is not None and kind not in MODEL_TYPES:
        return  # an unknown type string is the schema's error
    for finding in native_support.main_findings(main):
        report.add(finding.key, finding.message, finding.fix, finding.severity)


def check_dataset(dataset: dict[str, Any], report: Reporter, model_type: str | None = None) -> None:
    """Report what the native trainer refuses in the dataset (or eval dataset) TOML of a native run of
    ``model_type`` (None: keys that depend on the type are not checked)."""
    for finding in native_support.dataset_findings(dataset, model_type):
        report.add(finding.key, finding.message, finding.fix, finding.severity)
