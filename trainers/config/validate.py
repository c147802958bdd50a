"""Validate a diffusion-pipe config pair: syntax, unknown keys, types, cross-key rules, what the native trainer
refuses (when the pair runs natively), paths, placeholders.

Relative paths (the main file's ``dataset``, eval configs, model files, dataset folders) resolve against the
config base: the main TOML's folder, or the current directory when the config's paths exist only from there
(diffusion-pipe's convention), see ``paths_check.config_base``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from trainers.config import (
    paths_check,
    rules,
    rules_dataset,
    rules_dataset_dp,
    rules_lora,
    rules_native,
    unknown_keys,
)
from trainers.config.issues import ConfigIssue, ConfigParseError, Reporter
from trainers.config.schema_dataset import DatasetConfig
from trainers.config.schema_main import MainConfig
from trainers.config.toml_io import loads_plain, read_text
from trainers.config.translate import report_validation_error

SYNTAX_KEY = "(syntax)"
Backend = Literal["auto", "native", "diffusion-pipe"]


def validate_texts(main_text: str, dataset_text: str | None, *, main_file: str = "main.toml",
                   dataset_file: str = "dataset.toml",
                   base_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
                   skip_path_checks: bool = False, num_gpus: int | None = 1,
                   eval_texts: dict[str, str] | None = None, backend: Backend | None = None,
                   path_roots: Sequence[Path] | None = None) -> list[ConfigIssue]:
    """All issues of a main TOML and its dataset TOML given as text (the UI's entry point).

    ``dataset_text`` None skips the dataset (e.g. while the user edits only the main file). ``base_dir``: the
    folder(s) relative paths resolve against, first match wins (default: cwd). A syntax error is
    returned as one issue with key ``(syntax)`` rather than raised. ``eval_texts`` maps eval config file names
    to their text. ``num_gpus`` None skips the GPU-count rules. ``backend`` None: the main file's
    ``[studio] backend`` (default auto: native for Chroma, whose refusals are errors, see ``rules_native``). ``path_roots``: only
    paths inside these folders are looked up (a remote caller learns nothing about the rest of the disk).
    """
    base = _bases(base_dir)
    try:
        main_data = loads_plain(main_text, main_file)
        issues = check_main(main_data, main_text, main_file, base, skip_path_checks, num_gpus, backend, path_roots)
        model = main_data.get("model") if isinstance(main_data.get("model"), dict) else {}
        native, skip = _native_chroma(main_data, backend), _skips_checks(main_data, backend)
        if dataset_text is not None:
            issues += check_dataset_text(dataset_text, dataset_file, base, skip_path_checks, model, native,
                                         skip, path_roots)
        for name, text in (eval_texts or {}).items():
            issues += check_dataset_text(text, name, base, skip_path_checks, model, native, skip, path_roots)
    except ConfigParseError as exc:
        return [ConfigIssue(exc.file, exc.line, SYNTAX_KEY, f"column {exc.column}: {exc.message}",
                            "fix the TOML syntax")]
    return issues


def _bases(base_dir: Any) -> list[Path]:
    if base_dir is None:
        return [Path.cwd()]
    if isinstance(base_dir, (str, os.PathLike)):
        return [Path(base_dir)]
    return [Path(base) for base in base_dir]


def _native_chroma(main: dict[str, Any], backend: Backend | None) -> bool:
    """Whether the dataset files get the native trainer's dataset refusals."""
    return rules_native.runs_natively(main, backend) and rules_native.trains_chroma(main)


def _skips_checks(main: dict[str, Any], backend: Backend | None) -> bool:
    """Whether diffusion-pipe runs this pair with --i_know_what_i_am_doing (``[studio] dp_extra_args``)."""
    return not rules_native.runs_natively(main, backend) and rules_dataset_dp.skips_dataset_checks(main)


def check_main(data: dict[str, Any], text: str, file: str, base_dir: list[Path], skip_path_checks: bool,
               num_gpus: int | None, backend: Backend | None = None,
               path_roots: Sequence[Path] | None = None) -> list[ConfigIssue]:
    """Issues of a parsed main TOML (``text`` is only used to find line numbers)."""
    report = Reporter(file, text)
    clean = unknown_keys.check_main(data, report)
    try:
        MainConfig.model_validate(clean)
    except ValidationError as exc:
        report_validation_error(exc, clean, report)
    rules.check_main(clean, report, num_gpus)
    if rules_native.runs_natively(clean, backend):
        rules_native.check_main(clean, report)
        _native_adapter(clean, report)
    paths_check.check_placeholders(clean, report, as_error=not skip_path_checks)
    if not skip_path_checks:
        paths_check.check_paths(paths_check.main_paths(clean), base_dir, report, path_roots)
        if path_roots is None:  # LoRA headers are read only for local callers
            rules_lora.check_loras(clean, base_dir, report)
    return report.issues


def _native_adapter(data: dict[str, Any], report: Reporter) -> None:
    """The native trainer trains LoRAs only: a Chroma config without ``[adapter]`` (diffusion-pipe's full
    fine-tune) cannot start there."""
    if rules_native.trains_chroma(data) and not isinstance(data.get("adapter"), dict):
        report.error("adapter", "the native trainer trains LoRAs only, and without an [adapter] table this is a "
                     "full fine-tune", "add [adapter] with type = 'lora' and rank = 32, or set [studio] backend = "
                     "'diffusion-pipe' for a full fine-tune")


def check_dataset_text(text: str, file: str, base_dir: list[Path], skip_path_checks: bool,
                       model: dict[str, Any] | None = None, native: bool = False, skip_checks: bool = False,
                       path_roots: Sequence[Path] | None = None) -> list[ConfigIssue]:
    """Issues of a dataset TOML; ``model`` (the main file's [model] table) enables model-specific rules,
    ``native`` the native trainer's refusals (a Chroma pair that runs natively), ``skip_checks`` that
    diffusion-pipe runs it with --i_know_what_i_am_doing, and ``path_roots`` limits path look-ups."""
    data = loads_plain(text, file)
    report = Reporter(file, text)
    clean = unknown_keys.check_dataset(data, report)
    try:
        DatasetConfig.model_validate(clean)
    except ValidationError as exc:
        report_validation_error(exc, clean, report)
    model = model or {}
    model_type = model.get("type") if isinstance(model.get("type"), str) else None
    rules_dataset.check_dataset(clean, report, model_type, model)
    rules_dataset_dp.check_dataset(clean, report, model_type, skip_checks)
    if native:
        rules_native.check_dataset(clean, report, model_type)
    paths_check.check_placeholders(clean, report, as_error=not skip_path_checks)
    if not skip_path_checks:
        paths_check.check_paths(paths_check.dataset_paths(clean), base_dir, report, path_roots)
    return report.issues


def validate_files(main_path: str | os.PathLike[str], *, skip_path_checks: bool = False,
                   num_gpus: int | None = 1, backend: Backend | None = None) -> list[ConfigIssue]:
    """Validate a main TOML file and the dataset (and eval) TOMLs it names.

    Raises ConfigParseError when a file cannot be read or parsed. A dataset file that does not exist is an
    issue on the ``dataset`` key (even with ``skip_path_checks``: without it nothing can be checked).
    ``backend`` None: the main file's ``[studio] backend`` (default auto).
    """
    main_path = Path(main_path)
    main_text = read_text(main_path)
    main_data = loads_plain(main_text, str(main_path))
    base = [paths_check.config_base(main_path, main_data)]  # one rule for every command (paths_check)
    issues = check_main(main_data, main_text, str(main_path), base, skip_path_checks, num_gpus, backend)
    model = main_data.get("model") if isinstance(main_data.get("model"), dict) else {}
    flags = (_native_chroma(main_data, backend), _skips_checks(main_data, backend))
    dataset = main_data.get("dataset")
    if isinstance(dataset, str) and paths_check.placeholder_text(dataset) is None and dataset:
        issues += _dataset_file(dataset, "dataset", main_path, base, main_text, skip_path_checks, model, flags)
    for index, entry in enumerate(main_data.get("eval_datasets") or []):
        config = entry.get("config") if isinstance(entry, dict) else None
        if isinstance(config, str) and config and paths_check.is_there(paths_check.resolve(config, base), "file"):
            issues += _dataset_file(config, f"eval_datasets[{index}].config", main_path, base, main_text,
                                    skip_path_checks, model, flags)
    return issues


def _dataset_file(value: str, key: str, main_path: Path, base: list[Path], main_text: str,
                  skip_path_checks: bool, model: dict[str, Any], flags: tuple[bool, bool]) -> list[ConfigIssue]:
    path = paths_check.resolve(value, base)
    if not paths_check.is_there(path, "file"):
        if not skip_path_checks:
            return []  # check_main's path checks already reported it
        report = Reporter(str(main_path), main_text)
        report.error(key, f"dataset file not found: {_short(str(path))}",
                     f"check the path (relative paths are resolved against {' or '.join(map(str, base))})")
        return report.issues
    text = read_text(path)
    return check_dataset_text(text, str(path), base, skip_path_checks, model, *flags)


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[:limit - 40]}... ({len(text)} characters)"


def is_valid(issues: list[ConfigIssue]) -> bool:
    """True when no issue is an error (warnings allowed)."""
    return not any(issue.is_error for issue in issues)


class ConfigError(ValueError):
    """A config has errors; ``issues`` lists them (warnings included)."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(issue.format() for issue in issues if issue.is_error))


def parse_main(text: str, file: str = "main.toml") -> MainConfig:
    """The typed main config (defaults filled in), for trainers; raises ConfigParseError or ConfigError.

    Keys of other model types (warnings) are dropped; paths are not checked here.
    """
    data = loads_plain(text, file)
    report = Reporter(file, text)
    clean = unknown_keys.check_main(data, report)
    rules.check_main(clean, report, num_gpus=None)
    return _typed(MainConfig, clean, report)


def parse_dataset(text: str, file: str = "dataset.toml") -> Any:
    """The typed dataset config (a ``DatasetConfig``); raises ConfigParseError or ConfigError."""
    data = loads_plain(text, file)
    report = Reporter(file, text)
    clean = unknown_keys.check_dataset(data, report)
    rules_dataset.check_dataset(clean, report)
    return _typed(DatasetConfig, clean, report)


def _typed(model: Any, clean: dict[str, Any], report: Reporter) -> Any:
    """``model`` built from the checked data, or ConfigError with every issue the checks and pydantic found."""
    config = None
    try:
        config = model.model_validate(clean)
    except ValidationError as exc:
        report_validation_error(exc, clean, report)
    if not is_valid(report.issues):
        raise ConfigError(report.issues)
    return config
